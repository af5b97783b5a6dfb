"""What every projection shares: generations of tables, tracked positions, upserts.

A projection's tables carry a generation suffix (``current_pipeline_deals_g1``). The
incremental worker writes the active generation; a rebuild fills the next one from
position 0 while the active one keeps serving, then switches the pointer in
``projection_state`` in one transaction. Every batch locks its projection's state row
first (an UPDATE, which works the same on PostgreSQL and SQLite), reads the position,
applies the batch and moves the position, all in one transaction: exactly-once effect.

Each projection declares the schema version of the tables it writes, and
``projection_state.schema_version`` records the version of the active generation's
tables. Tables at another version are never written (the worker refuses them, naming the
rebuild that makes new ones) and are read only when the projection says its queries
still understand them (:meth:`Projection.schema_problem`).
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    BigInteger,
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
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable

from libs.application.records import EventRecord
from services.projections.sql import Position, UtcDateTime

_T = TypeVar("_T")
_R = TypeVar("_R")


state_metadata = MetaData()
projection_state = Table(
    "projection_state",
    state_metadata,
    Column("name", String(64), primary_key=True),
    Column("generation", Integer, nullable=False),
    Column("position", Position, nullable=False),
    Column("skipped", Position, nullable=False, server_default="0"),
    Column("building_generation", Integer, nullable=True),
    Column("updated_at", UtcDateTime(), nullable=True),
    # the active generation's table layout (``Projection.schema_version`` when written)
    Column("schema_version", Integer, nullable=False, server_default="1"),
)
# Events a projection could not apply (see ``parking``): written in the transaction that
# moves the projection past them, per generation of its tables.
projection_parked = Table(
    "projection_parked",
    state_metadata,
    Column("name", String(64), primary_key=True),
    Column("generation", Integer, primary_key=True),
    Column("position", Position, primary_key=True, autoincrement=False),
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
    schema_version: int = 1

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> State:
        """The state in a ``projection_state`` row."""
        return cls(
            row["name"],
            row["generation"],
            row["position"],
            row["skipped"],
            row["building_generation"],
            row["schema_version"],
        )


class Projection(ABC):
    """A read model built from the event log; owns tables named after it."""

    name: ClassVar[str]
    handles: ClassVar[frozenset[str]]
    schema_version: ClassVar[int]
    """The layout of the tables this release writes. Raise it with every change to them
    (a column, a type, an index, what a row means); existing tables are then rebuilt."""
    readable_since: ClassVar[int | None] = None
    """The oldest layout this release's queries can still read, so that the tables of the
    release before keep serving while a rebuild fills new ones (default: only its own)."""

    def __init__(self) -> None:
        self._tables: dict[int, dict[str, Table]] = {}

    def schema_problem(self, version: int, *, reading: bool = False) -> str | None:
        """Why tables at schema ``version`` cannot be written (or, ``reading``, read) by
        this release; None when they can."""
        if version == self.schema_version:
            return None
        oldest = self.schema_version if self.readable_since is None else self.readable_since
        if reading and oldest <= version < self.schema_version:
            return None
        if version < self.schema_version:
            return (
                f"projection {self.name}: its tables are at schema version {version} and this "
                f"release needs version {self.schema_version}; run `dealtrail projections "
                f"rebuild {self.name}` to build them anew"
            )
        return (
            f"projection {self.name}: its tables are at schema version {version}, newer than "
            f"this release's {self.schema_version} (a newer release rebuilt them); run that "
            f"release, or `dealtrail projections rebuild {self.name}` with this one"
        )

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
        self,
        conn: AsyncConnection,
        generation: int,
        *,
        indexes: bool = True,
        unlogged: bool = False,
    ) -> None:
        """Create the generation's tables; without ``indexes``, only their primary keys.

        A rebuild fills its tables without secondary indexes (every row written would
        update each of them) and builds them once at the end, see :meth:`create_indexes`.
        ``unlogged`` (PostgreSQL): tables the server writes no WAL for while a rebuild
        fills them; :meth:`set_logged` makes them ordinary tables before they serve.
        """
        tables = list(self.tables(generation).values())
        if indexes:
            metadata = tables[0].metadata
            await conn.run_sync(lambda sync: metadata.create_all(sync, tables=tables))
            return
        for table in tables:
            ddl = CreateTable(table, if_not_exists=True)
            if unlogged and conn.dialect.name == "postgresql":
                sql = str(ddl.compile(dialect=conn.dialect))
                await conn.execute(text(sql.replace("CREATE TABLE", "CREATE UNLOGGED TABLE", 1)))
            else:
                await conn.execute(ddl)

    async def set_logged(self, conn: AsyncConnection, generation: int) -> None:
        """Make the generation's unlogged tables ordinary, crash-safe ones (PostgreSQL)."""
        if conn.dialect.name != "postgresql":
            return
        for name in self.table_names(generation):
            await conn.execute(text(f'ALTER TABLE "{name}" SET LOGGED'))

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
    """Create the shared state tables, or bring those of an older release up to date."""
    async with engine.begin() as conn:
        await conn.run_sync(state_metadata.create_all)
        await _migrate_state_tables(conn)


async def _migrate_state_tables(conn: AsyncConnection) -> None:
    """The state tables of releases before schema versions: add ``schema_version`` (1, the
    layout those releases wrote) and, on PostgreSQL, widen positions to 64 bits.

    Both tables are small (a row per projection, a row per parked event), so the change
    is quick. SQLite's INTEGER is 64-bit already.
    """
    columns = await conn.run_sync(
        lambda sync: {
            table: {c["name"]: c["type"] for c in inspect(sync).get_columns(table)}
            for table in ("projection_state", "projection_parked")
        }
    )
    if "schema_version" not in columns["projection_state"]:
        column = "schema_version INTEGER NOT NULL DEFAULT 1"
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text(f"ALTER TABLE projection_state ADD COLUMN IF NOT EXISTS {column}")
            )
        else:
            try:
                await conn.execute(text(f"ALTER TABLE projection_state ADD COLUMN {column}"))
            except OperationalError as exc:  # another process added it a moment ago
                if "duplicate column" not in str(exc):
                    raise
    if conn.dialect.name != "postgresql":
        return
    for table, names in (
        ("projection_state", ("position", "skipped")),
        ("projection_parked", ("position",)),
    ):
        narrow = [n for n in names if not isinstance(columns[table][n], BigInteger)]
        if narrow:
            changes = ", ".join(f"ALTER COLUMN {n} TYPE BIGINT" for n in narrow)
            await conn.execute(text(f"ALTER TABLE {table} {changes}"))


async def read_states(
    conn: AsyncConnection, names: Iterable[str] | None = None
) -> dict[str, State]:
    query = select(projection_state)
    if names is not None:
        query = query.where(projection_state.c.name.in_(list(names)))
    rows = (await conn.execute(query)).mappings().all()
    return {r["name"]: State.of(r) for r in rows}


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
    return State.of(row)
