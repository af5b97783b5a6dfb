"""The FastAPI application: middleware, routers, and start-up wiring in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from libs.application.sql import setup_lock
from services.pipeline_api.dashboard import router as dashboard
from services.pipeline_api.deps import RuntimeDep
from services.pipeline_api.errors import ErrorResponse, error_response, install_error_handlers
from services.pipeline_api.idempotency import (
    IdempotencyMiddleware,
    IdempotentAnswer,
    idempotent_answer,
)
from services.pipeline_api.idempotency_store import IdempotencyStore
from services.pipeline_api.limits import BodySizeLimitMiddleware, RequestBodyMiddleware
from services.pipeline_api.query_cache import QueryCache
from services.pipeline_api.routers import (
    audit,
    board,
    deal_queries,
    deals,
    exports,
    imports,
    integrity,
    me,
    owners,
    pipelines,
    reports,
)
from services.projections.runner import projection_status
from services.projections.source import EventSource
from services.runtime.bootstrap import Runtime, bootstrap
from services.runtime.settings import Settings

log = logging.getLogger("dealtrail")

Bootstrap = Callable[[Settings], Awaitable[Runtime]]

HEALTH_BEHIND_LIMIT = 10_000  # /health counts at most this many events behind a projection
HEALTH_PROJECTIONS_SECONDS = 2.0  # and gives up on the projections part after this long


async def _projections_health(runtime: Runtime, head: int) -> dict[str, Any]:
    """``projections``: per projection its position, events behind (counted) and parked
    events. Bounded in time and never fatal: without it /health still answers about the
    store, with ``projections`` null and ``projections_error`` saying why."""
    try:
        rows = await asyncio.wait_for(
            projection_status(
                runtime.engine,
                EventSource(runtime.application),
                behind_limit=HEALTH_BEHIND_LIMIT,
                head=head,
            ),
            timeout=HEALTH_PROJECTIONS_SECONDS,
        )
    except Exception as exc:  # noqa: BLE001 - the store's answer stands without this part
        log.warning("health: projection status unavailable: %r", exc)
        return {"projections": None, "projections_error": type(exc).__name__}
    projections = {
        r["name"]: {
            "generation": r["generation"],
            "position": r["position"],
            "events_behind": r["behind"],
            "events_behind_exact": r["behind_exact"],
            "parked": r["parked"],
        }
        for r in rows
    }
    return {"projections": projections}


def create_app(settings: Settings | None = None, *, wire: Bootstrap | None = None) -> FastAPI:
    """Build the ASGI app; nothing connects until the lifespan starts."""
    settings = settings or Settings()
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
        app.state.runtime = runtime
        if runtime.generated_admin_token:
            log.warning("no DEALTRAIL_API_KEYS set: admin token is in %s", settings.admin_key_file)
        try:
            yield
        finally:
            app.state.runtime = None
            await runtime.aclose()

    app = FastAPI(
        title="Dealtrail",
        version="0.1.0",
        description=(
            "Event-sourced sales pipeline. Every command is stored as an immutable event; "
            'errors share one shape: `{"error": {"code", "message", "details"}}`.'
        ),
        lifespan=lifespan,
    )
    # Set by the lifespan: the runtime, and the parts only the API uses.
    app.state.runtime = None
    app.state.idempotency = None
    app.state.query_cache = None
    install_error_handlers(app)
    app.add_exception_handler(IdempotentAnswer, idempotent_answer)
    app.include_router(pipelines.router)
    app.include_router(board.router)
    app.include_router(deals.router)
    app.include_router(deal_queries.router)
    app.include_router(audit.router)
    app.include_router(reports.router)
    app.include_router(exports.router)
    app.include_router(integrity.router)
    app.include_router(imports.router)
    app.include_router(owners.router)
    app.include_router(me.router)
    app.include_router(dashboard.router)

    @app.get(
        "/health",
        tags=["health"],
        responses={503: {"model": ErrorResponse, "description": "The database is unreachable"}},
    )
    async def health(runtime: RuntimeDep) -> Any:
        """Reports whether the event store is reachable, and each projection's events behind
        and parked events (no auth)."""
        try:
            if not await runtime.breaker.reachable():
                raise ConnectionError("database refuses connections")
            head = await run_in_threadpool(runtime.application.head_position)
        except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
            runtime.breaker.trip()
            return error_response(
                503, "database_unavailable", f"event store unreachable: {type(exc).__name__}"
            )
        body = {"status": "ok", "store": "reachable", "position": head}
        return JSONResponse({**body, **await _projections_health(runtime, head)})

    # Each one added wraps the ones before: the size limit guards everything, then the
    # body's type and syntax are checked, then idempotency wraps the routes.
    app.add_middleware(
        IdempotencyMiddleware,
        store_getter=lambda: app.state.idempotency,
        runtime_getter=lambda: app.state.runtime,
    )
    app.add_middleware(RequestBodyMiddleware, csv_paths=(imports.router.prefix,))
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app
