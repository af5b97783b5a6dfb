"""The one fold of deal and pipeline state from their events, and the figures derived from it.

``deal_after`` and ``pipeline_after`` are pure: the state before (None before the first
event), an event's type, its payload and its business time in, the state after out. The
aggregates apply their own events through them; every projector that needs current
state (the board, the history behind reports and ``as_of``) folds recorded events
through them too, so live, historical and write-side state cannot disagree.

The derived figures (probability, weighted value, staleness) are defined here once as
well; the read side's SQL that counts stale deals says the same rule in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from uuid import UUID

from libs.domain.events import NOT_ACTIVITY, EventType

E = EventType
OPEN, WON, LOST = "open", "won", "lost"
WEIGHTED_QUANTUM = Decimal("0.0001")

# --- pipelines --------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline; its id stays the same when the stage is renamed."""

    id: str
    name: str
    probability: int
    rotting_days: int | None = None
    requires: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stage:
        return cls(
            id=data["id"],
            name=data["name"],
            probability=data["probability"],
            rotting_days=data.get("rotting_days"),
            requires=tuple(data.get("requires") or ()),
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["requires"] = list(self.requires)
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
            allow_skipping_stages=p.get("allow_skipping_stages", True),
            allow_moving_back=p.get("allow_moving_back", True),
            stale_after_days=p.get("stale_after_days"),
            created_by=p.get("actor"),
            defined_at=when,
            last_occurred_at=when,
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
            account=p.get("account"),
            product=p.get("product"),
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
