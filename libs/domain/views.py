"""A deal's public shape: one rendering of a deal's state, for commands, queries and as-of.

The answer of a command (from the aggregate), a query (from the read model) and a
question about a past moment (from the history) all come from :func:`deal_view`, so a
deal looks the same wherever it is read. Moments are ISO 8601, money is a decimal string.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from libs.domain.state import (
    OPEN,
    ActivityState,
    ActivitySummary,
    DealState,
    PipelineState,
    iso,
    probability,
    staleness,
    summarize,
    weighted_value,
)
from libs.domain.values import format_money

# The fields a state as of a past moment knows (the history keeps no more).
AS_OF_FIELDS = (
    "id",
    "pipeline_id",
    "stage",
    "status",
    "value",
    "owner",
    "probability",
    "weighted_value",
    "expected_close_date",
    "created_at",
)


def deal_view(
    deal_id: str,
    state: DealState,
    pipeline: PipelineState | None,
    *,
    version: int,
    now: datetime,
    updated_at: datetime | None = None,
    activities: ActivitySummary | None = None,
) -> dict[str, Any]:
    """The deal as the API shows it: stage names as they are in ``pipeline``, probability
    and weighted value, time in the current stage and staleness measured at ``now``, and
    its activities in brief (``activities``, or the summary of ``state.activities``),
    overdue ones counted at ``now``."""
    summary = summarize(state.activities) if activities is None else activities
    stage_probability = pipeline.probability_of(state.stage_id) if pipeline else 0
    chance = probability(state.status, state.probability_override, stage_probability)
    stage = None
    if pipeline:
        stage = next((s for s in pipeline.stages if s.id == state.stage_id), None)
    stale = staleness(
        status=state.status if pipeline else "",
        rotting_days=stage.rotting_days if stage else None,
        stale_after_days=pipeline.stale_after_days if pipeline else None,
        stage_entered_at=state.stage_entered_at,
        last_activity_at=state.last_activity_at,
        snoozed_until=state.snoozed_until,
        now=now,
    )
    is_open = state.status == OPEN
    return {
        "id": deal_id,
        "pipeline_id": str(state.pipeline_id),
        "title": state.title,
        "value": format_money(state.value),
        "currency": pipeline.currency if pipeline else None,
        "owner": state.owner,
        "stage": {
            "id": state.stage_id,
            "name": pipeline.stage_name(state.stage_id) if pipeline else state.stage_id,
        },
        "status": state.status,
        "probability": chance,
        "probability_override": state.probability_override,
        "weighted_value": format_money(weighted_value(state.value, chance)),
        "expected_close_date": iso(state.expected_close_date),
        "external_id": state.external_id,
        "account": state.account,
        "product": state.product,
        "lost_reason": state.lost_reason,
        "lost_note": state.lost_note,
        "created_at": state.created_at.isoformat(),
        "closed_at": iso(state.closed_at),
        "entered_current_stage_at": state.stage_entered_at.isoformat(),
        "time_in_current_stage_seconds": (
            max(0.0, (now - state.stage_entered_at).total_seconds()) if is_open else None
        ),
        "last_activity_at": state.last_activity_at.isoformat(),
        "stale": stale.stale,
        "stale_reasons": list(stale.reasons),
        "days_stale": round(stale.days_stale, 3),
        "snoozed_until": iso(state.snoozed_until),
        "snooze_reason": state.snooze_reason,
        "open_activities": summary.open_count,
        "overdue_activities": summary.overdue_count(now),
        "next_activity": summary.next_view(now),
        "last_completed_activity": summary.last_completed,
        "updated_at": iso(updated_at),
        "version": version,
    }


def deal_as_of_view(
    deal_id: str, state: DealState, pipeline: PipelineState | None, *, since: datetime
) -> dict[str, Any]:
    """The deal at a past moment: the fields of :data:`AS_OF_FIELDS`, stage names and
    probabilities as the pipeline defined them then, and when that state began."""
    view = deal_view(deal_id, state, pipeline, version=0, now=since)
    return {**{k: view[k] for k in AS_OF_FIELDS}, "state_since": since.isoformat()}


def activity_view(
    deal_id: str, pipeline_id: str, activity: ActivityState, *, now: datetime
) -> dict[str, Any]:
    """An activity as every answer shows it (with its deal and the pipeline the deal is
    in now), ``overdue`` measured at ``now``."""
    checklist = None
    if activity.checklist_stage_id is not None:
        checklist = {
            "pipeline_id": activity.checklist_pipeline_id,
            "stage_id": activity.checklist_stage_id,
            "version": activity.checklist_version,
        }
    return {
        "id": activity.id,
        "deal_id": deal_id,
        "pipeline_id": pipeline_id,
        "type": activity.type,
        "subject": activity.subject,
        "due_at": iso(activity.due_at),
        "duration_minutes": activity.duration_minutes,
        "assignee": activity.assignee,
        "note": activity.note,
        "status": activity.status,
        "overdue": activity.is_overdue(now),
        "created_at": activity.created_at.isoformat(),
        "changed_at": activity.changed_at.isoformat(),
        "completed_at": iso(activity.completed_at),
        "outcome": activity.outcome,
        "cancelled_at": iso(activity.cancelled_at),
        "cancel_reason": activity.cancel_reason,
        "waived": activity.waived,
        "checklist": checklist,
    }
