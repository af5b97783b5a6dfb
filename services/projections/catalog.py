"""Every projection the service keeps, by name."""

from __future__ import annotations

from collections.abc import Sequence

from services.projections.analytics.projector import Analytics
from services.projections.audit_history.projector import AuditHistory
from services.projections.automations.projector import Automations
from services.projections.base import Projection
from services.projections.current_pipeline.projector import CurrentPipeline
from services.projections.stage_durations.projector import StageDurations


def all_projections() -> list[Projection]:
    """Every read model, in the order they are built."""
    return [CurrentPipeline(), StageDurations(), AuditHistory(), Analytics(), Automations()]


def projections_named(names: Sequence[str]) -> list[Projection]:
    known = {p.name: p for p in all_projections()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown projection(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names] if names else list(known.values())
