"""What a scrape of ``/metrics`` answers, in the API and in a separate projection worker.

Two parts make one answer. The process metrics (``libs/observability/metrics.py``):
what this process counted and timed; with several API processes, what all of them did
(prometheus-client's multiprocess mode, see :func:`process_registry`). And what the
database knows, read at scrape time so that every process answers the same: the log's
head, each projection's position, events and seconds behind, and parked events; and,
in a process that runs a projection worker, which projections it is working on (a
standby worker shows 0 for all).

The separate worker (``dealtrail projections run``) serves the same answer on its own
small HTTP endpoint (:func:`start_endpoint`) with ``/health/live`` beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from libs.application.app import utc_now
from services.projections.runner import Worker, projection_status
from services.projections.source import EventSource

log = logging.getLogger("dealtrail.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
SCRAPE_BEHIND_LIMIT = 100_000  # events counted behind a projection per scrape, at most
SCRAPE_DATABASE_SECONDS = 2.0  # the database part of a scrape gives up after this long

Render = Callable[[], Awaitable[bytes]]
Ready = Callable[[], tuple[bool, dict[str, Any]]]


def process_registry() -> CollectorRegistry:
    """This process's metrics or, in multiprocess mode, every API process's."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    if not directory:
        return REGISTRY
    registry = CollectorRegistry(auto_describe=True)
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


class _Families(Collector):
    """Hands a registry metric families that were computed beforehand."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


async def database_families(
    engine: AsyncEngine, source: EventSource, worker: Worker | None = None
) -> list[Metric]:
    """The metrics read from the database now (and which projections ``worker`` runs).
    A database that does not answer in time gives ``dealtrail_store_up 0`` and no
    projection figures, never a failed scrape."""
    up = _gauge("dealtrail_store_up", "1 when the event store answered this scrape, else 0")
    families: list[Metric] = [up]
    if worker is not None:
        active = _gauge(
            "dealtrail_worker_projection_active",
            "1 for each projection this process's worker is applying events to, 0 while it "
            "stands by (another worker holds the projection's lock)",
            ["projection"],
        )
        working = set(worker.active_names())
        for projection in worker.projections:
            active.add_metric([projection.name], 1 if projection.name in working else 0)
        families.append(active)
    try:
        rows, lag_seconds = await asyncio.wait_for(
            _projection_figures(engine, source), timeout=SCRAPE_DATABASE_SECONDS
        )
    except Exception as exc:  # noqa: BLE001 - the process metrics are still worth answering
        log.warning("metrics: the database part of the scrape failed: %r", exc)
        up.add_metric([], 0)
        return families
    up.add_metric([], 1)
    head = _gauge("dealtrail_event_store_head_position", "Position of the newest event in the log")
    head.add_metric([], rows[0]["head"] if rows else 0)
    position = _gauge(
        "dealtrail_projection_position", "Last log position a projection applied", ["projection"]
    )
    behind = _gauge(
        "dealtrail_projection_events_behind",
        f"Events stored after a projection's position (counted up to {SCRAPE_BEHIND_LIMIT})",
        ["projection"],
    )
    seconds = _gauge(
        "dealtrail_projection_seconds_behind",
        "Age of the oldest event a projection has not applied yet (0 when caught up)",
        ["projection"],
    )
    parked = _gauge(
        "dealtrail_projection_parked_events",
        "Events a projection parked and that still wait for a retry",
        ["projection"],
    )
    for row in rows:
        name = [row["name"]]
        position.add_metric(name, row["position"])
        behind.add_metric(name, row["behind"])
        seconds.add_metric(name, lag_seconds.get(row["name"], 0.0))
        parked.add_metric(name, row["parked"])
    return [*families, head, position, behind, seconds, parked]


async def _projection_figures(
    engine: AsyncEngine, source: EventSource
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    head = await asyncio.to_thread(source.head)
    rows = await projection_status(engine, source, behind_limit=SCRAPE_BEHIND_LIMIT, head=head)
    behind_at = sorted({r["position"] for r in rows if r["behind"] > 0})
    oldest = await asyncio.to_thread(_first_recorded_after, source, behind_at)
    now = utc_now()  # events are stamped with the server's wall clock when recorded
    lag = {
        r["name"]: max(0.0, (now - oldest[r["position"]]).total_seconds())
        for r in rows
        if oldest.get(r["position"]) is not None
    }
    return rows, lag


def _first_recorded_after(source: EventSource, positions: Iterable[int]) -> dict[int, datetime]:
    """When the first event after each position was recorded (one read each)."""
    found: dict[int, datetime] = {}
    for position in positions:
        records = source.read(position, 1)
        if records and records[0].recorded_at is not None:
            found[position] = records[0].recorded_at
    return found


async def render(engine: AsyncEngine, source: EventSource, worker: Worker | None = None) -> bytes:
    """The text of a scrape: the process metrics, then the database's figures."""
    families = await database_families(engine, source, worker)
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(_Families(families))
    return generate_latest(process_registry()) + generate_latest(snapshot)


def process_only() -> bytes:
    """The process metrics alone (while the service starts and nothing is connected)."""
    return generate_latest(process_registry())


# --- the worker's own endpoint --------------------------------------------------------------


def endpoint_app(scrape: Render, ready: Ready | None = None) -> Starlette:
    """``/metrics`` and ``/health/live`` of a process that has no API, and
    ``/health/ready`` when the process says what being ready means for it (``ready``:
    whether it is, and the checks to show)."""

    async def metrics(_: Request) -> Response:
        return Response(await scrape(), media_type=CONTENT_TYPE)

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    routes = [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
    ]
    if ready is not None:
        is_ready = ready

        async def readiness(_: Request) -> Response:
            ok, checks = is_ready()
            body = {"status": "ok" if ok else "not_ready", "checks": checks}
            return JSONResponse(body, status_code=200 if ok else 503)

        routes.append(Route("/health/ready", readiness, methods=["GET"]))
    return Starlette(routes=routes)


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the process it runs in handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Endpoint:
    """A running :func:`endpoint_app` server; :meth:`stop` ends it."""

    def __init__(self, server: _Server, task: asyncio.Task[None]) -> None:
        self._server = server
        self._task = task

    @property
    def started(self) -> bool:
        return self._server.started

    async def stop(self) -> None:
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, timeout=5)


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound here rather than by uvicorn, which exits the process when it cannot bind."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def start_endpoint(
    scrape: Render, host: str, port: int, ready: Ready | None = None
) -> Endpoint:
    """Serve :func:`endpoint_app` on ``host:port`` from this event loop; returns once it
    listens (raises ``OSError`` when the address cannot be bound)."""
    config = uvicorn.Config(
        endpoint_app(scrape, ready),
        host=host,
        port=port,
        log_config=None,
        log_level="warning",  # the worker says where its metrics are; uvicorn need not
        access_log=False,
        lifespan="off",
    )
    server = _Server(config)
    sock = _listening_socket(host, port)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="metrics-endpoint")
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it (the port taken, ...)
            raise OSError(f"metrics endpoint on {host}:{port} did not start")
        await asyncio.sleep(0.05)
    return Endpoint(server, task)


def forget_process_metrics() -> None:
    """At a process's end: in multiprocess mode, drop its live gauges (the breaker's) so
    that a scrape of the processes left does not show them."""
    if os.environ.get(MULTIPROCESS_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
