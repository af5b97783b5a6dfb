"""Reading ``audit_history``: events in log order, filtered; events per actor."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, Table, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.domain.times import first_of_month, starts_a_month
from services.projections.audit_history import schema


async def history(
    conn: AsyncConnection,
    tables: dict[str, Table],
    *,
    aggregate_id: UUID | None = None,
    actor: str | None = None,
    event_type: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    after_position: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit rows in log order, filtered; ``start``/``end`` bound ``occurred_at``."""
    events = tables["events"]
    # bound as a bigint: a cursor may name a position beyond what the column type holds
    clauses: list[Any] = [events.c.position > literal(after_position, BigInteger)]
    if aggregate_id is not None:
        clauses.append(events.c.aggregate_id == str(aggregate_id))
    if actor is not None:
        clauses.append(events.c.actor == actor)
    if event_type is not None:
        clauses.append(events.c.event_type == event_type)
    if start is not None:
        clauses.append(events.c.occurred_at >= start)
    if end is not None:
        clauses.append(events.c.occurred_at < end)
    query = select(events).where(*clauses).order_by(events.c.position).limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]


async def events_by_actor(
    conn: AsyncConnection,
    tables: dict[str, Table],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    schema_version: int = schema.SCHEMA_VERSION,
) -> dict[str, int]:
    """Per actor, the events they made with business time (recording time for events
    without one) in [start, end). A period of whole months (UTC) reads the counts per
    actor and month, tens of rows; any other period counts the events themselves."""
    whole_months = starts_a_month(start) and starts_a_month(end)
    if schema_version >= schema.ACTOR_COUNTS_SINCE and whole_months:
        counts = tables["actors"]
        where: list[Any] = []
        if start is not None:
            where.append(counts.c.month >= first_of_month(start))
        if end is not None:
            where.append(counts.c.month < first_of_month(end))
        query = select(counts.c.actor, func.sum(counts.c.events)).where(*where)
        rows = (await conn.execute(query.group_by(counts.c.actor))).all()
        return {actor: int(n) for actor, n in rows if actor and n}
    t = tables["events"]
    when = func.coalesce(t.c.occurred_at, t.c.recorded_at)
    clauses: list[Any] = []
    if start is not None:
        clauses.append(when >= start)
    if end is not None:
        clauses.append(when < end)
    query = select(t.c.actor, func.count()).where(*clauses).group_by(t.c.actor)
    return {actor: n for actor, n in (await conn.execute(query)).all() if actor}
