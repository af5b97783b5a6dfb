"""Open a read model at its active generation for a query, honouring ``min_position``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.projections.base import Projection, projection_state
from services.projections.catalog import all_projections

log = logging.getLogger("dealtrail.projections")


class ReadModelUnavailable(Exception):
    """The read model cannot answer yet (not built, or behind the requested position)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


WAIT_POLL_SECONDS = 0.02
DEFAULT_MAX_WAITERS = 256

ReadsSeen = dict[str, tuple[int, int]]
"""Per read model opened: the ``(generation, position)`` of the first view opened on it."""

_reads_seen: ContextVar[ReadsSeen | None] = ContextVar("read_models_seen", default=None)


@contextmanager
def recording_reads() -> Iterator[ReadsSeen]:
    """Record every read model that :meth:`ReadModels.open` opens in this context (tasks
    started inside it included), with the generation and position the query read."""
    seen: ReadsSeen = {}
    token = _reads_seen.set(seen)
    try:
        yield seen
    finally:
        _reads_seen.reset(token)


def note_read(name: str, generation: int, position: int) -> None:
    """Tell :func:`recording_reads` (if one is active) that ``name`` was read at this state;
    of several reads of one read model, the earliest state counts."""
    seen = _reads_seen.get()
    if seen is not None:
        state = (int(generation), int(position))
        seen[name] = min(seen.get(name, state), state)


@dataclass
class ReadView:
    """An open connection on one projection's active tables, and the position they reflect."""

    conn: AsyncConnection
    tables: dict[str, Table]
    position: int
    generation: int
    schema_version: int = 0  # the layout of these tables (``Projection.schema_version``)


class ReadModels:
    """Opens read models for queries; waits (bounded) for a requested position.

    A query that asks for a position its read model has not reached yet waits without a
    database connection: one poller per process reads every projection's position (one
    small query every ``WAIT_POLL_SECONDS``, only while someone waits) and wakes the
    waiters; a waiter checks out a connection only once its position is there. At most
    ``max_waiters`` queries wait at once per process; the next one gets 503
    ``too_many_waiters``.
    """

    def __init__(
        self, engine: AsyncEngine, wait_seconds: float, max_waiters: int = DEFAULT_MAX_WAITERS
    ) -> None:
        self.engine = engine
        self.wait_seconds = wait_seconds
        self.max_waiters = max_waiters
        self.projections: dict[str, Projection] = {p.name: p for p in all_projections()}
        self._states_read: asyncio.Future[dict[str, tuple[int, int]]] | None = None
        self._waiters = 0
        self._known: dict[str, tuple[int, int]] = {}
        self._polled = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        # Read models whose (still readable) tables no worker of this release advances.
        self._outdated: dict[str, str | None] = {}

    @property
    def waiting(self) -> int:
        """Queries waiting for a position right now."""
        return self._waiters

    async def states(self) -> dict[str, tuple[int, int]]:
        """Every built read model's ``(generation, position)``, as committed now.

        Callers that arrive while a read is under way share it (one small query however
        many requests ask at once), so the answer may be a moment older than the call:
        fine for cache keys, which a ``min_position`` check backs up.
        """
        pending = self._states_read
        if pending is None:
            pending = asyncio.ensure_future(self._read_states())
            self._states_read = pending
            pending.add_done_callback(self._states_done)
        return await asyncio.shield(pending)

    async def _read_states(self) -> dict[str, tuple[int, int]]:
        query = select(
            projection_state.c.name, projection_state.c.generation, projection_state.c.position
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

    def _states_done(self, future: asyncio.Future[dict[str, tuple[int, int]]]) -> None:
        if self._states_read is future:
            self._states_read = None
        if not future.cancelled():
            future.exception()  # retrieved here; every waiter gets it raised as well

    async def _state(self, conn: AsyncConnection, name: str) -> tuple[int, int, int] | None:
        """The read model's ``(generation, position, schema version)``, after checking that
        this release can read its tables (:class:`ReadModelUnavailable`
        ``projection_outdated`` if not)."""
        columns = (
            projection_state.c.generation,
            projection_state.c.position,
            projection_state.c.schema_version,
        )
        row = (await conn.execute(select(*columns).where(projection_state.c.name == name))).first()
        if row is None:
            return None
        problem = self.projections[name].schema_problem(row[2], reading=True)
        if problem:
            raise ReadModelUnavailable("projection_outdated", problem, {"schema_version": row[2]})
        self._outdated[name] = self.projections[name].schema_problem(row[2])
        return (row[0], row[1], row[2])

    @asynccontextmanager
    async def open(self, name: str, min_position: int | None = None) -> AsyncIterator[ReadView]:
        projection = self.projections[name]
        deadline = time.monotonic() + self.wait_seconds
        while True:
            async with self.engine.connect() as conn:
                state = await self._state(conn, name)
                if state is not None and (min_position is None or state[1] >= min_position):
                    generation, position, version = state
                    note_read(name, generation, position)
                    yield ReadView(
                        conn, projection.tables(generation), position, generation, version
                    )
                    return
            await self._wait(
                name, min_position or 0, deadline, state[:2] if state is not None else None
            )

    async def _wait(
        self, name: str, target: int, deadline: float, state: tuple[int, int] | None
    ) -> None:
        """Wait, holding no connection, until ``name`` seems to have reached ``target``;
        raise :class:`ReadModelUnavailable` when the deadline passes first."""
        if self._waiters >= self.max_waiters:
            raise ReadModelUnavailable(
                "too_many_waiters",
                f"{self._waiters} queries are already waiting for read models to catch up; "
                "retry shortly",
                {"max_waiters": self.max_waiters},
            )
        self._waiters += 1
        try:
            if self._poller is None or self._poller.done():
                self._poller = asyncio.create_task(self._poll(), name="read-model-positions")
            while True:
                known = self._known.get(name, state)
                if known is not None and known[1] >= target:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _behind(name, known, target, self.wait_seconds, self._outdated.get(name))
                polled = self._polled
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(polled.wait(), timeout=remaining)
        finally:
            self._waiters -= 1

    async def _poll(self) -> None:
        """Read every projection's position while anyone waits; wake the waiters each time."""
        while self._waiters > 0:
            try:
                self._known = await self.states()
            except Exception as exc:  # noqa: BLE001 - waiters time out; the next query reports it
                log.warning("reading projection positions: %s", exc)
            polled, self._polled = self._polled, asyncio.Event()
            polled.set()
            await asyncio.sleep(WAIT_POLL_SECONDS)


def _behind(
    name: str,
    state: tuple[int, int] | None,
    target: int,
    waited: float,
    outdated: str | None = None,
) -> ReadModelUnavailable:
    if state is None:
        return ReadModelUnavailable(
            "projection_not_ready", f"read model {name} has not been built yet; retry shortly"
        )
    if outdated:
        # Its tables are readable but no worker of this release writes them.
        return ReadModelUnavailable(
            "projection_outdated",
            f"read model {name} reflects position {state[1]}, not min_position {target}, and "
            f"will not move: {outdated}",
            {"position": state[1], "min_position": target},
        )
    return ReadModelUnavailable(
        "projection_behind",
        f"read model {name} reflects position {state[1]}, not yet min_position {target}, "
        f"after waiting {waited:g} s; retry shortly",
        {"position": state[1], "min_position": target},
    )
