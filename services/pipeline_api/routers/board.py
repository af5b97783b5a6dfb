"""The pipeline board: per stage, open deal counts, values and the first deals."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from libs.domain.values import format_money
from services.pipeline_api.deps import CurrentPrincipal, ServicesDep
from services.pipeline_api.errors import ERROR_RESPONSES, ApiError
from services.pipeline_api.readmodels import MinPosition, ReadModelsDep, encode_cursor
from services.pipeline_api.routers.deal_queries import aware, deal_view
from services.projections import current_pipeline
from services.projections.current_pipeline import DealFilter
from services.reports.as_of import board_as_of

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"], responses=ERROR_RESPONSES)


@router.get("/{pipeline_id}/board")
async def board(
    pipeline_id: UUID,
    principal: CurrentPrincipal,
    services: ServicesDep,
    models: ReadModelsDep,
    per_stage: Annotated[int, Query(ge=0, le=100, description="Deals listed per stage")] = 20,
    min_position: MinPosition = None,
    as_of: Annotated[
        datetime | None,
        Query(description="The board as it was at this moment (business time)"),
    ] = None,
) -> JSONResponse:
    """Per stage, in order: open deals' count, total and weighted value, and the first page.

    Each stage's `next_cursor` continues with `GET /v1/deals?pipeline_id=..&stage=..&status=open`.
    With `as_of`, the board at that past moment: stages as defined then, deals as they were.
    """
    if as_of is not None:
        moment = aware(as_of, "as_of")
        assert moment is not None
        return JSONResponse(await board_as_of(models, pipeline_id, moment, min_position, per_stage))
    async with models.open("current_pipeline", min_position) as view:
        pipeline = await current_pipeline.get_pipeline(view.conn, view.tables, pipeline_id)
        if pipeline is None:
            raise ApiError(
                404, f"pipeline {pipeline_id} does not exist (as of position {view.position})"
            )
        totals = await current_pipeline.stage_totals(view.conn, view.tables, pipeline_id)
        first_pages = {}
        stale_counts = {}
        now = services.clock()
        for stage in pipeline["stages"]:
            stale_counts[stage["id"]] = await current_pipeline.count_stale(
                view.conn,
                view.tables,
                pipeline_id,
                stage["id"],
                rotting_days=stage.get("rotting_days"),
                stale_after_days=pipeline.get("stale_after_days"),
                now=now,
            )
            filters = DealFilter(pipeline_id=pipeline_id, stage=stage["id"], status="open")
            first_pages[stage["id"]] = await current_pipeline.list_deals(
                view.conn, view.tables, filters, None, per_stage + 1
            )
    pipelines = {pipeline["pipeline_id"]: pipeline}
    stages_out = []
    sum_count, sum_value, sum_weighted = 0, Decimal(0), Decimal(0)
    for stage in pipeline["stages"]:
        total = totals.get(stage["id"], {})
        count = int(total.get("open_count", 0))
        value = total.get("open_value", Decimal(0))
        weighted = total.get("weighted_value", Decimal(0))
        sum_count, sum_value, sum_weighted = (
            sum_count + count,
            sum_value + value,
            sum_weighted + weighted,
        )
        rows = first_pages[stage["id"]]
        page = rows[:per_stage]
        next_cursor = None
        if len(rows) > per_stage and page:
            next_cursor = encode_cursor([page[-1]["created_at"].isoformat(), page[-1]["deal_id"]])
        stages_out.append(
            {
                "id": stage["id"],
                "name": stage["name"],
                "probability": stage["probability"],
                "rotting_days": stage.get("rotting_days"),
                "count": count,
                "total_value": format_money(value),
                "weighted_value": format_money(weighted),
                "stale_count": stale_counts[stage["id"]],
                "deals": [deal_view(r, pipelines, now) for r in page],
                "next_cursor": next_cursor,
            }
        )
    # Already JSON-ready: skip the framework's generic re-encoding of a large answer.
    return JSONResponse(
        {
            "pipeline": {
                "id": pipeline["pipeline_id"],
                "name": pipeline["name"],
                "currency": pipeline["currency"],
            },
            "stages": stages_out,
            "totals": {
                "count": sum_count,
                "total_value": format_money(sum_value),
                "weighted_value": format_money(sum_weighted),
            },
            "position": view.position,
        }
    )
