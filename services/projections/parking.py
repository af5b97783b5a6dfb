"""Poison events: an event a projection cannot apply is parked, and the projection goes on.

A batch is applied inside a SAVEPOINT. When that fails for any reason but the database
being unavailable, the savepoint is rolled back and the batch is split in halves, each
applied in its own savepoint, down to single events. An event that fails on its own is
parked: its projection, generation, position, type, aggregate, the error, a short
traceback and the time go to ``projection_parked`` in the same transaction that moves
the projection past it. The parts are applied in log order, so each sees the state the
earlier ones left, as event-by-event work would. A failure to reach the database is
never parked: it propagates, and the worker retries the whole batch later.

An event whose stored state cannot even be decoded is read as an :class:`UndecodableRecord`
and parked by every projection that reads its type, the others go on around it.

A retry applies parked events again through the same path: those that apply now leave
the table, those that still fail stay with their new error.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.application.failures import is_unavailable
from libs.application.records import EventRecord
from services.projections.base import Projection, lock_state, projection_parked, projection_state
from services.projections.source import EventSource, UndecodableRecord

log = logging.getLogger("dealtrail.projections")

PARKED_ERROR_CHARS = 1000
PARKED_TRACEBACK_CHARS = 4000
PARKED_TRACEBACK_FRAMES = 8  # innermost frames kept per exception of the chain
PARKED_TRACEBACK_LINE_CHARS = 240  # longer lines (a statement, its parameters) are cut
RETRY_BATCH = 100  # parked events retried per transaction (each holds the projection's lock)


class OutdatedTables(RuntimeError):
    """The projection's tables are at a schema version this release does not write."""


def reads(projection: Projection, record: EventRecord) -> bool:
    """Whether the projection uses events of the record's type."""
    return reads_type(projection, record.event_type)


def reads_type(projection: Projection, event_type: str) -> bool:
    """Whether the projection uses events of this type."""
    return event_type in projection.handles or getattr(projection, "records_unknown", False)


@dataclass(frozen=True)
class Parked:
    """An event a projection could not apply, and why (the latest failure)."""

    name: str
    generation: int
    position: int
    event_type: str
    aggregate_id: str
    error: str
    traceback: str
    attempts: int
    parked_at: datetime

    def as_json_dict(self) -> dict[str, Any]:
        return {
            "projection": self.name,
            "generation": self.generation,
            "position": self.position,
            "event_type": self.event_type,
            "aggregate_id": self.aggregate_id,
            "error": self.error,
            "attempts": self.attempts,
            "parked_at": self.parked_at.isoformat(),
        }


def _storable(value: str, limit: int, *, keep_end: bool = False) -> str:
    """Text any backend stores: no NUL, no lone surrogates, at most ``limit`` characters."""
    value = value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    if len(value) <= limit:
        return value
    return "..." + value[-(limit - 3) :] if keep_end else value[: limit - 3] + "..."


def describe_error(exc: BaseException) -> tuple[str, str]:
    """The error's type and first line, and a short traceback, both ready to store."""
    lines = str(exc).strip().splitlines()
    error = type(exc).__name__ + (f": {lines[0]}" if lines else "")
    trace = "\n".join(
        line
        if len(line) <= PARKED_TRACEBACK_LINE_CHARS
        else line[:PARKED_TRACEBACK_LINE_CHARS] + "..."
        for chunk in traceback.format_exception(exc, limit=-PARKED_TRACEBACK_FRAMES)
        for line in chunk.rstrip("\n").split("\n")
    )
    return (
        _storable(error, PARKED_ERROR_CHARS),
        _storable(trace, PARKED_TRACEBACK_CHARS, keep_end=True),
    )


async def park(
    conn: AsyncConnection, name: str, generation: int, record: EventRecord, exc: BaseException
) -> Parked:
    """Record that ``record`` could not be applied (again), in the open transaction."""
    error, trace = describe_error(exc)
    row = {
        "name": name,
        "generation": generation,
        "position": record.position,
        "event_type": _storable(record.event_type, 200),
        "aggregate_id": _storable(record.key, 36),
        "error": error,
        "traceback": trace,
        "attempts": 1,
        "parked_at": datetime.now(UTC),
    }
    insert_fn = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert_fn(projection_parked).values(row)
    upsert = stmt.on_conflict_do_update(
        index_elements=["name", "generation", "position"],
        set_={
            "error": stmt.excluded.error,
            "traceback": stmt.excluded.traceback,
            "parked_at": stmt.excluded.parked_at,
            "attempts": projection_parked.c.attempts + 1,
        },
    ).returning(projection_parked.c.attempts)
    attempts = (await conn.execute(upsert)).scalar_one()
    log.error(
        "projection %s parked the event at position %d (%s of %s): %s",
        name,
        record.position,
        record.event_type,
        record.key,
        error,
    )
    return Parked(**{**row, "attempts": attempts})


async def apply_or_park(
    conn: AsyncConnection, projection: Projection, generation: int, records: Sequence[EventRecord]
) -> list[Parked]:
    """Apply ``records`` to the generation's tables; park each event that fails alone,
    and each undecodable event the projection reads.

    Runs in the caller's open transaction; returns what was parked. Raises only when the
    database is unavailable (nothing of the batch is then kept).
    """
    tables = projection.tables(generation)
    parked: list[Parked] = []

    async def attempt(part: Sequence[EventRecord]) -> None:
        failure: Exception | None = None
        try:
            async with conn.begin_nested():
                await projection.apply(conn, tables, part)
        except Exception as exc:
            if is_unavailable(exc):
                raise
            failure = exc
        if failure is None:
            return
        if len(part) == 1:
            parked.append(await park(conn, projection.name, generation, part[0], failure))
            return
        middle = len(part) // 2
        await attempt(part[:middle])
        await attempt(part[middle:])

    good: list[EventRecord] = []
    for record in records:
        if isinstance(record, UndecodableRecord):
            if good:
                await attempt(good)
                good = []
            if reads(projection, record) and record.error is not None:
                parked.append(await park(conn, projection.name, generation, record, record.error))
        else:
            good.append(record)
    if good:
        await attempt(good)
    return parked


def _active(names: Iterable[str] | None = None) -> Any:
    """Parked rows of each projection's serving generation."""
    condition = and_(
        projection_state.c.name == projection_parked.c.name,
        projection_state.c.generation == projection_parked.c.generation,
    )
    query = select(projection_parked).join(projection_state, condition)
    if names is not None:
        query = query.where(projection_parked.c.name.in_(list(names)))
    return query


async def parked_counts(conn: AsyncConnection) -> dict[str, int]:
    """Per projection, how many events of its serving generation are parked."""
    active = _active().subquery()
    rows = await conn.execute(select(active.c.name, func.count()).group_by(active.c.name))
    return {name: count for name, count in rows.all()}


async def list_parked(
    conn: AsyncConnection,
    names: Iterable[str] | None = None,
    *,
    positions: Iterable[int] | None = None,
    limit: int | None = None,
) -> list[Parked]:
    """Parked events of the serving generations, by projection and position."""
    query = _active(names)
    if positions is not None:
        query = query.where(projection_parked.c.position.in_(list(positions)))
    query = query.order_by(projection_parked.c.name, projection_parked.c.position).limit(limit)
    rows = (await conn.execute(query)).mappings().all()
    return [Parked(**{c.name: r[c.name] for c in projection_parked.columns}) for r in rows]


async def forget_parked(conn: AsyncConnection, name: str, keep: Iterable[int]) -> None:
    """Delete the projection's parked rows of every generation not in ``keep``."""
    await conn.execute(
        delete(projection_parked).where(
            projection_parked.c.name == name,
            projection_parked.c.generation.not_in(list(keep)),
        )
    )


@dataclass
class RetryResult:
    """What a retry did: events that now applied, and those that failed again."""

    applied: list[int] = field(default_factory=list)
    failed: list[Parked] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # parked, but not found in the log


def _read_positions(source: EventSource, positions: Sequence[int]) -> list[EventRecord]:
    found = []
    for position in positions:
        records = source.read(position - 1, 1)
        if records and records[0].position == position:
            found.append(records[0])
    return found


async def retry_parked(
    engine: AsyncEngine,
    source: EventSource,
    projection: Projection,
    *,
    position: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RetryResult:
    """Apply the projection's parked events again (all, or the one at ``position``).

    Works through them in log order, :data:`RETRY_BATCH` per transaction under the
    projection's lock, through :func:`apply_or_park`.
    """
    async with engine.connect() as conn:
        todo = [
            p.position
            for p in await list_parked(
                conn, [projection.name], positions=None if position is None else [position]
            )
        ]
    result = RetryResult()
    for start in range(0, len(todo), RETRY_BATCH):
        chunk = todo[start : start + RETRY_BATCH]
        records = await asyncio.to_thread(_read_positions, source, chunk)
        async with engine.begin() as conn:
            state = await lock_state(conn, projection.name)
            problem = projection.schema_problem(state.schema_version)
            if problem:
                raise OutdatedTables(problem)
            # A rebuild may have switched generations since: retry what is still parked.
            parked_now = await list_parked(conn, [projection.name], positions=chunk)
            still = {p.position for p in parked_now}
            records = [r for r in records if r.position in still]
            failed = await apply_or_park(conn, projection, state.generation, records)
            failed_positions = {p.position for p in failed}
            applied = [r.position for r in records if r.position not in failed_positions]
            if applied:
                await conn.execute(
                    delete(projection_parked).where(
                        projection_parked.c.name == projection.name,
                        projection_parked.c.generation == state.generation,
                        projection_parked.c.position.in_(applied),
                    )
                )
        result.applied += applied
        result.failed += failed
        result.missing += sorted(still - {r.position for r in records})
        if progress:
            progress(min(start + RETRY_BATCH, len(todo)), len(todo))
    return result
