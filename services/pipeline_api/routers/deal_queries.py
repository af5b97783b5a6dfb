"""Deal queries, answered from the read models (never from the event store)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from libs.application.records import to_json_value
from libs.domain.values import format_money
from services.pipeline_api.deps import CurrentPrincipal, ReadModelsDep, RuntimeDep
from services.pipeline_api.errors import ERROR_RESPONSES, ApiError
from services.pipeline_api.query_params import (
    CursorParam,
    MinPosition,
    deal_cursor,
    deal_cursor_after,
    encode_cursor,
    position_cursor,
)
from services.pipeline_api.schemas import FilterText, Moment
from services.projections import audit_history, current_pipeline
from services.projections.current_pipeline import DealFilter, stage_name
from services.reports.as_of import deal_as_of
from services.reports.sales import staleness

router = APIRouter(prefix="/v1/deals", tags=["deals"], responses=ERROR_RESPONSES)

MAX_PAGE = 500


def deal_view(
    row: dict[str, Any], pipelines: dict[str, dict[str, Any]], now: datetime
) -> dict[str, Any]:
    """A deal read-model row as the API shows it: stage names as they are now, time in
    the current stage and staleness measured against the service clock."""
    is_open = row["status"] == "open"
    pipeline = pipelines.get(row["pipeline_id"])
    stale = staleness(row, pipeline, now)
    return {
        "id": row["deal_id"],
        "pipeline_id": row["pipeline_id"],
        "title": row["title"],
        "value": format_money(row["value"]),
        "currency": pipeline["currency"] if pipeline else None,
        "owner": row["owner"],
        "stage": {"id": row["stage_id"], "name": stage_name(pipeline, row["stage_id"])},
        "status": row["status"],
        "probability": row["probability"],
        "probability_override": row["probability_override"],
        "weighted_value": format_money(row["weighted_value"]),
        "expected_close_date": to_json_value(row["expected_close_date"]),
        "external_id": row["external_id"],
        "account": row["account"],
        "product": row["product"],
        "lost_reason": row["lost_reason"],
        "lost_note": row["lost_note"],
        "created_at": row["created_at"].isoformat(),
        "closed_at": row["closed_at"].isoformat() if row["closed_at"] else None,
        "entered_current_stage_at": row["entered_current_stage_at"].isoformat(),
        "time_in_current_stage_seconds": (
            max(0.0, (now - row["entered_current_stage_at"]).total_seconds()) if is_open else None
        ),
        "last_activity_at": row["last_activity_at"].isoformat(),
        "stale": stale["stale"],
        "stale_reasons": stale["stale_reasons"],
        "days_stale": round(stale["days_stale"], 3),
        "snoozed_until": to_json_value(row["snoozed_until"]),
        "snooze_reason": row["snooze_reason"],
        "updated_at": row["updated_at"].isoformat(),
        "version": row["version"],
    }


async def pipeline_lookup(conn: Any, tables: Any) -> dict[str, dict[str, Any]]:
    return {p["pipeline_id"]: p for p in await current_pipeline.list_pipelines(conn, tables)}


def resolve_stage(
    pipelines: dict[str, dict[str, Any]], pipeline_id: UUID | None, stage: str
) -> str:
    """Accept a stage id, or a stage name when the pipeline is known."""
    for p in pipelines.values():
        if pipeline_id is not None and p["pipeline_id"] != str(pipeline_id):
            continue
        for s in p["stages"]:
            if s["id"] == stage or s["name"].casefold() == stage.casefold():
                return str(s["id"])
    return stage


@router.get("")
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
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: CursorParam = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    """Deals filtered, in a stable order (creation time, then id), a page at a time."""
    after = deal_cursor(cursor)
    async with models.open("current_pipeline", min_position) as view:
        pipelines = await pipeline_lookup(view.conn, view.tables)
        stage_id = resolve_stage(pipelines, pipeline_id, stage) if stage else None
        filters = DealFilter(pipeline_id, stage_id, status, owner, updated_since)
        rows = await current_pipeline.list_deals(view.conn, view.tables, filters, after, limit + 1)
    now = runtime.clock()
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = deal_cursor_after(page[-1])
    return JSONResponse(
        {
            "data": [deal_view(r, pipelines, now) for r in page],
            "next_cursor": next_cursor,
            "position": view.position,
        }
    )


@router.get("/{deal_id}")
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
) -> dict[str, Any]:
    """A deal's current state from the read model, with its time in the current stage and
    staleness; with `as_of`, its state at that past moment, rebuilt from its events."""
    if as_of is not None:
        return await deal_as_of(models, deal_id, as_of, min_position)
    async with models.open("current_pipeline", min_position) as view:
        row = await current_pipeline.get_deal(view.conn, view.tables, deal_id)
        if row is None:
            raise ApiError(404, f"deal {deal_id} does not exist (as of position {view.position})")
        pipelines = await pipeline_lookup(view.conn, view.tables)
    response.headers["ETag"] = f'"{row["version"]}"'
    return {**deal_view(row, pipelines, runtime.clock()), "position": view.position}


def history_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "position": row["position"],
        "aggregate_id": row["aggregate_id"],
        "aggregate_type": row["aggregate_type"],
        "event_type": row["event_type"],
        "version": row["version"],
        "actor": row["actor"],
        "occurred_at": row["occurred_at"].isoformat() if row["occurred_at"] else None,
        "recorded_at": row["recorded_at"].isoformat() if row["recorded_at"] else None,
        "changes": row["changes"],
    }


def page_of(rows: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    page = rows[:limit]
    return page, (encode_cursor(page[-1]["position"]) if len(rows) > limit else None)


@router.get("/{deal_id}/history")
async def deal_history(
    deal_id: UUID,
    principal: CurrentPrincipal,
    models: ReadModelsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: CursorParam = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    """The deal's audit trail, oldest first: who changed what, when, and how."""
    after = position_cursor(cursor)
    async with models.open("audit_history", min_position) as view:
        rows = await audit_history.history(
            view.conn, view.tables, aggregate_id=deal_id, after_position=after, limit=limit + 1
        )
    if not rows and after == 0:
        raise ApiError(404, f"deal {deal_id} has no history (as of position {view.position})")
    page, next_cursor = page_of(rows, limit)
    return JSONResponse(
        {
            "data": [history_view(r) for r in page],
            "next_cursor": next_cursor,
            "position": view.position,
        }
    )
