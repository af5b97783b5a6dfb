"""The async SQLAlchemy engine for everything that is not the event store itself."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from libs.application.store import StoreLocation

SQLITE_BUSY_TIMEOUT_MS = 10_000


def make_engine(
    location: StoreLocation, *, pool_size: int = 10, read_only: bool = False
) -> AsyncEngine:
    """An engine on the same database as the events (aiosqlite or asyncpg); ``read_only``
    (PostgreSQL): every transaction read-only, as on a replica that takes no writes."""
    url = location.sqlalchemy_url()
    if location.is_postgres:
        # Read models grow by orders of magnitude (a rebuild fills them from empty), and
        # asyncpg prepares every statement: a generic plan chosen while a table was small
        # (a sequential scan) would stay cached as it grows. Plan each execution instead.
        settings = {"plan_cache_mode": "force_custom_plan"}
        if location.schema:
            settings["search_path"] = location.schema
        if read_only:
            settings["default_transaction_read_only"] = "on"
        connect_args: dict[str, Any] = {
            "timeout": 5,
            "command_timeout": 60,
            "server_settings": settings,
        }
        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_timeout=10,
            connect_args=connect_args,
        )
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


async def ensure_schema(engine: AsyncEngine, location: StoreLocation) -> None:
    """Create the PostgreSQL schema named in the settings, if there is one."""
    if location.is_postgres and location.schema:
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{location.schema}"'))


SETUP_LOCK_TIMEOUT_SECONDS = 60


def advisory_key(location: StoreLocation, name: str) -> int:
    """A PostgreSQL advisory-lock key for ``name`` within this database schema."""
    digest = hashlib.sha256(f"dealtrail:{location.schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def connect_raw(location: StoreLocation) -> asyncpg.Connection:
    """A plain asyncpg session on the store's PostgreSQL database (for session locks)."""
    return await asyncpg.connect(
        host=location.host,
        port=location.port,
        user=location.user,
        password=location.password or None,
        database=location.dbname,
        timeout=5,
    )


@asynccontextmanager
async def setup_lock(location: StoreLocation) -> AsyncIterator[None]:
    """Serialise table creation between processes that start at the same time.

    ``CREATE TABLE IF NOT EXISTS`` and ``CREATE OR REPLACE FUNCTION`` are not safe when
    two sessions run them at once on PostgreSQL (one fails on a duplicate catalog row),
    so API processes and workers take a session advisory lock for their start-up DDL.
    SQLite serialises writers by itself.
    """
    if not location.is_postgres:
        yield
        return
    conn = await connect_raw(location)
    try:
        await conn.execute(
            f"SET lock_timeout = '{SETUP_LOCK_TIMEOUT_SECONDS}s'; "
            f"SET statement_timeout = '{SETUP_LOCK_TIMEOUT_SECONDS}s'"
        )
        await conn.execute("SELECT pg_advisory_lock($1)", advisory_key(location, "setup"))
        yield
    finally:
        await conn.close()  # ends the session, which releases the lock
