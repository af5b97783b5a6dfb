"""The eventsourcing Application: commands in, events stored, simple types out."""

from __future__ import annotations

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
from libs.domain.deal import UNSET, Deal, deal_id_for
from libs.domain.errors import DuplicateExternalId, NotFound, RuleViolation, StaleVersion
from libs.domain.owner import Owner, owner_id_for
from libs.domain.pipeline import Pipeline

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

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    # --- helpers ----------------------------------------------------------------------

    def _when(self, occurred_at: datetime | None) -> tuple[datetime, datetime]:
        now = self.clock()
        if occurred_at is None:
            return now, now
        if occurred_at.tzinfo is not None:
            occurred_at = occurred_at.astimezone(UTC)
        return occurred_at, now

    def _save(self, *aggregates: Aggregate) -> int:
        recordings = self.save(*aggregates)
        if not recordings:
            raise RuleViolation("the command produced no events")
        return recordings[-1].notification.id

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
    ) -> CommandResult:
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
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        owner = actor.name if owner is None else owner
        actor.check_may_change_deal(owner if isinstance(owner, str) else "")
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
        for attempt in range(1, MAX_ATTEMPTS + 1):
            deal = self.get_deal(deal_id)
            actor.check_may_change_deal(deal.owner)
            if expected_version is not None and deal.version != expected_version:
                raise StaleVersion(
                    f"deal is at version {deal.version}, not {expected_version}",
                    details={"current_version": deal.version},
                )
            pipeline = self.get_pipeline(deal.pipeline_id)
            change(deal, pipeline, *self._when(occurred_at))
            try:
                position = self._save(deal)
            except IntegrityError:
                if expected_version is not None:
                    raise StaleVersion(
                        f"deal changed after version {expected_version}",
                        details={"expected_version": expected_version},
                    ) from None
                if attempt == MAX_ATTEMPTS:
                    raise RuleViolation(
                        "deal is changing too often to apply this command; try again"
                    ) from None
                continue
            return CommandResult(deal.id, deal.version, position, deal.as_dict(pipeline))
        raise AssertionError("unreachable")

    def advance_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        stage: Any,
        occurred_at: datetime | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        def change(deal: Deal, pipeline: Pipeline, when: datetime, now: datetime) -> None:
            deal.advance(pipeline, stage, actor=actor.name, occurred_at=when, now=now)

        return self.change_deal(
            deal_id,
            actor=actor,
            expected_version=expected_version,
            occurred_at=occurred_at,
            change=change,
        )

    def win_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        occurred_at: datetime | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        def change(deal: Deal, pipeline: Pipeline, when: datetime, now: datetime) -> None:
            deal.win(pipeline, actor=actor.name, occurred_at=when, now=now)

        return self.change_deal(
            deal_id,
            actor=actor,
            expected_version=expected_version,
            occurred_at=occurred_at,
            change=change,
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
        def change(deal: Deal, pipeline: Pipeline, when: datetime, now: datetime) -> None:
            deal.lose(pipeline, reason, note, actor=actor.name, occurred_at=when, now=now)

        return self.change_deal(
            deal_id,
            actor=actor,
            expected_version=expected_version,
            occurred_at=occurred_at,
            change=change,
        )

    def reopen_deal(
        self,
        deal_id: UUID | str,
        *,
        actor: Actor,
        stage: Any = None,
        occurred_at: datetime | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        def change(deal: Deal, pipeline: Pipeline, when: datetime, now: datetime) -> None:
            deal.reopen(pipeline, stage, actor=actor.name, occurred_at=when, now=now)

        return self.change_deal(
            deal_id,
            actor=actor,
            expected_version=expected_version,
            occurred_at=occurred_at,
            change=change,
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
        """Change any of title, value, expected_close_date, account, product and owner."""
        allowed = {"title", "value", "expected_close_date", "account", "product", "owner"}
        kwargs = {k: fields.get(k, UNSET) for k in allowed}

        def change(deal: Deal, pipeline: Pipeline, when: datetime, now: datetime) -> None:
            deal.update(**kwargs, actor=actor.name, occurred_at=when, now=now)

        return self.change_deal(
            deal_id,
            actor=actor,
            expected_version=expected_version,
            occurred_at=occurred_at,
            change=change,
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
