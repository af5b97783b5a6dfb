"""The FastAPI application: middleware, routers, and start-up wiring in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from libs.application.sql import setup_lock
from services.feeds.stream import StreamHub
from services.pipeline_api.dashboard import router as dashboard
from services.pipeline_api.errors import install_error_handlers
from services.pipeline_api.idempotency import (
    IdempotencyMiddleware,
    IdempotentAnswer,
    idempotent_answer,
)
from services.pipeline_api.idempotency_store import PURGE_EVERY_SECONDS, IdempotencyStore
from services.pipeline_api.limits import BodySizeLimitMiddleware, RequestBodyMiddleware
from services.pipeline_api.observe import ObservedRequests
from services.pipeline_api.openapi import describe_errors, install_openapi, operation_id
from services.pipeline_api.query_cache import QueryCache
from services.pipeline_api.rate_limits import RateLimiter
from services.pipeline_api.routers import (
    activities,
    activity_queries,
    audit,
    automations,
    board,
    deal_queries,
    deals,
    events,
    exports,
    health,
    imports,
    integrity,
    me,
    owners,
    pipelines,
    reports,
    webhooks,
)
from services.runtime.bootstrap import Runtime, bootstrap
from services.runtime.metrics import forget_process_metrics
from services.runtime.settings import Settings, load_settings
from services.runtime.tracing import instrument_app, setup_tracing

log = logging.getLogger("dealtrail")

Bootstrap = Callable[[Settings], Awaitable[Runtime]]

# Every router of the API, in the order their routes are matched. A router listed here
# gets its operations' error statuses documented (services/pipeline_api/openapi.py).
ROUTERS = (
    pipelines.router,
    board.router,
    deals.router,
    deal_queries.router,
    activities.router,
    activity_queries.router,
    audit.router,
    reports.router,
    exports.router,
    events.router,
    integrity.router,
    imports.router,
    owners.router,
    automations.router,
    me.router,
    webhooks.router,
    dashboard.router,
    health.router,
)


class DealtrailAPI(FastAPI):
    """FastAPI with :class:`ObservedRequests` outside everything (error handling and the
    tracing middleware included), so that every answer, a 500 too, carries its request id."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._observed = ObservedRequests(super().__call__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._observed(scope, receive, send)


def create_app(settings: Settings | None = None, *, wire: Bootstrap | None = None) -> FastAPI:
    """Build the ASGI app; nothing connects until the lifespan starts."""
    settings = settings or load_settings()
    wire = wire or bootstrap

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await wire(settings)
        try:
            idempotency = IdempotencyStore(
                runtime.engine, timedelta(hours=settings.idempotency_ttl_hours)
            )
            async with setup_lock(settings.store):
                await idempotency.create_tables()
        except BaseException:
            await runtime.aclose()
            raise
        app.state.idempotency = idempotency
        app.state.query_cache = QueryCache(runtime.clock)
        app.state.rate_limiter = _rate_limiter(settings)
        app.state.event_streams = hub = StreamHub(settings.sse_max_streams)
        runtime.application.on_saved.append(hub.poke)
        app.state.runtime = runtime
        purger = asyncio.create_task(
            idempotency.purge_every(PURGE_EVERY_SECONDS), name="idempotency-purge"
        )
        if runtime.generated_admin_token:
            log.warning("no DEALTRAIL_API_KEYS set: admin token is in %s", settings.admin_key_file)
        try:
            yield
        finally:
            app.state.runtime = None
            purger.cancel()
            await asyncio.gather(purger, return_exceptions=True)
            await runtime.aclose()
            forget_process_metrics()

    app = DealtrailAPI(
        title="Dealtrail",
        version="0.1.0",
        description=(
            "Event-sourced sales pipeline. Every command is stored as an immutable event; "
            'errors share one shape: `{"error": {"code", "message", "details"}}`.'
        ),
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    # Set by the lifespan: the runtime, and the parts only the API uses.
    app.state.runtime = None
    app.state.idempotency = None
    app.state.query_cache = None
    app.state.rate_limiter = None
    app.state.event_streams = None
    install_error_handlers(app)
    app.add_exception_handler(IdempotentAnswer, idempotent_answer)
    for router in ROUTERS:
        describe_errors(router.routes)
        app.include_router(router)

    # Each one added wraps the ones before: the size limit guards everything, then the
    # body's type and syntax are checked, then idempotency wraps the routes.
    app.add_middleware(
        IdempotencyMiddleware,
        store_getter=lambda: app.state.idempotency,
        runtime_getter=lambda: app.state.runtime,
    )
    app.add_middleware(RequestBodyMiddleware, csv_paths=(imports.router.prefix,))
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    provider = setup_tracing(settings)
    if provider is not None:
        instrument_app(app, provider)
    install_openapi(app)
    return app


def _rate_limiter(settings: Settings) -> RateLimiter | None:
    rules = settings.rate_limit_rules
    return RateLimiter(rules, settings.rate_limit_storage) if rules else None
