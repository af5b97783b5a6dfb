"""Deals read back: now (``current_pipeline``), as of a past moment (``analytics``), and
their audit trail (``audit_history``), each rendered by the domain's one deal view."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.domain.state import PipelineState
from libs.domain.views import activity_view, deal_as_of_view, deal_view
from services.projections.analytics import queries as analytics
from services.projections.audit_history import queries as audit_history
from services.projections.current_pipeline import queries as current_pipeline
from services.projections.current_pipeline.queries import DealFilter
from services.projections.folding import (
    activity_state_of,
    deal_state_of,
    partial_deal_state,
    pipeline_state_of,
    summary_of,
)
from services.projections.read_models import ReadModels
from services.queries.errors import QueryError

Pipelines = Mapping[str, PipelineState]
# Open deals of a stage are read from the read model in pages of this many.
OPEN_DEALS_PAGE = 500


async def pipelines_now(
    conn: AsyncConnection, tables: dict[str, Table]
) -> dict[str, PipelineState]:
    """Every pipeline's definition now, by id."""
    rows = await current_pipeline.list_pipelines(conn, tables)
    return {row["pipeline_id"]: pipeline_state_of(row) for row in rows}


def resolve_stage(pipelines: Pipelines, pipeline_id: UUID | None, stage: str) -> str:
    """A stage id from a stage id, or from a stage name when the pipeline is known."""
    for pid, pipeline in pipelines.items():
        if pipeline_id is not None and pid != str(pipeline_id):
            continue
        for s in pipeline.stages:
            if s.id == stage or s.name.casefold() == stage.casefold():
                return s.id
    return stage


def live_view(row: Mapping[str, Any], pipelines: Pipelines, now: datetime) -> dict[str, Any]:
    """A ``current_pipeline`` deal row as the API shows it."""
    return deal_view(
        row["deal_id"],
        deal_state_of(row),
        pipelines.get(row["pipeline_id"]),
        version=row["version"],
        now=now,
        updated_at=row["updated_at"],
        activities=summary_of(row),
    )


@dataclass(frozen=True)
class DealPage:
    """One page of deals: their views, the key of the last one when more follow, and the
    read model's position."""

    data: list[dict[str, Any]]
    after: tuple[datetime, str] | None
    position: int


async def deal_page(
    models: ReadModels,
    *,
    pipeline_id: UUID | None,
    stage: str | None,
    status: str | None,
    owner: str | None,
    updated_since: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
    min_position: int | None,
    now: datetime,
    has_next_activity: bool | None = None,
) -> DealPage:
    """Deals filtered, in (creation time, id) order, the page after ``after``;
    ``has_next_activity``: only open deals with (or without) an open activity."""
    if has_next_activity is not None and status not in (None, "open"):
        raise QueryError(
            "has_next_activity lists open deals; leave status out or set it to open",
            field="has_next_activity",
        )
    async with models.open("current_pipeline", min_position) as view:
        pipelines = await pipelines_now(view.conn, view.tables)
        stage_id = resolve_stage(pipelines, pipeline_id, stage) if stage else None
        filters = DealFilter(pipeline_id, stage_id, status, owner, updated_since, has_next_activity)
        rows = await current_pipeline.list_deals(view.conn, view.tables, filters, after, limit + 1)
    page = rows[:limit]
    last = (page[-1]["created_at"], page[-1]["deal_id"]) if len(rows) > limit else None
    return DealPage([live_view(r, pipelines, now) for r in page], last, view.position)


async def deal_now(
    models: ReadModels, deal_id: UUID, min_position: int | None, now: datetime
) -> dict[str, Any]:
    """The deal now, with the position it reflects; QueryError 404 if there is none."""
    async with models.open("current_pipeline", min_position) as view:
        row = await current_pipeline.get_deal(view.conn, view.tables, deal_id)
        if row is None:
            raise QueryError(
                f"deal {deal_id} does not exist (as of position {view.position})", status=404
            )
        pipelines = await pipelines_now(view.conn, view.tables)
    return {**live_view(row, pipelines, now), "position": view.position}


async def pipeline_as_of(
    conn: AsyncConnection, tables: dict[str, Table], pipeline_id: str, moment: datetime
) -> PipelineState | None:
    """The pipeline's definition at ``moment`` (its first, for a moment before it)."""
    state = await analytics.pipeline_as_of(conn, tables, pipeline_id, moment)
    return pipeline_state_of(state) if state is not None else None


def as_of_view(row: Mapping[str, Any], pipeline: PipelineState | None) -> dict[str, Any]:
    """An ``analytics`` history row (a deal's state from ``valid_from`` on) as shown."""
    return deal_as_of_view(
        row["deal_id"], partial_deal_state(row), pipeline, since=row["valid_from"]
    )


async def deal_as_of(
    models: ReadModels, deal_id: UUID, moment: datetime, min_position: int | None
) -> dict[str, Any]:
    """A deal as it was at ``moment`` (stage names as they were then), with its activities
    as they were then (``overdue`` at that moment)."""
    async with models.open("analytics", min_position) as view:
        row = await analytics.state_as_of(view.conn, view.tables, str(deal_id), moment)
        if row is None:
            raise QueryError(
                f"deal {deal_id} did not exist at {moment.isoformat()}", field="as_of", status=404
            )
        pipeline = await pipeline_as_of(view.conn, view.tables, row["pipeline_id"], moment)
        activities = await analytics.activities_as_of(view.conn, view.tables, str(deal_id), moment)
    return {
        **as_of_view(row, pipeline),
        "activities": [
            activity_view(str(deal_id), row["pipeline_id"], activity_state_of(a), now=moment)
            for a in activities
        ],
        "as_of": moment.isoformat(),
        "position": view.position,
    }


def history_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """An audit row as shown: who, what, both clocks, and the fields' before and after."""
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


@dataclass(frozen=True)
class HistoryPage:
    """One page of audit rows, the position of the last when more follow, and the read
    model's position."""

    data: list[dict[str, Any]]
    after: int | None
    position: int


async def history_page(
    models: ReadModels,
    *,
    aggregate_id: UUID | None = None,
    actor: str | None = None,
    event_type: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    after: int = 0,
    limit: int,
    min_position: int | None,
) -> HistoryPage:
    """Audit rows in log order after position ``after``, filtered."""
    async with models.open("audit_history", min_position) as view:
        rows = await audit_history.history(
            view.conn,
            view.tables,
            aggregate_id=aggregate_id,
            actor=actor,
            event_type=event_type,
            start=start,
            end=end,
            after_position=after,
            limit=limit + 1,
        )
    page = rows[:limit]
    last = page[-1]["position"] if len(rows) > limit else None
    return HistoryPage([history_view(r) for r in page], last, view.position)


async def open_deals_in_stage(
    models: ReadModels, pipeline_id: UUID, stage_id: str, at_least: int
) -> list[str]:
    """Ids of the open deals the read model shows in a stage, once it has reached
    ``at_least`` (waiting as every query does)."""
    filters = DealFilter(pipeline_id=pipeline_id, stage=stage_id, status="open")
    ids: list[str] = []
    async with models.open("current_pipeline", at_least) as view:
        after = None
        while True:
            rows = await current_pipeline.list_deals(
                view.conn, view.tables, filters, after, OPEN_DEALS_PAGE
            )
            ids += [r["deal_id"] for r in rows]
            if len(rows) < OPEN_DEALS_PAGE:
                return ids
            after = (rows[-1]["created_at"], rows[-1]["deal_id"])
