"""Liveness and readiness: ``/health/live`` answers while the process does, and
``/health/ready`` only while the store answers and every projection is close enough to the
log's head (``DEALTRAIL_READY_MAX_LAG``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from services.pipeline_api.main import create_app
from services.projections.catalog import all_projections
from services.projections.runner import Worker
from services.projections.source import EventSource
from tests.conftest import Backend, TestClock, auth, client_for
from tests.e2e.test_query_cache import runtime_of
from tests.integration.test_database_outage import outage_db, set_outage

__all__ = ["outage_db"]  # a fixture, used by name

NAMES = sorted(p.name for p in all_projections())


async def test_ready_is_503_naming_the_projections_behind_and_200_once_they_caught_up(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    settings = backend.settings(
        tmp_path / "data", DEALTRAIL_EMBEDDED_WORKER=False, DEALTRAIL_READY_MAX_LAG=2
    )
    async with client_for(settings, clock) as api:
        ready = await api.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["projections"]["behind"] == dict.fromkeys(NAMES, 0)

        made = await api.post(
            "/v1/pipelines", json={"name": "Sales", "currency": "EUR"}, headers=auth("admin")
        )
        for title in ("A", "B"):
            body = {"pipeline_id": made.json()["id"], "title": title, "value": "1"}
            assert (await api.post("/v1/deals", json=body, headers=auth("rep"))).status_code == 201
        # three events behind, two allowed: not ready, naming every projection
        behind = await api.get("/health/ready")
        assert behind.status_code == 503, behind.text
        error = behind.json()["error"]
        assert error["code"] == "not_ready"
        assert error["details"]["failing"] == ["projections"]
        assert error["details"]["checks"]["projections"] == {"lagging": NAMES, "max_lag": 2}
        for name in NAMES:
            assert name in error["message"]
        assert (await api.get("/health/live")).status_code == 200
        assert (await api.get("/health")).status_code == 200  # /health reports, never refuses

        runtime = runtime_of(api)
        await Worker(runtime.engine, EventSource(runtime.application), settings.store).catch_up()
        ready = await api.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
        assert ready.json()["position"] == runtime.application.head_position()


async def test_ready_is_503_naming_the_store_while_the_database_is_down(
    outage_db: str, tmp_path: Path, clock: TestClock
) -> None:
    settings = Backend("postgres", outage_db).settings(tmp_path / "data")
    async with client_for(settings, clock) as api:
        assert (await api.get("/health/ready")).status_code == 200
        await asyncio.to_thread(set_outage, outage_db, True)
        try:
            ready = await api.get("/health/ready")
            live = await api.get("/health/live")
        finally:
            await asyncio.to_thread(set_outage, outage_db, False)
        assert ready.status_code == 503
        error = ready.json()["error"]
        assert error["code"] == "not_ready"
        assert error["details"]["failing"] == ["store"]
        assert "the event store is unreachable" in error["message"]
        assert live.status_code == 200
        deadline = time.monotonic() + 30
        while (await api.get("/health/ready")).status_code != 200:
            assert time.monotonic() < deadline, "not ready again after the outage"
            await asyncio.sleep(0.2)


async def test_live_answers_while_the_service_starts_and_ready_does_not(
    backend: Backend, tmp_path: Path
) -> None:
    app = create_app(backend.settings(tmp_path / "data"))  # lifespan not run: nothing connected
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dealtrail") as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
    assert live.status_code == 200
    assert live.json() == {"status": "alive"}
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "starting"
