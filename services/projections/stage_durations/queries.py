"""Reading ``stage_durations``: per stage visits and their durations, a deal's visits.

The per-stage figures come from one of two paths, with the same answers:

- the histogram (visits counted per stage, month of entry and duration bucket): when the
  tables have one and the period, if any, starts and ends on the first of a month (UTC)
  and no owner is asked for. Counts and the mean come from a few hundred histogram rows;
  each median and 90th percentile is then read exactly: the histogram says which bucket
  holds the wanted rank and how many shorter visits precede it, and one index scan reads
  the one or two visits at that rank from that bucket on;
- the visits themselves (every other filter): the database groups and sorts the visits.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Integer, Table, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.domain.times import first_of_month, starts_a_month
from services.projections.stage_durations import schema

QUANTILES = (("median_seconds", 0.5), ("p90_seconds", 0.9))


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
    schema_version: int = schema.SCHEMA_VERSION,
    named: Collection[str] = (),
) -> dict[str, dict[str, Any]]:
    """Per stage id: visits, completed-visit mean/median/p90 seconds, and open visits.

    Visits count when they entered the stage within [start, end). ``named``: the stages
    whose names the caller has (the histogram path reads the others' from their visits).
    """
    visits = tables["visits"]
    clauses: list[Any] = [visits.c.pipeline_id == str(pipeline_id)]
    if owner is not None:
        clauses.append(visits.c.owner == owner)
    if start is not None:
        clauses.append(visits.c.entered_at >= start)
    if end is not None:
        clauses.append(visits.c.entered_at < end)
    if histogram_answers(schema_version, owner=owner, start=start, end=end):
        return await _stage_report_histogram(
            conn, tables, str(pipeline_id), clauses, start, end, named
        )
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


def histogram_answers(
    schema_version: int, *, owner: str | None, start: datetime | None, end: datetime | None
) -> bool:
    """Whether the histogram answers a report with these filters (else the visits do)."""
    return (
        schema_version >= schema.HISTOGRAM_SINCE
        and owner is None
        and starts_a_month(start)
        and starts_a_month(end)
    )


async def _stage_report_histogram(
    conn: AsyncConnection,
    tables: dict[str, Table],
    pipeline_id: str,
    clauses: list[Any],
    start: datetime | None,
    end: datetime | None,
    named: Collection[str],
) -> dict[str, dict[str, Any]]:
    h, visits = tables["histogram"], tables["visits"]
    where: list[Any] = [h.c.pipeline_id == pipeline_id]
    if start is not None:
        where.append(h.c.month >= first_of_month(start))
    if end is not None:
        where.append(h.c.month < first_of_month(end))
    query = (
        select(h.c.stage_id, h.c.bucket, func.sum(h.c.visits), func.sum(h.c.duration_micros))
        .where(*where)
        .group_by(h.c.stage_id, h.c.bucket)
    )
    # per stage: open visits, and (bucket, visits, micros) of the completed ones
    opened: dict[str, int] = {}
    buckets: dict[str, list[tuple[int, int, int]]] = {}
    for stage_id, bucket, n, micros in (await conn.execute(query)).all():
        if not n:
            continue
        if bucket == schema.OPEN:
            opened[stage_id] = int(n)
        else:
            buckets.setdefault(stage_id, []).append((int(bucket), int(n), int(micros)))
    report: dict[str, dict[str, Any]] = {}
    wanted: list[tuple[str, str, int, float, int]] = []  # stage, key, bucket, rank, offset
    for stage_id in sorted(set(opened) | set(buckets)):
        counted = sorted(buckets.get(stage_id, []))
        completed = sum(n for _, n, _ in counted)
        micros = sum(m for _, _, m in counted)
        report[stage_id] = {
            "stage_id": stage_id,
            "stage_name": None,
            "visits": opened.get(stage_id, 0) + completed,
            "open": opened.get(stage_id, 0),
            "completed": completed,
            "mean_seconds": micros / completed / 1_000_000 if completed else None,
            "median_seconds": None,
            "p90_seconds": None,
        }
        for key, q in QUANTILES if completed else ():
            rank = (completed - 1) * q
            low, before = math.floor(rank), 0
            for bucket, n, _ in counted:
                if low < before + n:
                    wanted.append((stage_id, key, bucket, rank, low - before))
                    break
                before += n
    if wanted:
        d = visits.c.duration_seconds
        branches = []
        for i, (stage_id, _, bucket, _, offset) in enumerate(wanted):
            floor = schema.bucket_floor(bucket)
            branches.append(
                select(literal(i, Integer).label("i"), d.label("d"))
                .where(
                    *clauses,
                    visits.c.stage_id == stage_id,
                    d.is_not(None) if floor is None else d >= floor,
                )
                .order_by(d)
                .offset(offset)
                .limit(2)
                .subquery()
            )
        found: dict[int, list[float]] = {}
        selects = [select(*b.c) for b in branches]
        statement = union_all(*selects) if len(selects) > 1 else selects[0]
        for i, value in (await conn.execute(statement)).all():
            found.setdefault(int(i), []).append(float(value))
        for i, (stage_id, key, _, rank, _) in enumerate(wanted):
            values = sorted(found.get(i, []))
            low, high = math.floor(rank), math.ceil(rank)
            if low == high or len(values) < 2:
                report[stage_id][key] = values[0]
            else:
                report[stage_id][key] = values[0] + (values[1] - values[0]) * (rank - low)
    for stage_id in [s for s in report if s not in named]:
        name_query = select(func.max(visits.c.stage_name)).where(
            visits.c.pipeline_id == pipeline_id, visits.c.stage_id == stage_id
        )
        report[stage_id]["stage_name"] = (await conn.execute(name_query)).scalar()
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
