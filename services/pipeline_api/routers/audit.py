"""The audit log: every event, filtered, for auditors and admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from services.pipeline_api.deps import CurrentPrincipal, ReadModelsDep
from services.pipeline_api.openapi import raises
from services.pipeline_api.query_params import CursorParam, MinPosition
from services.pipeline_api.routers.deal_queries import MAX_PAGE
from services.pipeline_api.schemas import FilterText, HistoryPage, Moment
from services.queries.cursors import position_cursor, position_cursor_after
from services.queries.deals import history_page

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", response_model=HistoryPage)
@raises(403)
async def list_audit_events(
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
    page = await history_page(
        models,
        actor=actor,
        event_type=event_type,
        start=from_,
        end=to,
        after=position_cursor(cursor),
        limit=limit,
        min_position=min_position,
    )
    return JSONResponse(
        {
            "data": page.data,
            "next_cursor": position_cursor_after(page.after),
            "position": page.position,
        }
    )
