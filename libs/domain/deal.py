"""The Deal aggregate: one opportunity moving through a pipeline's stages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final
from uuid import UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from libs.domain.errors import (
    AlreadyInStage,
    AlreadyLost,
    AlreadyWon,
    DealClosed,
    DealNotClosed,
    EntryRequirementsNotMet,
    InvalidInput,
    MovingBackNotAllowed,
    NothingToChange,
    PipelineMismatch,
    SkippingStagesNotAllowed,
)
from libs.domain.events import EventType as E
from libs.domain.pipeline import Pipeline, Stage, check_probability
from libs.domain.state import LOST as LOST
from libs.domain.state import OPEN as OPEN
from libs.domain.state import WON as WON
from libs.domain.state import DealState, deal_after
from libs.domain.times import check_ahead, check_day, check_occurred_at
from libs.domain.values import (
    MAX_NAME_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_TITLE_LENGTH,
    UNSET,
    check_money,
    check_text,
)
from libs.domain.views import deal_view

MAX_EXTERNAL_ID_LENGTH = 200

# Deal ids derived from (pipeline, external id) make imports idempotent: the same
# external record always maps onto the same aggregate.
DEAL_ID_NAMESPACE: Final = UUID("6f1c2b0e-5d0a-4c1e-9a57-3e2f1d7c9b40")


def deal_id_for(pipeline_id: UUID, external_id: str) -> UUID:
    """The id a deal with this external id gets in this pipeline."""
    return uuid5(DEAL_ID_NAMESPACE, f"{pipeline_id}:{external_id}")


def check_owner(owner: Any) -> str:
    return check_text(owner, "owner", max_length=MAX_NAME_LENGTH)


def check_optional_name(value: Any, field: str) -> str | None:
    if value is None:
        return None
    return check_text(value, field, max_length=MAX_NAME_LENGTH, required=False) or None


def check_note(value: Any) -> str | None:
    if value is None:
        return None
    return check_text(value, "note", max_length=MAX_NOTE_LENGTH, required=False) or None


def check_probability_override(value: Any) -> int | None:
    return None if value is None else check_probability(value, "probability_override")


def check_expected_close_date(value: Any, *, today: date) -> date | None:
    if value is None:
        return None
    return check_day(value, "expected_close_date", today=today)


class Deal(Aggregate):
    """A sales opportunity: value, owner, stage and outcome, with every change kept.

    Its state (:class:`DealState`) is the fold of its events (``libs/domain/state.py``);
    the state's fields read as the deal's attributes (``deal.status``, ``deal.owner``).
    """

    state: DealState

    def _fold(self, event_type: str, payload: Mapping[str, Any]) -> None:
        """Apply one of the deal's events to its state, through the one fold."""
        state = deal_after(self.__dict__.get("state"), event_type, payload, payload["occurred_at"])
        assert state is not None, "a deal's first event is its creation"
        self.state = state

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get("state")
        if state is not None and name in DealState.__dataclass_fields__:
            return getattr(state, name)
        raise AttributeError(name)

    @event(E.DEAL_CREATED)
    def __init__(
        self,
        pipeline_id: UUID,
        title: str,
        value: Decimal,
        owner: str,
        stage_id: str,
        stage_name: str,
        expected_close_date: date | None,
        external_id: str | None,
        actor: str,
        occurred_at: datetime,
        account: str | None = None,
        product: str | None = None,
        note: str | None = None,
    ) -> None:
        self._fold(E.DEAL_CREATED, locals())

    @classmethod
    def create(
        cls,
        *,
        pipeline: Pipeline,
        title: Any,
        value: Any,
        owner: Any,
        stage: Any = None,
        expected_close_date: Any = None,
        external_id: Any = None,
        account: Any = None,
        product: Any = None,
        note: Any = None,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> Deal:
        """Check the input against the pipeline and open a new deal."""
        checked_title = check_text(title, "title", max_length=MAX_TITLE_LENGTH)
        amount = check_money(value)
        checked_owner = check_owner(owner)
        close_date = check_expected_close_date(expected_close_date, today=now.date())
        ext: str | None = None
        if external_id is not None:
            ext = check_text(external_id, "external_id", max_length=MAX_EXTERNAL_ID_LENGTH)
        first = pipeline.first_stage if stage is None else pipeline.stage(stage)
        if not pipeline.allow_skipping_stages and first.id != pipeline.first_stage.id:
            raise SkippingStagesNotAllowed(
                f"pipeline {pipeline.name!r} does not allow skipping stages; new deals start "
                f"in {pipeline.first_stage.name!r}",
                details={"next_stage": pipeline.first_stage.id},
            )
        checked_note = check_note(note)
        present = {
            "value": amount > 0,
            "expected_close_date": close_date is not None,
            "note": bool(checked_note),
        }
        missing = [f for f in first.requires if not present.get(f, True)]
        if missing:
            raise EntryRequirementsNotMet(
                f"stage {first.name!r} requires {', '.join(missing)} before a deal enters it",
                field=missing[0],
                details={"missing_fields": missing, "stage": first.id},
            )
        check_occurred_at(occurred_at, now=now, previous=None)
        return cls(
            pipeline_id=pipeline.id,
            title=checked_title,
            value=amount,
            owner=checked_owner,
            stage_id=first.id,
            stage_name=first.name,
            expected_close_date=close_date,
            external_id=ext,
            actor=actor,
            occurred_at=occurred_at,
            account=check_optional_name(account, "account"),
            product=check_optional_name(product, "product"),
            note=checked_note,
        )

    @staticmethod
    def create_id(pipeline_id: UUID, external_id: str | None) -> UUID:
        return deal_id_for(pipeline_id, external_id) if external_id else uuid4()

    # --- rules ----------------------------------------------------------------------

    def check_open(self) -> None:
        if self.status != OPEN:
            raise DealClosed(
                f"deal is {self.status}; only reopen is allowed on a closed deal",
                details={"status": self.status},
            )

    def check_when(self, occurred_at: datetime, now: datetime) -> None:
        check_occurred_at(occurred_at, now=now, previous=self.last_occurred_at)

    # --- commands -------------------------------------------------------------------

    def check_entry(self, stage: Stage, note: str | None) -> None:
        """The target stage's entry requirements hold (value > 0, close date, a note)."""
        missing = []
        if "value" in stage.requires and not self.value > 0:
            missing.append("value")
        if "expected_close_date" in stage.requires and self.expected_close_date is None:
            missing.append("expected_close_date")
        if "note" in stage.requires and not note:
            missing.append("note")
        if missing:
            raise EntryRequirementsNotMet(
                f"stage {stage.name!r} requires {', '.join(missing)} before a deal enters it",
                field=missing[0],
                details={"missing_fields": missing, "stage": stage.id},
            )

    def check_route(self, pipeline: Pipeline, target: Stage) -> str:
        """The pipeline's rules on skipping stages and moving back; returns the direction."""
        here, there = pipeline.position_of(self.stage_id), pipeline.position_of(target.id)
        if here < 0:  # the current stage was removed: any current stage is a way out
            return "forward"
        if there < here:
            if not pipeline.allow_moving_back:
                raise MovingBackNotAllowed(
                    f"pipeline {pipeline.name!r} does not allow moving deals back"
                )
            return "backward"
        if there > here + 1 and not pipeline.allow_skipping_stages:
            following = pipeline.stages[here + 1]
            raise SkippingStagesNotAllowed(
                f"pipeline {pipeline.name!r} does not allow skipping stages; "
                f"the next stage is {following.name!r}",
                details={"next_stage": following.id},
            )
        return "forward"

    def advance(
        self,
        pipeline: Pipeline,
        stage: Any,
        note: Any = None,
        *,
        actor: str,
        occurred_at: datetime,
        now: datetime,
        cause: dict[str, Any] | None = None,
    ) -> None:
        """Move the deal to another stage of its pipeline, forwards or backwards."""
        target = pipeline.stage(stage)
        checked_note = check_note(note)
        self.check_open()
        self.check_when(occurred_at, now)
        if target.id == self.stage_id:
            raise AlreadyInStage(f"deal is already in stage {target.name!r}")
        if cause is None:
            direction = self.check_route(pipeline, target)
            self.check_entry(target, checked_note)
        elif "direction" in cause:
            # A pipeline change moves the deal; it says which way (its stage may be gone).
            direction = str(cause["direction"])
        else:
            back = pipeline.position_of(target.id) < pipeline.position_of(self.stage_id)
            direction = "backward" if back else "forward"
        self._stage_advanced(
            from_stage_id=self.stage_id,
            from_stage_name=pipeline.stage_name(self.stage_id),
            to_stage_id=target.id,
            to_stage_name=target.name,
            direction=direction,
            actor=actor,
            occurred_at=occurred_at,
            note=checked_note,
            cause=cause,
        )

    def move_to_pipeline(
        self,
        current: Pipeline,
        target: Pipeline,
        stage: Any = None,
        note: Any = None,
        *,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        """Move an open deal into another pipeline (same currency), keeping its history."""
        if target.id == self.pipeline_id:
            raise PipelineMismatch("the deal is already in that pipeline; use advance")
        if target.currency != current.currency:
            raise PipelineMismatch(
                f"pipeline {target.name!r} is in {target.currency}, the deal's value is in "
                f"{current.currency}"
            )
        destination = target.first_stage if stage is None else target.stage(stage)
        if not target.allow_skipping_stages and destination.id != target.first_stage.id:
            raise SkippingStagesNotAllowed(
                f"pipeline {target.name!r} does not allow skipping stages; deals enter it in "
                f"{target.first_stage.name!r}",
                details={"next_stage": target.first_stage.id},
            )
        checked_note = check_note(note)
        self.check_open()
        self.check_when(occurred_at, now)
        self.check_entry(destination, checked_note)
        self._moved(
            from_pipeline_id=self.pipeline_id,
            to_pipeline_id=target.id,
            from_stage_id=self.stage_id,
            from_stage_name=current.stage_name(self.stage_id),
            to_stage_id=destination.id,
            to_stage_name=destination.name,
            note=checked_note,
            actor=actor,
            occurred_at=occurred_at,
        )

    @event(E.DEAL_MOVED)
    def _moved(
        self,
        from_pipeline_id: UUID,
        to_pipeline_id: UUID,
        from_stage_id: str,
        from_stage_name: str,
        to_stage_id: str,
        to_stage_name: str,
        note: str | None,
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self._fold(E.DEAL_MOVED, locals())

    @event(E.STAGE_ADVANCED)
    def _stage_advanced(
        self,
        from_stage_id: str,
        from_stage_name: str,
        to_stage_id: str,
        to_stage_name: str,
        direction: str,
        actor: str,
        occurred_at: datetime,
        note: str | None = None,
        cause: dict[str, Any] | None = None,
    ) -> None:
        self._fold(E.STAGE_ADVANCED, locals())

    def win(self, pipeline: Pipeline, *, actor: str, occurred_at: datetime, now: datetime) -> None:
        """Close the deal as won, in the stage it sits in."""
        if self.status == WON:
            raise AlreadyWon("deal is already won")
        self.check_open()
        self.check_when(occurred_at, now)
        self._won(
            stage_id=self.stage_id,
            stage_name=pipeline.stage_name(self.stage_id),
            actor=actor,
            occurred_at=occurred_at,
        )

    @event(E.DEAL_WON)
    def _won(self, stage_id: str, stage_name: str, actor: str, occurred_at: datetime) -> None:
        self._fold(E.DEAL_WON, locals())

    def lose(
        self,
        pipeline: Pipeline,
        reason: Any,
        note: Any = None,
        *,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        """Close the deal as lost, for one of the pipeline's reasons."""
        if self.status == LOST:
            raise AlreadyLost("deal is already lost")
        checked_reason = pipeline.check_lost_reason(reason)
        checked_note = check_note(note)
        self.check_open()
        self.check_when(occurred_at, now)
        self._lost(
            reason=checked_reason,
            note=checked_note,
            stage_id=self.stage_id,
            stage_name=pipeline.stage_name(self.stage_id),
            actor=actor,
            occurred_at=occurred_at,
        )

    @event(E.DEAL_LOST)
    def _lost(
        self,
        reason: str,
        note: str | None,
        stage_id: str,
        stage_name: str,
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self._fold(E.DEAL_LOST, locals())

    def reopen(
        self,
        pipeline: Pipeline,
        stage: Any = None,
        note: Any = None,
        *,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        """Bring a won or lost deal back into the pipeline (by default where it closed)."""
        if self.status == OPEN:
            raise DealNotClosed("deal is open; only a won or lost deal can be reopened")
        target = pipeline.stage(self.stage_id if stage is None else stage)
        checked_note = check_note(note)
        self.check_when(occurred_at, now)
        self.check_entry(target, checked_note)
        self._reopened(
            note=checked_note,
            previous_status=self.status,
            from_stage_id=self.stage_id,
            from_stage_name=pipeline.stage_name(self.stage_id),
            stage_id=target.id,
            stage_name=target.name,
            actor=actor,
            occurred_at=occurred_at,
        )

    @event(E.DEAL_REOPENED)
    def _reopened(
        self,
        previous_status: str,
        from_stage_id: str,
        from_stage_name: str,
        stage_id: str,
        stage_name: str,
        actor: str,
        occurred_at: datetime,
        note: str | None = None,
    ) -> None:
        self._fold(E.DEAL_REOPENED, locals())

    def snooze(
        self,
        until: Any,
        reason: Any,
        *,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        """Keep an open deal off the stale list until ``until`` (a reason is required)."""
        until = check_ahead(until, "until", now=now)
        checked_reason = check_text(reason, "reason", max_length=MAX_NOTE_LENGTH)
        self.check_open()
        self.check_when(occurred_at, now)
        if until <= occurred_at:
            raise InvalidInput("until must be after the time of the snooze", field="until")
        self._snoozed(until=until, reason=checked_reason, actor=actor, occurred_at=occurred_at)

    @event(E.DEAL_SNOOZED)
    def _snoozed(self, until: datetime, reason: str, actor: str, occurred_at: datetime) -> None:
        self._fold(E.DEAL_SNOOZED, locals())

    def update(
        self,
        *,
        title: Any = UNSET,
        value: Any = UNSET,
        expected_close_date: Any = UNSET,
        owner: Any = UNSET,
        account: Any = UNSET,
        product: Any = UNSET,
        probability_override: Any = UNSET,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        """Change title, value, dates, account, product or owner; only real changes count."""
        changes: dict[str, Any] = {}
        if title is not UNSET:
            changes["title"] = check_text(title, "title", max_length=MAX_TITLE_LENGTH)
        if value is not UNSET:
            changes["value"] = check_money(value)
        if expected_close_date is not UNSET:
            changes["expected_close_date"] = check_expected_close_date(
                expected_close_date, today=now.date()
            )
        if account is not UNSET:
            changes["account"] = check_optional_name(account, "account")
        if product is not UNSET:
            changes["product"] = check_optional_name(product, "product")
        if probability_override is not UNSET:
            changes["probability_override"] = check_probability_override(probability_override)
        new_owner = None if owner is UNSET else check_owner(owner)
        self.check_open()
        self.check_when(occurred_at, now)
        changes = {k: v for k, v in changes.items() if getattr(self, k) != v}
        if new_owner == self.owner:
            new_owner = None
        if not changes and new_owner is None:
            raise NothingToChange("the update changes nothing", field="body")
        if changes:
            self._updated(
                changes=changes,
                previous={k: getattr(self, k) for k in changes},
                actor=actor,
                occurred_at=occurred_at,
            )
        if new_owner is not None:
            self._owner_changed(
                from_owner=self.owner, to_owner=new_owner, actor=actor, occurred_at=occurred_at
            )

    @event(E.DEAL_UPDATED)
    def _updated(
        self, changes: dict[str, Any], previous: dict[str, Any], actor: str, occurred_at: datetime
    ) -> None:
        self._fold(E.DEAL_UPDATED, locals())

    @event(E.OWNER_CHANGED)
    def _owner_changed(
        self, from_owner: str, to_owner: str, actor: str, occurred_at: datetime
    ) -> None:
        self._fold(E.OWNER_CHANGED, locals())

    def as_dict(
        self, pipeline: Pipeline | None = None, now: datetime | None = None
    ) -> dict[str, Any]:
        """The deal as every answer shows it (``libs/domain/views.py``), measured at ``now``
        (default: its last event's business time)."""
        return deal_view(
            str(self.id),
            self.state,
            pipeline.state if pipeline else None,
            version=self.version,
            now=now or self.state.last_occurred_at,
            updated_at=self.modified_on,
        )
