"""The audit log: every event, filtered, for auditors and admins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from services.pipeline_api.deps import CurrentPrincipal
from services.pipeline_api.errors import ERROR_RESPONSES
from services.pipeline_api.readmodels import MinPosition, ReadModelsDep
from services.pipeline_api.routers.deal_queries import (
    MAX_PAGE,
    aware,
    history_view,
    page_of,
    position_cursor,
)
from services.projections import audit_history

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ERROR_RESPONSES)


@router.get("")
async def audit_log(
    principal: CurrentPrincipal,
    models: ReadModelsDep,
    actor: str | None = None,
    event_type: str | None = None,
    from_: Annotated[
        datetime | None, Query(alias="from", description="occurred_at at or after")
    ] = None,
    to: Annotated[datetime | None, Query(description="occurred_at before")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: str | None = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    """All events in log order with before/after values, filtered; auditors and admins."""
    principal.check_may_read_audit()
    start, end = aware(from_, "from"), aware(to, "to")
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
