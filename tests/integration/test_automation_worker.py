"""A stale-deal rule fires exactly once per deal across a SIGKILL of the worker process
(``dealtrail projections run`` on PostgreSQL, real time, deals backdated past
``stale_after_days``), restarted on the same database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from libs.application.app import utc_now
from libs.application.records import decode_all
from services.runtime.bootstrap import Runtime
from tests.conftest import Backend, auth, client_for
from tests.started import started_worker

DEALS = 40
DEADLINE_SECONDS = 120.0


@pytest.fixture
async def api(postgres_backend: Backend, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The API on the real clock, with neither worker nor evaluator of its own."""
    settings = postgres_backend.settings(
        tmp_path / "data", DEALTRAIL_EMBEDDED_WORKER=False, DEALTRAIL_AUTOMATION=False
    )
    async with client_for(settings, utc_now) as client:  # type: ignore[arg-type]
        yield client


def firings(runtime: Runtime) -> Counter[str]:
    """Per deal, how many AutomationFired events the log holds."""
    app = runtime.application
    return Counter(
        str(record.payload["deal_id"])
        for batch in app.iter_notifications()
        for record in decode_all(app.mapper, batch)
        if record.event_type == "AutomationFired"
    )


def automation_activities(runtime: Runtime, rule_id: str) -> Counter[str]:
    """Per deal, how many activities the rule scheduled."""
    app = runtime.application
    return Counter(
        str(record.aggregate_id)
        for batch in app.iter_notifications()
        for record in decode_all(app.mapper, batch)
        if record.event_type == "ActivityScheduled" and record.actor == f"automation:{rule_id}"
    )


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


async def test_a_stale_rule_fires_exactly_once_per_deal_across_a_sigkill_of_the_worker(
    api: httpx.AsyncClient, postgres_backend: Backend, tmp_path: Path
) -> None:
    runtime: Runtime = api.app.state.runtime  # type: ignore[attr-defined]
    r = await api.post(
        "/v1/pipelines",
        json={"name": "Renewals", "currency": "EUR", "stale_after_days": 1},
        headers=auth("admin"),
    )
    assert r.status_code == 201, r.text
    pipeline_id = r.json()["id"]
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    deals = set()
    for n in range(DEALS):
        r = await api.post(
            "/v1/deals",
            json={
                "pipeline_id": pipeline_id,
                "title": f"Deal {n}",
                "value": "100.00",
                "occurred_at": three_days_ago,
            },
            headers=auth("rep"),
        )
        assert r.status_code == 201, r.text
        deals.add(r.json()["id"])
    r = await api.post(
        "/v1/automations",
        json={
            "name": "Wake up stale deals",
            "pipeline_id": pipeline_id,
            "trigger": {"type": "stale"},
            "actions": [
                {"type": "create_activity", "activity_type": "task", "subject": "Follow up"},
                {"type": "notify"},
            ],
        },
        headers=auth("manager"),
    )
    assert r.status_code == 201, r.text
    rule_id = r.json()["id"]
    fast = {"DEALTRAIL_AUTOMATION_INTERVAL_SECONDS": "0.2"}

    # (the process is gone when the block ends: nothing is left to stop)
    with (
        contextlib.suppress(ProcessLookupError),
        started_worker(postgres_backend, tmp_path, **fast) as first,
    ):
        # killed as soon as it has fired something, most likely in the middle of the rule
        wait_for(lambda: sum(firings(runtime).values()) > 0, "the first firing")
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
    killed_at = sum(firings(runtime).values())
    print(f"fired before the kill: {killed_at} of {DEALS}")

    with started_worker(postgres_backend, tmp_path, **fast) as second:
        wait_for(lambda: set(firings(runtime)) == deals, "a firing for every deal")
        # let the restarted evaluator look a few more times: nothing fires again
        head = runtime.application.head_position()
        await asyncio.sleep(2)
        assert second.proc.poll() is None, second.log_text()

    assert killed_at <= DEALS, killed_at
    assert runtime.application.head_position() == head
    assert firings(runtime) == Counter({deal: 1 for deal in deals})
    assert automation_activities(runtime, rule_id) == Counter({deal: 1 for deal in deals})
