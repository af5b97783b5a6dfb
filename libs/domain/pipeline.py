"""The Pipeline aggregate: a sales process with ordered stages and lost reasons."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

from libs.domain.errors import InvalidPipeline, UnknownLostReason, UnknownStage
from libs.domain.values import (
    MAX_NAME_LENGTH,
    check_currency,
    check_occurred_at,
    check_text,
    slugify,
)

MAX_STAGES = 30
MAX_LOST_REASONS = 50

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


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline; its id stays the same when the stage is renamed."""

    id: str
    name: str
    probability: int
    rotting_days: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_template() -> dict[str, Any]:
    """Stages and lost reasons of a typical B2B sales process."""
    return {
        "stages": [{"name": name, "probability": p} for name, p in DEFAULT_STAGES],
        "lost_reasons": list(DEFAULT_LOST_REASONS),
    }


def _check_stage(raw: Mapping[str, Any], index: int, taken_ids: set[str]) -> Stage:
    where = f"stages[{index}]"
    if not isinstance(raw, Mapping):
        raise InvalidPipeline(f"{where} must be an object", field=where)
    name = check_text(raw.get("name"), f"{where}.name", max_length=MAX_NAME_LENGTH)
    probability = raw.get("probability")
    if (
        isinstance(probability, bool)
        or not isinstance(probability, int)
        or not (0 <= probability <= 100)
    ):
        raise InvalidPipeline(
            f"{where}.probability must be a whole number from 0 to 100",
            field=f"{where}.probability",
        )
    rotting = raw.get("rotting_days")
    if rotting is not None and (
        isinstance(rotting, bool) or not isinstance(rotting, int) or not 1 <= rotting <= 3650
    ):
        raise InvalidPipeline(
            f"{where}.rotting_days must be a whole number of days from 1 to 3650",
            field=f"{where}.rotting_days",
        )
    stage_id = raw.get("id") or slugify(name)
    if not isinstance(stage_id, str) or slugify(stage_id) != stage_id:
        raise InvalidPipeline(
            f"{where}.id must be lower-case letters, digits and dashes",
            field=f"{where}.id",
        )
    if raw.get("id") and stage_id in taken_ids:
        raise InvalidPipeline(f"{where}.id {stage_id!r} is used twice", field=f"{where}.id")
    base, n = stage_id, 2
    while stage_id in taken_ids:
        stage_id, n = f"{base}-{n}", n + 1
    taken_ids.add(stage_id)
    return Stage(id=stage_id, name=name, probability=probability, rotting_days=rotting)


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


class Pipeline(Aggregate):
    """A sales process: a currency, ordered stages, and the reasons deals are lost."""

    @event("PipelineDefined")
    def __init__(
        self,
        name: str,
        currency: str,
        stages: list[dict[str, Any]],
        lost_reasons: list[str],
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self.name = name
        self.currency = currency
        self.stages = [Stage(**s) for s in stages]
        self.lost_reasons = list(lost_reasons)
        self.created_by = actor
        self.last_occurred_at = occurred_at

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
    ) -> Pipeline:
        """Check a definition and create the pipeline from it."""
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
        )

    # --- queries used by the Deal's rules -------------------------------------------

    @property
    def first_stage(self) -> Stage:
        return self.stages[0]

    def stage(self, ref: Any) -> Stage:
        """Find a stage by id, or by name ignoring case; raise UnknownStage otherwise."""
        if isinstance(ref, str):
            for stage in self.stages:
                if stage.id == ref:
                    return stage
            for stage in self.stages:
                if stage.name.casefold() == ref.strip().casefold():
                    return stage
        known = ", ".join(repr(s.name) for s in self.stages)
        raise UnknownStage(
            f"stage {ref!r} is not in pipeline {self.name!r} (stages: {known})",
            details={"stages": [s.id for s in self.stages]},
        )

    def position_of(self, stage_id: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.id == stage_id:
                return i
        return -1

    def stage_name(self, stage_id: str) -> str:
        for stage in self.stages:
            if stage.id == stage_id:
                return stage.name
        return stage_id

    def check_lost_reason(self, reason: Any) -> str:
        """Return the pipeline's spelling of ``reason``; raise if it is not on the list."""
        if isinstance(reason, str):
            for known in self.lost_reasons:
                if known.casefold() == reason.strip().casefold():
                    return known
        raise UnknownLostReason(
            f"reason {reason!r} is not one of the pipeline's lost reasons; "
            "put free text in the note",
            details={"lost_reasons": list(self.lost_reasons)},
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "currency": self.currency,
            "stages": [s.as_dict() for s in self.stages],
            "lost_reasons": list(self.lost_reasons),
            "version": self.version,
            "created_at": self.created_on.isoformat(),
        }
