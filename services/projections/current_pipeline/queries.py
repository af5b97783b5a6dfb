"""Reading ``current_pipeline``: deals and activities now, pipelines now, open totals and
first pages, and the activity counts behind the reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Integer,
    Table,
    and_,
    bindparam,
    false,
    func,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Executable

from services.projections.sql import count_if


@dataclass(frozen=True)
class DealFilter:
    """Filters of ``GET /v1/deals``; None means "any"."""

    pipeline_id: UUID | None = None
    stage: str | None = None
    status: str | None = None
    owner: str | None = None
    updated_since: datetime | None = None
    # open deals with (True) or without (False) an open activity
    has_next_activity: bool | None = None


def deal_order(deals: Table) -> list[Any]:
    return [deals.c.created_at, deals.c.deal_id]


def deal_filter_clause(deals: Table, f: DealFilter) -> list[Any]:
    clauses: list[Any] = []
    if f.pipeline_id is not None:
        clauses.append(deals.c.pipeline_id == str(f.pipeline_id))
    if f.stage is not None:
        clauses.append(deals.c.stage_id == f.stage)
    if f.status is not None:
        clauses.append(deals.c.status == f.status)
    if f.owner is not None:
        clauses.append(deals.c.owner == f.owner)
    if f.updated_since is not None:
        clauses.append(deals.c.updated_at >= f.updated_since)
    if f.has_next_activity is not None:
        clauses.append(deals.c.status == "open")
        planned = deals.c.open_activities > 0
        clauses.append(planned if f.has_next_activity else ~planned)
    return clauses


async def list_deals(
    conn: AsyncConnection,
    tables: dict[str, Table],
    f: DealFilter,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """One page of deals in (created_at, deal_id) order, after the cursor's row."""
    deals = tables["deals"]
    clauses = deal_filter_clause(deals, f)
    if after is not None:
        created, deal_id = after
        clauses.append(
            or_(
                deals.c.created_at > created,
                and_(deals.c.created_at == created, deals.c.deal_id > deal_id),
            )
        )
    query = select(deals).where(*clauses).order_by(*deal_order(deals)).limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]


async def get_deal(
    conn: AsyncConnection, tables: dict[str, Table], deal_id: UUID
) -> dict[str, Any] | None:
    deals = tables["deals"]
    row = (
        (await conn.execute(select(deals).where(deals.c.deal_id == str(deal_id))))
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def get_pipeline(
    conn: AsyncConnection, tables: dict[str, Table], pipeline_id: UUID
) -> dict[str, Any] | None:
    pipelines = tables["pipelines"]
    row = (
        (await conn.execute(select(pipelines).where(pipelines.c.pipeline_id == str(pipeline_id))))
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def list_pipelines(conn: AsyncConnection, tables: dict[str, Table]) -> list[dict[str, Any]]:
    pipelines = tables["pipelines"]
    query = select(pipelines).order_by(pipelines.c.created_at, pipelines.c.pipeline_id)
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]


async def stage_totals(
    conn: AsyncConnection, tables: dict[str, Table], pipeline_id: UUID
) -> dict[str, dict[str, Any]]:
    totals = tables["totals"]
    rows = await conn.execute(select(totals).where(totals.c.pipeline_id == str(pipeline_id)))
    return {r["stage_id"]: dict(r) for r in rows.mappings().all()}


async def first_open_pages(
    conn: AsyncConnection,
    tables: dict[str, Table],
    pipeline_id: UUID,
    stage_ids: Sequence[str],
    limit: int,
) -> dict[str, list[dict[str, Any]]]:
    """Per stage, its first ``limit`` open deals in (created_at, deal_id) order, in one
    query: one index-ordered, limited branch per stage, glued with UNION ALL (each branch
    reads only its own page, unlike a window over every open deal of the pipeline)."""
    pages: dict[str, list[dict[str, Any]]] = {stage_id: [] for stage_id in stage_ids}
    if not stage_ids or limit <= 0:
        return pages
    params: dict[str, Any] = {"pipeline_id": str(pipeline_id), "page_limit": limit}
    params.update({f"stage_{n}": stage_id for n, stage_id in enumerate(stage_ids)})
    query = _first_pages_query(tables["deals"], len(stage_ids))
    for row in (await conn.execute(query, params)).mappings().all():
        pages[row["stage_id"]].append(dict(row))
    for page in pages.values():  # UNION ALL promises no order across or within branches
        page.sort(key=lambda r: (r["created_at"], r["deal_id"]))
    return pages


@lru_cache(maxsize=256)
def _first_pages_query(deals: Table, stages: int) -> Executable:
    """The statement of :func:`first_open_pages` for ``stages`` stages, built once (with
    bound parameters) rather than per board: building it costs more than running it."""
    branches = [
        select(deals)
        .where(
            deals.c.pipeline_id == bindparam("pipeline_id"),
            deals.c.status == "open",
            deals.c.stage_id == bindparam(f"stage_{n}"),
        )
        .order_by(*deal_order(deals))
        .limit(bindparam("page_limit", type_=Integer))
        .subquery()
        for n in range(stages)
    ]
    selects = [select(*branch.c) for branch in branches]
    return union_all(*selects) if len(selects) > 1 else selects[0]


# --- activities -------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivityFilter:
    """Filters of ``GET /v1/activities``; None means "any". ``status`` is open, done,
    cancelled or overdue (open and due before ``now``); ``due_after`` is inclusive,
    ``due_before`` exclusive (an activity without a due date matches neither)."""

    deal_id: str | None = None
    assignee: str | None = None
    type: str | None = None
    status: str | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    now: datetime | None = None
    activity_id: str | None = None


def activity_filter_clause(activities: Table, f: ActivityFilter) -> list[Any]:
    a = activities.c
    clauses: list[Any] = []
    if f.deal_id is not None:
        clauses.append(a.deal_id == f.deal_id)
    if f.activity_id is not None:
        clauses.append(a.activity_id == f.activity_id)
    if f.assignee is not None:
        clauses.append(a.assignee == f.assignee)
    if f.type is not None:
        clauses.append(a.type == f.type)
    if f.status == "overdue":
        assert f.now is not None, "overdue is measured against a clock"
        clauses += [a.status == "open", a.due_at < f.now]
    elif f.status is not None:
        clauses.append(a.status == f.status)
    if f.due_before is not None:
        clauses.append(a.due_at < f.due_before)
    if f.due_after is not None:
        clauses.append(a.due_at >= f.due_after)
    return clauses


async def list_activities(
    conn: AsyncConnection,
    tables: dict[str, Table],
    f: ActivityFilter,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """One page of activities in (due time, id) order (those without a due date last),
    after the cursor's row."""
    a = tables["activities"]
    clauses = activity_filter_clause(a, f)
    if after is not None:
        due, activity_id = after
        clauses.append(
            or_(a.c.due_order > due, and_(a.c.due_order == due, a.c.activity_id > activity_id))
        )
    query = select(a).where(*clauses).order_by(a.c.due_order, a.c.activity_id).limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]


@dataclass(frozen=True)
class ActivityCountFilter:
    """The activities a report counts: by their deal's pipeline now, by assignee (one, or
    any of ``assignees``), and by a period on ``column``."""

    pipeline_id: str | None = None
    assignee: str | None = None
    assignees: list[str] | None = None
    start: datetime | None = None
    end: datetime | None = None


def _count_clauses(a: Any, f: ActivityCountFilter, when: Any) -> list[Any]:
    clauses: list[Any] = []
    if f.pipeline_id is not None:
        clauses.append(a.pipeline_id == f.pipeline_id)
    if f.assignee is not None:
        clauses.append(a.assignee == f.assignee)
    if f.assignees is not None:
        clauses.append(a.assignee.in_(f.assignees) if f.assignees else false())
    if f.start is not None:
        clauses.append(when >= f.start)
    if f.end is not None:
        clauses.append(when < f.end)
    return clauses


async def activity_counts(
    conn: AsyncConnection, tables: dict[str, Table], f: ActivityCountFilter, now: datetime
) -> list[dict[str, Any]]:
    """Per (assignee, type), the activities planned in the period (due in it; undated
    ones: created in it): ``planned``, ``done``, ``cancelled``, ``overdue`` (open and due
    before ``now``) and ``open`` (the other open ones)."""
    a = tables["activities"].c
    when = func.coalesce(a.due_at, a.created_at)
    overdue = and_(a.status == "open", a.due_at < now)
    query = (
        select(
            a.assignee,
            a.type,
            func.count().label("planned"),
            count_if(a.status == "done").label("done"),
            count_if(a.status == "cancelled").label("cancelled"),
            count_if(overdue).label("overdue"),
        )
        .where(*_count_clauses(a, f, when))
        .group_by(a.assignee, a.type)
    )
    rows = (await conn.execute(query)).mappings().all()
    return [
        {
            **{k: r[k] for k in ("assignee", "type")},
            **{k: int(r[k]) for k in ("planned", "done", "cancelled", "overdue")},
        }
        for r in rows
    ]


async def activity_work(
    conn: AsyncConnection, tables: dict[str, Table], f: ActivityCountFilter, now: datetime
) -> dict[str, dict[str, int]]:
    """Per assignee: ``completed`` (activities completed in the period) and ``overdue``
    (open and due before ``now``, whatever the period)."""
    a = tables["activities"].c
    unbounded = ActivityCountFilter(f.pipeline_id, f.assignee, f.assignees)
    out: dict[str, dict[str, int]] = {}
    for name, clauses in (
        ("completed", [a.status == "done", *_count_clauses(a, f, a.completed_at)]),
        ("overdue", [a.status == "open", a.due_at < now, *_count_clauses(a, unbounded, None)]),
    ):
        query = select(a.assignee, func.count()).where(*clauses).group_by(a.assignee)
        for assignee, n in (await conn.execute(query)).all():
            out.setdefault(assignee, {"completed": 0, "overdue": 0})[name] = int(n)
    return out
