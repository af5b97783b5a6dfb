"""Recorded events through the domain's one fold, and the folded states as table rows.

Projectors that keep current state (``current_pipeline``, ``analytics``) read the stored
rows of the aggregates in a batch back into states, fold the batch's events through
:func:`libs.domain.state.deal_after` and :func:`~libs.domain.state.pipeline_after`, and
write the states back as rows. The conversions between states and rows live here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from libs.application.records import EventRecord
from libs.domain.state import (
    OPEN,
    DealState,
    PipelineState,
    Stage,
    probability,
    weighted_value,
)

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


def deal_state_of(row: Mapping[str, Any]) -> DealState:
    """The state a stored deal row holds (a row written by :func:`deal_row`)."""
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


def _moment(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
