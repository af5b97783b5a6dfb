"""Wiring: build the parts the service needs from the settings (tests may swap any)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.app import Clock, DealtrailApplication, utc_now
from libs.application.failures import is_unavailable
from libs.application.sql import make_engine
from services.audit.checkpoints import Checkpointer
from services.automation.evaluator import Evaluator
from services.feeds.nats_relay import NatsRelay
from services.feeds.webhooks.delivery import Dispatcher
from services.feeds.webhooks.store import create_webhook_tables
from services.projections.read_models import ReadModels
from services.projections.read_thread import ReadThread
from services.projections.runner import Worker
from services.projections.source import EventSource
from services.runtime.breaker import StoreBreaker
from services.runtime.keys import KeyRing, build_keyring
from services.runtime.settings import Settings
from services.runtime.stores import Stores, connect_stores
from services.runtime.tracing import instrument_engine

SERVICE_POOL_SIZE = 10  # read-side connections of one service process
REPORT_POOL_SIZE = 2  # connections of the thread that computes heavy reports
BACKGROUND_STOP_SECONDS = 10  # how long shutdown waits for a background task to stop

Stopper = Callable[[], Awaitable[None]]


@dataclass
class Runtime:
    """What one process of the service runs on, built once by :func:`bootstrap`."""

    settings: Settings
    application: DealtrailApplication
    engine: AsyncEngine
    keyring: KeyRing
    clock: Clock
    read_models: ReadModels
    """What queries read: on the replica of ``DEALTRAIL_READ_DATABASE_URL`` if there is one."""
    primary_reads: ReadModels
    """The read models on the primary, for what a command looks up at the log's head (which
    a replica may not have reached yet); ``read_models`` when there is no replica."""
    breaker: StoreBreaker
    report_reads: ReadThread | None = None
    """Read models on a thread of their own, for reports whose Python work is long (None:
    they run on the event loop like every other query)."""
    worker: Worker | None = None
    webhooks: Dispatcher | None = None
    relay: NatsRelay | None = None
    automation: Evaluator | None = None
    generated_admin_token: str | None = None
    background: list[Stopper] = field(default_factory=list)

    async def aclose(self) -> None:
        for stopper in reversed(self.background):
            await stopper()
        if self.read_models.engine is not self.engine:
            await self.read_models.engine.dispose()
        await self.engine.dispose()
        await asyncio.to_thread(self.application.close)


async def bootstrap(settings: Settings, clock: Clock = utc_now) -> Runtime:
    """Connect to the store, create tables, and assemble the :class:`Runtime`."""
    keyring, generated = build_keyring(settings)
    worker: Worker | None = None

    async def setup(stores: Stores) -> None:
        nonlocal worker
        worker = Worker(engine=stores.engine, source=stores.source, location=settings.store)
        await worker.setup()  # read-model tables exist even when the worker runs elsewhere
        await create_webhook_tables(stores.engine)
        await evaluator_for(settings, stores.application, stores.engine, clock).setup()

    stores = await connect_stores(settings, clock, pool_size=SERVICE_POOL_SIZE, setup=setup)
    assert worker is not None
    instrument_engine(stores.engine)
    read_models = ReadModels(stores.engine, settings.read_wait_seconds, settings.max_read_waiters)
    primary_reads = read_models
    replicated = bool(settings.read_database_url.get_secret_value())
    if replicated:
        replica = make_engine(settings.read_store, pool_size=SERVICE_POOL_SIZE, read_only=True)
        read_models = ReadModels(replica, settings.read_wait_seconds, settings.max_read_waiters)
    read_store = settings.read_store if replicated else settings.store
    report_reads = ReadThread(
        lambda: make_engine(read_store, pool_size=REPORT_POOL_SIZE, read_only=replicated),
        settings.read_wait_seconds,
        settings.max_read_waiters,
        name="report-reads",
    )
    runtime = Runtime(
        settings=settings,
        application=stores.application,
        engine=stores.engine,
        keyring=keyring,
        clock=clock,
        read_models=read_models,
        primary_reads=primary_reads,
        breaker=StoreBreaker(settings.store),
        report_reads=report_reads,
        generated_admin_token=generated,
    )
    runtime.background.append(report_reads.aclose)
    if settings.embedded_worker:
        start_embedded_worker(runtime, worker)
    return runtime


def start_embedded_worker(runtime: Runtime, worker: Worker) -> None:
    """Run the projection worker inside this process, woken by every local command."""

    def on_error(exc: BaseException) -> None:
        # Only an outage concerns the API's breaker; anything else the worker logs and
        # retries (an event a projection cannot apply is parked and never gets here).
        if is_unavailable(exc):
            runtime.breaker.trip()

    worker.on_error = on_error
    task = asyncio.create_task(worker.run(), name="projection-worker")
    runtime.worker = worker
    runtime.application.on_saved.append(lambda _position: worker.poke())
    runtime.background.append(_stopper(worker.stop, task))
    start_checkpointer(runtime)
    if runtime.settings.webhooks:
        start_webhook_delivery(runtime)
    if runtime.settings.nats_relay:
        start_relay(runtime, worker.source)
    if runtime.settings.automation:
        start_automation(runtime)


def webhook_dispatcher(
    settings: Settings, application: DealtrailApplication, engine: AsyncEngine, clock: Clock
) -> Dispatcher:
    """Webhook delivery with the configured policy (see services/feeds/webhooks)."""
    return Dispatcher(application, engine, settings.store, settings.webhook_policy, clock)


def start_webhook_delivery(runtime: Runtime) -> None:
    """Deliver webhooks beside the projection worker, woken by every local command."""
    dispatcher = webhook_dispatcher(
        runtime.settings, runtime.application, runtime.engine, runtime.clock
    )
    task = asyncio.create_task(dispatcher.run(), name="webhook-delivery")
    runtime.webhooks = dispatcher
    runtime.application.on_saved.append(lambda _position: dispatcher.poke())
    runtime.background.append(_stopper(dispatcher.stop, task))


def relay_for(settings: Settings, engine: AsyncEngine, source: EventSource) -> NatsRelay:
    """The NATS relay with the configured server, stream and subjects."""
    return NatsRelay(
        engine=engine,
        source=source,
        location=settings.store,
        url=settings.nats_url,
        stream=settings.nats_stream,
        subject_prefix=settings.nats_subject_prefix,
    )


def start_relay(runtime: Runtime, source: EventSource) -> None:
    """Relay the log to NATS beside the embedded worker, woken by every local command."""
    relay = relay_for(runtime.settings, runtime.engine, source)
    task = asyncio.create_task(relay.run(), name="nats-relay")
    runtime.relay = relay
    runtime.application.on_saved.append(relay.poke)
    runtime.background.append(_stopper(relay.stop, task))


def evaluator_for(
    settings: Settings,
    application: DealtrailApplication,
    engine: AsyncEngine,
    clock: Clock = utc_now,
    models: ReadModels | None = None,
) -> Evaluator:
    """The automation evaluator on the primary's read models, at the configured interval."""
    return Evaluator(
        application=application,
        engine=engine,
        models=models or ReadModels(engine, settings.read_wait_seconds, settings.max_read_waiters),
        location=settings.store,
        clock=clock,
        interval=settings.automation_interval_seconds,
    )


def start_automation(runtime: Runtime) -> None:
    """Automation rules are evaluated beside the projection worker (see services/automation)."""
    evaluator = evaluator_for(
        runtime.settings, runtime.application, runtime.engine, runtime.clock, runtime.primary_reads
    )
    task = asyncio.create_task(evaluator.run(), name="automation")
    runtime.automation = evaluator
    runtime.background.append(_stopper(evaluator.stop, task))


def checkpointer_for(
    settings: Settings, application: DealtrailApplication, clock: Clock = utc_now
) -> Checkpointer:
    """The checkpoint writer with the configured signing key and policy."""
    return Checkpointer(application, settings.signer, settings.checkpoint_policy, clock=clock)


def start_checkpointer(runtime: Runtime) -> None:
    """Checkpoints are written beside the projection worker (see services/audit)."""
    checkpointer = checkpointer_for(runtime.settings, runtime.application, runtime.clock)
    task = asyncio.create_task(checkpointer.run(), name="checkpointer")
    runtime.background.append(_stopper(checkpointer.stop, task))


def _stopper(stop: Callable[[], None], task: asyncio.Task[None]) -> Stopper:
    """Asks a background task to stop, then waits for it (cancelling it after a while)."""

    async def stopped() -> None:
        stop()
        try:
            await asyncio.wait_for(task, timeout=BACKGROUND_STOP_SECONDS)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()

    return stopped
