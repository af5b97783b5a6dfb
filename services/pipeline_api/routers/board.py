"""The pipeline board: per stage, open deal counts, values and the first deals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.responses import Response

from libs.domain.values import format_money
from services.pipeline_api.deps import CurrentPrincipal, QueryCacheDep, ReadModelsDep, RuntimeDep
from services.pipeline_api.errors import ERROR_RESPONSES, ApiError
from services.pipeline_api.query_cache import Computed, FreshAnswer, json_body
from services.pipeline_api.query_params import MinPosition, deal_cursor_after
from services.pipeline_api.routers.deal_queries import deal_view
from services.pipeline_api.schemas import Moment
from services.projections import current_pipeline
from services.projections.reading import ReadModels
from services.reports.as_of import board_as_of

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"], responses=ERROR_RESPONSES)


@router.get("/{pipeline_id}/board")
async def board(
    pipeline_id: UUID,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    cache: QueryCacheDep,
    models: ReadModelsDep,
    fresh: FreshAnswer,
    per_stage: Annotated[int, Query(ge=0, le=100, description="Deals listed per stage")] = 20,
    min_position: MinPosition = None,
    as_of: Annotated[
        Moment | None,
        Query(description="The board as it was at this moment (business time)"),
    ] = None,
) -> Response:
    """Per stage, in order: open deals' count, total and weighted value, and the first page.

    Each stage's `next_cursor` continues with `GET /v1/deals?pipeline_id=..&stage=..&status=open`.
    With `as_of`, the board at that past moment: stages as defined then, deals as they were.
    """
    if as_of is not None:
        moment = as_of

        async def past() -> Computed:
            board = await board_as_of(models, pipeline_id, moment, min_position, per_stage)
            return Computed(json_body(board))

        past_key = ("board-as-of", str(pipeline_id), per_stage, moment.isoformat())
        return await cache.answer(past_key, models.states, min_position, past, fresh=fresh)

    async def live() -> Computed:
        board = await live_board(models, pipeline_id, per_stage, min_position, runtime.clock)
        # Already JSON-ready: skip the framework's generic re-encoding of a large answer.
        return Computed(json_body(board), uses_clock=True)

    key = ("board", str(pipeline_id), per_stage)
    return await cache.answer(key, models.states, min_position, live, fresh=fresh)


async def live_board(
    models: ReadModels,
    pipeline_id: UUID,
    per_stage: int,
    min_position: int | None,
    clock: Callable[[], datetime],
) -> dict[str, Any]:
    """The board now, from ``current_pipeline`` in four queries: the pipeline, its stage
    totals, the first page of every stage, and the stale count of every stage."""
    async with models.open("current_pipeline", min_position) as view:
        pipeline = await current_pipeline.get_pipeline(view.conn, view.tables, pipeline_id)
        if pipeline is None:
            raise ApiError(
                404, f"pipeline {pipeline_id} does not exist (as of position {view.position})"
            )
        stage_ids = [stage["id"] for stage in pipeline["stages"]]
        totals = await current_pipeline.stage_totals(view.conn, view.tables, pipeline_id)
        first_pages = await current_pipeline.first_open_pages(
            view.conn, view.tables, pipeline_id, stage_ids, per_stage + 1
        )
        now = clock()
        stale_counts = await current_pipeline.stale_counts(
            view.conn,
            view.tables,
            pipeline_id,
            [(stage["id"], stage.get("rotting_days")) for stage in pipeline["stages"]],
            stale_after_days=pipeline.get("stale_after_days"),
            now=now,
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
            next_cursor = deal_cursor_after(page[-1])
        stages_out.append(
            {
                "id": stage["id"],
                "name": stage["name"],
                "probability": stage["probability"],
                "rotting_days": stage.get("rotting_days"),
                "count": count,
                "total_value": format_money(value),
                "weighted_value": format_money(weighted),
                "stale_count": stale_counts.get(stage["id"], 0),
                "deals": [deal_view(r, pipelines, now) for r in page],
                "next_cursor": next_cursor,
            }
        )
    return {
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
