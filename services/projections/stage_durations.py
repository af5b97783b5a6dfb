"""Read model 2, stage durations: one row per deal per visit to a stage, on business time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.records import EventRecord
from services.projections.base import Projection, UtcDateTime, bulk_upsert
from services.projections.current_pipeline import DEAL_EVENTS, OWNER_EVENTS, PIPELINE_EVENTS

EXIT_KINDS = ("advanced", "moved_back", "won", "lost", "moved_pipeline")


class StageDurations(Projection):
    """Each visit of a deal to a stage: when it entered, when and how it left."""

    name = "stage_durations"
    handles = DEAL_EVENTS
    ignores = PIPELINE_EVENTS | OWNER_EVENTS

    def define(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        visits = Table(
            f"stage_durations_visits{suffix}",
            metadata,
            Column("deal_id", String(36), primary_key=True),
            Column("visit", Integer, primary_key=True),
            Column("pipeline_id", String(36), nullable=False),
            Column("stage_id", String(100), nullable=False),
            Column("stage_name", String(100), nullable=False),
            Column("owner", String(100), nullable=False),
            Column("entered_at", UtcDateTime(), nullable=False),
            Column("exited_at", UtcDateTime(), nullable=True),
            Column("duration_seconds", Float, nullable=True),
            Column("exit_kind", String(16), nullable=True),
            Column("entered_position", Integer, nullable=False),
            Column("exited_position", Integer, nullable=True),
        )
        Index(f"ix_sdv{suffix}_stage", visits.c.pipeline_id, visits.c.stage_id, visits.c.entered_at)
        Index(f"ix_sdv{suffix}_owner", visits.c.owner)
        return {"visits": visits}

    async def apply(
        self, conn: AsyncConnection, tables: dict[str, Table], records: Sequence[EventRecord]
    ) -> None:
        visits_t = tables["visits"]
        deal_ids = list({r.key for r in records if r.event_type in DEAL_EVENTS})
        last: dict[str, dict[str, Any]] = {}
        for i in range(0, len(deal_ids), 500):
            chunk = deal_ids[i : i + 500]
            latest = (
                select(visits_t.c.deal_id, func.max(visits_t.c.visit).label("visit"))
                .where(visits_t.c.deal_id.in_(chunk))
                .group_by(visits_t.c.deal_id)
                .subquery()
            )
            rows = await conn.execute(
                select(visits_t).join(
                    latest,
                    and_(
                        visits_t.c.deal_id == latest.c.deal_id, visits_t.c.visit == latest.c.visit
                    ),
                )
            )
            last.update({r["deal_id"]: dict(r) for r in rows.mappings().all()})

        changed: dict[tuple[str, int], dict[str, Any]] = {}

        def open_visit(
            prev: dict[str, Any],
            stage_id: str,
            stage_name: str,
            rec: EventRecord,
            pipeline_id: str | None = None,
        ) -> None:
            row = {
                "deal_id": prev["deal_id"],
                "visit": prev["visit"] + 1,
                "pipeline_id": pipeline_id or prev["pipeline_id"],
                "stage_id": stage_id,
                "stage_name": stage_name,
                "owner": prev["owner"],
                "entered_at": rec.when,
                "exited_at": None,
                "duration_seconds": None,
                "exit_kind": None,
                "entered_position": rec.position,
                "exited_position": None,
            }
            last[row["deal_id"]] = row
            changed[(row["deal_id"], row["visit"])] = row

        def close_visit(row: dict[str, Any], kind: str, rec: EventRecord) -> None:
            row = dict(row)
            row.update(
                exited_at=rec.when,
                duration_seconds=(rec.when - row["entered_at"]).total_seconds(),
                exit_kind=kind,
                exited_position=rec.position,
            )
            last[row["deal_id"]] = row
            changed[(row["deal_id"], row["visit"])] = row

        for rec in records:
            kind = rec.event_type
            if kind not in DEAL_EVENTS:
                continue
            deal_id, p = rec.key, rec.payload
            prev = last.get(deal_id)
            if kind == "DealCreated":
                seed = {
                    "deal_id": deal_id,
                    "visit": 0,
                    "pipeline_id": str(p["pipeline_id"]),
                    "owner": p["owner"],
                }
                open_visit(seed, p["stage_id"], p["stage_name"], rec)
                continue
            if prev is None:
                continue
            is_open = prev["exited_at"] is None
            if kind == "StageAdvanced" and is_open:
                moved = "moved_back" if p.get("direction") == "backward" else "advanced"
                close_visit(prev, moved, rec)
                open_visit(last[deal_id], p["to_stage_id"], p["to_stage_name"], rec)
            elif kind == "DealMoved" and is_open:
                close_visit(prev, "moved_pipeline", rec)
                open_visit(
                    last[deal_id],
                    p["to_stage_id"],
                    p["to_stage_name"],
                    rec,
                    pipeline_id=str(p["to_pipeline_id"]),
                )
            elif kind in ("DealWon", "DealLost") and is_open:
                close_visit(prev, "won" if kind == "DealWon" else "lost", rec)
            elif kind == "DealReopened" and not is_open:
                open_visit(prev, p["stage_id"], p["stage_name"], rec)
            elif kind == "OwnerChanged" and is_open:
                # Only open deals change owner; the open visit (and later ones) carry it.
                row = dict(prev, owner=p["to_owner"])
                last[deal_id] = row
                changed[(deal_id, row["visit"])] = row

        await bulk_upsert(conn, visits_t, ["deal_id", "visit"], list(changed.values()))


# --- queries --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return float(sorted_values[low])
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low))


async def stage_report(
    conn: AsyncConnection,
    tables: dict[str, Table],
    pipeline_id: UUID,
    *,
    owner: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, dict[str, Any]]:
    """Per stage id: visits, completed-visit mean/median/p90 seconds, and open visits.

    Visits count when they entered the stage within [start, end).
    """
    visits = tables["visits"]
    clauses: list[Any] = [visits.c.pipeline_id == str(pipeline_id)]
    if owner is not None:
        clauses.append(visits.c.owner == owner)
    if start is not None:
        clauses.append(visits.c.entered_at >= start)
    if end is not None:
        clauses.append(visits.c.entered_at < end)
    if conn.dialect.name == "postgresql":
        return await _stage_report_sql(conn, visits, clauses)
    query = (
        select(visits.c.stage_id, visits.c.stage_name, visits.c.duration_seconds)
        .where(*clauses)
        .order_by(visits.c.stage_id, visits.c.duration_seconds)
    )
    report: dict[str, dict[str, Any]] = {}
    durations: dict[str, list[float]] = {}
    for stage_id, stage_name, duration in (await conn.execute(query)).all():
        entry = report.setdefault(
            stage_id, {"stage_id": stage_id, "stage_name": stage_name, "visits": 0, "open": 0}
        )
        entry["visits"] += 1
        if duration is None:
            entry["open"] += 1
        else:
            durations.setdefault(stage_id, []).append(float(duration))
    for stage_id, entry in report.items():
        values = sorted(durations.get(stage_id, []))
        entry["completed"] = len(values)
        entry["mean_seconds"] = sum(values) / len(values) if values else None
        entry["median_seconds"] = percentile(values, 0.5)
        entry["p90_seconds"] = percentile(values, 0.9)
    return report


async def _stage_report_sql(
    conn: AsyncConnection, visits: Table, clauses: list[Any]
) -> dict[str, dict[str, Any]]:
    """The same figures aggregated by PostgreSQL (percentile_cont interpolates the same way)."""
    duration = visits.c.duration_seconds
    query = (
        select(
            visits.c.stage_id,
            func.max(visits.c.stage_name),
            func.count(),
            func.count(duration),
            func.avg(duration),
            func.percentile_cont(0.5).within_group(duration),
            func.percentile_cont(0.9).within_group(duration),
        )
        .where(*clauses)
        .group_by(visits.c.stage_id)
    )
    report: dict[str, dict[str, Any]] = {}
    for stage_id, name, total, completed, mean, median, p90 in (await conn.execute(query)).all():
        report[stage_id] = {
            "stage_id": stage_id,
            "stage_name": name,
            "visits": total,
            "open": total - completed,
            "completed": completed,
            "mean_seconds": float(mean) if mean is not None else None,
            "median_seconds": float(median) if median is not None else None,
            "p90_seconds": float(p90) if p90 is not None else None,
        }
    return report


async def deal_visits(
    conn: AsyncConnection, tables: dict[str, Table], deal_id: UUID
) -> list[dict[str, Any]]:
    visits = tables["visits"]
    query = select(visits).where(visits.c.deal_id == str(deal_id)).order_by(visits.c.visit)
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]
