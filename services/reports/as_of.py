"""State as of a past moment, on business time, from the analytics history tables.

The history keeps a deal's state after each of its events, valid until its next event's
``occurred_at``; a question about a moment reads the rows valid then, through indexes:
one deal costs one indexed look-up; a board reads every history row of the pipeline that
began before the moment (at most the pipeline's number of deal events).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from libs.domain.values import format_money
from services.projections import analytics
from services.projections.current_pipeline import (
    effective_probability,
    stage_name,
    weighted,
)
from services.projections.reading import ReadModels
from services.reports import ReportError

AS_OF_BOARD_PAGE = 100


def _deal(state: dict[str, Any], pipeline: dict[str, Any] | None) -> dict[str, Any]:
    probability = effective_probability(state, pipeline)
    close = state.get("expected_close_date")
    return {
        "id": state["deal_id"],
        "pipeline_id": state["pipeline_id"],
        "stage": {"id": state["stage_id"], "name": stage_name(pipeline, state["stage_id"])},
        "status": state["status"],
        "value": format_money(state["value"]),
        "owner": state["owner"],
        "probability": probability,
        "weighted_value": format_money(weighted(state["value"], probability)),
        "expected_close_date": close.isoformat() if close else None,
        "created_at": state["created_at"].isoformat(),
        "state_since": state["valid_from"].isoformat(),
    }


async def deal_as_of(
    models: ReadModels, deal_id: UUID, moment: datetime, min_position: int | None
) -> dict[str, Any]:
    """A deal as it was at ``moment`` (stage names as they were then)."""
    async with models.open("analytics", min_position) as view:
        state = await analytics.state_as_of(view.conn, view.tables, str(deal_id), moment)
        if state is None:
            raise ReportError(
                f"deal {deal_id} did not exist at {moment.isoformat()}", field="as_of", status=404
            )
        pipeline = await analytics.pipeline_as_of(
            view.conn, view.tables, state["pipeline_id"], moment
        )
        position = view.position
    return {**_deal(state, pipeline), "as_of": moment.isoformat(), "position": position}


async def board_as_of(
    models: ReadModels,
    pipeline_id: UUID,
    moment: datetime,
    min_position: int | None,
    per_stage: int,
) -> dict[str, Any]:
    """The board at ``moment``: the stages as defined then, with the deals open then."""
    async with models.open("analytics", min_position) as view:
        pipeline = await analytics.pipeline_as_of(view.conn, view.tables, str(pipeline_id), moment)
        if pipeline is None:
            raise ReportError(
                f"pipeline {pipeline_id} did not exist at {moment.isoformat()}",
                field="as_of",
                status=404,
            )
        deals = await analytics.open_deals_as_of(view.conn, view.tables, str(pipeline_id), moment)
        position = view.position
    deals.sort(key=lambda d: (d["created_at"], d["deal_id"]))
    stages = []
    total_count, total_value, total_weighted = 0, Decimal(0), Decimal(0)
    for stage in pipeline["stages"]:
        in_stage = [d for d in deals if d["stage_id"] == stage["id"]]
        value = sum((d["value"] for d in in_stage), Decimal(0))
        weight = sum(
            (weighted(d["value"], effective_probability(d, pipeline)) for d in in_stage), Decimal(0)
        )
        total_count += len(in_stage)
        total_value += value
        total_weighted += weight
        stages.append(
            {
                "id": stage["id"],
                "name": stage["name"],
                "probability": stage["probability"],
                "count": len(in_stage),
                "total_value": format_money(value),
                "weighted_value": format_money(weight),
                "deals": [_deal(d, pipeline) for d in in_stage[:per_stage]],
            }
        )
    return {
        "pipeline": {
            "id": str(pipeline_id),
            "name": pipeline["name"],
            "currency": pipeline["currency"],
        },
        "as_of": moment.isoformat(),
        "stages": stages,
        "totals": {
            "count": total_count,
            "total_value": format_money(total_value),
            "weighted_value": format_money(total_weighted),
        },
        "position": position,
    }
