"""Opening the stores: the event store (the application) and the read side's engine.

Every entry point opens them here: the service through :func:`services.runtime.bootstrap.bootstrap`,
the command-line tools through :func:`open_stores`, or :func:`open_application` alone when
they only need the events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.app import Clock, DealtrailApplication, utc_now
from libs.application.sql import ensure_schema, make_engine, setup_lock
from services.projections.source import EventSource
from services.runtime.settings import Settings

TOOL_POOL_SIZE = 4  # read-side connections of a command-line tool


def open_application(settings: Settings, clock: Clock = utc_now) -> DealtrailApplication:
    """The event-sourced application on the configured store (creates its tables)."""
    env = settings.store.eventsourcing_env(pool_size=settings.store_pool_size)
    if settings.store.is_postgres and settings.store.schema:
        _create_pg_schema(settings)
    return DealtrailApplication(env=env, clock=clock)


def _create_pg_schema(settings: Settings) -> None:
    import psycopg

    loc = settings.store
    with psycopg.connect(**loc.psycopg_params(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{loc.schema}"')


@dataclass
class Stores:
    """The event store and the read side's engine on the same database, opened together."""

    application: DealtrailApplication
    engine: AsyncEngine
    source: EventSource

    async def aclose(self) -> None:
        await self.engine.dispose()
        await asyncio.to_thread(self.application.close)


async def connect_stores(
    settings: Settings,
    clock: Clock = utc_now,
    *,
    pool_size: int = TOOL_POOL_SIZE,
    setup: Callable[[Stores], Awaitable[None]] | None = None,
) -> Stores:
    """Open both stores and create what they need. Start-up DDL (and ``setup``, for more of
    it) runs under the setup lock, one process at a time; on failure nothing stays open."""
    async with setup_lock(settings.store):
        application = await asyncio.to_thread(open_application, settings, clock)
        engine = make_engine(settings.store, pool_size=pool_size)
        stores = Stores(application, engine, EventSource(application))
        try:
            await ensure_schema(engine, settings.store)
            if setup is not None:
                await setup(stores)
        except BaseException:
            await stores.aclose()
            raise
    return stores


@asynccontextmanager
async def open_stores(settings: Settings, clock: Clock = utc_now) -> AsyncIterator[Stores]:
    """Both stores for a command-line tool, closed when the block ends."""
    stores = await connect_stores(settings, clock)
    try:
        yield stores
    finally:
        await stores.aclose()
