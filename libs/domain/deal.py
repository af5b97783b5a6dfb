"""The Deal aggregate: one opportunity moving through a pipeline's stages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final
from uuid import UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from libs.domain.activities import (
    MAX_ACTIVITIES_PER_DEAL,
    activity_id_for,
    check_activity_note,
    check_activity_type,
    check_duration,
    check_subject,
)
from libs.domain.errors import (
    ActivityNotFound,
    ActivityNotOpen,
    AlreadyInStage,
    AlreadyLost,
    AlreadyWon,
    ChecklistIncomplete,
    DealClosed,
    DealNotClosed,
    EntryRequirementsNotMet,
    InvalidInput,
    MovingBackNotAllowed,
    NoOpenChecklistItems,
    NothingToChange,
    PipelineMismatch,
    SkippingStagesNotAllowed,
    TooManyActivities,
)
from libs.domain.events import EventType as E
from libs.domain.pipeline import Pipeline, Stage, check_probability
from libs.domain.state import LOST as LOST
from libs.domain.state import OPEN as OPEN
from libs.domain.state import WON as WON
from libs.domain.state import ActivityState, DealState, checklist_due, deal_after
from libs.domain.times import check_ahead, check_day, check_occurred_at
from libs.domain.upcasting import versioned_events
from libs.domain.values import (
    MAX_NAME_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_TITLE_LENGTH,
    UNSET,
    check_money,
    check_text,
)
from libs.domain.views import activity_view, deal_view

MAX_EXTERNAL_ID_LENGTH = 200

# Deal ids derived from (pipeline, external id) make imports idempotent: the same
# external record always maps onto the same aggregate.
DEAL_ID_NAMESPACE: Final = UUID("6f1c2b0e-5d0a-4c1e-9a57-3e2f1d7c9b40")


def deal_id_for(pipeline_id: UUID, external_id: str) -> UUID:
    """The id a deal with this external id gets in this pipeline."""
    return uuid5(DEAL_ID_NAMESPACE, f"{pipeline_id}:{external_id}")


def check_owner(owner: Any) -> str:
    return check_text(owner, "owner", max_length=MAX_NAME_LENGTH)


def check_assignee(assignee: Any) -> str:
    return check_text(assignee, "assignee", max_length=MAX_NAME_LENGTH)


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


@versioned_events
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
        deal = cls(
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
        deal._enter_checklist(deal._checklist_for(pipeline.id, first, occurred_at), actor)
        return deal

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
            self.check_may_leave(pipeline)
        elif "direction" in cause:
            # A pipeline change moves the deal; it says which way (its stage may be gone).
            direction = str(cause["direction"])
        else:
            back = pipeline.position_of(target.id) < pipeline.position_of(self.stage_id)
            direction = "backward" if back else "forward"
        checklist = self._checklist_for(pipeline.id, target, occurred_at)
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
        self._enter_checklist(checklist, actor)

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
        self.check_may_leave(current)
        checklist = self._checklist_for(target.id, destination, occurred_at)
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
        self._enter_checklist(checklist, actor)

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
        self.check_may_leave(pipeline)
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
        checklist = self._checklist_for(pipeline.id, target, occurred_at)
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
        self._enter_checklist(checklist, actor)

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

    # --- activities and checklists ------------------------------------------------------

    def activity(self, activity_id: Any) -> ActivityState:
        """One of the deal's activities by id; ActivityNotFound if it has none such."""
        key = str(activity_id)
        for activity in self.state.activities:
            if activity.id == key:
                return activity
        raise ActivityNotFound(f"deal {self.id} has no activity {key}")

    def check_room(self, more: int) -> None:
        """The deal can hold ``more`` activities (every status counts)."""
        held = len(self.activities)
        if held + more > MAX_ACTIVITIES_PER_DEAL:
            raise TooManyActivities(
                f"a deal holds at most {MAX_ACTIVITIES_PER_DEAL} activities; this one has "
                f"{held}, and {more} more would not fit",
                details={"limit": MAX_ACTIVITIES_PER_DEAL, "activities": held},
            )

    def open_checklist_items(self) -> list[ActivityState]:
        """The open activities that came from the current stage's checklist."""
        return [
            a
            for a in self.activities
            if a.status == OPEN and a.is_checklist_item_of(self.pipeline_id, self.stage_id)
        ]

    def check_may_leave(self, pipeline: Pipeline) -> None:
        """With ``require_checklist_before_leaving``, a deal leaves its stage (forwards,
        backwards, won or into another pipeline; never when lost) only once the stage's
        checklist items are completed, cancelled or waived."""
        if not pipeline.require_checklist_before_leaving:
            return
        items = self.open_checklist_items()
        if not items:
            return
        titles = ", ".join(repr(a.subject) for a in items)
        raise ChecklistIncomplete(
            f"stage {pipeline.stage_name(self.stage_id)!r} has {len(items)} open checklist "
            f"item(s): {titles}; complete or cancel them, or have a manager waive them",
            details={
                "stage": self.stage_id,
                "open_items": [{"id": a.id, "title": a.subject, "type": a.type} for a in items],
            },
        )

    def _checklist_for(
        self, pipeline_id: UUID, stage: Stage, entered_at: datetime
    ) -> dict[str, Any] | None:
        """What entering ``stage`` adds: its checklist's items as activities (an item the
        deal still has open from an earlier visit is not added twice), or None."""
        if not stage.checklist:
            return None
        still_open = {
            a.subject.casefold()
            for a in self.activities
            if a.status == OPEN and a.is_checklist_item_of(pipeline_id, stage.id)
        }
        items = [i for i in stage.checklist if i.title.casefold() not in still_open]
        if not items:
            return None
        self.check_room(len(items))
        first = len(self.activities) + 1
        return {
            "pipeline_id": str(pipeline_id),
            "stage_id": stage.id,
            "stage_name": stage.name,
            "checklist_version": stage.checklist_version,
            "items": [
                {
                    "activity_id": activity_id_for(self.id, first + n),
                    "title": item.title,
                    "type": item.type,
                    "due_at": checklist_due(entered_at, item),
                }
                for n, item in enumerate(items)
            ],
            "occurred_at": entered_at,
        }

    def _enter_checklist(self, checklist: dict[str, Any] | None, actor: str) -> None:
        if checklist is not None:
            self._checklist_applied(**checklist, assignee=self.owner, actor=actor)

    @event(E.CHECKLIST_APPLIED)
    def _checklist_applied(
        self,
        pipeline_id: str,
        stage_id: str,
        stage_name: str,
        checklist_version: int,
        items: list[dict[str, Any]],
        assignee: str,
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self._fold(E.CHECKLIST_APPLIED, locals())

    def waive_checklist(
        self, pipeline: Pipeline, reason: Any, *, actor: str, occurred_at: datetime, now: datetime
    ) -> list[str]:
        """Cancel the current stage's open checklist items as waived (a manager's call,
        with a reason); the ids of the waived items."""
        checked_reason = check_text(reason, "reason", max_length=MAX_NOTE_LENGTH)
        self.check_open()
        self.check_when(occurred_at, now)
        items = self.open_checklist_items()
        if not items:
            raise NoOpenChecklistItems(
                f"stage {pipeline.stage_name(self.stage_id)!r} has no open checklist items "
                "on this deal"
            )
        ids = [a.id for a in items]
        self._checklist_waived(
            pipeline_id=str(self.pipeline_id),
            stage_id=self.stage_id,
            stage_name=pipeline.stage_name(self.stage_id),
            activity_ids=ids,
            reason=checked_reason,
            actor=actor,
            occurred_at=occurred_at,
        )
        return ids

    @event(E.CHECKLIST_WAIVED)
    def _checklist_waived(
        self,
        pipeline_id: str,
        stage_id: str,
        stage_name: str,
        activity_ids: list[str],
        reason: str,
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self._fold(E.CHECKLIST_WAIVED, locals())

    def schedule_activity(
        self,
        *,
        type: Any,
        subject: Any,
        due_at: Any,
        duration_minutes: Any = None,
        assignee: Any = None,
        note: Any = None,
        key: str | None = None,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> str:
        """Plan a call, meeting, email, task or deadline (assigned to the deal's owner
        unless ``assignee``); its id. Also on a closed deal: work around a customer goes on
        after a win or a loss. ``key`` (from an imported record) decides the id; without
        it, the activity's number on the deal does."""
        fields: dict[str, Any] = {
            "activity_type": check_activity_type(type),
            "subject": check_subject(subject),
            "due_at": check_ahead(due_at, "due_at", now=now),
            "duration_minutes": check_duration(duration_minutes),
            "assignee": self.owner if assignee is None else check_assignee(assignee),
            "note": check_activity_note(note, "note"),
        }
        self.check_when(occurred_at, now)
        self.check_room(1)
        activity_id = activity_id_for(self.id, len(self.activities) + 1 if key is None else key)
        self._activity_scheduled(
            activity_id=activity_id, **fields, actor=actor, occurred_at=occurred_at
        )
        return activity_id

    @event(E.ACTIVITY_SCHEDULED)
    def _activity_scheduled(
        self,
        activity_id: str,
        activity_type: str,
        subject: str,
        due_at: datetime,
        duration_minutes: int | None,
        assignee: str,
        note: str | None,
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self._fold(E.ACTIVITY_SCHEDULED, locals())

    def _open_activity(self, activity_id: Any, doing: str) -> ActivityState:
        activity = self.activity(activity_id)
        if activity.status != OPEN:
            raise ActivityNotOpen(
                f"activity {activity.id} is {activity.status}; only an open activity can be "
                f"{doing}",
                details={"status": activity.status},
            )
        return activity

    def update_activity(
        self,
        activity_id: Any,
        *,
        type: Any = UNSET,
        subject: Any = UNSET,
        due_at: Any = UNSET,
        duration_minutes: Any = UNSET,
        assignee: Any = UNSET,
        note: Any = UNSET,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        """Reschedule, reassign or edit an open activity; only real changes count."""
        changes: dict[str, Any] = {}
        if type is not UNSET:
            changes["type"] = check_activity_type(type)
        if subject is not UNSET:
            changes["subject"] = check_subject(subject)
        if due_at is not UNSET:
            changes["due_at"] = check_ahead(due_at, "due_at", now=now)
        if duration_minutes is not UNSET:
            changes["duration_minutes"] = check_duration(duration_minutes)
        if assignee is not UNSET:
            changes["assignee"] = check_assignee(assignee)
        if note is not UNSET:
            changes["note"] = check_activity_note(note, "note")
        activity = self._open_activity(activity_id, "changed")
        self.check_when(occurred_at, now)
        changes = {k: v for k, v in changes.items() if getattr(activity, k) != v}
        if not changes:
            raise NothingToChange("the update changes nothing", field="body")
        self._activity_updated(
            activity_id=activity.id,
            changes=changes,
            previous={k: getattr(activity, k) for k in changes},
            actor=actor,
            occurred_at=occurred_at,
        )

    @event(E.ACTIVITY_UPDATED)
    def _activity_updated(
        self,
        activity_id: str,
        changes: dict[str, Any],
        previous: dict[str, Any],
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self._fold(E.ACTIVITY_UPDATED, locals())

    def complete_activity(
        self,
        activity_id: Any,
        outcome: Any = None,
        *,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        """Mark an open activity done, with an optional outcome note."""
        checked = check_activity_note(outcome, "outcome")
        activity = self._open_activity(activity_id, "completed")
        self.check_when(occurred_at, now)
        self._activity_completed(
            activity_id=activity.id, outcome=checked, actor=actor, occurred_at=occurred_at
        )

    @event(E.ACTIVITY_COMPLETED)
    def _activity_completed(
        self, activity_id: str, outcome: str | None, actor: str, occurred_at: datetime
    ) -> None:
        self._fold(E.ACTIVITY_COMPLETED, locals())

    def cancel_activity(
        self,
        activity_id: Any,
        reason: Any = None,
        *,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        """Cancel an open activity, with an optional reason."""
        checked = check_activity_note(reason, "reason")
        activity = self._open_activity(activity_id, "cancelled")
        self.check_when(occurred_at, now)
        self._activity_cancelled(
            activity_id=activity.id, reason=checked, actor=actor, occurred_at=occurred_at
        )

    @event(E.ACTIVITY_CANCELLED)
    def _activity_cancelled(
        self, activity_id: str, reason: str | None, actor: str, occurred_at: datetime
    ) -> None:
        self._fold(E.ACTIVITY_CANCELLED, locals())

    def activity_as_dict(self, activity_id: Any, now: datetime) -> dict[str, Any]:
        """One activity as every answer shows it (``libs/domain/views.py``)."""
        activity = self.activity(activity_id)
        return activity_view(str(self.id), str(self.pipeline_id), activity, now=now)

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
