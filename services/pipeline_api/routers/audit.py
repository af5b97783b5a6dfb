"""The audit log: every event, filtered, for auditors and admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from services.pipeline_api.deps import CurrentPrincipal, ReadModelsDep
from services.pipeline_api.errors import ERROR_RESPONSES
from services.pipeline_api.query_params import CursorParam, MinPosition, position_cursor
from services.pipeline_api.routers.deal_queries import MAX_PAGE, history_view, page_of
from services.pipeline_api.schemas import FilterText, Moment
from services.projections import audit_history

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ERROR_RESPONSES)


@router.get("")
async def audit_log(
    principal: CurrentPrincipal,
    models: ReadModelsDep,
    actor: FilterText | None = None,
    event_type: FilterText | None = None,
    from_: Annotated[
        Moment | None, Query(alias="from", description="occurred_at at or after")
    ] = None,
    to: Annotated[Moment | None, Query(description="occurred_at before")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: CursorParam = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    """All events in log order with before/after values, filtered; auditors and admins."""
    principal.check_may_read_audit()
    start, end = from_, to
    after = position_cursor(cursor)
    async with models.open("audit_history", min_position) as view:
        rows = await audit_history.history(
            view.conn,
            view.tables,
            actor=actor,
            event_type=event_type,
            start=start,
            end=end,
            after_position=after,
            limit=limit + 1,
        )
    page, next_cursor = page_of(rows, limit)
    return JSONResponse(
        {
            "data": [history_view(r) for r in page],
            "next_cursor": next_cursor,
            "position": view.position,
        }
    )
