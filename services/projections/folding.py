"""Recorded events through the domain's one fold, and the folded states as table rows.

Projectors that keep current state (``current_pipeline``, ``analytics``) read the stored
rows of the aggregates in a batch back into states, fold the batch's events through
:func:`libs.domain.state.deal_after` and :func:`~libs.domain.state.pipeline_after`, and
write the states back as rows. The conversions between states and rows live here, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import Boolean, Column, Integer, String

from libs.application.records import EventRecord
from libs.domain.state import (
    OPEN,
    ActivityState,
    ActivitySummary,
    DealState,
    PipelineState,
    Stage,
    probability,
    summarize,
    weighted_value,
)
from libs.domain.times import LATEST
from services.projections.sql import UtcDateTime

# --- pipelines ------------------------------------------------------------------------------


def pipeline_state_of(row: Mapping[str, Any]) -> PipelineState:
    """The state a stored pipeline row holds (a row written by :func:`pipeline_row`)."""
    return PipelineState(
        name=row["name"],
        currency=row["currency"],
        stages=tuple(Stage.from_dict(s) for s in row["stages"]),
        removed_stages=tuple(Stage.from_dict(s) for s in row["removed_stages"]),
        lost_reasons=tuple(row["lost_reasons"]),
        retired_lost_reasons=tuple(row["retired_lost_reasons"]),
        allow_skipping_stages=row["allow_skipping_stages"],
        allow_moving_back=row["allow_moving_back"],
        stale_after_days=row["stale_after_days"],
        created_by=None,
        defined_at=_moment(row["created_at"]),
        last_occurred_at=_moment(row["created_at"]),
        require_checklist_before_leaving=row.get("require_checklist_before_leaving", False),
    )


def pipeline_row(pipeline_id: str, state: PipelineState, record: EventRecord) -> dict[str, Any]:
    """A pipeline's row after ``record``: its definition now, version and position."""
    return {
        "pipeline_id": pipeline_id,
        **state.as_dict(),
        "version": record.version,
        "updated_at": record.recorded_at or record.when,
        "position": record.position,
    }


# --- deals ------------------------------------------------------------------------------------


def deal_state_of(row: Mapping[str, Any], activities: Iterable[ActivityState] = ()) -> DealState:
    """The state a stored deal row holds (a row written by :func:`deal_row`), with its
    ``activities`` (their rows are read apart; in the order they were created)."""
    close = row["expected_close_date"]
    return DealState(
        pipeline_id=UUID(row["pipeline_id"]),
        title=row["title"],
        value=row["value"],
        owner=row["owner"],
        stage_id=row["stage_id"],
        status=row["status"],
        expected_close_date=date.fromisoformat(close) if isinstance(close, str) else close,
        external_id=row["external_id"],
        account=row["account"],
        product=row["product"],
        probability_override=row["probability_override"],
        lost_reason=row["lost_reason"],
        lost_note=row["lost_note"],
        created_at=row["created_at"],
        closed_at=row["closed_at"],
        stage_entered_at=row["entered_current_stage_at"],
        last_activity_at=row["last_activity_at"],
        last_occurred_at=row["last_activity_at"],  # not kept; no projection reads it
        snoozed_until=row["snoozed_until"],
        snooze_reason=row["snooze_reason"],
        activities=tuple(sorted(activities, key=lambda a: (a.created_at, a.id))),
    )


def deal_chance(state: DealState, pipeline: PipelineState | None) -> int:
    """The deal's win probability now (its stage's in ``pipeline`` unless overridden)."""
    stage = pipeline.probability_of(state.stage_id) if pipeline else 0
    return probability(state.status, state.probability_override, stage)


def deal_row(
    deal_id: str, state: DealState, pipeline: PipelineState | None, record: EventRecord
) -> dict[str, Any]:
    """A deal's row after ``record``: its state, probability and weighted value now."""
    chance = deal_chance(state, pipeline)
    return {
        "deal_id": deal_id,
        "pipeline_id": str(state.pipeline_id),
        "title": state.title,
        "value": state.value,
        "owner": state.owner,
        "stage_id": state.stage_id,
        "status": state.status,
        "probability": chance,
        "probability_override": state.probability_override,
        "weighted_value": weighted_value(state.value, chance),
        "expected_close_date": state.expected_close_date,
        "entered_current_stage_at": state.stage_entered_at,
        "last_activity_at": state.last_activity_at,
        "created_at": state.created_at,
        "closed_at": state.closed_at,
        "lost_reason": state.lost_reason,
        "lost_note": state.lost_note,
        "external_id": state.external_id,
        "account": state.account,
        "product": state.product,
        "snoozed_until": state.snoozed_until,
        "snooze_reason": state.snooze_reason,
        **summary_fields(state.activities),
        "version": record.version,
        "updated_at": record.recorded_at or record.when,
        "position": record.position,
    }


# Fields of a deal the analytics history keeps; the others it folds with placeholders.
HISTORY_FIELDS = (
    "pipeline_id",
    "stage_id",
    "status",
    "value",
    "owner",
    "probability_override",
    "expected_close_date",
    "created_at",
)


def partial_deal_state(row: Mapping[str, Any]) -> DealState:
    """A state from a row that keeps only :data:`HISTORY_FIELDS`.

    The fields the row does not keep get neutral placeholders: the fold carries them
    along untouched, and nothing built from this state reads them.
    """
    created: datetime = row["created_at"]
    return DealState(
        pipeline_id=UUID(str(row["pipeline_id"])),
        title="",
        value=Decimal(row["value"]),
        owner=row["owner"],
        stage_id=row["stage_id"],
        status=row.get("status", OPEN),
        expected_close_date=row["expected_close_date"],
        external_id=None,
        account=None,
        product=None,
        probability_override=row["probability_override"],
        lost_reason=None,
        lost_note=None,
        created_at=created,
        closed_at=None,
        stage_entered_at=created,
        last_activity_at=created,
        last_occurred_at=created,
        snoozed_until=None,
        snooze_reason=None,
    )


def history_fields(state: DealState) -> dict[str, Any]:
    """The :data:`HISTORY_FIELDS` of a state, as the history table stores them."""
    return {
        "pipeline_id": str(state.pipeline_id),
        "stage_id": state.stage_id,
        "status": state.status,
        "value": state.value,
        "owner": state.owner,
        "probability_override": state.probability_override,
        "expected_close_date": state.expected_close_date,
        "created_at": state.created_at,
    }


# --- activities -------------------------------------------------------------------------------


def summary_fields(activities: Iterable[ActivityState]) -> dict[str, Any]:
    """A deal row's columns that hold its activities in brief (JSON-ready)."""
    summary = summarize(activities)
    return {
        "open_activities": summary.open_count,
        "open_due": [moment.isoformat() for moment in summary.open_due],
        "next_activity": summary.next,
        "last_completed_activity": summary.last_completed,
    }


def summary_of(row: Mapping[str, Any]) -> ActivitySummary:
    """The :class:`ActivitySummary` a deal row holds."""
    return ActivitySummary(
        open_count=row["open_activities"],
        open_due=tuple(_moment(m) for m in row["open_due"]),
        next=row["next_activity"],
        last_completed=row["last_completed_activity"],
    )


_ACTIVITY_FIELDS = tuple(f.name for f in fields(ActivityState))


def activity_columns() -> list[Column[Any]]:
    """The columns of an activity's state, as every table of activities holds them (the
    rows of :func:`activity_fields`); ``activity_id`` is left to the table's key."""
    return [
        Column("type", String(16), nullable=False),
        Column("subject", String(200), nullable=False),
        Column("due_at", UtcDateTime(), nullable=True),
        # due_at, or the end of the time window for none: the order of every listing
        Column("due_order", UtcDateTime(), nullable=False),
        Column("duration_minutes", Integer, nullable=True),
        Column("assignee", String(100), nullable=False),
        Column("note", String(2000), nullable=True),
        Column("status", String(9), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("changed_at", UtcDateTime(), nullable=False),
        Column("completed_at", UtcDateTime(), nullable=True),
        Column("outcome", String(2000), nullable=True),
        Column("cancelled_at", UtcDateTime(), nullable=True),
        Column("cancel_reason", String(2000), nullable=True),
        Column("waived", Boolean, nullable=False),
        Column("checklist_pipeline_id", String(36), nullable=True),
        Column("checklist_stage_id", String(100), nullable=True),
        Column("checklist_version", Integer, nullable=True),
    ]


def activity_fields(activity: ActivityState) -> dict[str, Any]:
    """An activity's state as table columns (``activity_id`` for ``id``), and the order
    listings use (``due_order``: due_at, or the end of the time window for none)."""
    row = {name: getattr(activity, name) for name in _ACTIVITY_FIELDS if name != "id"}
    row["activity_id"] = activity.id
    row["due_order"] = activity.due_at if activity.due_at is not None else LATEST
    return row


def activity_state_of(row: Mapping[str, Any]) -> ActivityState:
    """The state a stored activity row holds (a row of :func:`activity_fields`)."""
    return ActivityState(
        id=row["activity_id"], **{n: row[n] for n in _ACTIVITY_FIELDS if n != "id"}
    )


def _moment(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
