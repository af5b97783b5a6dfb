"""Heavy reports are computed off the API's event loop: while one is in flight, held in
the middle of its computation, other requests of the same process are answered."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from services.projections.analytics import queries as analytics
from services.queries.reports.catalog import OFF_LOOP
from tests.conftest import auth

HOLD_SECONDS = 60  # a safety bound only: the test releases the report itself


async def _pipeline_with_a_won_deal(api: httpx.AsyncClient) -> tuple[str, int]:
    """A new pipeline with one deal, won; and the position of the win."""
    headers = auth("admin")
    r = await api.post(
        "/v1/pipelines",
        json={
            "name": "Off the loop",
            "currency": "EUR",
            "stages": [{"name": "Lead", "probability": 10}, {"name": "Demo", "probability": 40}],
        },
        headers=headers,
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = await api.post(
        "/v1/deals", json={"pipeline_id": pid, "title": "A", "value": "10"}, headers=headers
    )
    assert r.status_code == 201, r.text
    deal = r.json()
    r = await api.post(
        f"/v1/deals/{deal['id']}/win", json={}, headers={**headers, "If-Match": '"1"'}
    )
    assert r.status_code == 200, r.text
    return str(pid), int(r.json()["position"])


async def test_a_report_in_flight_does_not_hold_up_other_requests(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "cycle-time" in OFF_LOOP
    pid, position = await _pipeline_with_a_won_deal(api)
    started, release = threading.Event(), threading.Event()
    original = analytics.close_durations

    async def held(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(HOLD_SECONDS)  # blocks whatever event loop runs the report
        return await original(*args, **kwargs)

    monkeypatch.setattr(analytics, "close_durations", held)
    heavy = asyncio.create_task(
        api.get(
            "/v1/reports/cycle-time",
            params={"pipeline_id": pid, "min_position": position},
            headers=auth("manager"),
        )
    )
    try:
        assert await asyncio.to_thread(started.wait, HOLD_SECONDS)
        cheap = await api.get("/v1/pipelines", headers=auth("manager"))
        assert cheap.status_code == 200
        assert [p["id"] for p in cheap.json()["data"]] == [pid]
        assert not heavy.done()  # still held, yet the other request was answered
    finally:
        release.set()
    answer = await heavy
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["report"] == "cycle-time"
    assert report["summary"]["won"]["count"] == 1


async def test_a_report_computed_off_the_loop_is_cached_by_what_it_read(
    api: httpx.AsyncClient,
) -> None:
    pid, position = await _pipeline_with_a_won_deal(api)
    params = {"pipeline_id": pid, "min_position": position}
    first = await api.get("/v1/reports/cycle-time", params=params, headers=auth("manager"))
    again = await api.get("/v1/reports/cycle-time", params=params, headers=auth("manager"))
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("miss", "hit")
    assert again.json() == first.json()
    assert first.json()["summary"]["won"]["count"] == 1
    _, moved = await _pipeline_with_a_won_deal(api)  # the read models move on
    later = await api.get(
        "/v1/reports/cycle-time", params={**params, "min_position": moved}, headers=auth("manager")
    )
    assert later.headers["X-Cache"] == "miss"
    assert later.json()["position"] >= moved
