"""What webhook delivery keeps in the database beside the events.

* ``webhook_secrets``: each subscription's signing secret. Mutable, never an event,
  never exported, never logged.
* ``webhook_cursors``: each subscription's position in the log (the last event it is
  done with), the attempts at the next one and when to try again. Delivery moves it in
  the same transaction that records the outcome; ``epoch`` changes when an admin replays
  or resumes, so a delivery that was in flight meanwhile cannot move it back.
* ``webhook_deliveries``: one row per subscription and event tried (the newest
  ``MAX_DELIVERIES_KEPT`` per subscription), for ``GET /v1/webhooks/{id}/deliveries``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.projections.sql import Position, UtcDateTime, upsert
from services.queries.cursors import encode_cursor, position_cursor

MAX_DELIVERIES_KEPT = 10_000  # delivery rows kept per subscription, newest first
ERROR_CHARS = 1000  # of an error's text kept

DELIVERED = "delivered"
RETRYING = "retrying"
FAILED = "failed"

metadata = MetaData()
webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("webhook_id", String(36), primary_key=True),
    Column("secret", Text, nullable=False),
    Column("set_at", UtcDateTime(), nullable=False),
)
webhook_cursors = Table(
    "webhook_cursors",
    metadata,
    Column("webhook_id", String(36), primary_key=True),
    Column("position", Position, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),  # at the event after ``position``
    Column("next_attempt_at", UtcDateTime(), nullable=True),
)
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("webhook_id", String(36), primary_key=True),
    Column("position", Position, primary_key=True, autoincrement=False),
    Column("event_type", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("response_code", Integer, nullable=True),
    Column("latency_ms", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("next_attempt_at", UtcDateTime(), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
)


async def create_webhook_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


# --- secrets ---------------------------------------------------------------------------


async def put_secret(engine: AsyncEngine, webhook_id: str, secret: str, now: datetime) -> None:
    async with engine.begin() as conn:
        dialect = conn.dialect.name
        await conn.execute(
            upsert(webhook_secrets, ["webhook_id"], dialect),
            [{"webhook_id": webhook_id, "secret": secret, "set_at": now}],
        )


async def forget_secret(engine: AsyncEngine, webhook_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            delete(webhook_secrets).where(webhook_secrets.c.webhook_id == webhook_id)
        )


async def get_secret(engine: AsyncEngine, webhook_id: str) -> str | None:
    async with engine.connect() as conn:
        value = await conn.scalar(
            select(webhook_secrets.c.secret).where(webhook_secrets.c.webhook_id == webhook_id)
        )
    return str(value) if value is not None else None


# --- cursors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    webhook_id: str
    position: int
    epoch: int
    attempts: int
    next_attempt_at: datetime | None


def _cursor(row: Any) -> Cursor:
    return Cursor(
        row.webhook_id, int(row.position), int(row.epoch), int(row.attempts), row.next_attempt_at
    )


async def ensure_cursor(engine: AsyncEngine, webhook_id: str, start: int) -> Cursor:
    """The subscription's cursor, created at ``start`` (its creation's position)."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(webhook_cursors).where(webhook_cursors.c.webhook_id == webhook_id)
            )
        ).first()
        if row is not None:
            return _cursor(row)
        await conn.execute(
            insert(webhook_cursors).values(
                webhook_id=webhook_id, position=start, epoch=0, attempts=0, next_attempt_at=None
            )
        )
    return Cursor(webhook_id, start, 0, 0, None)


async def read_cursor(engine: AsyncEngine, webhook_id: str) -> Cursor | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(webhook_cursors).where(webhook_cursors.c.webhook_id == webhook_id)
            )
        ).first()
    return _cursor(row) if row is not None else None


async def read_cursors(engine: AsyncEngine) -> dict[str, Cursor]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(webhook_cursors))).all()
    return {row.webhook_id: _cursor(row) for row in rows}


async def skip_to(engine: AsyncEngine, cursor: Cursor, position: int) -> bool:
    """Move past events that are not for this subscription; False when the cursor changed
    under it (a replay or resume)."""
    async with engine.begin() as conn:
        return await _move(conn, cursor, position=position, attempts=0, next_attempt_at=None)


async def _move(conn: AsyncConnection, cursor: Cursor, **values: Any) -> bool:
    result = await conn.execute(
        update(webhook_cursors)
        .where(
            and_(
                webhook_cursors.c.webhook_id == cursor.webhook_id,
                webhook_cursors.c.epoch == cursor.epoch,
                webhook_cursors.c.position == cursor.position,
            )
        )
        .values(**values)
    )
    return bool(result.rowcount)


@dataclass(frozen=True)
class Outcome:
    """One attempt at one event, as recorded."""

    position: int
    event_type: str
    status: str  # delivered | retrying | failed
    attempts: int
    response_code: int | None
    latency_ms: int | None
    error: str | None
    next_attempt_at: datetime | None
    at: datetime


async def record_outcome(engine: AsyncEngine, cursor: Cursor, outcome: Outcome) -> bool:
    """Record an attempt and move the cursor in one transaction: past the event when it
    was delivered, else to its next attempt. False (nothing written) when the cursor
    changed meanwhile (a replay or resume won)."""
    async with engine.begin() as conn:
        if outcome.status == DELIVERED:
            values: dict[str, Any] = {
                "position": outcome.position,
                "attempts": 0,
                "next_attempt_at": None,
            }
        else:
            values = {"attempts": outcome.attempts, "next_attempt_at": outcome.next_attempt_at}
        if not await _move(conn, cursor, **values):
            await conn.rollback()
            return False
        row = {
            "webhook_id": cursor.webhook_id,
            "position": outcome.position,
            "event_type": outcome.event_type,
            "status": outcome.status,
            "attempts": outcome.attempts,
            "response_code": outcome.response_code,
            "latency_ms": outcome.latency_ms,
            "last_error": outcome.error[:ERROR_CHARS] if outcome.error else None,
            "next_attempt_at": outcome.next_attempt_at,
            "updated_at": outcome.at,
        }
        await conn.execute(
            upsert(webhook_deliveries, ["webhook_id", "position"], conn.dialect.name), [row]
        )
        if outcome.attempts == 1 and outcome.position % 100 == 0:
            await _prune(conn, cursor.webhook_id)
    return True


async def _prune(conn: AsyncConnection, webhook_id: str) -> None:
    """Keep the newest ``MAX_DELIVERIES_KEPT`` delivery rows of a subscription."""
    oldest_kept = await conn.scalar(
        select(webhook_deliveries.c.position)
        .where(webhook_deliveries.c.webhook_id == webhook_id)
        .order_by(webhook_deliveries.c.position.desc())
        .offset(MAX_DELIVERIES_KEPT - 1)
        .limit(1)
    )
    if oldest_kept is not None:
        await conn.execute(
            delete(webhook_deliveries).where(
                and_(
                    webhook_deliveries.c.webhook_id == webhook_id,
                    webhook_deliveries.c.position < oldest_kept,
                )
            )
        )


async def restart_at(engine: AsyncEngine, webhook_id: str, position: int | None) -> None:
    """Start the subscription's cursor again: at ``position`` (a replay: the next event
    sent is the first after it), or where it is with its attempts cleared (a resume)."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(webhook_cursors).where(webhook_cursors.c.webhook_id == webhook_id)
            )
        ).first()
        if row is None:
            if position is not None:
                await conn.execute(
                    insert(webhook_cursors).values(
                        webhook_id=webhook_id,
                        position=position,
                        epoch=1,
                        attempts=0,
                        next_attempt_at=None,
                    )
                )
            return
        values: dict[str, Any] = {"epoch": row.epoch + 1, "attempts": 0, "next_attempt_at": None}
        if position is not None:
            values["position"] = position
        await conn.execute(
            update(webhook_cursors).where(webhook_cursors.c.webhook_id == webhook_id).values(values)
        )


# --- the deliveries page ---------------------------------------------------------------


async def list_deliveries(
    engine: AsyncEngine, webhook_id: str, cursor: str | None, limit: int
) -> dict[str, Any]:
    """The subscription's deliveries, newest event first (``cursor``: the page after)."""
    before = position_cursor(cursor)
    query = select(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id)
    if before:
        query = query.where(webhook_deliveries.c.position < before)
    query = query.order_by(webhook_deliveries.c.position.desc()).limit(limit + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    items = [
        {
            "position": int(r.position),
            "event_type": r.event_type,
            "status": r.status,
            "attempts": int(r.attempts),
            "response_code": r.response_code,
            "latency_ms": r.latency_ms,
            "last_error": r.last_error,
            "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
            "updated_at": r.updated_at.isoformat(),
        }
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return {"data": items, "next_cursor": encode_cursor(items[-1]["position"]) if more else None}
