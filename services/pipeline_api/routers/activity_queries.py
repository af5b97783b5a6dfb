"""Activity queries, answered from the read models: across deals (a rep's day, a team's
overdue work) and one deal's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from services.pipeline_api.deps import CurrentPrincipal, ReadModelsDep, RuntimeDep
from services.pipeline_api.openapi import raises
from services.pipeline_api.query_params import CursorParam, MinPosition
from services.pipeline_api.schemas import (
    ActivitiesPage,
    ActivityNow,
    ActivityType,
    FilterText,
    Moment,
)
from services.projections.current_pipeline.queries import ActivityFilter
from services.queries.activities import ActivityPage, activity_page
from services.queries.cursors import activity_cursor, deal_cursor_after
from services.queries.errors import QueryError

router = APIRouter(tags=["activities"])

MAX_PAGE = 500
Status = Literal["open", "done", "cancelled", "overdue"]
DueBefore = Annotated[
    Moment | None, Query(description="Only activities due before this moment (exclusive)")
]
DueAfter = Annotated[Moment | None, Query(description="Only activities due at or after this")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


def _page(page: ActivityPage) -> JSONResponse:
    return JSONResponse(
        {"data": page.data, "next_cursor": deal_cursor_after(page.after), "position": page.position}
    )


def _check_period(due_after: datetime | None, due_before: datetime | None) -> None:
    if due_after is not None and due_before is not None and due_after >= due_before:
        raise QueryError("due_after must be before due_before", field="due_after")


@router.get("/v1/activities", response_model=ActivitiesPage)
async def list_activities(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    models: ReadModelsDep,
    assignee: FilterText | None = None,
    deal_id: UUID | None = None,
    type: ActivityType | None = None,
    status: Annotated[Status | None, Query(description="overdue: open and due before now")] = None,
    due_before: DueBefore = None,
    due_after: DueAfter = None,
    limit: Limit = 100,
    cursor: CursorParam = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    """Activities across deals, soonest due first (undated ones last), a page at a time:
    for example a rep's `assignee=me&status=open&due_before=<tomorrow>` (due today or
    overdue)."""
    _check_period(due_after, due_before)
    now = runtime.clock()
    filters = ActivityFilter(
        deal_id=str(deal_id) if deal_id else None,
        assignee=assignee,
        type=type,
        status=status,
        due_before=due_before,
        due_after=due_after,
        now=now,
    )
    page = await activity_page(
        models, filters, after=activity_cursor(cursor), limit=limit, min_position=min_position
    )
    return _page(page)


@router.get("/v1/deals/{deal_id}/activities", response_model=ActivitiesPage)
@raises(404)
async def list_deal_activities(
    deal_id: UUID,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    models: ReadModelsDep,
    status: Annotated[Status | None, Query(description="overdue: open and due before now")] = None,
    limit: Limit = 100,
    cursor: CursorParam = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    """The deal's activities (every status unless `status`), soonest due first."""
    filters = ActivityFilter(deal_id=str(deal_id), status=status, now=runtime.clock())
    after = activity_cursor(cursor)
    page = await activity_page(
        models, filters, after=after, limit=limit, min_position=min_position, deal_id=deal_id
    )
    return _page(page)


@router.get("/v1/deals/{deal_id}/activities/{activity_id}", response_model=ActivityNow)
@raises(404)
async def get_activity(
    deal_id: UUID,
    activity_id: UUID,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    models: ReadModelsDep,
    min_position: MinPosition = None,
) -> JSONResponse:
    """One activity of the deal."""
    one = ActivityFilter(deal_id=str(deal_id), activity_id=str(activity_id), now=runtime.clock())
    page = await activity_page(
        models, one, after=None, limit=1, min_position=min_position, deal_id=deal_id
    )
    if not page.data:
        raise QueryError(
            f"deal {deal_id} has no activity {activity_id} (as of position {page.position})",
            status=404,
            code="activity_not_found",
        )
    return JSONResponse({**page.data[0], "position": page.position})
