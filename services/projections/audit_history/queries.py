"""Reading ``audit_history``: events in log order, filtered."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, Table, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection


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
