"""The eventsourcing Application: commands in, events stored, simple types out."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Transcoding
from eventsourcing.utils import get_topic

from libs.domain.actors import Actor
from libs.domain.deal import Deal, deal_id_for
from libs.domain.errors import (
    ConcurrentModification,
    DuplicateExternalId,
    NotFound,
    RuleViolation,
    StaleVersion,
)
from libs.domain.owner import Owner, owner_id_for
from libs.domain.pipeline import Pipeline
from libs.domain.times import to_utc
from libs.domain.values import UNSET

Clock = Callable[[], datetime]
# Without If-Match a command that loses a race is re-run on the fresh state (its rules
# are checked again); this many attempts before giving up with a 409.
MAX_ATTEMPTS = 5


def utc_now() -> datetime:
    return datetime.now(UTC)


class DateAsISO(Transcoding):
    """Stores ``datetime.date`` values (expected close dates) as ``YYYY-MM-DD``."""

    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


@dataclass(frozen=True)
class CommandResult:
    """What a command returns: the aggregate's new state, version and log position."""

    id: UUID
    version: int
    position: int
    state: dict[str, Any] = field(default_factory=dict)
    created: bool = False


class DealtrailApplication(Application[UUID]):
    """Commands on pipelines and deals; every accepted command is stored as events."""

    name = "dealtrail"

    def __init__(self, env: dict[str, str] | None = None, clock: Clock = utc_now) -> None:
        super().__init__(env=env)
        self.clock = clock
        # Called with the last position after every save (e.g. to wake an in-process worker).
        self.on_saved: list[Callable[[int], None]] = []

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    # --- helpers ----------------------------------------------------------------------

    def _when(self, occurred_at: datetime | None) -> tuple[datetime, datetime]:
        now = self.clock()
        if occurred_at is None:
            return now, now
        return to_utc(occurred_at, "occurred_at"), now

    def _save(self, *aggregates: Aggregate) -> int:
        recordings = self.save(*aggregates)
        if not recordings:
            raise RuleViolation("the command produced no events")
        position = recordings[-1].notification.id
        for callback in self.on_saved:
            callback(position)
        return position

    def head_position(self) -> int:
        """The position of the newest event in the log (0 when it is empty)."""
        return self.recorder.max_notification_id() or 0

    # --- pipelines --------------------------------------------------------------------

    def define_pipeline(
        self,
        *,
        actor: Actor,
        name: Any,
        currency: Any,
        stages: Any,
        lost_reasons: Any,
        occurred_at: datetime | None = None,
        **rules: Any,
    ) -> CommandResult:
        """Define a pipeline; ``rules`` are allow_skipping_stages, allow_moving_back and
        stale_after_days."""
        actor.check_may_manage_pipelines()
        when, now = self._when(occurred_at)
        pipeline = Pipeline.define(
            name=name,
            currency=currency,
            stages=stages,
            lost_reasons=lost_reasons,
            actor=actor.name,
            occurred_at=when,
            now=now,
            **rules,
        )
        position = self._save(pipeline)
        return CommandResult(pipeline.id, pipeline.version, position, pipeline.as_dict(), True)

    def get_pipeline(self, pipeline_id: UUID | str) -> Pipeline:
        try:
            pipeline: Aggregate = self.repository.get(_as_uuid(pipeline_id, "pipeline"))
        except AggregateNotFoundError:
            raise NotFound(f"pipeline {pipeline_id} does not exist") from None
        if not isinstance(pipeline, Pipeline):
            raise NotFound(f"pipeline {pipeline_id} does not exist")
        return pipeline

    def pipeline_ids(self) -> list[UUID]:
        """Ids of every pipeline, oldest first (pipelines are few; deals are not)."""
        topic = get_topic(Pipeline.PipelineDefined)  # type: ignore[attr-defined]
        ids: list[UUID] = []
        start = 1
        while True:
            batch = self.recorder.select_notifications(start, 500, topics=[topic])
            ids.extend(UUID(str(n.originator_id)) for n in batch)
            if len(batch) < 500:
                return ids
            start = batch[-1].id + 1

    # --- deals ------------------------------------------------------------------------

    def get_deal(self, deal_id: UUID | str) -> Deal:
        try:
            deal: Aggregate = self.repository.get(_as_uuid(deal_id, "deal"))
        except AggregateNotFoundError:
            raise NotFound(f"deal {deal_id} does not exist") from None
        if not isinstance(deal, Deal):
            raise NotFound(f"deal {deal_id} does not exist")
        return deal

    def deal_state(self, deal_id: UUID | str) -> dict[str, Any]:
        deal = self.get_deal(deal_id)
        return deal.as_dict(self.get_pipeline(deal.pipeline_id))

    def create_deal(
        self,
        *,
        actor: Actor,
        pipeline_id: UUID | str,
        title: Any,
        value: Any,
        owner: Any = None,
        stage: Any = None,
        expected_close_date: Any = None,
        external_id: Any = None,
        account: Any = None,
        product: Any = None,
        note: Any = None,
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        owner = actor.name if owner is None else owner
        if isinstance(owner, str):
            owner = owner.strip()
        actor.check_may_assign(owner if isinstance(owner, str) else "")
        pipeline = self.get_pipeline(pipeline_id)
        when, now = self._when(occurred_at)
        deal = Deal.create(
            pipeline=pipeline,
            title=title,
            value=value,
            owner=owner,
            stage=stage,
            expected_close_date=expected_close_date,
            external_id=external_id,
            account=account,
            product=product,
            note=note,
            actor=actor.name,
            occurred_at=when,
            now=now,
        )
        try:
            position = self._save(deal)
        except IntegrityError:
            raise DuplicateExternalId(
                f"a deal with external_id {deal.external_id!r} already exists in this pipeline",
                details={"deal_id": str(deal_id_for(pipeline.id, str(deal.external_id)))},
            ) from None
        return CommandResult(deal.id, deal.version, position, deal.as_dict(pipeline), True)

    def _retrying(
        self,
        what: str,
        expected_version: int | None,
        attempt: Callable[[], tuple[Sequence[Aggregate], Callable[[int], CommandResult]]],
    ) -> CommandResult:
        """Run ``attempt`` (load, decide) and save; on a lost race retry or report stale.

        With an expected version the caller asked for optimistic concurrency: the loser
        gets StaleVersion (412). Without one, the command is decided again on fresh state.
        """
        for n in range(1, MAX_ATTEMPTS + 1):
            aggregates, finish = attempt()
            try:
                position = self._save(*aggregates)
            except IntegrityError:
                if expected_version is not None:
                    raise StaleVersion(
                        f"{what} changed after version {expected_version}",
                        details={"expected_version": expected_version},
                    ) from None
                if n == MAX_ATTEMPTS:
                    raise ConcurrentModification(
                        f"{what} is changing too often to apply this command; try again"
                    ) from None
                # Back off a little (with jitter) so that racing writers spread out.
                time.sleep(random.uniform(0, 0.005 * 2**n))
                continue
            return finish(position)
        raise AssertionError("unreachable")

    @staticmethod
    def _check_version(aggregate: Aggregate, expected_version: int | None, what: str) -> None:
        if expected_version is not None and aggregate.version != expected_version:
            raise StaleVersion(
                f"{what} is at version {aggregate.version}, not {expected_version}",
                details={"current_version": aggregate.version},
            )

    def change_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        expected_version: int | None,
        occurred_at: datetime | None,
        change: Callable[[Deal, Pipeline, datetime, datetime], None],
    ) -> CommandResult:
        """Load, check who may act, apply ``change`` and save; retry lost races."""

        def attempt() -> tuple[Sequence[Aggregate], Callable[[int], CommandResult]]:
            deal = self.get_deal(deal_id)
            actor.check_may_change_deal(deal.owner)
            self._check_version(deal, expected_version, "deal")
            pipeline = self.get_pipeline(deal.pipeline_id)
            change(deal, pipeline, *self._when(occurred_at))
            if deal.pipeline_id != pipeline.id:  # moved: show it in its new pipeline
                pipeline = self.get_pipeline(deal.pipeline_id)
            return [deal], lambda pos: CommandResult(
                deal.id, deal.version, pos, deal.as_dict(pipeline)
            )

        return self._retrying("deal", expected_version, attempt)

    def change_pipeline(
        self,
        pipeline_id: UUID | str,
        *,
        actor: Actor,
        expected_version: int | None,
        occurred_at: datetime | None,
        change: Callable[[Pipeline, datetime, datetime], None],
    ) -> CommandResult:
        """Apply ``change`` to a pipeline (admins and managers), with the same retry rules."""
        actor.check_may_manage_pipelines()

        def attempt() -> tuple[Sequence[Aggregate], Callable[[int], CommandResult]]:
            pipeline = self.get_pipeline(pipeline_id)
            self._check_version(pipeline, expected_version, "pipeline")
            change(pipeline, *self._when(occurred_at))
            return [pipeline], lambda pos: CommandResult(
                pipeline.id, pipeline.version, pos, pipeline.as_dict()
            )

        return self._retrying("pipeline", expected_version, attempt)

    def remove_stage(
        self,
        pipeline_id: UUID | str,
        stage: Any,
        *,
        actor: Actor,
        open_deal_ids: Sequence[UUID | str],
        move_open_deals_to: Any = None,
        expected_version: int | None = None,
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        """Remove a stage; its open deals move to ``move_open_deals_to`` in the same save.

        ``open_deal_ids`` are the candidates (from the read model); each is checked on its
        own aggregate, so a deal that has left the stage meanwhile is not moved.
        """
        actor.check_may_manage_pipelines()

        def attempt() -> tuple[Sequence[Aggregate], Callable[[int], CommandResult]]:
            pipeline = self.get_pipeline(pipeline_id)
            self._check_version(pipeline, expected_version, "pipeline")
            target = pipeline.stage(stage)
            when, now = self._when(occurred_at)
            deals = [self.get_deal(d) for d in open_deal_ids]
            deals = [
                d
                for d in deals
                if d.status == "open" and d.stage_id == target.id and d.pipeline_id == pipeline.id
            ]
            order = [s.id for s in pipeline.stages]
            destination = pipeline.remove_stage(
                target.id,
                open_deals=len(deals),
                move_open_deals_to=move_open_deals_to,
                actor=actor.name,
                occurred_at=when,
                now=now,
            )
            cause = {
                "type": "StageRemoved",
                "pipeline_id": str(pipeline.id),
                "pipeline_version": pipeline.version,
                "stage_id": target.id,
            }
            if destination is not None:
                # Where the removed stage stood decides whether its deals moved back.
                back = order.index(destination.id) < order.index(target.id)
                cause["direction"] = "backward" if back else "forward"
            for deal in deals:
                assert destination is not None
                deal.advance(
                    pipeline,
                    destination.id,
                    actor=actor.name,
                    occurred_at=max(when, deal.last_occurred_at),
                    now=max(now, deal.last_occurred_at),
                    cause=cause,
                )
            moved_to = pipeline.stage(move_open_deals_to).id if move_open_deals_to else None
            state = {
                **pipeline.as_dict(),
                "moved_deals": [str(d.id) for d in deals],
                "moved_to": moved_to,
            }
            return [pipeline, *deals], lambda pos: CommandResult(
                pipeline.id, pipeline.version, pos, state
            )

        return self._retrying("pipeline", expected_version, attempt)

    def move_stranded_deals(
        self,
        pipeline_id: UUID | str,
        removed_stage_id: str,
        destination: str,
        deal_ids: Sequence[UUID | str],
        *,
        actor: Actor,
    ) -> int:
        """Move open deals that entered a stage while it was being removed; returns how many."""
        actor.check_may_manage_pipelines()
        for _ in range(MAX_ATTEMPTS):
            pipeline = self.get_pipeline(pipeline_id)
            when, now = self._when(None)
            deals = [self.get_deal(d) for d in deal_ids]
            deals = [d for d in deals if d.status == "open" and d.stage_id == removed_stage_id]
            if not deals:
                return 0
            cause = {
                "type": "StageRemoved",
                "pipeline_id": str(pipeline.id),
                "pipeline_version": pipeline.version,
                "stage_id": removed_stage_id,
            }
            for deal in deals:
                deal.advance(
                    pipeline,
                    destination,
                    actor=actor.name,
                    occurred_at=max(when, deal.last_occurred_at),
                    now=max(now, deal.last_occurred_at),
                    cause=cause,
                )
            try:
                self._save(*deals)
            except IntegrityError:
                continue
            return len(deals)
        raise RuleViolation("deals are changing too often to move them; try again")

    def move_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        pipeline_id: UUID | str,
        stage: Any = None,
        note: Any = None,
        occurred_at: datetime | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Move a deal into another pipeline; its history stays with it."""
        target = self.get_pipeline(pipeline_id)

        def change(deal: Deal, pipeline: Pipeline, when: datetime, now: datetime) -> None:
            deal.move_to_pipeline(
                pipeline, target, stage, note, actor=actor.name, occurred_at=when, now=now
            )

        return self.change_deal(
            deal_id,
            actor=actor,
            expected_version=expected_version,
            occurred_at=occurred_at,
            change=change,
        )

    def _on_deal(
        self,
        deal_id: UUID | str,
        command: str,
        *args: Any,
        actor: Actor,
        occurred_at: datetime | None,
        expected_version: int | None,
        with_pipeline: bool = True,
        **kwargs: Any,
    ) -> CommandResult:
        """Run the Deal method ``command`` (with the deal's pipeline first, if it takes it)."""

        def change(deal: Deal, pipeline: Pipeline, when: datetime, now: datetime) -> None:
            method = getattr(deal, command)
            leading = (pipeline, *args) if with_pipeline else args
            method(*leading, **kwargs, actor=actor.name, occurred_at=when, now=now)

        return self.change_deal(
            deal_id,
            actor=actor,
            expected_version=expected_version,
            occurred_at=occurred_at,
            change=change,
        )

    def advance_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        stage: Any,
        note: Any = None,
        occurred_at: datetime | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        return self._on_deal(
            deal_id,
            "advance",
            stage,
            note,
            actor=actor,
            occurred_at=occurred_at,
            expected_version=expected_version,
        )

    def win_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        occurred_at: datetime | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        return self._on_deal(
            deal_id, "win", actor=actor, occurred_at=occurred_at, expected_version=expected_version
        )

    def lose_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        reason: Any,
        note: Any = None,
        occurred_at: datetime | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        return self._on_deal(
            deal_id,
            "lose",
            reason,
            note,
            actor=actor,
            occurred_at=occurred_at,
            expected_version=expected_version,
        )

    def reopen_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        stage: Any = None,
        note: Any = None,
        occurred_at: datetime | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        return self._on_deal(
            deal_id,
            "reopen",
            stage,
            note,
            actor=actor,
            occurred_at=occurred_at,
            expected_version=expected_version,
        )

    def snooze_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        until: Any,
        reason: Any,
        occurred_at: datetime | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        return self._on_deal(
            deal_id,
            "snooze",
            until,
            reason,
            with_pipeline=False,
            actor=actor,
            occurred_at=occurred_at,
            expected_version=expected_version,
        )

    def update_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        fields: dict[str, Any],
        occurred_at: datetime | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Change title, value, expected close date, account, product, owner or probability."""
        new_owner = fields.get("owner")
        if isinstance(new_owner, str):
            actor.check_may_assign(new_owner.strip())
        allowed = (
            "title",
            "value",
            "expected_close_date",
            "account",
            "product",
            "owner",
            "probability_override",
        )
        return self._on_deal(
            deal_id,
            "update",
            with_pipeline=False,
            actor=actor,
            occurred_at=occurred_at,
            expected_version=expected_version,
            **{k: fields.get(k, UNSET) for k in allowed},
        )

    # --- owners (team and region membership) -------------------------------------------

    def get_owner(self, name: str) -> Owner | None:
        try:
            owner: Aggregate = self.repository.get(owner_id_for(name))
        except AggregateNotFoundError:
            return None
        return owner if isinstance(owner, Owner) else None

    def assign_team(
        self,
        *,
        actor: Actor,
        owner: Any,
        team: Any,
        region: Any,
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        """Set an owner's team and region (registering the owner on first use)."""
        actor.check_may_manage_teams()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            when, now = self._when(occurred_at)
            existing = self.get_owner(owner) if isinstance(owner, str) else None
            if existing is None:
                profile = Owner.register(
                    name=owner,
                    team=team,
                    region=region,
                    actor=actor.name,
                    occurred_at=when,
                    now=now,
                )
            else:
                profile = existing
                profile.assign(
                    team=team, region=region, actor=actor.name, occurred_at=when, now=now
                )
            try:
                position = self._save(profile)
            except IntegrityError:
                if attempt == MAX_ATTEMPTS:
                    raise RuleViolation("owner is changing too often; try again") from None
                continue
            return CommandResult(
                profile.id, profile.version, position, profile.as_dict(), existing is None
            )
        raise AssertionError("unreachable")

    def iter_notifications(
        self, start: int = 1, stop: int | None = None, batch_size: int = 1000
    ) -> Iterator[Sequence[Any]]:
        """Batches of stored notifications from ``start`` up to ``stop`` inclusive."""
        while True:
            batch = self.recorder.select_notifications(start, batch_size, stop=stop)
            if not batch:
                return
            yield batch
            if len(batch) < batch_size:
                return
            start = batch[-1].id + 1


def _as_uuid(value: UUID | str, what: str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise NotFound(f"{what} {value} does not exist") from None
