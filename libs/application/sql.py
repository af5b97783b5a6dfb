"""The async SQLAlchemy engine for everything that is not the event store itself."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from libs.application.store import StoreLocation

SQLITE_BUSY_TIMEOUT_MS = 10_000


def make_engine(location: StoreLocation, *, pool_size: int = 10) -> AsyncEngine:
    """An engine on the same database as the events (aiosqlite or asyncpg)."""
    url = location.sqlalchemy_url()
    if location.is_postgres:
        connect_args: dict[str, Any] = {"timeout": 5, "command_timeout": 60}
        if location.schema:
            connect_args["server_settings"] = {"search_path": location.schema}
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
