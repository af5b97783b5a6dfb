"""What every projection shares: generations of tables, tracked positions, upserts.

A projection's tables carry a generation suffix (``current_pipeline_deals_g1``). The
incremental worker writes the active generation; a rebuild fills the next one from
position 0 while the active one keeps serving, then switches the pointer in
``projection_state`` in one transaction. Every batch locks its projection's state row
first (an UPDATE, which works the same on PostgreSQL and SQLite), reads the position,
applies the batch and moves the position, all in one transaction: exactly-once effect.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

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
    TypeDecorator,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import TypeEngine

from libs.application.records import EventRecord


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

    async def create_tables(self, conn: AsyncConnection, generation: int) -> None:
        tables = list(self.tables(generation).values())
        metadata = tables[0].metadata
        await conn.run_sync(lambda sync: metadata.create_all(sync, tables=tables))

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


def upsert(table: Table, keys: Sequence[str], dialect: str) -> Any:
    """An INSERT ... ON CONFLICT DO UPDATE statement; execute it with a list of rows."""
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert_fn(table)
    columns = [c.name for c in table.columns if c.name not in keys]
    return stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns}
    )


def _json_text(value: Any) -> Any:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _utc(value: Any) -> Any:
    return None if value is None else value.astimezone(UTC)


def _copy_converters(table: Table) -> list[tuple[str, Callable[[Any], Any] | None]]:
    """Per column, how a Python value becomes what COPY expects (None: as it is)."""
    out: list[tuple[str, Callable[[Any], Any] | None]] = []
    for column in table.columns:
        convert: Callable[[Any], Any] | None = None
        if isinstance(column.type, JSON):
            convert = _json_text
        elif isinstance(column.type, UtcDateTime):
            convert = _utc
        out.append((column.name, convert))
    return out


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
    converters = _copy_converters(table)
    records = [
        tuple(f(row.get(name)) if f else row.get(name) for name, f in converters) for row in rows
    ]
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    await driver.copy_records_to_table(
        table.name, records=records, columns=[name for name, _ in converters]
    )


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
