"""SQL that differs between SQLite and PostgreSQL, in one place.

Column types that hold the same values on both (exact money, UTC moments), bulk writes
(``unnest`` and ``COPY`` on PostgreSQL, batched statements on SQLite), and the query
expressions the reports aggregate with (exact money sums, microsecond time differences,
months, integer lists).
"""

from __future__ import annotations

import json
import typing
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Integer,
    Numeric,
    String,
    Table,
    TypeDecorator,
    bindparam,
    case,
    cast,
    extract,
    func,
    insert,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeEngine

# --- column types ---------------------------------------------------------------------------


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


Position = BigInteger().with_variant(Integer(), "sqlite")
"""A log position (or a count of events): 64-bit. PostgreSQL's BIGINT; on SQLite plain
INTEGER, which holds 64 bits already and keeps an integer primary key the table's rowid."""


# --- bulk writes ----------------------------------------------------------------------------


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


Row = Mapping[str, Any] | tuple[Any, ...]
"""A row to write: a mapping by column name, or a tuple of every column's value in the
table's column order (cheaper to build; what a projection writing many rows gives)."""


def _pg_arrays(columns: _PgColumns, rows: Sequence[Row], names: Sequence[str]) -> list[list[Any]]:
    """Column-wise value lists of ``rows`` for the given column names."""
    index = {name: i for i, name in enumerate(columns.names)}
    arrays = []
    tuples = typing.cast(Sequence[tuple[Any, ...]], rows)
    mappings = typing.cast(Sequence[Mapping[str, Any]], rows)
    by_position = bool(rows) and type(rows[0]) is tuple
    for name in names:
        i = index[name]
        values = [row[i] for row in tuples] if by_position else [row.get(name) for row in mappings]
        convert = columns.converters[i]
        if convert is not None:
            values = [convert(v) for v in values]
        arrays.append(values)
    return arrays


def _as_mappings(table: Table, rows: Sequence[Row]) -> list[Mapping[str, Any]]:
    if not rows or type(rows[0]) is not tuple:
        return list(typing.cast(Sequence[Mapping[str, Any]], rows))
    names = [c.name for c in table.columns]
    return [
        dict(zip(names, row, strict=True)) for row in typing.cast(Sequence[tuple[Any, ...]], rows)
    ]


async def _driver(conn: AsyncConnection) -> Any:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    return driver


async def bulk_insert(conn: AsyncConnection, table: Table, rows: Sequence[Row]) -> None:
    """Append rows: COPY on PostgreSQL (much faster than row-by-row inserts), else INSERT.

    Runs in the connection's open transaction either way. Tuples of a table whose columns
    need no conversion (no JSON, no money) go to COPY as they are.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        mappings = _as_mappings(table, rows)
        for i in range(0, len(mappings), 1000):
            await conn.execute(insert(table), mappings[i : i + 1000])
        return
    columns = _pg_columns(table)
    if type(rows[0]) is tuple and not any(columns.converters):
        records: Sequence[Any] = rows
    else:
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


def _unnest_arrays(columns: _PgColumns, names: Sequence[str]) -> str:
    """``$1::type[], $2::type[], ...``: the typed array parameters of ``names``."""
    types = dict(zip(columns.names, columns.array_types, strict=True))
    return ", ".join(f"${i}::{types[n]}" for i, n in enumerate(names, 1))


async def bulk_add(
    conn: AsyncConnection,
    table: Table,
    keys: Sequence[str],
    counters: Sequence[str],
    rows: Sequence[dict[str, Any]],
) -> None:
    """Add each row's ``counters`` to the stored row with the same ``keys`` (inserting it
    when there is none): ``INSERT ... ON CONFLICT DO UPDATE SET c = c + EXCLUDED.c``.

    Counters kept beside the rows they count move in the same transaction as those rows.
    One statement through ``unnest`` on PostgreSQL; row by row elsewhere. Rows with the
    same key are summed first. Every row carries exactly the ``keys`` and ``counters``.
    """
    if not rows:
        return
    summed: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        kept = summed.get(key)
        if kept is None:
            summed[key] = [row[c] for c in counters]
        else:
            for i, c in enumerate(counters):
                kept[i] += row[c]
    merged = [
        {**dict(zip(keys, key, strict=True)), **dict(zip(counters, values, strict=True))}
        for key, values in summed.items()
    ]
    names = (*keys, *counters)
    if conn.dialect.name != "postgresql":
        stmt = sqlite.insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: table.c[c] + stmt.excluded[c] for c in counters}
        )
        for i in range(0, len(merged), 1000):
            await conn.execute(stmt, merged[i : i + 1000])
        return
    columns = _pg_columns(table)
    cache_key = ("add", table.name, tuple(columns.names), tuple(keys), tuple(counters))
    sql = _sql_cache.get(cache_key)
    if sql is None:
        quote = _PG.identifier_preparer.quote
        table_name = quote(table.name)
        sql = (
            f"INSERT INTO {table_name} ({', '.join(quote(n) for n in names)}) "
            f"SELECT * FROM unnest({_unnest_arrays(columns, names)}) "
            f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET "
            + ", ".join(f"{q} = {table_name}.{q} + EXCLUDED.{q}" for q in map(quote, counters))
        )
        _sql_cache[cache_key] = sql
    driver = await _driver(conn)
    await driver.execute(sql, *_pg_arrays(columns, merged, names))


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
        arrays = _unnest_arrays(columns, names)
        sql = (
            f"UPDATE {quote(table.name)} AS t SET "
            + ", ".join(f"{quote(v)} = v.{quote(v)}" for v in values)
            + f" FROM unnest({arrays}) AS v({', '.join(quote(n) for n in names)}) WHERE "
            + " AND ".join(f"t.{quote(k)} = v.{quote(k)}" for k in keys)
        )
        _sql_cache[cache_key] = sql
    driver = await _driver(conn)
    await driver.execute(sql, *_pg_arrays(columns, rows, names))


# --- query expressions ------------------------------------------------------------------------


def money_sum(column: Any, dialect: str, name: str) -> list[Any]:
    """SUM of a money column, exactly, as labelled select columns (read by ``money_total``).

    PostgreSQL sums NUMERIC exactly. SQLite keeps money as text and would sum it as REAL,
    so there the whole units and the (at most four) decimal places are summed as integers.
    """
    if dialect == "postgresql":
        return [func.sum(column).label(name)]
    text = type_coerce(column, String)
    dot = func.instr(text, ".")
    fraction = case((dot > 0, cast(func.substr(text + "0000", dot + 1, 4), Integer)), else_=0)
    return [
        func.sum(cast(text, Integer)).label(f"{name}__whole"),
        func.sum(fraction).label(f"{name}__fraction"),
    ]


def money_total(row: Mapping[Any, Any], name: str) -> Decimal:
    """The exact amount of a ``money_sum`` in a result row (0 over no rows)."""
    if name in row:
        value = row[name]
        return Decimal(0) if value is None else Decimal(value)
    whole, fraction = row[f"{name}__whole"], row[f"{name}__fraction"]
    return Decimal(whole or 0) + Decimal(fraction or 0).scaleb(-4)


def epoch_micros(column: Any, dialect: str) -> Any:
    """A moment as whole microseconds since 1970-01-01 UTC, exactly."""
    if dialect == "postgresql":
        return cast(extract("epoch", column) * 1000000, BigInteger)
    # SQLite keeps "YYYY-MM-DD HH:MM:SS.ffffff" in UTC: whole seconds, then the fraction
    text = type_coerce(column, String)
    seconds = cast(func.strftime("%s", func.substr(text, 1, 19)), Integer)
    return seconds * 1000000 + cast(func.substr(text, 21, 6), Integer)


def micros_between(start: Any, end: Any, dialect: str) -> Any:
    """``end - start`` in whole microseconds, exactly as ``timedelta`` counts them."""
    return epoch_micros(end, dialect) - epoch_micros(start, dialect)


def micros_to_days(micros: int) -> float:
    """The same float as ``timedelta(microseconds=micros).total_seconds() / 86400``."""
    return micros / 1_000_000 / 86400.0


def month_of(column: Any, dialect: str) -> Any:
    """``YYYY-MM`` of a moment, in UTC."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM")
    return func.substr(type_coerce(column, String), 1, 7)


def int_list_agg(expr: Any, dialect: str) -> Any:
    """Every value of an integer expression in the group, as one column (any order)."""
    if dialect == "postgresql":
        return func.array_agg(expr)
    return func.group_concat(expr)


def int_list(value: Any) -> list[int]:
    """The values of an ``int_list_agg`` column (NULLs left out)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [int(v) for v in value.split(",")]
    return [int(v) for v in value if v is not None]


def count_if(condition: Any) -> Any:
    """How many rows of the group meet ``condition`` (0, never NULL, over no rows)."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)
