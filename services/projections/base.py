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
import json
import re
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

import orjson
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeEngine

from libs.application.records import EventRecord

_T = TypeVar("_T")
_R = TypeVar("_R")


class Money(TypeDecorator[Decimal]):
    """Exact decimal money: NUMERIC on PostgreSQL, text on SQLite (which has no decimal)."""

    impl = String(40)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(28, 4))
        return dialect.type_descriptor(String(40))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = Decimal(value)
        return amount if dialect.name == "postgresql" else str(amount)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite keeps naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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


def upsert(table: Table, keys: Sequence[str], dialect: str) -> Any:
    """An INSERT ... ON CONFLICT DO UPDATE statement; execute it with a list of rows."""
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert_fn(table)
    columns = [c.name for c in table.columns if c.name not in keys]
    return stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns}
    )


def json_text(value: Any) -> str | None:
    """Compact JSON text of a JSON-ready value (what a JSON column stores)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # what orjson refuses (integers beyond 64 bits, ...), json takes
        return json.dumps(value, separators=(",", ":"))


def _money(value: Any) -> Any:
    return value if value is None or type(value) is Decimal else Decimal(value)


_PG: Dialect = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
Converter = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _PgColumns:
    """A table's columns as asyncpg takes them: names, array types, value converters."""

    names: list[str]
    quoted: list[str]
    array_types: list[str]
    converters: list[Converter]


_pg_columns_cache: weakref.WeakKeyDictionary[Table, _PgColumns] = weakref.WeakKeyDictionary()


def _pg_columns(table: Table) -> _PgColumns:
    found = _pg_columns_cache.get(table)
    if found is None:
        names, quoted, types, converters = [], [], [], []
        for column in table.columns:
            names.append(column.name)
            quoted.append(_PG.identifier_preparer.quote(column.name))
            types.append(f"{column.type.compile(dialect=_PG)}[]")
            convert: Converter = None
            if isinstance(column.type, JSON):
                convert = json_text
            elif isinstance(column.type, Money):
                convert = _money
            # asyncpg converts aware datetimes to UTC itself (UtcDateTime needs nothing).
            converters.append(convert)
        found = _PgColumns(names, quoted, types, converters)
        _pg_columns_cache[table] = found
    return found


def _pg_arrays(
    columns: _PgColumns, rows: Sequence[dict[str, Any]], names: Sequence[str]
) -> list[list[Any]]:
    """Column-wise value lists of ``rows`` for the given column names."""
    index = {name: i for i, name in enumerate(columns.names)}
    arrays = []
    for name in names:
        values = [row.get(name) for row in rows]
        convert = columns.converters[index[name]]
        if convert is not None:
            values = [convert(v) for v in values]
        arrays.append(values)
    return arrays


async def _driver(conn: AsyncConnection) -> Any:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    return driver


async def bulk_insert(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows: COPY on PostgreSQL (much faster than row-by-row inserts), else INSERT.

    Runs in the connection's open transaction either way.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        for i in range(0, len(rows), 1000):
            await conn.execute(insert(table), list(rows[i : i + 1000]))
        return
    columns = _pg_columns(table)
    records = list(zip(*_pg_arrays(columns, rows, columns.names), strict=True))
    driver = await _driver(conn)
    await driver.copy_records_to_table(table.name, records=records, columns=columns.names)


def _last_by_key(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per key, the last one given (what row-by-row upserts would leave)."""
    if len(keys) == 1:
        (key,) = keys
        by_key = {row[key]: row for row in rows}
    else:
        by_key = {tuple(row[k] for k in keys): row for row in rows}
    return list(by_key.values()) if len(by_key) < len(rows) else list(rows)


async def bulk_upsert(
    conn: AsyncConnection, table: Table, keys: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    """Insert rows or replace the stored rows with the same ``keys``; later rows win.

    PostgreSQL gets every row in one statement (column arrays through ``unnest``), with no
    per-row parameter processing; SQLite gets row-by-row upserts. Every row carries every
    column.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        stmt = upsert(table, keys, conn.dialect.name)
        for i in range(0, len(rows), 1000):
            await conn.execute(stmt, list(rows[i : i + 1000]))
        return
    rows = _last_by_key(rows, keys)
    columns = _pg_columns(table)
    arrays = _pg_arrays(columns, rows, columns.names)
    driver = await _driver(conn)
    await driver.execute(_upsert_sql(table, tuple(keys)), *arrays)


# By table name and column names: the statements name no schema (search_path decides).
_sql_cache: dict[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], str] = {}


def _upsert_sql(table: Table, keys: tuple[str, ...]) -> str:
    cache_key = ("upsert", table.name, tuple(_pg_columns(table).names), keys, ())
    sql = _sql_cache.get(cache_key)
    if sql is None:
        columns = _pg_columns(table)
        quote = _PG.identifier_preparer.quote
        arrays = ", ".join(f"${i}::{t}" for i, t in enumerate(columns.array_types, 1))
        updates = [
            f"{q} = EXCLUDED.{q}"
            for n, q in zip(columns.names, columns.quoted, strict=True)
            if n not in keys
        ]
        action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
        sql = (
            f"INSERT INTO {quote(table.name)} ({', '.join(columns.quoted)}) "
            f"SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) {action}"
        )
        _sql_cache[cache_key] = sql
    return sql


async def bulk_update(
    conn: AsyncConnection,
    table: Table,
    keys: Sequence[str],
    values: Sequence[str],
    rows: Sequence[dict[str, Any]],
) -> None:
    """Set the ``values`` columns of the stored rows matching each row's ``keys``.

    One ``UPDATE ... FROM unnest(...)`` on PostgreSQL; row by row elsewhere. Each stored
    row is matched by at most one given row.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        stmt = (
            update(table)
            .where(*(table.c[k] == bindparam(f"k_{k}") for k in keys))
            .values({v: bindparam(f"v_{v}") for v in values})
        )
        params = [
            {**{f"k_{k}": row[k] for k in keys}, **{f"v_{v}": row[v] for v in values}}
            for row in rows
        ]
        for i in range(0, len(params), 1000):
            await conn.execute(stmt, params[i : i + 1000])
        return
    names = (*keys, *values)
    columns = _pg_columns(table)
    cache_key = ("update", table.name, tuple(columns.names), tuple(keys), tuple(values))
    sql = _sql_cache.get(cache_key)
    if sql is None:
        quote = _PG.identifier_preparer.quote
        types = dict(zip(columns.names, columns.array_types, strict=True))
        arrays = ", ".join(f"${i}::{types[n]}" for i, n in enumerate(names, 1))
        sql = (
            f"UPDATE {quote(table.name)} AS t SET "
            + ", ".join(f"{quote(v)} = v.{quote(v)}" for v in values)
            + f" FROM unnest({arrays}) AS v({', '.join(quote(n) for n in names)}) WHERE "
            + " AND ".join(f"t.{quote(k)} = v.{quote(k)}" for k in keys)
        )
        _sql_cache[cache_key] = sql
    driver = await _driver(conn)
    await driver.execute(sql, *_pg_arrays(columns, rows, names))


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
