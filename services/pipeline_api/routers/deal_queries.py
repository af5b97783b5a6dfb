"""Deal queries, answered from the read models (never from the event store)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from services.pipeline_api.deps import CurrentPrincipal, ReadModelsDep, RuntimeDep
from services.pipeline_api.openapi import raises
from services.pipeline_api.query_params import CursorParam, MinPosition
from services.pipeline_api.schemas import (
    DealAsOfAnswer,
    DealNow,
    DealsPage,
    FilterText,
    HistoryPage,
    Moment,
)
from services.queries import deals
from services.queries.cursors import (
    deal_cursor,
    deal_cursor_after,
    position_cursor,
    position_cursor_after,
)
from services.queries.errors import QueryError

router = APIRouter(prefix="/v1/deals", tags=["deals"])

MAX_PAGE = 500


@router.get("", response_model=DealsPage)
async def list_deals(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    models: ReadModelsDep,
    pipeline_id: UUID | None = None,
    stage: Annotated[FilterText | None, Query(description="Stage id (or name)")] = None,
    status: Literal["open", "won", "lost"] | None = None,
    owner: FilterText | None = None,
    updated_since: Annotated[
        Moment | None, Query(description="Only deals whose last event was recorded since")
    ] = None,
    has_next_activity: Annotated[
        bool | None,
        Query(description="Only open deals with (true) or without (false) an open activity"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: CursorParam = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    """Deals filtered, in a stable order (creation time, then id), a page at a time;
    `has_next_activity=false` lists the open deals with nothing planned."""
    page = await deals.deal_page(
        models,
        pipeline_id=pipeline_id,
        stage=stage,
        status=status,
        owner=owner,
        updated_since=updated_since,
        after=deal_cursor(cursor),
        limit=limit,
        min_position=min_position,
        now=runtime.clock(),
        has_next_activity=has_next_activity,
    )
    return JSONResponse(
        {"data": page.data, "next_cursor": deal_cursor_after(page.after), "position": page.position}
    )


@router.get("/{deal_id}", response_model=DealNow | DealAsOfAnswer)
@raises(404)
async def get_deal(
    deal_id: UUID,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    models: ReadModelsDep,
    response: Response,
    min_position: MinPosition = None,
    as_of: Annotated[
        Moment | None,
        Query(description="Return the deal as it was at this moment (business time)"),
    ] = None,
) -> JSONResponse:
    """A deal's current state from the read model, with its time in the current stage and
    staleness; with `as_of`, its state at that past moment, from its history."""
    if as_of is not None:
        return JSONResponse(await deals.deal_as_of(models, deal_id, as_of, min_position))
    deal = await deals.deal_now(models, deal_id, min_position, runtime.clock())
    return JSONResponse(deal, headers={"ETag": f'"{deal["version"]}"'})


@router.get("/{deal_id}/history", response_model=HistoryPage)
@raises(404)
async def get_deal_history(
    deal_id: UUID,
    principal: CurrentPrincipal,
    models: ReadModelsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: CursorParam = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    """The deal's audit trail, oldest first: who changed what, when, and how."""
    after = position_cursor(cursor)
    page = await deals.history_page(
        models, aggregate_id=deal_id, after=after, limit=limit, min_position=min_position
    )
    if not page.data and after == 0:
        raise QueryError(
            f"deal {deal_id} has no history (as of position {page.position})", status=404
        )
    return JSONResponse(
        {
            "data": page.data,
            "next_cursor": position_cursor_after(page.after),
            "position": page.position,
        }
    )
