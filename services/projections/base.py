"""What every projection shares: generations of tables, tracked positions, upserts.

A projection's tables carry a generation suffix (``current_pipeline_deals_g1``). The
incremental worker writes the active generation; a rebuild fills the next one from
position 0 while the active one keeps serving, then switches the pointer in
``projection_state`` in one transaction. Every batch locks its projection's state row
first (an UPDATE, which works the same on PostgreSQL and SQLite), reads the position,
applies the batch and moves the position, all in one transaction: exactly-once effect.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, TypeVar

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable

from libs.application.records import EventRecord
from services.projections.sql import UtcDateTime

_T = TypeVar("_T")
_R = TypeVar("_R")


state_metadata = MetaData()
projection_state = Table(
    "projection_state",
    state_metadata,
    Column("name", String(64), primary_key=True),
    Column("generation", Integer, nullable=False),
    Column("position", Integer, nullable=False),
    Column("skipped", Integer, nullable=False, server_default="0"),
    Column("building_generation", Integer, nullable=True),
    Column("updated_at", UtcDateTime(), nullable=True),
)
# Events a projection could not apply (see ``parking``): written in the transaction that
# moves the projection past them, per generation of its tables.
projection_parked = Table(
    "projection_parked",
    state_metadata,
    Column("name", String(64), primary_key=True),
    Column("generation", Integer, primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("event_type", String(200), nullable=False),
    Column("aggregate_id", String(36), nullable=False),
    Column("error", Text, nullable=False),
    Column("traceback", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("parked_at", UtcDateTime(), nullable=False),
)


@dataclass(frozen=True)
class State:
    """Where a projection stands: which generation serves, and up to which position."""

    name: str
    generation: int
    position: int
    skipped: int = 0
    building_generation: int | None = None


class Projection(ABC):
    """A read model built from the event log; owns tables named after it."""

    name: ClassVar[str]
    handles: ClassVar[frozenset[str]]

    def __init__(self) -> None:
        self._tables: dict[int, dict[str, Table]] = {}

    @abstractmethod
    def define(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        """Create this projection's Table objects with ``suffix`` on every name."""

    @abstractmethod
    async def apply(
        self, conn: AsyncConnection, tables: dict[str, Table], records: Sequence[EventRecord]
    ) -> None:
        """Apply a batch of events the projection handles, in the open transaction."""

    def tables(self, generation: int) -> dict[str, Table]:
        if generation not in self._tables:
            self._tables[generation] = self.define(MetaData(), f"_g{generation}")
        return self._tables[generation]

    def table_names(self, generation: int) -> list[str]:
        return [t.name for t in self.tables(generation).values()]

    async def create_tables(
        self, conn: AsyncConnection, generation: int, *, indexes: bool = True
    ) -> None:
        """Create the generation's tables; without ``indexes``, only their primary keys.

        A rebuild fills its tables without secondary indexes (every row written would
        update each of them) and builds them once at the end, see :meth:`create_indexes`.
        """
        tables = list(self.tables(generation).values())
        if indexes:
            metadata = tables[0].metadata
            await conn.run_sync(lambda sync: metadata.create_all(sync, tables=tables))
            return
        for table in tables:
            await conn.execute(CreateTable(table, if_not_exists=True))

    async def create_indexes(self, conn: AsyncConnection, generation: int) -> None:
        """Create the secondary indexes of the generation's tables that are missing."""
        for table in self.tables(generation).values():
            for index in sorted(table.indexes, key=lambda i: i.name or ""):
                await conn.execute(CreateIndex(index, if_not_exists=True))

    async def drop_generations(self, conn: AsyncConnection, keep: Iterable[int]) -> list[str]:
        """Drop this projection's tables of every generation not in ``keep``."""
        keep = set(keep)
        bases = [t.name.rsplit("_g", 1)[0] for t in self.tables(1).values()]
        alternatives = "|".join(re.escape(b) for b in bases)
        pattern = re.compile(rf"^({alternatives})_g(\d+)$")
        existing: list[str] = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        dropped = []
        for table_name in existing:
            match = pattern.match(table_name)
            if match and int(match.group(2)) not in keep:
                await conn.execute(text(f'DROP TABLE IF EXISTS "{table_name}"'))
                dropped.append(table_name)
        return dropped


async def each_projection(
    engine: AsyncEngine, items: Iterable[_T], work: Callable[[_T], Awaitable[_R]]
) -> list[_R]:
    """``work(item)`` for every item: side by side on PostgreSQL (each call writes through
    its own connection, so their waits overlap), one after another on SQLite, which has
    one writer at a time. Results in the order of ``items``.

    When a call fails, the others still finish (none is left running behind the caller's
    back) and then the first failure is raised.
    """
    if engine.dialect.name == "postgresql":
        results: list[_R] = []
        for result in await asyncio.gather(*(work(i) for i in items), return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
            results.append(result)
        return results
    return [await work(item) for item in items]


async def create_state_table(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(state_metadata.create_all)


async def read_states(
    conn: AsyncConnection, names: Iterable[str] | None = None
) -> dict[str, State]:
    query = select(projection_state)
    if names is not None:
        query = query.where(projection_state.c.name.in_(list(names)))
    rows = (await conn.execute(query)).mappings().all()
    return {
        r["name"]: State(
            r["name"], r["generation"], r["position"], r["skipped"], r["building_generation"]
        )
        for r in rows
    }


async def lock_state(conn: AsyncConnection, name: str) -> State:
    """Take the projection's row lock for this transaction and return its state.

    The first statement is a write, so SQLite takes its write lock before reading
    (no stale snapshot) and PostgreSQL locks the row until commit.
    """
    await conn.execute(
        update(projection_state)
        .where(projection_state.c.name == name)
        .values(updated_at=datetime.now(UTC))
    )
    row = (
        (await conn.execute(select(projection_state).where(projection_state.c.name == name)))
        .mappings()
        .one()
    )
    return State(
        row["name"], row["generation"], row["position"], row["skipped"], row["building_generation"]
    )
