"""``/metrics``: what the service did moves the metrics, and the projections' figures are
the database's. On SQLite and PostgreSQL through real HTTP; the process metrics are shared
by every app of the test process, so tests compare a scrape before with one after."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from uuid import UUID

import httpx

from services.projections.catalog import all_projections
from services.projections.runner import Worker
from services.projections.source import EventSource
from tests.conftest import Backend, TestClock, auth, client_for
from tests.e2e.test_query_cache import runtime_of, settled
from tests.integration.test_parking import store_undecodable_snooze
from tests.scrape import Samples, by_label, moved, parse, value

NAMES = sorted(p.name for p in all_projections())


async def scrape(api: httpx.AsyncClient) -> Samples:
    r = await api.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return parse(r.text)


async def define_pipeline(api: httpx.AsyncClient) -> str:
    r = await api.post(
        "/v1/pipelines", json={"name": "Sales", "currency": "EUR"}, headers=auth("admin")
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def create_deal(api: httpx.AsyncClient, pipeline_id: str, **headers: str) -> httpx.Response:
    body = {"pipeline_id": pipeline_id, "title": "ACME", "value": "10.00"}
    return await api.post("/v1/deals", json=body, headers={**auth("rep"), **headers})


async def test_requests_commands_appends_projections_cache_and_replays_move_their_metrics(
    api: httpx.AsyncClient,
) -> None:
    before = await scrape(api)
    pipeline_id = await define_pipeline(api)
    created = await create_deal(api, pipeline_id, **{"Idempotency-Key": "m-1"})
    assert created.status_code == 201
    replayed = await create_deal(api, pipeline_id, **{"Idempotency-Key": "m-1"})
    assert replayed.headers["Idempotent-Replayed"] == "true"
    deal = f"/v1/deals/{created.json()['id']}"
    stale = await api.post(f"{deal}/advance", json={"stage": "Quote sent"}, headers={
        **auth("rep"), "If-Match": '"7"'})  # fmt: skip
    assert stale.status_code == 412
    invalid = await api.post(f"{deal}/lose", json={"reason": "No such"}, headers=auth("rep"))
    assert invalid.status_code == 422
    assert (await api.get("/v1/no-such-thing", headers=auth("rep"))).status_code == 404
    await settled(api)
    board = f"/v1/pipelines/{pipeline_id}/board"
    first = await api.get(board, headers=auth("rep"))
    second = await api.get(board, headers=auth("rep"))
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    after = await scrape(api)

    def http(method: str, route: str, status: int) -> float:
        labels = {"method": method, "route": route, "status": str(status)}
        count = moved(before, after, "dealtrail_http_requests_total", **labels)
        timed = moved(before, after, "dealtrail_http_request_duration_seconds_count", **labels)
        assert timed == count
        return count

    assert http("POST", "/v1/pipelines", 201) == 1
    assert http("POST", "/v1/deals", 201) == 2  # the first and its replay
    assert http("POST", "/v1/deals/{deal_id}/advance", 412) == 1
    assert http("POST", "/v1/deals/{deal_id}/lose", 422) == 1
    assert http("GET", "unmatched", 404) == 1
    assert http("GET", "/v1/pipelines/{pipeline_id}/board", 200) == 2
    assert http("GET", "/metrics", 200) == 1  # the first scrape

    def commands(command: str, outcome: str) -> float:
        return moved(before, after, "dealtrail_commands_total", command=command, outcome=outcome)

    assert commands("DefinePipeline", "ok") == 1
    assert commands("CreateDeal", "ok") == 1  # the replay ran nothing
    assert commands("AdvanceDeal", "stale") == 1
    assert commands("LoseDeal", "invalid") == 1
    assert moved(before, after, "dealtrail_command_duration_seconds_count", command="LoseDeal")
    assert moved(before, after, "dealtrail_idempotency_replays_total") == 1
    assert moved(before, after, "dealtrail_event_store_append_seconds_count") == 2
    assert moved(before, after, "dealtrail_events_appended_total") == 2
    assert moved(before, after, "dealtrail_query_cache_requests_total", result="miss") == 1
    assert moved(before, after, "dealtrail_query_cache_requests_total", result="hit") == 1
    for name in NAMES:
        assert moved(before, after, "dealtrail_projection_events_total", projection=name) == 2
        assert moved(before, after, "dealtrail_projection_batch_seconds_count", projection=name)

    head = runtime_of(api).application.head_position()
    assert value(after, "dealtrail_store_up") == 1
    assert value(after, "dealtrail_event_store_head_position") == head
    assert by_label(after, "dealtrail_projection_position", "projection") == dict.fromkeys(
        NAMES, head
    )
    for figure in ("events_behind", "seconds_behind", "parked_events"):
        samples = by_label(after, f"dealtrail_projection_{figure}", "projection")
        assert samples == dict.fromkeys(NAMES, 0), figure
    # the embedded worker works on every projection
    assert by_label(after, "dealtrail_worker_projection_active", "projection") == dict.fromkeys(
        NAMES, 1
    )
    assert value(after, "dealtrail_store_breaker_open") == 0


async def test_events_and_seconds_behind_and_parked_events_come_from_the_database(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    """Without a worker the projections fall behind by the events written, as old as the
    oldest of them; a worker catching up (and parking an event it cannot decode)
    brings them back to 0 behind with 1 parked where that event is read."""
    settings = backend.settings(tmp_path / "data", DEALTRAIL_EMBEDDED_WORKER=False)
    async with client_for(settings, clock) as api:
        runtime = runtime_of(api)
        started = time.time()
        pipeline_id = await define_pipeline(api)
        deal_id = UUID((await create_deal(api, pipeline_id)).json()["id"])
        poison = await asyncio.to_thread(store_undecodable_snooze, runtime.application, deal_id)
        await asyncio.sleep(1.0)
        behind = await scrape(api)
        waited = time.time() - started
        assert value(behind, "dealtrail_event_store_head_position") == poison
        assert by_label(behind, "dealtrail_projection_events_behind", "projection") == (
            dict.fromkeys(NAMES, 3)
        )
        # the oldest unapplied event (the pipeline's) was recorded at least a second ago,
        # and at most as long ago as the test started
        lag = by_label(behind, "dealtrail_projection_seconds_behind", "projection")
        assert set(lag) == set(NAMES)
        assert all(1.0 <= seconds <= waited for seconds in lag.values()), (lag, waited)
        assert "dealtrail_worker_projection_active" not in {name for name, _ in behind}

        worker = Worker(runtime.engine, EventSource(runtime.application), settings.store)
        await worker.catch_up()
        caught_up = await scrape(api)
        for figure in ("events_behind", "seconds_behind"):
            samples = by_label(caught_up, f"dealtrail_projection_{figure}", "projection")
            assert samples == dict.fromkeys(NAMES, 0), figure
        parked = by_label(caught_up, "dealtrail_projection_parked_events", "projection")
        readers = {p.name for p in all_projections() if "DealSnoozed" in p.handles}
        assert readers
        assert parked == {name: (1 if name in readers else 0) for name in NAMES}
        for name in readers:
            assert moved(behind, caught_up, "dealtrail_projection_parked_total", projection=name)


async def test_the_process_metrics_answer_while_the_service_starts(
    backend: Backend, tmp_path: Path
) -> None:
    from services.pipeline_api.main import create_app

    app = create_app(backend.settings(tmp_path / "data"))  # no lifespan: nothing connected
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dealtrail") as client:
        r = await client.get("/metrics")
    assert r.status_code == 200
    samples = parse(r.text)
    assert ("dealtrail_store_up", ()) not in samples
    assert any(name == "dealtrail_http_requests_total" for name, _ in samples)
