"""Probes and metrics: ``/health``, ``/health/live``, ``/health/ready``, ``/metrics`` (no auth)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from services.pipeline_api.deps import RuntimeDep
from services.pipeline_api.errors import ErrorResponse, error_response
from services.projections.runner import projection_status
from services.projections.source import EventSource
from services.runtime import metrics
from services.runtime.bootstrap import Runtime

log = logging.getLogger("dealtrail.api")

router = APIRouter(tags=["health"])

HEALTH_BEHIND_LIMIT = 10_000  # /health counts at most this many events behind a projection
HEALTH_PROJECTIONS_SECONDS = 2.0  # and gives up on the projections part after this long
STORE_CHECK_SECONDS = 2.0  # a store that has not answered by then counts as unreachable


class StoreUnreachable(Exception):
    """The event store did not answer (or the breaker's probe failed)."""


async def _head(runtime: Runtime) -> int:
    """The log's head position; trips the breaker and raises when the store is down (or
    slower than :data:`STORE_CHECK_SECONDS`, as while the store's driver retries)."""
    try:
        if not await runtime.breaker.reachable():
            raise ConnectionError("database refuses connections")
        return await asyncio.wait_for(
            run_in_threadpool(runtime.application.head_position), timeout=STORE_CHECK_SECONDS
        )
    except Exception as exc:
        runtime.breaker.trip()
        raise StoreUnreachable(type(exc).__name__) from exc


async def _projections(runtime: Runtime, head: int, behind_limit: int) -> list[dict[str, Any]]:
    """Each projection's status, counted up to ``behind_limit`` events behind, or a
    ``TimeoutError`` after :data:`HEALTH_PROJECTIONS_SECONDS`."""
    return await asyncio.wait_for(
        projection_status(
            runtime.engine, EventSource(runtime.application), behind_limit=behind_limit, head=head
        ),
        timeout=HEALTH_PROJECTIONS_SECONDS,
    )


def _unreachable(exc: StoreUnreachable) -> JSONResponse:
    return error_response(503, "database_unavailable", f"event store unreachable: {exc}")


@router.get(
    "/health",
    responses={503: {"model": ErrorResponse, "description": "The database is unreachable"}},
)
async def get_health(runtime: RuntimeDep) -> Any:
    """Reports whether the event store is reachable, and each projection's events behind
    and parked events (no auth)."""
    try:
        head = await _head(runtime)
    except StoreUnreachable as exc:
        return _unreachable(exc)
    body: dict[str, Any] = {"status": "ok", "store": "reachable", "position": head}
    try:
        rows = await _projections(runtime, head, HEALTH_BEHIND_LIMIT)
    except Exception as exc:  # noqa: BLE001 - the store's answer stands without this part
        log.warning("health: projection status unavailable: %r", exc)
        return JSONResponse({**body, "projections": None, "projections_error": type(exc).__name__})
    body["projections"] = {
        r["name"]: {
            "generation": r["generation"],
            "position": r["position"],
            "events_behind": r["behind"],
            "events_behind_exact": r["behind_exact"],
            "parked": r["parked"],
        }
        for r in rows
    }
    return JSONResponse(body)


@router.get("/health/live")
async def get_liveness() -> dict[str, str]:
    """200 while the process answers at all (liveness probe; touches no database)."""
    return {"status": "alive"}


@router.get(
    "/health/ready",
    responses={
        503: {
            "model": ErrorResponse,
            "description": "A check fails: `details.failing` names it (store, projections)",
        }
    },
)
async def get_readiness(runtime: RuntimeDep) -> Any:
    """200 when the event store answers and every projection is at most
    ``DEALTRAIL_READY_MAX_LAG`` events behind the log; else 503 ``not_ready`` naming the
    failing check (readiness probe)."""
    max_lag = runtime.settings.ready_max_lag
    try:
        head = await _head(runtime)
    except StoreUnreachable as exc:
        return _not_ready(f"the event store is unreachable ({exc})", {"store": str(exc)})
    try:
        rows = await _projections(runtime, head, max_lag + 1)
    except Exception as exc:  # noqa: BLE001 - cannot tell: not ready
        log.warning("readiness: projection status unavailable: %r", exc)
        name = type(exc).__name__
        return _not_ready(f"projection positions could not be read ({name})", {"projections": name})
    # Counted up to max_lag + 1 events: enough to tell, cheap when far behind.
    behind = {r["name"]: r["behind"] for r in rows}
    lagging = sorted(name for name, n in behind.items() if n > max_lag)
    if lagging:
        return _not_ready(
            f"more than {max_lag:,} events behind: {', '.join(lagging)}",
            {"projections": {"lagging": lagging, "max_lag": max_lag}},
        )
    return {
        "status": "ready",
        "position": head,
        "checks": {"store": "ok", "projections": {"behind": behind, "max_lag": max_lag}},
    }


def _not_ready(reason: str, failing: dict[str, Any]) -> JSONResponse:
    return error_response(
        503, "not_ready", f"not ready: {reason}", {"failing": sorted(failing), "checks": failing}
    )


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    """Prometheus metrics (text exposition format); see ``services/runtime/metrics.py``."""
    runtime: Runtime | None = request.app.state.runtime
    if runtime is None:
        return Response(metrics.process_only(), media_type=metrics.CONTENT_TYPE)
    source = EventSource(runtime.application)
    body = await metrics.render(runtime.engine, source, runtime.worker)
    return Response(body, media_type=metrics.CONTENT_TYPE)
