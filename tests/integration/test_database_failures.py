"""Which real database failures count as "unavailable" (retry, 503) and which do not."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import Column, DateTime, MetaData, String, Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.failures import is_unavailable
from libs.application.sql import connect_raw, make_engine
from libs.application.store import StoreLocation
from tests.conftest import PG_URL, need_postgres

BEYOND_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-1)))


def failure_of(conn: sqlite3.Connection, sql: str) -> sqlite3.Error:
    with pytest.raises(sqlite3.Error) as caught:
        conn.execute(sql)
    return caught.value


def test_a_locked_sqlite_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x TEXT)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        locked = failure_of(other, "INSERT INTO t VALUES ('a')")
        assert "locked" in str(locked)
        assert is_unavailable(locked)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        other.close()


@pytest.fixture
async def pg() -> AsyncIterator[tuple[AsyncEngine, StoreLocation]]:
    need_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    location = StoreLocation.parse(PG_URL, schema)
    engine = make_engine(location, pool_size=2)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield engine, location
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()


async def test_postgres_data_errors_are_not_unavailable(
    pg: tuple[AsyncEngine, StoreLocation],
) -> None:
    engine, location = pg
    table = Table(
        "things", MetaData(), Column("name", String(50)), Column("at", DateTime(timezone=True))
    )
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    failures = []
    for values in ({"name": "a\x00b"}, {"at": BEYOND_TIME}, {"name": "x" * 51}):
        with pytest.raises(Exception) as caught:
            async with engine.begin() as conn:
                await conn.execute(insert(table), values)
        failures.append(caught.value)
    raw = await connect_raw(location)
    try:
        with pytest.raises(asyncpg.DataError) as caught_raw:
            await raw.execute("SELECT $1::timestamptz", BEYOND_TIME)
        failures.append(caught_raw.value)
    finally:
        await raw.close()
    assert [is_unavailable(f) for f in failures] == [False] * 4


async def test_a_lost_connection_is_unavailable(pg: tuple[AsyncEngine, StoreLocation]) -> None:
    engine, location = pg
    failures: list[BaseException] = []
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        killer = await connect_raw(location)
        try:
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await killer.close()
        with pytest.raises(Exception) as caught:
            await conn.execute(text("SELECT 1"))
        failures.append(caught.value)
    raw = await connect_raw(location)
    await raw.close()
    with pytest.raises(asyncpg.InterfaceError) as closed:
        await raw.execute("SELECT 1")
    failures.append(closed.value)
    refused = StoreLocation.parse("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(OSError) as no_server:
        await connect_raw(refused)
    failures.append(no_server.value)
    assert [is_unavailable(f) for f in failures] == [True] * 3
