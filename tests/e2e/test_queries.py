"""The query API over HTTP: read-your-writes, filters, pages, board, history, audit, reports."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from services.projections.runner import Worker
from services.projections.source import EventSource
from tests.conftest import Backend, TestClock, auth, client_for

STAGES = [
    {"name": "Qualify", "probability": 10},
    {"name": "Demo", "probability": 30},
    {"name": "Proposal", "probability": 60},
    {"name": "Closing", "probability": 90},
]
REASONS = ["Price", "Timing"]


def at(day: int, hour: int = 9, minute: int = 0, second: int = 0) -> str:
    """A moment of January 2026 (the test clock stands at 1 June 2026), ISO 8601."""
    return datetime(2026, 1, day, hour, minute, second, tzinfo=UTC).isoformat()


def runtime_of(api: httpx.AsyncClient) -> Any:
    return api.app.state.runtime  # type: ignore[attr-defined]


def head(api: httpx.AsyncClient) -> int:
    return int(runtime_of(api).application.head_position())


async def ok(response: Any, status: int = 200) -> dict[str, Any]:
    r = await response
    assert r.status_code == status, r.text
    return dict(r.json())


async def define(api: httpx.AsyncClient, name: str = "Sales", **body: Any) -> dict[str, Any]:
    body = {"name": name, "currency": "EUR", "stages": STAGES, "lost_reasons": REASONS, **body}
    return await ok(api.post("/v1/pipelines", json=body, headers=auth("admin")), 201)


async def create(
    api: httpx.AsyncClient, pipeline: str, title: str, value: str, who: str = "manager", **body: Any
) -> dict[str, Any]:
    body = {"pipeline_id": pipeline, "title": title, "value": value, **body}
    return await ok(api.post("/v1/deals", json=body, headers=auth(who)), 201)


async def command(
    api: httpx.AsyncClient, deal: str, verb: str, who: str = "manager", **body: Any
) -> dict[str, Any]:
    return await ok(api.post(f"/v1/deals/{deal}/{verb}", json=body, headers=auth(who)))


async def patch(api: httpx.AsyncClient, deal: str, **body: Any) -> dict[str, Any]:
    return await ok(api.patch(f"/v1/deals/{deal}", json=body, headers=auth("manager")))


async def get(
    api: httpx.AsyncClient, path: str, who: str = "manager", **params: Any
) -> dict[str, Any]:
    return await ok(api.get(path, params=params, headers=auth(who)))


def stage_of(board: dict[str, Any], stage_id: str) -> dict[str, Any]:
    return next(s for s in board["stages"] if s["id"] == stage_id)


# --- read-your-writes -------------------------------------------------------------------------


async def test_every_query_shows_a_command_at_once_when_asked_for_its_position(
    api: httpx.AsyncClient,
) -> None:
    pipeline = await define(api)
    pid = pipeline["id"]
    board = await get(api, f"/v1/pipelines/{pid}/board", min_position=pipeline["position"])
    assert board["totals"]["count"] == 0
    assert board["position"] >= pipeline["position"]

    async def reads_at_once(answer: dict[str, Any], stage: str, status: str) -> None:
        pos = answer["position"]
        got = await get(api, f"/v1/deals/{answer['id']}", min_position=pos)
        assert (got["stage"]["id"], got["status"]) == (stage, status)
        assert got["version"] == answer["version"]
        assert got["position"] >= pos
        history = await get(api, f"/v1/deals/{answer['id']}/history", min_position=pos)
        assert len(history["data"]) == answer["version"]
        assert history["position"] >= pos

    deal = await create(api, pid, "ACME", "1000.00", owner="rita", occurred_at=at(5))
    await reads_at_once(deal, "qualify", "open")
    for verb, body, stage, status in (
        ("advance", {"stage": "Proposal", "occurred_at": at(6)}, "proposal", "open"),
        ("lose", {"reason": "Price", "occurred_at": at(7)}, "proposal", "lost"),
        ("reopen", {"stage": "Demo", "occurred_at": at(8)}, "demo", "open"),
    ):
        await reads_at_once(await command(api, deal["id"], verb, **body), stage, status)

    # And the same for every query route, one command at a time.
    other = await create(api, pid, "Globex", "500", owner="raj", occurred_at=at(9))
    routes = [
        f"/v1/pipelines/{pid}/board",
        f"/v1/deals/{other['id']}",
        f"/v1/deals/{other['id']}/history",
        "/v1/reports/stage-durations",
        "/v1/deals",
    ]
    expectations = [
        ({"stage": "Demo", "occurred_at": at(10)}, "demo"),
        ({"stage": "Closing", "occurred_at": at(11)}, "closing"),
        ({"stage": "Qualify", "occurred_at": at(12)}, "qualify"),
    ]
    for body, stage in expectations:
        answer = await command(api, other["id"], "advance", **body)
        pos = answer["position"]
        results = {
            route: await get(api, route, pipeline_id=pid, min_position=pos)
            if route.endswith(("stage-durations", "/v1/deals"))
            else await get(api, route, min_position=pos)
            for route in routes
        }
        for route, body_ in results.items():
            assert body_["position"] >= pos, route
        board = results[routes[0]]
        assert [d["id"] for d in stage_of(board, stage)["deals"]].count(other["id"]) == 1
        assert results[routes[1]]["stage"]["id"] == stage
        assert results[routes[2]]["data"][-1]["changes"]["stage_id"]["after"] == stage
        report = {r["stage_id"]: r for r in results[routes[3]]["rows"]}
        assert report[stage]["open"] >= 1
        listed = {d["id"]: d for d in results[routes[4]]["data"]}
        assert listed[other["id"]]["stage"]["id"] == stage
        assert listed[other["id"]]["version"] == answer["version"]


async def test_a_query_with_min_position_waits_for_the_worker_then_answers_fresh(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    # No embedded worker: this test decides when the read side catches up.
    settings = backend.settings(
        tmp_path / "data", DEALTRAIL_EMBEDDED_WORKER=False, DEALTRAIL_READ_WAIT_SECONDS=20
    )
    async with client_for(settings, clock) as api:
        pipeline = await define(api)
        deal = await create(api, pipeline["id"], "Waiting", "10", occurred_at=at(3))
        did, pos = deal["id"], deal["position"]

        stale = await api.get(f"/v1/deals/{did}", headers=auth("manager"))
        assert stale.status_code == 404  # the read model has not seen it yet
        assert stale.json()["error"]["message"].endswith("(as of position 0)")

        waiting = [
            asyncio.create_task(api.get(path, params={"min_position": pos}, headers=auth(who)))
            for path, who in (
                (f"/v1/deals/{did}", "manager"),
                (f"/v1/pipelines/{pipeline['id']}/board", "manager"),
                (f"/v1/deals/{did}/history", "manager"),
                ("/v1/audit", "auditor"),
            )
        ]
        await asyncio.sleep(0.4)
        assert not any(t.done() for t in waiting), "answered before the read model caught up"

        runtime = runtime_of(api)
        worker = Worker(
            engine=runtime.engine, source=EventSource(runtime.application), location=settings.store
        )
        await worker.setup()
        await worker.catch_up()
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 10)

    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    got, board, history, audit = (a.json() for a in answers)
    assert (got["title"], got["position"]) == ("Waiting", pos)
    assert stage_of(board, "qualify")["count"] == 1
    assert [e["event_type"] for e in history["data"]] == ["DealCreated"]
    assert [e["event_type"] for e in audit["data"]] == ["PipelineDefined", "DealCreated"]


async def test_a_min_position_beyond_the_head_gives_503_projection_behind(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    settings = backend.settings(tmp_path / "data", DEALTRAIL_READ_WAIT_SECONDS=0.3)
    async with client_for(settings, clock) as api:
        pipeline = await define(api)
        deal = await create(api, pipeline["id"], "Soon", "10", occurred_at=at(3))
        far = deal["position"] + 1000
        pid, did = pipeline["id"], deal["id"]
        for path, params, who in (
            (f"/v1/pipelines/{pid}/board", {}, "manager"),
            (f"/v1/deals/{did}", {}, "manager"),
            (f"/v1/deals/{did}/history", {}, "manager"),
            ("/v1/deals", {}, "manager"),
            ("/v1/audit", {}, "auditor"),
            ("/v1/reports/stage-durations", {"pipeline_id": pid}, "manager"),
        ):
            started = time.monotonic()
            r = await api.get(path, params={**params, "min_position": far}, headers=auth(who))
            waited = time.monotonic() - started
            assert r.status_code == 503, (path, r.text)
            error = r.json()["error"]
            assert error["code"] == "projection_behind", path
            assert str(far) in error["message"]
            assert error["details"]["min_position"] == far
            assert error["details"]["position"] <= deal["position"]
            assert r.headers["Retry-After"]
            assert 0.3 <= waited < 10, path
        # A position the worker does reach is answered within that short wait.
        fresh = await get(api, f"/v1/deals/{did}", min_position=deal["position"])
        assert fresh["position"] >= deal["position"]


# --- GET /v1/deals --------------------------------------------------------------------------


async def test_deals_are_filtered_by_pipeline_stage_status_owner_and_update_time(
    api: httpx.AsyncClient,
) -> None:
    sales = (await define(api, "Sales"))["id"]
    partners = (await define(api, "Partners"))["id"]
    a = await create(api, sales, "A", "100", owner="rita", occurred_at=at(2))
    await create(api, sales, "B", "200", owner="raj", stage="Demo", occurred_at=at(3))
    c = await create(api, sales, "C", "300", owner="rita", stage="demo", occurred_at=at(4))
    d = await create(api, partners, "D", "400", owner="rita", stage="Demo", occurred_at=at(5))
    e = await create(api, sales, "E", "500", owner="raj", occurred_at=at(6))
    await command(api, c["id"], "win", occurred_at=at(7))
    await command(api, e["id"], "lose", reason="Timing", occurred_at=at(8))
    await asyncio.sleep(0.01)
    mark = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await patch(api, a["id"], value="150", occurred_at=at(9))
    last = await command(api, d["id"], "advance", stage="Proposal", occurred_at=at(10))
    pos = last["position"]

    async def titles(**params: Any) -> list[str]:
        page = await get(api, "/v1/deals", min_position=pos, **params)
        assert page["next_cursor"] is None
        assert page["position"] >= pos
        return [deal["title"] for deal in page["data"]]

    assert await titles() == ["A", "B", "C", "D", "E"]
    assert await titles(pipeline_id=sales) == ["A", "B", "C", "E"]
    assert await titles(pipeline_id=partners) == ["D"]
    assert await titles(pipeline_id=sales, stage="demo") == ["B", "C"]
    assert await titles(pipeline_id=sales, stage="Demo") == ["B", "C"]  # by name
    assert await titles(stage="demo") == ["B", "C"]  # by id, across pipelines
    assert await titles(stage="proposal") == ["D"]
    assert await titles(status="open") == ["A", "B", "D"]
    assert await titles(status="won") == ["C"]
    assert await titles(status="lost") == ["E"]
    assert await titles(owner="rita") == ["A", "C", "D"]
    assert await titles(owner="raj", status="open") == ["B"]
    assert await titles(pipeline_id=sales, stage="Demo", status="open", owner="raj") == ["B"]
    assert await titles(updated_since=mark.isoformat()) == ["A", "D"]
    assert await titles(updated_since=mark.isoformat(), owner="raj") == []
    assert await titles(owner="nobody") == []

    row = next(
        deal
        for deal in (await get(api, "/v1/deals", min_position=pos, owner="rita"))["data"]
        if deal["title"] == "A"
    )
    assert (row["value"], row["stage"], row["status"]) == (
        "150.00",
        {"id": "qualify", "name": "Qualify"},
        "open",
    )
    r = await api.get("/v1/deals", params={"status": "maybe"}, headers=auth("rep"))
    assert r.status_code == 422
    r = await api.get(
        "/v1/deals", params={"updated_since": "2026-01-01T00:00:00"}, headers=auth("rep")
    )
    assert r.status_code == 422  # no time zone


async def test_the_deals_list_pages_through_every_deal_once_in_a_stable_order(
    api: httpx.AsyncClient,
) -> None:
    pid = (await define(api))["id"]
    last = {}
    for i in range(23):
        # Groups of deals share a creation time: the deal id breaks the tie.
        last = await create(api, pid, f"deal {i:02d}", str(100 + i), occurred_at=at(1 + i // 4))
    pos = last["position"]

    everything = await get(api, "/v1/deals", min_position=pos, limit=500)
    assert everything["next_cursor"] is None
    full = [(d["created_at"], d["id"]) for d in everything["data"]]
    assert len(full) == 23
    assert full == sorted(full)

    for limit in (1, 5):
        pages: list[tuple[str, str]] = []
        cursor = None
        for _ in range(30):
            params: dict[str, Any] = {"limit": limit, "min_position": pos}
            if cursor:
                params["cursor"] = cursor
            page = await get(api, "/v1/deals", **params)
            assert len(page["data"]) <= limit
            pages += [(d["created_at"], d["id"]) for d in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == full, limit
        assert len(set(pages)) == len(pages)

    # A deal created while paging shows up once, at its place in the order.
    first = await get(api, "/v1/deals", limit=10, min_position=pos)
    newer = await create(api, pid, "late", "1", occurred_at=at(20))
    rest = await get(
        api, "/v1/deals", limit=500, cursor=first["next_cursor"], min_position=newer["position"]
    )
    ids = [d["id"] for d in first["data"] + rest["data"]]
    assert ids == [i for _, i in full] + [newer["id"]]

    for bad in ({"limit": 501}, {"limit": 0}):
        r = await api.get("/v1/deals", params=bad, headers=auth("manager"))
        assert r.status_code == 422, bad
    garbage = [
        "!!not a cursor!!",
        "e30",  # "{}" in base64: valid JSON, not a cursor
        base64.urlsafe_b64encode(b'["not a time", "x"]').decode(),
        base64.urlsafe_b64encode(b"42").decode(),
    ]
    for cursor in garbage:
        r = await api.get("/v1/deals", params={"cursor": cursor}, headers=auth("manager"))
        assert r.status_code == 422, (cursor, r.text)
        assert r.json()["error"]["details"]["field"] == "cursor"


# --- the board ------------------------------------------------------------------------------


async def test_the_board_shows_each_stage_in_order_with_totals_and_a_first_page(
    api: httpx.AsyncClient,
) -> None:
    pid = (await define(api))["id"]
    q1 = await create(api, pid, "Q1", "100", occurred_at=at(2))
    q2 = await create(api, pid, "Q2", "200.50", occurred_at=at(3))
    q3 = await create(api, pid, "Q3", "300", occurred_at=at(4))
    p1 = await create(api, pid, "P1", "1000", stage="Proposal", occurred_at=at(5))
    won = await create(api, pid, "Won", "5000", stage="Closing", occurred_at=at(6))
    lost = await create(api, pid, "Lost", "7000", stage="Demo", occurred_at=at(7))
    await command(api, won["id"], "win", occurred_at=at(8))
    answer = await command(api, lost["id"], "lose", reason="Price", occurred_at=at(9))

    board = await get(
        api, f"/v1/pipelines/{pid}/board", per_stage=2, min_position=answer["position"]
    )

    assert board["pipeline"] == {"id": pid, "name": "Sales", "currency": "EUR"}
    assert board["position"] >= answer["position"]
    got = [
        (s["id"], s["name"], s["probability"], s["count"], s["total_value"], s["weighted_value"])
        for s in board["stages"]
    ]
    assert got == [
        ("qualify", "Qualify", 10, 3, "600.50", "60.05"),
        ("demo", "Demo", 30, 0, "0.00", "0.00"),
        ("proposal", "Proposal", 60, 1, "1000.00", "600.00"),
        ("closing", "Closing", 90, 0, "0.00", "0.00"),
    ]
    assert board["totals"] == {"count": 4, "total_value": "1600.50", "weighted_value": "660.05"}
    qualify = stage_of(board, "qualify")
    assert [d["id"] for d in qualify["deals"]] == [q1["id"], q2["id"]]
    assert qualify["next_cursor"]
    assert [d["id"] for d in stage_of(board, "proposal")["deals"]] == [p1["id"]]
    assert stage_of(board, "proposal")["next_cursor"] is None
    assert stage_of(board, "closing")["deals"] == []  # won deals are off the board

    # The stage's next_cursor continues in GET /v1/deals.
    more = await get(
        api,
        "/v1/deals",
        pipeline_id=pid,
        stage="qualify",
        status="open",
        limit=2,
        cursor=qualify["next_cursor"],
    )
    assert [d["id"] for d in more["data"]] == [q3["id"]]
    assert more["next_cursor"] is None

    r = await api.get(
        "/v1/pipelines/00000000-0000-0000-0000-000000000000/board", headers=auth("rep")
    )
    assert r.status_code == 404


# --- history and audit ----------------------------------------------------------------------


async def test_a_deals_history_is_oldest_first_and_comes_in_pages(api: httpx.AsyncClient) -> None:
    pid = (await define(api))["id"]
    deal = await create(api, pid, "H", "100", who="rep", occurred_at=at(2))
    did = deal["id"]
    await create(api, pid, "Other deal", "5", occurred_at=at(2, 10))
    await command(api, did, "advance", who="rep", stage="Demo", occurred_at=at(3))
    await patch(api, did, value="250", occurred_at=at(4))
    await command(api, did, "lose", reason="Timing", note="next year", occurred_at=at(5))
    last = await command(api, did, "reopen", occurred_at=at(6))

    full = await get(api, f"/v1/deals/{did}/history", min_position=last["position"])
    assert full["next_cursor"] is None
    assert full["position"] >= last["position"]
    rows = full["data"]
    assert [(r["event_type"], r["actor"], r["occurred_at"], r["version"]) for r in rows] == [
        ("DealCreated", "rita", at(2), 1),
        ("StageAdvanced", "rita", at(3), 2),
        ("DealUpdated", "max", at(4), 3),
        ("DealLost", "max", at(5), 4),
        ("DealReopened", "max", at(6), 5),
    ]
    positions = [r["position"] for r in rows]
    assert positions == sorted(positions)
    assert all(r["aggregate_id"] == did for r in rows)
    assert rows[1]["changes"]["stage"] == {"before": "Qualify", "after": "Demo"}
    assert rows[2]["changes"] == {"value": {"before": "100", "after": "250"}}
    assert rows[3]["changes"]["lost_note"] == {"before": None, "after": "next year"}
    for r in rows:  # backdated business time, server time of recording
        assert datetime.fromisoformat(r["recorded_at"]) > datetime.fromisoformat(r["occurred_at"])

    pages: list[list[int]] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await get(api, f"/v1/deals/{did}/history", **params)
        pages.append([r["position"] for r in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [positions[0:2], positions[2:4], positions[4:]]

    r = await api.get("/v1/deals/00000000-0000-0000-0000-000000000000/history", headers=auth("rep"))
    assert r.status_code == 404
    r = await api.get(f"/v1/deals/{did}/history", params={"limit": 501}, headers=auth("rep"))
    assert r.status_code == 422
    r = await api.get(f"/v1/deals/{did}/history", params={"cursor": "x"}, headers=auth("rep"))
    assert r.status_code == 422


async def test_the_audit_log_is_for_auditors_and_admins_and_filters_by_actor_type_and_time(
    api: httpx.AsyncClient,
) -> None:
    pid = (await define(api))["id"]  # by ann, occurred now (1 June)
    a = await create(api, pid, "A", "100", who="rep", occurred_at=at(2))
    b = await create(api, pid, "B", "200", who="manager", owner="raj", occurred_at=at(3))
    await command(api, a["id"], "win", who="rep", occurred_at=at(4))
    await command(api, b["id"], "advance", who="manager", stage="Demo", occurred_at=at(5))
    last = await command(api, b["id"], "win", who="admin", occurred_at=at(6))
    pos = last["position"]

    for who in ("rep", "manager"):
        r = await api.get("/v1/audit", headers=auth(who))
        assert r.status_code == 403, who

    async def audit(who: str = "auditor", **params: Any) -> list[tuple[str, str, str]]:
        page = await get(api, "/v1/audit", who=who, min_position=pos, **params)
        assert page["position"] >= pos
        return [(e["event_type"], e["actor"], e["occurred_at"]) for e in page["data"]]

    everything = await audit()
    assert everything == await audit(who="admin")
    assert len(everything) == 6
    assert everything[0][:2] == ("PipelineDefined", "ann")
    assert await audit(actor="rita") == [
        ("DealCreated", "rita", at(2)),
        ("DealWon", "rita", at(4)),
    ]
    assert await audit(event_type="DealWon") == [
        ("DealWon", "rita", at(4)),
        ("DealWon", "ann", at(6)),
    ]
    assert await audit(event_type="DealWon", actor="ann") == [("DealWon", "ann", at(6))]
    # from is inclusive, to exclusive; both on business time (occurred_at).
    assert await audit(**{"from": at(3), "to": at(5)}) == [
        ("DealCreated", "max", at(3)),
        ("DealWon", "rita", at(4)),
    ]
    # The pipeline was defined "now" (1 June), after everything else in business time.
    assert [e[0] for e in await audit(**{"from": at(5)})] == [
        "PipelineDefined",
        "StageAdvanced",
        "DealWon",
    ]
    assert await audit(to=at(2)) == []

    positions: list[int] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        page = await get(api, "/v1/audit", who="auditor", **params)
        positions += [e["position"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert positions == list(range(1, pos + 1))

    r = await api.get("/v1/audit", params={"from": "2026-01-01T00:00:00"}, headers=auth("admin"))
    assert r.status_code == 422


# --- the stage-durations report -------------------------------------------------------------

DAY = 86_400


async def test_the_stage_durations_report_gives_hand_computed_numbers(
    api: httpx.AsyncClient,
) -> None:
    pid = (await define(api))["id"]
    # Deal 1: Qualify 1 day, Demo 2 days, Proposal 3 days, then won.
    d1 = (await create(api, pid, "one", "10", owner="rita", occurred_at=at(1)))["id"]
    await command(api, d1, "advance", stage="Demo", occurred_at=at(2))
    await command(api, d1, "advance", stage="Proposal", occurred_at=at(4))
    await command(api, d1, "win", occurred_at=at(7))
    # Deal 2: Qualify 3 days, Demo 4 days, then lost.
    d2 = (await create(api, pid, "two", "10", owner="rita", occurred_at=at(1)))["id"]
    await command(api, d2, "advance", stage="Demo", occurred_at=at(4))
    await command(api, d2, "lose", reason="Price", occurred_at=at(8))
    # Deal 3 (raj): Qualify 5 days, then skips to Proposal and stays there.
    d3 = (await create(api, pid, "three", "10", owner="raj", occurred_at=at(1)))["id"]
    await command(api, d3, "advance", stage="Proposal", occurred_at=at(6))
    # Deal 4: still in Qualify, 12 hours and counting.
    d4 = await create(api, pid, "four", "10", owner="rita", occurred_at=at(10, 12))
    pos = d4["position"]

    report = await get(api, "/v1/reports/stage-durations", pipeline_id=pid, min_position=pos)
    assert report["position"] >= pos
    rows = [
        (
            r["stage_id"],
            r["visits"],
            r["completed"],
            r["open"],
            r["mean_seconds"],
            r["median_seconds"],
            r["p90_seconds"],
        )
        for r in report["rows"]
    ]
    assert rows == [
        # completed [1, 3, 5] days: mean 3, median 3, p90 3 + (5 - 3) * 0.8 = 4.6 days
        ("qualify", 4, 3, 1, 259_200, 259_200, 397_440),
        # [2, 4] days: mean 3, median 3, p90 2 + (4 - 2) * 0.9 = 3.8 days
        ("demo", 2, 2, 0, 259_200, 259_200, 328_320),
        ("proposal", 2, 1, 1, 3 * DAY, 3 * DAY, 3 * DAY),
        ("closing", 0, 0, 0, None, None, None),
    ]
    assert [r["stage_name"] for r in report["rows"]] == ["Qualify", "Demo", "Proposal", "Closing"]

    by_raj = await get(api, "/v1/reports/stage-durations", pipeline_id=pid, owner="raj")
    assert [(r["stage_id"], r["visits"], r["open"], r["mean_seconds"]) for r in by_raj["rows"]] == [
        ("qualify", 1, 0, 5 * DAY),
        ("demo", 0, 0, None),
        ("proposal", 1, 1, None),
        ("closing", 0, 0, None),
    ]
    # Only visits that entered the stage in [from, to): on 2 to 5 January.
    window = await get(
        api, "/v1/reports/stage-durations", pipeline_id=pid, **{"from": at(2), "to": at(5)}
    )
    assert [(r["stage_id"], r["visits"], r["mean_seconds"]) for r in window["rows"]] == [
        ("qualify", 0, None),
        ("demo", 2, 3 * DAY),
        ("proposal", 1, 3 * DAY),
        ("closing", 0, None),
    ]

    r = await api.get(
        "/v1/reports/stage-durations",
        params={"pipeline_id": pid, "from": "2026-01-01T00:00:00"},
        headers=auth("rep"),
    )
    assert r.status_code == 422


async def test_every_query_response_reports_the_position_it_reflects(
    api: httpx.AsyncClient,
) -> None:
    pid = (await define(api))["id"]
    deal = await create(api, pid, "P", "1", occurred_at=at(2))
    last = await command(api, deal["id"], "advance", stage="Demo", occurred_at=at(3))
    pos = last["position"]
    assert pos == head(api)
    for path, who, params in (
        (f"/v1/pipelines/{pid}/board", "rep", {}),
        ("/v1/deals", "rep", {}),
        (f"/v1/deals/{deal['id']}", "rep", {}),
        (f"/v1/deals/{deal['id']}/history", "rep", {}),
        ("/v1/audit", "auditor", {}),
        ("/v1/reports/stage-durations", "rep", {"pipeline_id": pid}),
    ):
        body = await get(api, path, who=who, min_position=pos, **params)
        assert body["position"] == pos, path
        # Without min_position too (the worker has caught up by now).
        body = await get(api, path, who=who, **params)
        assert body["position"] == pos, path
