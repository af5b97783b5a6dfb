"""The pipeline board: per stage, open deal counts, values and the first deals."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.responses import Response

from services.pipeline_api.deps import CurrentPrincipal, QueryCacheDep, ReadModelsDep, RuntimeDep
from services.pipeline_api.openapi import raises
from services.pipeline_api.query_cache import Computed, FreshAnswer, json_body
from services.pipeline_api.query_params import MinPosition
from services.pipeline_api.schemas import Board, BoardAsOf, Moment
from services.queries.board import board_as_of, live_board

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


@router.get("/{pipeline_id}/board", response_model=Board | BoardAsOf)
@raises(404)
async def get_board(
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
