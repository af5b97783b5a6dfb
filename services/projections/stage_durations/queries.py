"""Reading ``stage_durations``: per stage visits and their durations, a deal's visits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection


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
