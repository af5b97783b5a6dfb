"""Read model 1, the current pipeline: one row per deal, open totals per pipeline stage."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from typing import Any
from uuid import UUID

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Executable

from libs.application.records import EventRecord
from services.projections.base import Money, Projection, UtcDateTime, bulk_upsert

CENT = Decimal("0.0001")
ZERO = Decimal(0)

DEAL_EVENTS = frozenset(
    {
        "DealCreated",
        "DealMoved",
        "DealSnoozed",
        "StageAdvanced",
        "DealWon",
        "DealLost",
        "DealReopened",
        "DealUpdated",
        "OwnerChanged",
    }
)
PIPELINE_EVENTS = frozenset(
    {
        "PipelineDefined",
        "StageAdded",
        "StageRenamed",
        "StageUpdated",
        "StagesReordered",
        "StageRemoved",
        "LostReasonAdded",
        "LostReasonRetired",
        "PipelineRenamed",
        "PipelineRulesChanged",
    }
)
OWNER_EVENTS = frozenset({"OwnerRegistered", "TeamAssigned"})


def weighted(value: Decimal, probability: int) -> Decimal:
    return (value * probability / 100).quantize(CENT, rounding=ROUND_HALF_EVEN)


def stage_probability(pipeline: dict[str, Any] | None, stage_id: str) -> int:
    if pipeline:
        for stage in (*pipeline["stages"], *pipeline.get("removed_stages", [])):
            if stage["id"] == stage_id:
                return int(stage["probability"])
    return 0


def stage_name(pipeline: dict[str, Any] | None, stage_id: str) -> str:
    """A stage's name now (a removed stage's last name; the id if unknown)."""
    if pipeline:
        for stage in (*pipeline["stages"], *pipeline.get("removed_stages", [])):
            if stage["id"] == stage_id:
                return str(stage["name"])
    return stage_id


def effective_probability(row: dict[str, Any], pipeline: dict[str, Any] | None) -> int:
    """Won deals count fully, lost ones not at all; open ones by override, else stage."""
    if row["status"] == "won":
        return 100
    if row["status"] == "lost":
        return 0
    if row.get("probability_override") is not None:
        return int(row["probability_override"])
    return stage_probability(pipeline, row["stage_id"])


@dataclass(frozen=True)
class DealFilter:
    """Filters of ``GET /v1/deals``; None means "any"."""

    pipeline_id: UUID | None = None
    stage: str | None = None
    status: str | None = None
    owner: str | None = None
    updated_since: datetime | None = None


class CurrentPipeline(Projection):
    """Deals as they are now, and per pipeline stage the count and value of open deals."""

    name = "current_pipeline"
    handles = DEAL_EVENTS | PIPELINE_EVENTS
    ignores = OWNER_EVENTS

    def define(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        deals = Table(
            f"current_pipeline_deals{suffix}",
            metadata,
            Column("deal_id", String(36), primary_key=True),
            Column("pipeline_id", String(36), nullable=False),
            Column("title", String(200), nullable=False),
            Column("value", Money(), nullable=False),
            Column("owner", String(100), nullable=False),
            Column("stage_id", String(100), nullable=False),
            Column("status", String(8), nullable=False),
            Column("probability", Integer, nullable=False),
            Column("probability_override", Integer, nullable=True),
            Column("weighted_value", Money(), nullable=False),
            Column("expected_close_date", Date, nullable=True),
            Column("entered_current_stage_at", UtcDateTime(), nullable=False),
            Column("last_activity_at", UtcDateTime(), nullable=False),
            Column("created_at", UtcDateTime(), nullable=False),
            Column("closed_at", UtcDateTime(), nullable=True),
            Column("lost_reason", String(100), nullable=True),
            Column("lost_note", String(2000), nullable=True),
            Column("external_id", String(200), nullable=True),
            Column("account", String(100), nullable=True),
            Column("product", String(100), nullable=True),
            Column("snoozed_until", UtcDateTime(), nullable=True),
            Column("snooze_reason", String(2000), nullable=True),
            Column("version", Integer, nullable=False),
            Column("updated_at", UtcDateTime(), nullable=False),
            Column("position", Integer, nullable=False),
        )
        Index(f"ix_cpd{suffix}_order", deals.c.created_at, deals.c.deal_id)
        Index(
            f"ix_cpd{suffix}_pipeline",
            deals.c.pipeline_id,
            deals.c.status,
            deals.c.stage_id,
            deals.c.created_at,
            deals.c.deal_id,
        )
        Index(
            f"ix_cpd{suffix}_pipeline_order",
            deals.c.pipeline_id,
            deals.c.created_at,
            deals.c.deal_id,
        )
        Index(f"ix_cpd{suffix}_owner", deals.c.owner, deals.c.created_at, deals.c.deal_id)
        Index(f"ix_cpd{suffix}_updated", deals.c.updated_at)
        pipelines = Table(
            f"current_pipeline_pipelines{suffix}",
            metadata,
            Column("pipeline_id", String(36), primary_key=True),
            Column("name", String(100), nullable=False),
            Column("currency", String(3), nullable=False),
            Column("stages", JSON, nullable=False),
            Column("removed_stages", JSON, nullable=False),
            Column("lost_reasons", JSON, nullable=False),
            Column("retired_lost_reasons", JSON, nullable=False),
            Column("allow_skipping_stages", Boolean, nullable=False),
            Column("allow_moving_back", Boolean, nullable=False),
            Column("stale_after_days", Integer, nullable=True),
            Column("version", Integer, nullable=False),
            Column("created_at", UtcDateTime(), nullable=False),
            Column("updated_at", UtcDateTime(), nullable=False),
            Column("position", Integer, nullable=False),
        )
        totals = Table(
            f"current_pipeline_stage_totals{suffix}",
            metadata,
            Column("pipeline_id", String(36), primary_key=True),
            Column("stage_id", String(100), primary_key=True),
            Column("open_count", Integer, nullable=False),
            Column("open_value", Money(), nullable=False),
            Column("weighted_value", Money(), nullable=False),
        )
        return {"deals": deals, "pipelines": pipelines, "totals": totals}

    async def apply(
        self, conn: AsyncConnection, tables: dict[str, Table], records: Sequence[EventRecord]
    ) -> None:
        deals_t, pipelines_t, totals_t = tables["deals"], tables["pipelines"], tables["totals"]
        dialect = conn.dialect.name

        pipelines = {
            r["pipeline_id"]: dict(r)
            for r in (await conn.execute(select(pipelines_t))).mappings().all()
        }
        deal_ids = list({r.key for r in records if r.event_type in DEAL_EVENTS})
        deals: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(deal_ids, 500):
            rows = await conn.execute(select(deals_t).where(deals_t.c.deal_id.in_(chunk)))
            deals.update({r["deal_id"]: dict(r) for r in rows.mappings().all()})

        before = {deal_id: _contribution(row) for deal_id, row in deals.items()}
        touched_deals: set[str] = set()
        touched_pipelines: set[str] = set()

        for record in records:
            if record.event_type in PIPELINE_EVENTS:
                pid = record.key
                pipelines[pid] = _pipeline_row(record, pipelines.get(pid))
                touched_pipelines.add(pid)
                stage_id = _probability_changed(record)
                if stage_id is not None:
                    await self._load_stage(conn, deals_t, pid, stage_id, deals, before)
                    for deal_id, current in deals.items():
                        if current["pipeline_id"] == pid and current["stage_id"] == stage_id:
                            deals[deal_id] = _with_probability(current, pipelines[pid])
                            touched_deals.add(deal_id)
            elif record.event_type in DEAL_EVENTS:
                deal_id = record.key
                changed = _apply_deal_event(deals.get(deal_id), record, pipelines)
                if changed is not None:
                    deals[deal_id] = changed
                    touched_deals.add(deal_id)

        deltas: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, ZERO, ZERO])
        for deal_id in touched_deals:
            for sign, contribution in (
                (-1, before.get(deal_id)),
                (1, _contribution(deals[deal_id])),
            ):
                if contribution is not None:
                    key, (count, value, weight) = contribution
                    delta = deltas[key]
                    delta[0] += sign * count
                    delta[1] += sign * value
                    delta[2] += sign * weight

        await bulk_upsert(
            conn, pipelines_t, ["pipeline_id"], [pipelines[p] for p in touched_pipelines]
        )
        await bulk_upsert(conn, deals_t, ["deal_id"], [deals[d] for d in touched_deals])
        if deltas:
            await self._apply_totals(conn, totals_t, deltas, dialect)

    async def _load_stage(
        self,
        conn: AsyncConnection,
        deals_t: Table,
        pipeline_id: str,
        stage_id: str,
        deals: dict[str, dict[str, Any]],
        before: dict[str, Any],
    ) -> None:
        """Bring the open deals of one stage into the batch (a probability changed)."""
        rows = await conn.execute(
            select(deals_t).where(
                deals_t.c.pipeline_id == pipeline_id,
                deals_t.c.stage_id == stage_id,
                deals_t.c.status == "open",
            )
        )
        for r in rows.mappings().all():
            if r["deal_id"] not in deals:
                deals[r["deal_id"]] = dict(r)
                before[r["deal_id"]] = _contribution(dict(r))

    async def _apply_totals(
        self,
        conn: AsyncConnection,
        totals_t: Table,
        deltas: dict[tuple[str, str], list[Any]],
        dialect: str,
    ) -> None:
        keys = [k for k, d in deltas.items() if d[0] or d[1] or d[2]]
        if not keys:
            return
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for chunk in _chunks(keys, 400):
            rows = await conn.execute(
                select(totals_t).where(
                    tuple_(totals_t.c.pipeline_id, totals_t.c.stage_id).in_(chunk)
                )
            )
            for r in rows.mappings().all():
                current[(r["pipeline_id"], r["stage_id"])] = dict(r)
        out = []
        for key in keys:
            row = current.get(key) or {
                "pipeline_id": key[0],
                "stage_id": key[1],
                "open_count": 0,
                "open_value": ZERO,
                "weighted_value": ZERO,
            }
            count, value, weight = deltas[key]
            out.append(
                {
                    **row,
                    "open_count": row["open_count"] + count,
                    "open_value": row["open_value"] + value,
                    "weighted_value": row["weighted_value"] + weight,
                }
            )
        # A stage with no open deals has no row, however the batches fell (a replay in
        # one batch never creates the zero rows that smaller batches would leave).
        empty = [(r["pipeline_id"], r["stage_id"]) for r in out if r["open_count"] == 0]
        out = [r for r in out if r["open_count"] != 0]
        for chunk in _chunks(empty, 400):
            await conn.execute(
                delete(totals_t).where(
                    tuple_(totals_t.c.pipeline_id, totals_t.c.stage_id).in_(chunk)
                )
            )
        await bulk_upsert(conn, totals_t, ["pipeline_id", "stage_id"], out)


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _contribution(
    row: dict[str, Any],
) -> tuple[tuple[str, str], tuple[int, Decimal, Decimal]] | None:
    if row["status"] != "open":
        return None
    return (row["pipeline_id"], row["stage_id"]), (1, row["value"], row["weighted_value"])


def _probability_changed(record: EventRecord) -> str | None:
    if record.event_type == "StageUpdated" and "probability" in record.payload["changes"]:
        return str(record.payload["stage_id"])
    return None


def _pipeline_row(record: EventRecord, existing: dict[str, Any] | None) -> dict[str, Any]:
    """The pipeline row after one of its events (stages as they are now)."""
    p, kind = record.payload, record.event_type
    if kind == "PipelineDefined" or existing is None:
        row: dict[str, Any] = {
            "pipeline_id": record.key,
            "name": p.get("name", ""),
            "currency": p.get("currency", ""),
            "stages": list(p.get("stages", [])),
            "removed_stages": [],
            "lost_reasons": list(p.get("lost_reasons", [])),
            "retired_lost_reasons": [],
            "allow_skipping_stages": p.get("allow_skipping_stages", True),
            "allow_moving_back": p.get("allow_moving_back", True),
            "stale_after_days": p.get("stale_after_days"),
            "created_at": record.when,
        }
    else:
        row = dict(existing)
        stages = [dict(s) for s in row["stages"]]
        if kind == "StageAdded":
            stages.insert(p["index"], dict(p["stage"]))
        elif kind == "StageRenamed":
            for s in stages:
                if s["id"] == p["stage_id"]:
                    s["name"] = p["to_name"]
        elif kind == "StageUpdated":
            for s in stages:
                if s["id"] == p["stage_id"]:
                    s.update(p["changes"])
        elif kind == "StagesReordered":
            by_id = {s["id"]: s for s in stages}
            stages = [by_id[i] for i in p["order"] if i in by_id]
        elif kind == "StageRemoved":
            row["removed_stages"] = [
                *row["removed_stages"],
                *(s for s in stages if s["id"] == p["stage_id"]),
            ]
            stages = [s for s in stages if s["id"] != p["stage_id"]]
        elif kind == "LostReasonAdded":
            row["lost_reasons"] = [*row["lost_reasons"], p["reason"]]
            row["retired_lost_reasons"] = [
                r for r in row["retired_lost_reasons"] if r != p["reason"]
            ]
        elif kind == "LostReasonRetired":
            row["lost_reasons"] = [r for r in row["lost_reasons"] if r != p["reason"]]
            row["retired_lost_reasons"] = [*row["retired_lost_reasons"], p["reason"]]
        elif kind == "PipelineRenamed":
            row["name"] = p["to_name"]
        elif kind == "PipelineRulesChanged":
            row.update(p["changes"])
        row["stages"] = stages
    row.update(
        version=record.version,
        updated_at=record.recorded_at or record.when,
        position=record.position,
    )
    return row


def _with_probability(row: dict[str, Any], pipeline: dict[str, Any] | None) -> dict[str, Any]:
    probability = effective_probability(row, pipeline)
    return {
        **row,
        "probability": probability,
        "weighted_value": weighted(row["value"], probability),
    }


def _apply_deal_event(
    row: dict[str, Any] | None, record: EventRecord, pipelines: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    p = record.payload
    when = record.when
    if record.event_type == "DealCreated":
        row = {
            "deal_id": record.key,
            "pipeline_id": str(p["pipeline_id"]),
            "title": p["title"],
            "value": Decimal(p["value"]),
            "owner": p["owner"],
            "stage_id": p["stage_id"],
            "status": "open",
            "expected_close_date": p.get("expected_close_date"),
            "entered_current_stage_at": when,
            "created_at": when,
            "closed_at": None,
            "lost_reason": None,
            "lost_note": None,
            "external_id": p.get("external_id"),
            "account": p.get("account"),
            "product": p.get("product"),
            "probability_override": None,
            "snoozed_until": None,
            "snooze_reason": None,
        }
    elif row is None:
        return None  # an event for a deal whose creation this projection never saw
    else:
        row = dict(row)
        kind = record.event_type
        if kind == "StageAdvanced":
            row["stage_id"] = p["to_stage_id"]
            row["entered_current_stage_at"] = when
        elif kind == "DealMoved":
            row["pipeline_id"] = str(p["to_pipeline_id"])
            row["stage_id"] = p["to_stage_id"]
            row["entered_current_stage_at"] = when
        elif kind == "DealWon":
            row["status"] = "won"
            row["closed_at"] = when
        elif kind == "DealLost":
            row.update(status="lost", closed_at=when, lost_reason=p["reason"], lost_note=p["note"])
        elif kind == "DealReopened":
            row.update(
                status="open",
                stage_id=p["stage_id"],
                entered_current_stage_at=when,
                closed_at=None,
                lost_reason=None,
                lost_note=None,
            )
        elif kind == "DealUpdated":
            for key, value in p["changes"].items():
                if key in row:
                    row[key] = Decimal(value) if key == "value" else value
        elif kind == "OwnerChanged":
            row["owner"] = p["to_owner"]
        elif kind == "DealSnoozed":
            # A snooze is not sales activity: it leaves last_activity_at alone.
            row.update(snoozed_until=p["until"], snooze_reason=p["reason"])
            row.update(version=record.version, updated_at=record.recorded_at or when)
            row["position"] = record.position
            return row
    if isinstance(row.get("expected_close_date"), str):
        row["expected_close_date"] = date.fromisoformat(row["expected_close_date"])
    row = _with_probability(row, pipelines.get(row["pipeline_id"]))
    row.update(
        last_activity_at=when,
        version=record.version,
        updated_at=record.recorded_at or when,
        position=record.position,
    )
    return row


# --- queries (used by the API; read-only) ------------------------------------------------


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


async def count_stale(
    conn: AsyncConnection,
    tables: dict[str, Table],
    pipeline_id: UUID,
    stage_id: str,
    *,
    rotting_days: int | None,
    stale_after_days: int | None,
    now: datetime,
) -> int:
    """Open, unsnoozed deals of one stage that are stale at ``now`` (see the stale report)."""
    deals = tables["deals"]
    conditions = []
    if rotting_days:
        conditions.append(deals.c.entered_current_stage_at < now - timedelta(days=rotting_days))
    if stale_after_days:
        conditions.append(deals.c.last_activity_at < now - timedelta(days=stale_after_days))
    if not conditions:
        return 0
    query = select(func.count()).where(
        deals.c.pipeline_id == str(pipeline_id),
        deals.c.stage_id == stage_id,
        deals.c.status == "open",
        or_(*conditions),
        or_(deals.c.snoozed_until.is_(None), deals.c.snoozed_until <= now),
    )
    return int((await conn.execute(query)).scalar_one())


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


async def stale_counts(
    conn: AsyncConnection,
    tables: dict[str, Table],
    pipeline_id: UUID,
    stages: Sequence[tuple[str, int | None]],
    *,
    stale_after_days: int | None,
    now: datetime,
) -> dict[str, int]:
    """:func:`count_stale` for several stages of a pipeline in one GROUP BY: per
    ``(stage_id, rotting_days)``, its open, unsnoozed deals that are stale at ``now``.
    Stages with no stale deal (or no threshold at all) are absent from the answer."""
    deals = tables["deals"]
    idle = (
        deals.c.last_activity_at < now - timedelta(days=stale_after_days)
        if stale_after_days
        else None
    )
    by_rotting: dict[int, list[str]] = defaultdict(list)
    idle_only: list[str] = []
    for stage_id, rotting_days in stages:
        if rotting_days:
            by_rotting[int(rotting_days)].append(stage_id)
        elif idle is not None:
            idle_only.append(stage_id)
    branches: list[Any] = []
    for rotting_days, ids in by_rotting.items():
        rotting = deals.c.entered_current_stage_at < now - timedelta(days=rotting_days)
        stale = rotting if idle is None else or_(rotting, idle)
        branches.append(and_(deals.c.stage_id.in_(ids), stale))
    if idle_only and idle is not None:
        branches.append(and_(deals.c.stage_id.in_(idle_only), idle))
    if not branches:
        return {}
    query = (
        select(deals.c.stage_id, func.count())
        .where(
            deals.c.pipeline_id == str(pipeline_id),
            deals.c.status == "open",
            or_(*branches),
            or_(deals.c.snoozed_until.is_(None), deals.c.snoozed_until <= now),
        )
        .group_by(deals.c.stage_id)
    )
    return {str(r[0]): int(r[1]) for r in (await conn.execute(query)).all()}
