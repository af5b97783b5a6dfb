"""Wiring: build the parts the service needs from the settings (tests may swap any)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.app import Clock, DealtrailApplication, utc_now
from libs.application.failures import is_unavailable
from libs.application.sql import ensure_schema, make_engine, setup_lock
from services.pipeline_api.idempotency_store import IdempotencyStore
from services.pipeline_api.query_cache import QueryCache
from services.projections.reading import ReadModels
from services.projections.runner import EventSource, Worker
from services.runtime.breaker import StoreBreaker
from services.runtime.keys import KeyRing, build_keyring
from services.runtime.settings import Settings

log = logging.getLogger("dealtrail")


@dataclass
class Services:
    """Everything a request handler may need, created once per process."""

    settings: Settings
    app: DealtrailApplication
    engine: AsyncEngine
    idempotency: IdempotencyStore
    keyring: KeyRing
    clock: Clock
    read_models: ReadModels
    breaker: StoreBreaker
    query_cache: QueryCache
    worker: Worker | None = None
    generated_admin_token: str | None = None
    background: list[Any] = field(default_factory=list)

    async def aclose(self) -> None:
        for stopper in reversed(self.background):
            await stopper()
        await self.engine.dispose()
        await asyncio.to_thread(self.app.close)


def open_application(settings: Settings, clock: Clock = utc_now) -> DealtrailApplication:
    """The event-sourced application on the configured store (creates its tables)."""
    env = settings.store.eventsourcing_env(pool_size=settings.store_pool_size)
    if settings.store.is_postgres and settings.store.schema:
        _create_pg_schema(settings)
    return DealtrailApplication(env=env, clock=clock)


def _create_pg_schema(settings: Settings) -> None:
    import psycopg

    loc = settings.store
    with psycopg.connect(
        host=loc.host,
        port=loc.port,
        user=loc.user,
        password=loc.password or None,
        dbname=loc.dbname,
        autocommit=True,
        connect_timeout=5,
    ) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{loc.schema}"')


async def bootstrap(settings: Settings, clock: Clock = utc_now) -> Services:
    """Connect to the store, create tables, and assemble :class:`Services`."""
    keyring, generated = build_keyring(settings)
    async with setup_lock(settings.store):
        app = await asyncio.to_thread(open_application, settings, clock)
        engine = make_engine(settings.store)
        try:
            await ensure_schema(engine, settings.store)
            idempotency = IdempotencyStore(engine, timedelta(hours=settings.idempotency_ttl_hours))
            await idempotency.create_tables()
            worker = Worker(engine=engine, source=EventSource(app), location=settings.store)
            await worker.setup()  # read-model tables exist even when the worker runs elsewhere
        except BaseException:
            await engine.dispose()
            await asyncio.to_thread(app.close)
            raise
    services = Services(
        settings=settings,
        app=app,
        engine=engine,
        idempotency=idempotency,
        keyring=keyring,
        clock=clock,
        read_models=ReadModels(engine, settings.read_wait_seconds, settings.max_read_waiters),
        breaker=StoreBreaker(settings.store),
        query_cache=QueryCache(clock),
        generated_admin_token=generated,
    )
    if settings.embedded_worker:
        start_embedded_worker(services, worker)
    return services


def start_embedded_worker(services: Services, worker: Worker) -> None:
    """Run the projection worker inside this process, woken by every local command."""

    def on_error(exc: BaseException) -> None:
        # Only an outage concerns the API's breaker; anything else the worker logs and
        # retries (an event a projection cannot apply is parked and never gets here).
        if is_unavailable(exc):
            services.breaker.trip()

    worker.on_error = on_error
    task = asyncio.create_task(worker.run(), name="projection-worker")
    services.worker = worker
    services.app.on_saved.append(lambda _position: worker.poke())

    async def stop() -> None:
        worker.stop()
        try:
            await asyncio.wait_for(task, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()

    services.background.append(stop)
    start_checkpointer(services)


def start_checkpointer(services: Services) -> None:
    """Checkpoints are written beside the projection worker (see services/audit)."""
    from services.audit.checkpoints import Checkpointer

    settings = services.settings
    checkpointer = Checkpointer(
        services.app, settings.signer, settings.checkpoint_policy, clock=services.clock
    )
    task = asyncio.create_task(checkpointer.run(), name="checkpointer")

    async def stop() -> None:
        checkpointer.stop()
        try:
            await asyncio.wait_for(task, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()

    services.background.append(stop)
