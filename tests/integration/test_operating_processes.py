"""The service as operators run it: two API processes (``dealtrail serve --workers 2``), a
projection worker and its standby (``dealtrail projections run --metrics-port``), JSON
logs. Under load a scrape shows every metric moving, counted over both API processes;
readiness follows the worker; an outage shows in the breaker; the log line of an error
carries the error's request id, and no secret is ever logged."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import httpx

from libs.application.app import DealtrailApplication
from services.projections.catalog import all_projections
from services.runtime.settings import Settings
from services.runtime.stores import open_application
from tests.conftest import TOKENS, Backend, auth
from tests.integration.test_database_outage import outage_db, set_outage
from tests.integration.test_parking import store_undecodable_snooze
from tests.scrape import Samples, by_label, moved, parse, value
from tests.started import started_service, started_worker
from tests.unit.test_logs import SIGNING_KEY

__all__ = ["outage_db"]  # a fixture, used by name

NAMES = sorted(p.name for p in all_projections())
WAIT_SECONDS = 60.0
DB_PASSWORD = "db-password-never-logged-77"


def eventually(check: Callable[[], bool], what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def scrape(base_url: str) -> Samples:
    with httpx.Client(base_url=base_url, timeout=10) as client:  # a new connection each time
        r = client.get("/metrics")
    assert r.status_code == 200, r.text
    return parse(r.text)


def active(base_url: str) -> dict[str, float]:
    return by_label(scrape(base_url), "dealtrail_worker_projection_active", "projection")


def test_a_scrape_under_load_shows_every_metric_moving_over_both_api_processes(
    outage_db: str, tmp_path: Path
) -> None:
    backend = Backend("postgres", outage_db)
    env = {
        "DEALTRAIL_EMBEDDED_WORKER": "false",
        "DEALTRAIL_LOG_FORMAT": "json",
        "DEALTRAIL_READY_MAX_LAG": "0",
        "DEALTRAIL_RATE_LIMITS": "auditor=2/minute",
        "DEALTRAIL_DATABASE_PASSWORD": DB_PASSWORD,  # trust auth: given, never needed
        "DEALTRAIL_SIGNING_KEY": SIGNING_KEY,
    }
    with (
        started_service(backend, tmp_path, "--workers", "2", **env) as service,
        started_worker(backend, tmp_path, **env) as worker,
    ):
        worker_url, worker_pid = worker.base_url, worker.proc.pid
        eventually(lambda: active(worker_url) == dict.fromkeys(NAMES, 1), "the worker works")
        with started_worker(backend, tmp_path, **env) as standby:
            assert active(standby.base_url) == dict.fromkeys(NAMES, 0)  # it stands by
        api = httpx.Client(base_url=service.base_url, timeout=30)

        def fresh(method: str, path: str, **kwargs: object) -> httpx.Response:
            """On a new connection, so that the kernel spreads requests over both processes."""
            with httpx.Client(base_url=service.base_url, timeout=30) as client:
                return client.request(method, path, **kwargs)  # type: ignore[arg-type]

        def ready() -> bool:
            return api.get("/health/ready").status_code == 200

        before, worker_before = scrape(service.base_url), scrape(worker_url)

        # --- load: commands of every outcome, queries, replays, refusals ------------------
        pipeline = api.post(
            "/v1/pipelines", json={"name": "Ops", "currency": "EUR"}, headers=auth("admin")
        ).json()["id"]
        deals = []
        for i in range(20):
            r = fresh("POST", "/v1/deals", headers=auth("rep"),
                      json={"pipeline_id": pipeline, "title": f"D{i}", "value": "5"})  # fmt: skip
            assert r.status_code == 201, r.text
            deals.append(r.json()["id"])
        assert api.post(f"/v1/deals/{deals[0]}/win", headers=auth("rep")).status_code == 200
        conflict = api.post(f"/v1/deals/{deals[0]}/win", headers=auth("rep"))
        assert conflict.status_code == 409
        keyed = {**auth("rep"), "Idempotency-Key": "ops-1"}
        for _ in range(3):
            r = fresh("POST", f"/v1/deals/{deals[1]}/lose", json={"reason": "Price"}, headers=keyed)
            assert r.status_code == 200, r.text
        assert fresh("GET", "/v1/nowhere").status_code == 404
        eventually(ready, "the worker caught up")
        board = f"/v1/pipelines/{pipeline}/board"
        assert [api.get(board, headers=auth("rep")).headers["X-Cache"] for _ in range(2)] == [
            "miss", "hit"]  # fmt: skip
        auditor = [api.get("/v1/audit", headers=auth("auditor")).status_code for _ in range(3)]
        assert auditor == [200, 200, 429]  # one connection, one process's count
        application: DealtrailApplication = open_application(
            Settings(DATABASE_URL=outage_db)  # type: ignore[call-arg]
        )
        try:
            store_undecodable_snooze(application, UUID(deals[2]))
        finally:
            application.close()
        eventually(ready, "the worker passed the poison event")

        # --- the worker stops: readiness and lag follow ---------------------------------------
        os.kill(worker_pid, signal.SIGSTOP)
        for deal in deals[3:6]:
            assert fresh("POST", f"/v1/deals/{deal}/advance", json={"stage": "Quote sent"},
                         headers=auth("rep")).status_code == 200  # fmt: skip
        time.sleep(1.2)
        stalled = scrape(service.base_url)
        not_ready = api.get("/health/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"]["details"]["failing"] == ["projections"]
        assert by_label(stalled, "dealtrail_projection_events_behind", "projection") == (
            dict.fromkeys(NAMES, 3)
        )
        assert (
            min(by_label(stalled, "dealtrail_projection_seconds_behind", "projection").values())
            >= 1
        )
        os.kill(worker_pid, signal.SIGCONT)
        eventually(ready, "the worker caught up again")

        # --- an outage: the breaker opens, the service recovers by itself ------------------
        set_outage(outage_db, True)
        try:
            refused = fresh("GET", "/v1/deals", headers=auth("rep"))
            assert refused.status_code == 503
            during = scrape(service.base_url)  # either process: the gauge is the max
        finally:
            set_outage(outage_db, False)
        assert value(during, "dealtrail_store_breaker_open") == 1
        assert value(during, "dealtrail_store_up") == 0

        def closed() -> bool:
            for _ in range(4):  # reach both processes, so that both probe and close
                fresh("GET", "/v1/deals", headers=auth("rep"))
            return value(scrape(service.base_url), "dealtrail_store_breaker_open") == 0

        eventually(closed, "the breakers closed")
        after, worker_after = scrape(service.base_url), scrape(worker_url)
        api.close()

    # --- every metric moved; counts add up over both processes ----------------------------
    def http(method: str, route: str, status: int) -> float:
        labels = {"method": method, "route": route, "status": str(status)}
        assert moved(before, after, "dealtrail_http_request_duration_seconds_count", **labels) == (
            moved(before, after, "dealtrail_http_requests_total", **labels)
        )
        return moved(before, after, "dealtrail_http_requests_total", **labels)

    assert http("POST", "/v1/deals", 201) == 20
    assert http("POST", "/v1/deals/{deal_id}/win", 409) == 1
    assert http("POST", "/v1/deals/{deal_id}/lose", 200) == 3
    assert http("GET", "unmatched", 404) == 1
    assert http("GET", "/v1/audit", 429) == 1
    assert http("GET", "/v1/deals", 503) >= 1
    assert (
        moved(before, after, "dealtrail_commands_total", command="CreateDeal", outcome="ok") == 20
    )
    assert (
        moved(before, after, "dealtrail_commands_total", command="WinDeal", outcome="conflict") == 1
    )
    assert moved(before, after, "dealtrail_commands_total", command="LoseDeal", outcome="ok") == 1
    assert (
        moved(before, after, "dealtrail_command_duration_seconds_count", command="AdvanceDeal") == 3
    )
    assert moved(before, after, "dealtrail_event_store_append_seconds_count") == 26
    assert moved(before, after, "dealtrail_events_appended_total") == 26
    assert moved(before, after, "dealtrail_idempotency_replays_total") == 2
    assert moved(before, after, "dealtrail_query_cache_requests_total", result="miss") == 1
    assert moved(before, after, "dealtrail_query_cache_requests_total", result="hit") == 1
    assert moved(before, after, "dealtrail_rate_limited_total", role="auditor") == 1
    assert moved(before, after, "dealtrail_store_breaker_trips_total") >= 1
    assert value(after, "dealtrail_store_up") == 1
    head = value(after, "dealtrail_event_store_head_position")
    assert head > value(before, "dealtrail_event_store_head_position")
    assert by_label(after, "dealtrail_projection_position", "projection") == dict.fromkeys(
        NAMES, head
    )
    readers = {p.name for p in all_projections() if "DealSnoozed" in p.handles}
    parked = by_label(after, "dealtrail_projection_parked_events", "projection")
    assert parked == {name: (1 if name in readers else 0) for name in NAMES}
    # the API processes run no worker; the worker process did the projections' work
    assert "dealtrail_worker_projection_active" not in {name for name, _ in after}
    for name in NAMES:
        assert moved(
            worker_before, worker_after, "dealtrail_projection_events_total", projection=name
        ) == head - value(worker_before, "dealtrail_projection_position", projection=name)
        assert (
            moved(
                worker_before,
                worker_after,
                "dealtrail_projection_batch_seconds_count",
                projection=name,
            )
            >= 1
        )
    for name in readers:
        assert (
            moved(worker_before, worker_after, "dealtrail_projection_parked_total", projection=name)
            == 1
        )

    # --- the logs: JSON lines, the error's request id, no secret ------------------------------
    logs = [service.log_text(), worker.log_text(), standby.log_text()]
    records = [json.loads(line) for line in logs[0].splitlines() if line.startswith("{")]
    assert records and all("level" in r and "message" in r for r in records)
    conflict_id = conflict.json()["error"]["details"]["request_id"]
    assert conflict.headers["X-Request-ID"] == conflict_id
    (line,) = [r for r in records if r.get("request_id") == conflict_id]
    assert line["status"] == 409
    assert line["route"] == "/v1/deals/{deal_id}/win"
    assert line["principal"] == "rita"
    assert "Traceback" not in logs[0]
    for text in logs:
        for secret in (*TOKENS.values(), DB_PASSWORD, SIGNING_KEY):
            assert secret not in text
