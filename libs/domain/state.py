"""The one fold of deal and pipeline state from their events, and the figures derived from it.

``deal_after`` and ``pipeline_after`` are pure: the state before (None before the first
event), an event's type, its payload and its business time in, the state after out. They
read the current shape of each event only: events stored in an older shape reach them
upcast (``upcasting.py``). The
aggregates apply their own events through them; every projector that needs current
state (the board, the history behind reports and ``as_of``) folds recorded events
through them too, so live, historical and write-side state cannot disagree.

The derived figures (probability, weighted value, staleness) are defined here once as
well; the read side's SQL that counts stale deals says the same rule in SQL.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from uuid import UUID

from libs.domain.events import ACTIVITY_EVENTS, NOT_ACTIVITY, EventType

E = EventType
OPEN, WON, LOST = "open", "won", "lost"
# An activity is open, done or cancelled ("overdue" is an open one past its due time).
DONE, CANCELLED = "done", "cancelled"
ACTIVITY_TYPES = ("call", "meeting", "email", "task", "deadline")
WEIGHTED_QUANTUM = Decimal("0.0001")

# --- pipelines --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChecklistItem:
    """One to-do of a stage's checklist: it becomes an open activity on every deal that
    enters the stage, due ``due_in_days`` after the entry (no due date without)."""

    title: str
    type: str
    due_in_days: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChecklistItem:
        return cls(data["title"], data["type"], data.get("due_in_days"))

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "type": self.type, "due_in_days": self.due_in_days}


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline; its id stays the same when the stage is renamed.

    ``checklist_version`` counts the changes of its checklist (0: never had one), so an
    entry's ``ChecklistApplied`` says which version applied."""

    id: str
    name: str
    probability: int
    rotting_days: int | None = None
    requires: tuple[str, ...] = ()
    checklist: tuple[ChecklistItem, ...] = ()
    checklist_version: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stage:
        return cls(
            id=data["id"],
            name=data["name"],
            probability=data["probability"],
            rotting_days=data.get("rotting_days"),
            requires=tuple(data.get("requires") or ()),
            checklist=tuple(ChecklistItem.from_dict(i) for i in data.get("checklist") or ()),
            checklist_version=data.get("checklist_version") or 0,
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["requires"] = list(self.requires)
        data["checklist"] = [item.as_dict() for item in self.checklist]
        return data


@dataclass(frozen=True, slots=True)
class PipelineState:
    """A pipeline's definition after its events: stages in order, reasons, rules."""

    name: str
    currency: str
    stages: tuple[Stage, ...]
    removed_stages: tuple[Stage, ...]
    lost_reasons: tuple[str, ...]
    retired_lost_reasons: tuple[str, ...]
    allow_skipping_stages: bool
    allow_moving_back: bool
    stale_after_days: int | None
    created_by: str | None
    defined_at: datetime
    last_occurred_at: datetime
    require_checklist_before_leaving: bool = False

    def known_stage(self, stage_id: str) -> Stage | None:
        """A current or removed stage by id."""
        for stage in (*self.stages, *self.removed_stages):
            if stage.id == stage_id:
                return stage
        return None

    def stage_name(self, stage_id: str) -> str:
        """The stage's name now (a removed stage's last name; the id if unknown)."""
        stage = self.known_stage(stage_id)
        return stage.name if stage else stage_id

    def probability_of(self, stage_id: str) -> int:
        stage = self.known_stage(stage_id)
        return stage.probability if stage else 0

    def position_of(self, stage_id: str) -> int:
        """Index of a current stage; -1 for a removed or unknown one."""
        for i, stage in enumerate(self.stages):
            if stage.id == stage_id:
                return i
        return -1

    def as_dict(self) -> dict[str, Any]:
        """The definition as JSON-ready values (stages as dicts)."""
        return {
            "name": self.name,
            "currency": self.currency,
            "stages": [s.as_dict() for s in self.stages],
            "removed_stages": [s.as_dict() for s in self.removed_stages],
            "lost_reasons": list(self.lost_reasons),
            "retired_lost_reasons": list(self.retired_lost_reasons),
            "allow_skipping_stages": self.allow_skipping_stages,
            "allow_moving_back": self.allow_moving_back,
            "stale_after_days": self.stale_after_days,
            "require_checklist_before_leaving": self.require_checklist_before_leaving,
            "created_at": self.defined_at,
        }


def pipeline_after(
    state: PipelineState | None, event_type: str, p: Mapping[str, Any], when: datetime
) -> PipelineState | None:
    """The pipeline after one of its events (None: no pipeline yet and not its definition)."""
    if event_type == E.PIPELINE_DEFINED:
        return PipelineState(
            name=p["name"],
            currency=p["currency"],
            stages=tuple(Stage.from_dict(s) for s in p["stages"]),
            removed_stages=(),
            lost_reasons=tuple(p["lost_reasons"]),
            retired_lost_reasons=(),
            allow_skipping_stages=p["allow_skipping_stages"],
            allow_moving_back=p["allow_moving_back"],
            stale_after_days=p["stale_after_days"],
            created_by=p.get("actor"),
            defined_at=when,
            last_occurred_at=when,
            require_checklist_before_leaving=p.get("require_checklist_before_leaving", False),
        )
    if state is None:
        return None
    stages = state.stages
    changes: dict[str, Any] = {}
    if event_type == E.STAGE_ADDED:
        index = p["index"]
        changes["stages"] = (*stages[:index], Stage.from_dict(p["stage"]), *stages[index:])
    elif event_type == E.STAGE_RENAMED:
        changes["stages"] = tuple(
            replace(s, name=p["to_name"]) if s.id == p["stage_id"] else s for s in stages
        )
    elif event_type == E.STAGE_UPDATED:
        changes["stages"] = tuple(
            Stage.from_dict({**s.as_dict(), **p["changes"]}) if s.id == p["stage_id"] else s
            for s in stages
        )
    elif event_type == E.STAGES_REORDERED:
        by_id = {s.id: s for s in stages}
        changes["stages"] = tuple(by_id[i] for i in p["order"] if i in by_id)
    elif event_type == E.STAGE_REMOVED:
        removed = tuple(s for s in stages if s.id == p["stage_id"])
        changes["removed_stages"] = (*state.removed_stages, *removed)
        changes["stages"] = tuple(s for s in stages if s.id != p["stage_id"])
    elif event_type == E.LOST_REASON_ADDED:
        changes["lost_reasons"] = (*state.lost_reasons, p["reason"])
        changes["retired_lost_reasons"] = tuple(
            r for r in state.retired_lost_reasons if r != p["reason"]
        )
    elif event_type == E.LOST_REASON_RETIRED:
        changes["lost_reasons"] = tuple(r for r in state.lost_reasons if r != p["reason"])
        changes["retired_lost_reasons"] = (*state.retired_lost_reasons, p["reason"])
    elif event_type == E.PIPELINE_RENAMED:
        changes["name"] = p["to_name"]
    elif event_type == E.PIPELINE_RULES_CHANGED:
        changes.update(p["changes"])
    return replace(state, **changes, last_occurred_at=when)


# --- activities ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivityState:
    """A call, meeting, email, task or deadline on a deal, after its events.

    A checklist item is an activity that came from a stage's checklist: it names the
    pipeline, stage and checklist version it came from."""

    id: str
    type: str
    subject: str
    due_at: datetime | None
    duration_minutes: int | None
    assignee: str
    note: str | None
    status: str
    created_at: datetime
    changed_at: datetime  # business time of its last change
    completed_at: datetime | None = None
    outcome: str | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    waived: bool = False
    checklist_pipeline_id: str | None = None
    checklist_stage_id: str | None = None
    checklist_version: int | None = None

    def is_overdue(self, now: datetime) -> bool:
        """Open and due before ``now``."""
        return self.status == OPEN and self.due_at is not None and self.due_at < now

    def is_checklist_item_of(self, pipeline_id: UUID | str, stage_id: str) -> bool:
        return self.checklist_stage_id == stage_id and self.checklist_pipeline_id == str(
            pipeline_id
        )


# Fields an ActivityUpdated may change.
ACTIVITY_UPDATABLE = frozenset(
    {"type", "subject", "due_at", "duration_minutes", "assignee", "note"}
)


def _moment(value: Any) -> Any:
    """A moment as the state keeps it (stored events may hold text)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def activities_after(
    activities: Mapping[str, ActivityState], event_type: str, p: Mapping[str, Any], when: datetime
) -> dict[str, ActivityState]:
    """The activities one of a deal's events creates or changes, by id (none for events
    that are not about activities, or that name an activity the deal does not have).

    ``deal_after`` folds a deal's activities through this; a projection that keeps one
    row per activity folds its rows through it too."""
    if event_type == E.ACTIVITY_SCHEDULED:
        new = _new_activity(
            p["activity_id"], p["activity_type"], p["subject"], p["due_at"], p["assignee"], when
        )
        return {
            new.id: replace(new, duration_minutes=p.get("duration_minutes"), note=p.get("note"))
        }
    if event_type == E.CHECKLIST_APPLIED:
        made = (
            _new_activity(
                i["activity_id"], i["type"], i["title"], i.get("due_at"), p["assignee"], when
            )
            for i in p["items"]
        )
        return {
            a.id: replace(
                a,
                checklist_pipeline_id=str(p["pipeline_id"]),
                checklist_stage_id=p["stage_id"],
                checklist_version=p["checklist_version"],
            )
            for a in made
        }
    if event_type == E.CHECKLIST_WAIVED:
        return {
            str(i): replace(
                activities[str(i)],
                status=CANCELLED,
                cancelled_at=when,
                cancel_reason=p["reason"],
                waived=True,
                changed_at=when,
            )
            for i in p["activity_ids"]
            if str(i) in activities
        }
    if event_type not in ACTIVITY_EVENTS:
        return {}
    activity_id = str(p["activity_id"])
    activity = activities.get(activity_id)
    if activity is None:
        return {}
    if event_type == E.ACTIVITY_UPDATED:
        changes = {
            k: _moment(v) if k == "due_at" else v
            for k, v in p["changes"].items()
            if k in ACTIVITY_UPDATABLE
        }
        return {activity_id: replace(activity, **changes, changed_at=when)}
    if event_type == E.ACTIVITY_COMPLETED:
        return {
            activity_id: replace(
                activity, status=DONE, completed_at=when, outcome=p.get("outcome"), changed_at=when
            )
        }
    # ActivityCancelled
    return {
        activity_id: replace(
            activity,
            status=CANCELLED,
            cancelled_at=when,
            cancel_reason=p.get("reason"),
            changed_at=when,
        )
    }


def _new_activity(
    activity_id: Any, kind: str, subject: str, due_at: Any, assignee: str, when: datetime
) -> ActivityState:
    return ActivityState(
        id=str(activity_id),
        type=kind,
        subject=subject,
        due_at=_moment(due_at),
        duration_minutes=None,
        assignee=assignee,
        note=None,
        status=OPEN,
        created_at=when,
        changed_at=when,
    )


def merge_activities(
    activities: tuple[ActivityState, ...], changed: Mapping[str, ActivityState]
) -> tuple[ActivityState, ...]:
    """``activities`` with the changed ones replaced and the new ones added at the end."""
    known = {a.id for a in activities}
    kept = tuple(changed.get(a.id, a) for a in activities)
    return kept + tuple(a for i, a in changed.items() if i not in known)


def activity_brief(activity: ActivityState) -> dict[str, Any]:
    """What a deal's answer shows of its next or last completed activity (JSON-ready)."""
    return {
        "id": activity.id,
        "type": activity.type,
        "subject": activity.subject,
        "due_at": iso(activity.due_at),
        "assignee": activity.assignee,
        "status": activity.status,
        "completed_at": iso(activity.completed_at),
    }


@dataclass(frozen=True, slots=True)
class ActivitySummary:
    """A deal's activities in brief: how many are open, when the open ones are due, the
    next one (soonest due; one without a due date only when none has one) and the last
    completed one. Overdue is counted against a clock, at the moment of asking."""

    open_count: int = 0
    open_due: tuple[datetime, ...] = ()  # due times of the open activities, sorted
    next: Mapping[str, Any] | None = None
    last_completed: Mapping[str, Any] | None = None

    def overdue_count(self, now: datetime) -> int:
        return bisect_left(self.open_due, now)

    def next_view(self, now: datetime) -> dict[str, Any] | None:
        """The next activity as answers show it, with whether it is overdue at ``now``."""
        if self.next is None:
            return None
        return {**self.next, "overdue": self.overdue_count(now) > 0}


def summarize(activities: Iterable[ActivityState]) -> ActivitySummary:
    """The :class:`ActivitySummary` of a deal's activities (the order they come in does
    not matter: ties go to the earlier created, then the smaller id)."""
    open_ones = [a for a in activities if a.status == OPEN]
    done = [a for a in activities if a.status == DONE and a.completed_at is not None]
    dated = sorted(
        (a for a in open_ones if a.due_at is not None),
        key=lambda a: (a.due_at, a.created_at, a.id),
    )
    undated = sorted((a for a in open_ones if a.due_at is None), key=lambda a: (a.created_at, a.id))
    following = dated[0] if dated else (undated[0] if undated else None)
    last = max(done, key=lambda a: (a.completed_at, a.created_at, a.id), default=None)
    return ActivitySummary(
        open_count=len(open_ones),
        open_due=tuple(a.due_at for a in dated if a.due_at is not None),
        next=activity_brief(following) if following else None,
        last_completed=activity_brief(last) if last else None,
    )


def checklist_due(entered_at: datetime, item: ChecklistItem) -> datetime | None:
    """When a checklist item that became an activity at ``entered_at`` is due."""
    if item.due_in_days is None:
        return None
    return entered_at + timedelta(days=item.due_in_days)


def iso(moment: Any) -> str | None:
    """ISO 8601 text of a moment or date (None stays None)."""
    return moment.isoformat() if moment is not None else None


# --- deals ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DealState:
    """A deal after its events."""

    pipeline_id: UUID
    title: str
    value: Decimal
    owner: str
    stage_id: str
    status: str
    expected_close_date: date | None
    external_id: str | None
    account: str | None
    product: str | None
    probability_override: int | None
    lost_reason: str | None
    lost_note: str | None
    created_at: datetime
    closed_at: datetime | None
    stage_entered_at: datetime
    # the last sales activity (any event but a snooze), and the last event of any kind
    last_activity_at: datetime
    last_occurred_at: datetime
    snoozed_until: datetime | None
    snooze_reason: str | None
    # every activity the deal has had, in the order they were created
    activities: tuple[ActivityState, ...] = field(default=())


# Fields a DealUpdated may change.
UPDATABLE = frozenset(
    {"title", "value", "expected_close_date", "account", "product", "probability_override"}
)


def _field(key: str, value: Any) -> Any:
    """A changed field's value as the state keeps it (stored events hold text for some)."""
    if key == "value" and value is not None and type(value) is not Decimal:
        return Decimal(value)
    if key == "expected_close_date" and isinstance(value, str):
        return date.fromisoformat(value)
    return value


def deal_after(
    state: DealState | None, event_type: str, p: Mapping[str, Any], when: datetime
) -> DealState | None:
    """The deal after one of its events (None: no deal yet and not its creation)."""
    if event_type == E.DEAL_CREATED:
        pipeline_id = p["pipeline_id"]
        return DealState(
            pipeline_id=pipeline_id if type(pipeline_id) is UUID else UUID(str(pipeline_id)),
            title=p["title"],
            value=_field("value", p["value"]),
            owner=p["owner"],
            stage_id=p["stage_id"],
            status=OPEN,
            expected_close_date=_field("expected_close_date", p.get("expected_close_date")),
            external_id=p.get("external_id"),
            account=p["account"],
            product=p["product"],
            probability_override=None,
            lost_reason=None,
            lost_note=None,
            created_at=when,
            closed_at=None,
            stage_entered_at=when,
            last_activity_at=when,
            last_occurred_at=when,
            snoozed_until=None,
            snooze_reason=None,
        )
    if state is None:
        return None
    changes: dict[str, Any] = {"last_occurred_at": when}
    if event_type not in NOT_ACTIVITY:
        changes["last_activity_at"] = when
    if event_type == E.STAGE_ADVANCED:
        changes.update(stage_id=p["to_stage_id"], stage_entered_at=when)
    elif event_type == E.DEAL_MOVED:
        pipeline_id = p["to_pipeline_id"]
        changes.update(
            pipeline_id=pipeline_id if type(pipeline_id) is UUID else UUID(str(pipeline_id)),
            stage_id=p["to_stage_id"],
            stage_entered_at=when,
        )
    elif event_type == E.DEAL_WON:
        changes.update(status=WON, closed_at=when)
    elif event_type == E.DEAL_LOST:
        changes.update(status=LOST, closed_at=when, lost_reason=p["reason"], lost_note=p["note"])
    elif event_type == E.DEAL_REOPENED:
        changes.update(
            status=OPEN,
            stage_id=p["stage_id"],
            stage_entered_at=when,
            closed_at=None,
            lost_reason=None,
            lost_note=None,
        )
    elif event_type == E.DEAL_UPDATED:
        changes.update({k: _field(k, v) for k, v in p["changes"].items() if k in UPDATABLE})
    elif event_type == E.OWNER_CHANGED:
        changes["owner"] = p["to_owner"]
    elif event_type == E.DEAL_SNOOZED:
        changes.update(snoozed_until=p["until"], snooze_reason=p["reason"])
    elif event_type in ACTIVITY_EVENTS:
        known = {a.id: a for a in state.activities}
        changed = activities_after(known, event_type, p, when)
        if changed:
            changes["activities"] = merge_activities(state.activities, changed)
    return replace(state, **changes)


# --- derived figures ----------------------------------------------------------------------


def probability(status: str, override: int | None, stage_probability: int) -> int:
    """Won deals count fully, lost ones not at all; open ones by override, else stage."""
    if status == WON:
        return 100
    if status == LOST:
        return 0
    return override if override is not None else stage_probability


def weighted_value(value: Decimal, chance: int) -> Decimal:
    """``value`` times its win probability, to four places (banker's rounding)."""
    return (value * chance / 100).quantize(WEIGHTED_QUANTUM, rounding=ROUND_HALF_EVEN)


SECONDS_PER_DAY = 86400.0


def days_between(start: datetime, end: datetime) -> float:
    """``end - start`` in days, as a float."""
    return (end - start).total_seconds() / SECONDS_PER_DAY


@dataclass(frozen=True, slots=True)
class Staleness:
    """Whether an open deal is stale at a moment, why, and by how many days."""

    stale: bool
    reasons: tuple[str, ...]
    days_stale: float
    snoozed: bool

    @classmethod
    def fresh(cls) -> Staleness:
        return cls(False, (), 0.0, False)


def staleness(
    *,
    status: str,
    rotting_days: int | None,
    stale_after_days: int | None,
    stage_entered_at: datetime,
    last_activity_at: datetime,
    snoozed_until: datetime | None,
    now: datetime,
) -> Staleness:
    """An open deal is stale when it has been in its stage longer than the stage's
    ``rotting_days`` ("rotting_in_stage"), or without sales activity longer than the
    pipeline's ``stale_after_days`` ("no_activity"); ``days_stale`` is how far past the
    larger threshold it is. A snooze until a later moment hides it (it stays stale)."""
    if status != OPEN:
        return Staleness.fresh()
    reasons: list[str] = []
    over = 0.0
    in_stage = days_between(stage_entered_at, now)
    if rotting_days and in_stage > rotting_days:
        reasons.append("rotting_in_stage")
        over = max(over, in_stage - rotting_days)
    idle = days_between(last_activity_at, now)
    if stale_after_days and idle > stale_after_days:
        reasons.append("no_activity")
        over = max(over, idle - stale_after_days)
    snoozed = snoozed_until is not None and snoozed_until > now
    return Staleness(bool(reasons) and not snoozed, tuple(reasons), over, snoozed)
