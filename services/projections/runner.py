"""The projection worker: follows the event log and keeps every read model up to date.

One worker loop serves a group of projections. It reads a batch of events once, decodes
it once, and applies it to each projection in that projection's own transaction together
with its new position. On PostgreSQL it wakes on the store's NOTIFY and holds a
session-level advisory lock per projection, so that a second worker process stands by and
takes over when the first one dies. On SQLite it polls, and an in-process command wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.failures import is_unavailable
from libs.application.records import EventRecord
from libs.application.sql import advisory_key, connect_raw
from libs.application.store import StoreLocation
from libs.observability import metrics
from services.projections.base import (
    Projection,
    State,
    create_state_table,
    each_projection,
    lock_state,
    projection_state,
    read_states,
)
from services.projections.catalog import all_projections
from services.projections.parking import apply_or_park, parked_counts
from services.projections.source import EventSource

log = logging.getLogger("dealtrail.projections")

DEFAULT_BATCH_SIZE = 500
STATUS_BEHIND_LIMIT = 1_000_000  # events counted behind a projection, at most
POLL_SECONDS = 0.2
LOCK_RETRY_SECONDS = 1.0


def unknown_count(projection: Projection, records: Sequence[EventRecord]) -> int:
    return unknown_types(projection, [r.event_type for r in records])


def unknown_types(projection: Projection, event_types: Iterable[str]) -> int:
    """How many of these events are of a type the projection neither reads nor ignores."""
    if getattr(projection, "records_unknown", False):
        return 0
    known = projection.handles | getattr(projection, "ignores", frozenset())
    return sum(1 for t in event_types if t not in known)


async def ensure_projection(engine: AsyncEngine, projection: Projection) -> State:
    """Create the state row and the active generation's tables if missing."""
    async with engine.begin() as conn:
        states = await read_states(conn, [projection.name])
        state = states.get(projection.name)
        if state is None:
            version = projection.schema_version
            await conn.execute(
                insert(projection_state).values(
                    name=projection.name,
                    generation=1,
                    position=0,
                    skipped=0,
                    schema_version=version,
                )
            )
            state = State(projection.name, 1, 0, schema_version=version)
        await projection.create_tables(conn, state.generation)
        return state


async def apply_batch(
    engine: AsyncEngine, projection: Projection, records: Sequence[EventRecord]
) -> int:
    """Apply the part of ``records`` after the projection's position; return new position.

    The state row is locked first, so two workers never apply the same events twice. An
    event the projection cannot apply is parked in the same transaction (``parking``).
    A batch that moved the position is timed and counted (``metrics``) once committed.
    Tables at another schema version than the projection's are left alone (a rebuild by
    another release may have switched them since the caller looked).
    """
    started = time.perf_counter()
    async with engine.begin() as conn:
        state = await lock_state(conn, projection.name)
        todo = [r for r in records if r.position > state.position]
        if not todo or projection.schema_problem(state.schema_version):
            return state.position
        parked = await apply_or_park(conn, projection, state.generation, todo)
        new_position = todo[-1].position
        await conn.execute(
            update(projection_state)
            .where(projection_state.c.name == projection.name)
            .values(position=new_position, skipped=state.skipped + unknown_count(projection, todo))
        )
    metrics.projection_batch(projection.name, time.perf_counter() - started, len(todo), len(parked))
    return new_position


@dataclass
class Worker:
    """Keeps a group of projections caught up with the log until stopped."""

    engine: AsyncEngine
    source: EventSource
    location: StoreLocation
    projections: list[Projection] = field(default_factory=all_projections)
    batch_size: int = DEFAULT_BATCH_SIZE
    poll_seconds: float = POLL_SECONDS
    use_advisory_locks: bool = True
    on_error: Callable[[BaseException], None] | None = None

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: set[str] = set()
        self._lock_conn: Any = None
        self.positions: dict[str, int] = {}
        # Projections whose tables are at another schema version: why they are not run.
        self.refused: dict[str, str] = {}

    # --- control --------------------------------------------------------------------

    def poke(self) -> None:
        """Wake the worker now; safe to call from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    @property
    def held(self) -> set[str]:
        return set(self._held)

    async def setup(self) -> None:
        await create_state_table(self.engine)
        for projection in self.projections:
            state = await ensure_projection(self.engine, projection)
            self.positions[projection.name] = state.position

    # --- main loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the log until :meth:`stop`; survives database outages."""
        self._loop = asyncio.get_running_loop()
        listener: Any = None
        try:
            while not self._stopping.is_set():
                try:
                    if self.location.is_postgres and self.use_advisory_locks:
                        listener = await self._ensure_lock_connection(listener)
                    active = self._active_projections()
                    progressed = await self.step(active) if active else 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a worker outlives outages and its own failures
                    if is_unavailable(exc):
                        log.warning("projection worker: %s; retrying", exc)
                    else:
                        log.exception("projection worker failed; retrying", exc_info=exc)
                    if self.on_error is not None:
                        self.on_error(exc)
                    await self._drop_lock_connection()
                    listener = None
                    await self._sleep(LOCK_RETRY_SECONDS)
                    continue
                if not progressed:
                    standby = self.location.is_postgres and self.use_advisory_locks
                    waiting_for_lock = standby and len(self._held) < len(self.projections)
                    await self._sleep(LOCK_RETRY_SECONDS if waiting_for_lock else self.poll_seconds)
        finally:
            await self._drop_lock_connection()

    def _active_projections(self) -> list[Projection]:
        if self.location.is_postgres and self.use_advisory_locks:
            return [p for p in self.projections if p.name in self._held]
        return list(self.projections)

    def active_names(self) -> list[str]:
        """The projections this worker applies events to now (a standby: none)."""
        if self._loop is None:
            return []
        return [p.name for p in self._active_projections()]

    async def step(self, projections: Sequence[Projection] | None = None) -> int:
        """Process one batch for the given projections; return how many events were read.

        A projection whose tables are at another schema version is not run: it is named in
        :attr:`refused` and logged once, with the rebuild that makes it run again.
        """
        projections = list(projections if projections is not None else self.projections)
        async with self.engine.connect() as conn:
            states = await read_states(conn, [p.name for p in projections])
        projections = [p for p in projections if self._may_write(p, states[p.name])]
        if not projections:
            return 0
        start = min(states[p.name].position for p in projections)
        records = await asyncio.to_thread(self.source.read, start, self.batch_size)
        if not records:
            return 0
        positions = await each_projection(
            self.engine, projections, lambda p: apply_batch(self.engine, p, records)
        )
        self.positions.update({p.name: pos for p, pos in zip(projections, positions, strict=True)})
        return len(records)

    def _may_write(self, projection: Projection, state: State) -> bool:
        problem = projection.schema_problem(state.schema_version)
        if problem is None:
            if self.refused.pop(projection.name, None):
                log.info(
                    "projection %s: tables at schema version %d, running",
                    projection.name,
                    state.schema_version,
                )
            return True
        if self.refused.get(projection.name) != problem:
            log.error("%s; not running it until then", problem)
            self.refused[projection.name] = problem
        return False

    async def catch_up(self, projections: Sequence[Projection] | None = None) -> None:
        """Process batches until every given projection has reached the current head."""
        while await self.step(projections):
            pass

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    # --- PostgreSQL: advisory locks and LISTEN -------------------------------------------

    async def _ensure_lock_connection(self, listener: Any) -> Any:

        conn = self._lock_conn
        if conn is None or conn.is_closed():
            self._held.clear()
            conn = await connect_raw(self.location)
            self._lock_conn = conn
            channel = self.source.channel
            if channel:
                await conn.add_listener(channel, lambda *_: self._wake.set())
        for projection in self.projections:
            if projection.name in self._held:
                continue
            key = advisory_key(self.location, projection.name)
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                self._held.add(projection.name)
                log.info("projection %s: this worker took the lock", projection.name)
        return conn

    async def _drop_lock_connection(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        self._held.clear()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)


async def projection_status(
    engine: AsyncEngine,
    source: EventSource,
    *,
    behind_limit: int = STATUS_BEHIND_LIMIT,
    head: int | None = None,
) -> list[dict[str, Any]]:
    """Per projection: generation, position, head of the log, events behind, parked and
    skipped events. ``behind`` is counted up to ``behind_limit`` (``behind_exact`` says
    whether the count stopped there)."""
    if head is None:
        head = await asyncio.to_thread(source.head)
    async with engine.connect() as conn:
        states = await read_states(conn)
        parked = await parked_counts(conn)
        positions = {
            p.name: states[p.name].position if p.name in states else 0 for p in all_projections()
        }
        behind = {
            position: await source.count_after(conn, position, behind_limit)
            for position in sorted(set(positions.values()))
        }
    out = []
    for projection in all_projections():
        name, position = projection.name, positions[projection.name]
        state = states.get(name)
        out.append(
            {
                "name": name,
                "generation": state.generation if state else None,
                "position": position,
                "head": head,
                "behind": behind[position],
                "behind_exact": behind[position] < behind_limit,
                "parked": parked.get(name, 0),
                "skipped": state.skipped if state else 0,
                "rebuilding": state.building_generation if state else None,
                "schema_version": state.schema_version if state else None,
                "schema_problem": projection.schema_problem(state.schema_version)
                if state
                else None,
            }
        )
    return out


async def read_position(engine: AsyncEngine, name: str) -> State | None:
    async with engine.connect() as conn:
        row = (
            (await conn.execute(select(projection_state).where(projection_state.c.name == name)))
            .mappings()
            .first()
        )
    if row is None:
        return None
    return State.of(row)
