"""Open a read model at its active generation for a query, honouring ``min_position``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.projections.base import Projection, projection_state
from services.projections.runner import all_projections


class ReadModelUnavailable(Exception):
    """The read model cannot answer yet (not built, or behind the requested position)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


WAIT_POLL_SECONDS = 0.02


@dataclass
class ReadView:
    """An open connection on one projection's active tables, and the position they reflect."""

    conn: AsyncConnection
    tables: dict[str, Table]
    position: int
    generation: int


class ReadModels:
    """Opens read models for queries; waits (bounded) for a requested position."""

    def __init__(self, engine: AsyncEngine, wait_seconds: float) -> None:
        self.engine = engine
        self.wait_seconds = wait_seconds
        self.projections: dict[str, Projection] = {p.name: p for p in all_projections()}

    async def _state(self, conn: AsyncConnection, name: str) -> tuple[int, int] | None:
        row = (
            await conn.execute(
                select(projection_state.c.generation, projection_state.c.position).where(
                    projection_state.c.name == name
                )
            )
        ).first()
        return (row[0], row[1]) if row else None

    @asynccontextmanager
    async def open(self, name: str, min_position: int | None = None) -> AsyncIterator[ReadView]:
        projection = self.projections[name]
        deadline = time.monotonic() + self.wait_seconds
        async with self.engine.connect() as conn:
            while True:
                state = await self._state(conn, name)
                position = state[1] if state else 0
                if state is not None and (min_position is None or position >= min_position):
                    break
                if time.monotonic() >= deadline:
                    if state is None:
                        raise ReadModelUnavailable(
                            "projection_not_ready",
                            f"read model {name} has not been built yet; retry shortly",
                        )
                    raise ReadModelUnavailable(
                        "projection_behind",
                        f"read model {name} reflects position {position}, not yet "
                        f"min_position {min_position}, after waiting {self.wait_seconds:g} s; "
                        "retry shortly",
                        {"position": position, "min_position": min_position},
                    )
                await conn.rollback()  # see the worker's newer commits on the next read
                await asyncio.sleep(WAIT_POLL_SECONDS)
            generation, position = state
            yield ReadView(conn, projection.tables(generation), position, generation)
