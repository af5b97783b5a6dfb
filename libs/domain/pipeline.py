"""The Pipeline aggregate: a sales process with ordered stages and lost reasons."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from libs.domain.activities import check_checklist
from libs.domain.errors import (
    InvalidInput,
    InvalidPipeline,
    NothingToChange,
    RuleViolation,
    StageHasOpenDeals,
    UnknownLostReason,
    UnknownStage,
)
from libs.domain.events import EventType as E
from libs.domain.state import PipelineState, pipeline_after
from libs.domain.state import Stage as Stage
from libs.domain.times import check_occurred_at
from libs.domain.upcasting import versioned_events
from libs.domain.values import (
    MAX_NAME_LENGTH,
    UNSET,
    check_currency,
    check_text,
    slugify,
)

MAX_STAGES = 30
MAX_LOST_REASONS = 50
# Fields a stage may require before a deal enters it.
REQUIREMENTS = ("value", "expected_close_date", "note")

DEFAULT_STAGES: tuple[tuple[str, int], ...] = (
    ("Deal created", 10),
    ("Demo or meeting", 25),
    ("Quote sent", 50),
    ("Negotiation", 75),
)
DEFAULT_LOST_REASONS: tuple[str, ...] = (
    "Price",
    "Lost to competitor",
    "No budget",
    "No decision",
    "Timing",
    "Product fit",
    "Other",
)


def default_template() -> dict[str, Any]:
    """Stages and lost reasons of a typical B2B sales process."""
    return {
        "stages": [{"name": name, "probability": p} for name, p in DEFAULT_STAGES],
        "lost_reasons": list(DEFAULT_LOST_REASONS),
    }


def check_probability(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise InvalidPipeline(f"{field} must be a whole number from 0 to 100", field=field)
    return value


def check_rotting_days(value: Any, field: str) -> int | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3650
    ):
        raise InvalidPipeline(f"{field} must be a whole number of days from 1 to 3650", field=field)
    return value


def check_requires(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or any(v not in REQUIREMENTS for v in value):
        raise InvalidPipeline(f"{field} must be a list of: {', '.join(REQUIREMENTS)}", field=field)
    return tuple(dict.fromkeys(value))


def _check_stage(
    raw: Mapping[str, Any], index: int, taken_ids: set[str], prefix: str | None = None
) -> Stage:
    """Check one stage; error fields start with ``prefix`` (default ``stages[index].``)."""
    where = f"stages[{index}]." if prefix is None else prefix
    if not isinstance(raw, Mapping):
        raise InvalidPipeline(f"{where[:-1]} must be an object", field=where[:-1])
    name = check_text(raw.get("name"), f"{where}name", max_length=MAX_NAME_LENGTH)
    probability = check_probability(raw.get("probability"), f"{where}probability")
    rotting = check_rotting_days(raw.get("rotting_days"), f"{where}rotting_days")
    requires = check_requires(raw.get("requires"), f"{where}requires")
    checklist = check_checklist(raw.get("checklist"), f"{where}checklist")
    stage_id = raw.get("id") or slugify(name)
    if not isinstance(stage_id, str) or slugify(stage_id) != stage_id:
        raise InvalidPipeline(
            f"{where}id must be lower-case letters, digits and dashes",
            field=f"{where}id",
        )
    if raw.get("id") and stage_id in taken_ids:
        raise InvalidPipeline(f"{where}id {stage_id!r} is used twice", field=f"{where}id")
    base, n = stage_id, 2
    while stage_id in taken_ids:
        stage_id, n = f"{base}-{n}", n + 1
    taken_ids.add(stage_id)
    return Stage(stage_id, name, probability, rotting, requires, checklist, 1 if checklist else 0)


def check_stages(raw_stages: Any) -> list[Stage]:
    """Validate a list of stage definitions: non-empty, unique names, sane numbers."""
    if not isinstance(raw_stages, list) or not raw_stages:
        raise InvalidPipeline("stages must be a non-empty list", field="stages")
    if len(raw_stages) > MAX_STAGES:
        raise InvalidPipeline(f"a pipeline has at most {MAX_STAGES} stages", field="stages")
    taken: set[str] = set()
    stages = [_check_stage(raw, i, taken) for i, raw in enumerate(raw_stages)]
    seen: dict[str, int] = {}
    for i, stage in enumerate(stages):
        key = stage.name.casefold()
        if key in seen:
            raise InvalidPipeline(
                f"stage name {stage.name!r} is used twice (stages[{seen[key]}] and stages[{i}])",
                field=f"stages[{i}].name",
            )
        seen[key] = i
    return stages


def check_lost_reasons(raw_reasons: Any) -> list[str]:
    """Validate the list of reasons a deal can be lost for: non-empty and unique."""
    if not isinstance(raw_reasons, list) or not raw_reasons:
        raise InvalidPipeline("lost_reasons must be a non-empty list", field="lost_reasons")
    if len(raw_reasons) > MAX_LOST_REASONS:
        raise InvalidPipeline(
            f"a pipeline has at most {MAX_LOST_REASONS} lost reasons", field="lost_reasons"
        )
    reasons: list[str] = []
    for i, raw in enumerate(raw_reasons):
        reason = check_text(raw, f"lost_reasons[{i}]", max_length=MAX_NAME_LENGTH)
        if reason.casefold() in {r.casefold() for r in reasons}:
            raise InvalidPipeline(
                f"lost reason {reason!r} is listed twice", field=f"lost_reasons[{i}]"
            )
        reasons.append(reason)
    return reasons


@versioned_events
class Pipeline(Aggregate):
    """A sales process: a currency, ordered stages, lost reasons and the rules deals obey.

    Its state (:class:`PipelineState`) is the fold of its events (``libs/domain/state.py``);
    the state's fields and questions read as the pipeline's (``pipeline.stages``,
    ``pipeline.stage_name(id)``).
    """

    state: PipelineState

    def _fold(self, event_type: str, payload: Mapping[str, Any]) -> None:
        """Apply one of the pipeline's events to its state, through the one fold."""
        before = self.__dict__.get("state")
        state = pipeline_after(before, event_type, payload, payload["occurred_at"])
        assert state is not None, "a pipeline's first event is its definition"
        self.state = state

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get("state")
        if state is None:
            raise AttributeError(name)
        return getattr(state, name)

    @event(E.PIPELINE_DEFINED)
    def __init__(
        self,
        name: str,
        currency: str,
        stages: list[dict[str, Any]],
        lost_reasons: list[str],
        actor: str,
        occurred_at: datetime,
        allow_skipping_stages: bool = True,
        allow_moving_back: bool = True,
        stale_after_days: int | None = None,
        id: UUID | None = None,  # the library's way to choose the id; not in the event
        require_checklist_before_leaving: bool = False,
    ) -> None:
        self._fold(E.PIPELINE_DEFINED, locals())

    @classmethod
    def define(
        cls,
        *,
        name: Any,
        currency: Any,
        stages: Any,
        lost_reasons: Any,
        actor: str,
        occurred_at: datetime,
        now: datetime,
        allow_skipping_stages: Any = True,
        allow_moving_back: Any = True,
        stale_after_days: Any = None,
        require_checklist_before_leaving: Any = False,
        pipeline_id: UUID | None = None,
    ) -> Pipeline:
        """Check a definition and create the pipeline from it.

        ``pipeline_id`` chooses the new pipeline's id (generated data keeps its ids from
        run to run); without it the id is random.
        """
        checked_name = check_text(name, "name", max_length=MAX_NAME_LENGTH)
        checked_currency = check_currency(currency)
        checked_stages = check_stages(stages)
        checked_reasons = check_lost_reasons(lost_reasons)
        check_occurred_at(occurred_at, now=now, previous=None)
        return cls(
            name=checked_name,
            currency=checked_currency,
            stages=[s.as_dict() for s in checked_stages],
            lost_reasons=checked_reasons,
            actor=actor,
            occurred_at=occurred_at,
            allow_skipping_stages=_check_flag(allow_skipping_stages, "allow_skipping_stages"),
            allow_moving_back=_check_flag(allow_moving_back, "allow_moving_back"),
            stale_after_days=check_rotting_days(stale_after_days, "stale_after_days"),
            id=pipeline_id,
            require_checklist_before_leaving=_check_flag(
                require_checklist_before_leaving, "require_checklist_before_leaving"
            ),
        )

    # --- queries used by the Deal's rules -------------------------------------------

    @property
    def first_stage(self) -> Stage:
        return self.state.stages[0]

    def stage(self, ref: Any) -> Stage:
        """Find a current stage by id, or by name ignoring case; raise UnknownStage otherwise."""
        if isinstance(ref, str):
            for stage in self.state.stages:
                if stage.id == ref:
                    return stage
            for stage in self.state.stages:
                if stage.name.casefold() == ref.strip().casefold():
                    return stage
        known = ", ".join(repr(s.name) for s in self.state.stages)
        removed = [s for s in self.state.removed_stages if ref in (s.id, s.name)]
        why = " (it was removed)" if removed else ""
        raise UnknownStage(
            f"stage {ref!r} is not in pipeline {self.state.name!r}{why} (stages: {known})",
            details={"stages": [s.id for s in self.state.stages]},
        )

    def check_lost_reason(self, reason: Any) -> str:
        """Return the pipeline's spelling of ``reason``; raise if it is not an active one."""
        if isinstance(reason, str):
            for known in self.state.lost_reasons:
                if known.casefold() == reason.strip().casefold():
                    return known
            for retired in self.state.retired_lost_reasons:
                if retired.casefold() == reason.strip().casefold():
                    raise UnknownLostReason(
                        f"lost reason {retired!r} is retired and cannot be chosen for new losses",
                        details={"lost_reasons": list(self.state.lost_reasons)},
                    )
        raise UnknownLostReason(
            f"reason {reason!r} is not one of the pipeline's lost reasons; "
            "put free text in the note",
            details={"lost_reasons": list(self.state.lost_reasons)},
        )

    def check_when(self, occurred_at: datetime, now: datetime) -> None:
        check_occurred_at(occurred_at, now=now, previous=self.state.last_occurred_at)

    # --- changes ----------------------------------------------------------------------

    def add_stage(
        self,
        *,
        name: Any,
        probability: Any,
        rotting_days: Any = None,
        requires: Any = None,
        checklist: Any = None,
        index: Any = None,
        stage_id: Any = None,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> Stage:
        """Insert a stage at ``index`` (default: last); its id must be new to this pipeline."""
        if len(self.state.stages) >= MAX_STAGES:
            raise InvalidPipeline(f"a pipeline has at most {MAX_STAGES} stages", field="stages")
        if index is None:
            index = len(self.state.stages)
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index <= len(self.state.stages)
        ):
            raise InvalidInput(
                f"position must be a whole number from 0 to {len(self.state.stages)}",
                field="position",
            )
        taken = {s.id for s in (*self.state.stages, *self.state.removed_stages)}
        raw = {
            "name": name,
            "probability": probability,
            "rotting_days": rotting_days,
            "requires": requires,
            "checklist": checklist,
            "id": stage_id,
        }
        stage = _check_stage(raw, index, taken, prefix="")  # fields of the request body
        self._check_unique_name(stage.name, except_id=None)
        self.check_when(occurred_at, now)
        self._stage_added(stage=stage.as_dict(), index=index, actor=actor, occurred_at=occurred_at)
        return stage

    @event(E.STAGE_ADDED)
    def _stage_added(
        self, stage: dict[str, Any], index: int, actor: str, occurred_at: datetime
    ) -> None:
        self._fold(E.STAGE_ADDED, locals())

    def rename_stage(
        self, stage: Any, *, name: Any, actor: str, occurred_at: datetime, now: datetime
    ) -> None:
        target = self.stage(stage)
        new_name = check_text(name, "name", max_length=MAX_NAME_LENGTH)
        if new_name == target.name:
            raise NothingToChange(f"stage is already named {new_name!r}", field="name")
        self._check_unique_name(new_name, except_id=target.id)
        self.check_when(occurred_at, now)
        self._stage_renamed(
            stage_id=target.id,
            from_name=target.name,
            to_name=new_name,
            actor=actor,
            occurred_at=occurred_at,
        )

    @event(E.STAGE_RENAMED)
    def _stage_renamed(
        self, stage_id: str, from_name: str, to_name: str, actor: str, occurred_at: datetime
    ) -> None:
        self._fold(E.STAGE_RENAMED, locals())

    def update_stage(
        self,
        stage: Any,
        *,
        probability: Any = UNSET,
        rotting_days: Any = UNSET,
        requires: Any = UNSET,
        checklist: Any = UNSET,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        """Change a stage's win probability, rotting threshold, entry requirements or
        checklist (a new checklist gets the next version; deals that entered before keep
        the items they got)."""
        target = self.stage(stage)
        changes: dict[str, Any] = {}
        if probability is not UNSET:
            changes["probability"] = check_probability(probability, "probability")
        if rotting_days is not UNSET:
            changes["rotting_days"] = check_rotting_days(rotting_days, "rotting_days")
        if requires is not UNSET:
            changes["requires"] = list(check_requires(requires, "requires"))
        if checklist is not UNSET:
            items = check_checklist(checklist, "checklist")
            changes["checklist"] = [item.as_dict() for item in items]
        current = target.as_dict()
        changes = {k: v for k, v in changes.items() if current[k] != v}
        if "checklist" in changes:
            changes["checklist_version"] = target.checklist_version + 1
        if not changes:
            raise NothingToChange("the update changes nothing", field="body")
        self.check_when(occurred_at, now)
        self._stage_updated(
            stage_id=target.id,
            changes=changes,
            previous={k: current[k] for k in changes},
            actor=actor,
            occurred_at=occurred_at,
        )

    @event(E.STAGE_UPDATED)
    def _stage_updated(
        self,
        stage_id: str,
        changes: dict[str, Any],
        previous: dict[str, Any],
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self._fold(E.STAGE_UPDATED, locals())

    def reorder_stages(
        self, order: Any, *, actor: str, occurred_at: datetime, now: datetime
    ) -> None:
        """Put the current stages in a new order; ``order`` lists every stage id once."""
        current = [s.id for s in self.state.stages]
        if not isinstance(order, list) or sorted(map(str, order)) != sorted(current):
            raise InvalidInput(
                f"stage_order must list each of the current stage ids once: {current}",
                field="stage_order",
            )
        if order == current:
            raise NothingToChange("the stages are already in that order", field="stage_order")
        self.check_when(occurred_at, now)
        self._stages_reordered(
            order=list(order), previous_order=current, actor=actor, occurred_at=occurred_at
        )

    @event(E.STAGES_REORDERED)
    def _stages_reordered(
        self, order: list[str], previous_order: list[str], actor: str, occurred_at: datetime
    ) -> None:
        self._fold(E.STAGES_REORDERED, locals())

    def remove_stage(
        self,
        stage: Any,
        *,
        open_deals: int,
        move_open_deals_to: Any = None,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> Stage | None:
        """Retire a stage; its open deals must be moved to another stage in the same change.

        Returns the stage the open deals move to (None when there were none to move).
        """
        target = self.stage(stage)
        if len(self.state.stages) == 1:
            raise RuleViolation("the last stage of a pipeline cannot be removed")
        destination = None
        if move_open_deals_to is not None:
            try:
                destination = self.stage(move_open_deals_to)
            except UnknownStage as exc:
                details = {k: v for k, v in exc.details.items() if k != "field"}
                raise UnknownStage(
                    exc.message, field="move_open_deals_to", details=details
                ) from None
            if destination.id == target.id:
                raise InvalidInput(
                    "move_open_deals_to must be another stage", field="move_open_deals_to"
                )
        if open_deals and destination is None:
            raise StageHasOpenDeals(
                f"stage {target.name!r} has {open_deals} open deal(s); name a "
                "move_open_deals_to stage to move them as part of the removal",
                details={"open_deals": open_deals},
            )
        self.check_when(occurred_at, now)
        self._stage_removed(
            stage_id=target.id,
            stage_name=target.name,
            move_open_deals_to=destination.id if destination else None,
            moved_deals=open_deals,
            actor=actor,
            occurred_at=occurred_at,
        )
        return destination if open_deals else None

    @event(E.STAGE_REMOVED)
    def _stage_removed(
        self,
        stage_id: str,
        stage_name: str,
        move_open_deals_to: str | None,
        moved_deals: int,
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self._fold(E.STAGE_REMOVED, locals())

    def add_lost_reason(
        self, reason: Any, *, actor: str, occurred_at: datetime, now: datetime
    ) -> None:
        """Add a lost reason, or bring a retired one back."""
        text = check_text(reason, "reason", max_length=MAX_NAME_LENGTH)
        if any(r.casefold() == text.casefold() for r in self.state.lost_reasons):
            raise NothingToChange(f"lost reason {text!r} is already listed", field="reason")
        if len(self.state.lost_reasons) >= MAX_LOST_REASONS:
            raise InvalidPipeline(
                f"a pipeline has at most {MAX_LOST_REASONS} lost reasons", field="reason"
            )
        for retired in self.state.retired_lost_reasons:
            if retired.casefold() == text.casefold():
                text = retired
        self.check_when(occurred_at, now)
        self._lost_reason_added(reason=text, actor=actor, occurred_at=occurred_at)

    @event(E.LOST_REASON_ADDED)
    def _lost_reason_added(self, reason: str, actor: str, occurred_at: datetime) -> None:
        self._fold(E.LOST_REASON_ADDED, locals())

    def retire_lost_reason(
        self, reason: Any, *, actor: str, occurred_at: datetime, now: datetime
    ) -> None:
        """Stop offering a lost reason; past losses keep it."""
        known = self.check_lost_reason(reason)
        if len(self.state.lost_reasons) == 1:
            raise RuleViolation("the last active lost reason cannot be retired")
        self.check_when(occurred_at, now)
        self._lost_reason_retired(reason=known, actor=actor, occurred_at=occurred_at)

    @event(E.LOST_REASON_RETIRED)
    def _lost_reason_retired(self, reason: str, actor: str, occurred_at: datetime) -> None:
        self._fold(E.LOST_REASON_RETIRED, locals())

    def rename(self, name: Any, *, actor: str, occurred_at: datetime, now: datetime) -> None:
        new_name = check_text(name, "name", max_length=MAX_NAME_LENGTH)
        if new_name == self.state.name:
            raise NothingToChange(f"pipeline is already named {new_name!r}", field="name")
        self.check_when(occurred_at, now)
        self._renamed(
            from_name=self.state.name, to_name=new_name, actor=actor, occurred_at=occurred_at
        )

    @event(E.PIPELINE_RENAMED)
    def _renamed(self, from_name: str, to_name: str, actor: str, occurred_at: datetime) -> None:
        self._fold(E.PIPELINE_RENAMED, locals())

    def change_rules(
        self,
        *,
        allow_skipping_stages: Any = UNSET,
        allow_moving_back: Any = UNSET,
        stale_after_days: Any = UNSET,
        require_checklist_before_leaving: Any = UNSET,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        changes: dict[str, Any] = {}
        if allow_skipping_stages is not UNSET:
            changes["allow_skipping_stages"] = _check_flag(
                allow_skipping_stages, "allow_skipping_stages"
            )
        if allow_moving_back is not UNSET:
            changes["allow_moving_back"] = _check_flag(allow_moving_back, "allow_moving_back")
        if stale_after_days is not UNSET:
            changes["stale_after_days"] = check_rotting_days(stale_after_days, "stale_after_days")
        if require_checklist_before_leaving is not UNSET:
            changes["require_checklist_before_leaving"] = _check_flag(
                require_checklist_before_leaving, "require_checklist_before_leaving"
            )
        changes = {k: v for k, v in changes.items() if getattr(self, k) != v}
        if not changes:
            raise NothingToChange("the update changes nothing", field="body")
        self.check_when(occurred_at, now)
        self._rules_changed(
            changes=changes,
            previous={k: getattr(self, k) for k in changes},
            actor=actor,
            occurred_at=occurred_at,
        )

    @event(E.PIPELINE_RULES_CHANGED)
    def _rules_changed(
        self, changes: dict[str, Any], previous: dict[str, Any], actor: str, occurred_at: datetime
    ) -> None:
        self._fold(E.PIPELINE_RULES_CHANGED, locals())

    def _check_unique_name(self, name: str, except_id: str | None) -> None:
        for s in self.state.stages:
            if s.id != except_id and s.name.casefold() == name.casefold():
                raise InvalidPipeline(f"stage name {name!r} is already used", field="name")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.state.name,
            "currency": self.state.currency,
            "stages": [s.as_dict() for s in self.state.stages],
            "removed_stages": [s.as_dict() for s in self.state.removed_stages],
            "lost_reasons": list(self.state.lost_reasons),
            "retired_lost_reasons": list(self.state.retired_lost_reasons),
            "allow_skipping_stages": self.state.allow_skipping_stages,
            "allow_moving_back": self.state.allow_moving_back,
            "stale_after_days": self.state.stale_after_days,
            "require_checklist_before_leaving": self.state.require_checklist_before_leaving,
            "version": self.version,
            "created_at": self.state.defined_at.isoformat(),
        }


def _check_flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be true or false", field=field)
    return value
