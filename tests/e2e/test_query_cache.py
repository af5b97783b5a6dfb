"""The board in a handful of queries, and the position-keyed cache of boards and reports.

Every test runs on SQLite and on PostgreSQL through real HTTP (the ``api`` fixture). The
service clock is the ``clock`` fixture (2026-06-01 12:00 UTC, called T); deals are backdated.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx

from libs.domain.state import staleness
from libs.domain.values import format_money
from services.pipeline_api.query_cache import TIME_BOUND_SECONDS, QueryCache
from services.projections.current_pipeline import queries as current_pipeline
from services.projections.current_pipeline.queries import DealFilter
from services.projections.folding import pipeline_state_of
from services.queries.cursors import encode_cursor
from services.queries.deals import live_view
from tests.conftest import TestClock, auth

T = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def ago(days: float) -> str:
    return (T - timedelta(days=days)).isoformat()


async def settled(api: httpx.AsyncClient, seconds: float = 60.0) -> None:
    """Wait until every read model has applied the whole log, so that what a request reads
    stays as it is until the next command (the worker applies read models one by one)."""
    runtime = runtime_of(api)
    head = runtime.application.head_position()
    deadline = asyncio.get_running_loop().time() + seconds
    while {pos for _, pos in (await runtime.read_models.states()).values()} != {head}:
        assert asyncio.get_running_loop().time() < deadline, "read models did not settle"
        await asyncio.sleep(0.02)


def runtime_of(api: httpx.AsyncClient) -> Any:
    return api.app.state.runtime  # type: ignore[attr-defined]


class Client:
    """Commands and queries of one test, remembering the last command's position."""

    def __init__(self, api: httpx.AsyncClient) -> None:
        self.api = api
        self.position = 0

    async def send(self, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        r = await self.api.post(path, json=body, headers=auth("manager"))
        assert r.status_code == status, r.text
        answer = dict(r.json())
        self.position = max(self.position, int(answer["position"]))
        return answer

    async def pipeline(self, **body: Any) -> str:
        body = {"currency": "EUR", "lost_reasons": ["Price"], "occurred_at": ago(60), **body}
        return str((await self.send("/v1/pipelines", body, 201))["id"])

    async def deal(self, pipeline: str, title: str, days_ago: float, **body: Any) -> str:
        body = {
            "pipeline_id": pipeline,
            "title": title,
            "value": "1000",
            "occurred_at": ago(days_ago),
            **body,
        }
        return str((await self.send("/v1/deals", body, 201))["id"])

    async def command(self, deal: str, verb: str, days_ago: float | None, **body: Any) -> None:
        if days_ago is not None:
            body["occurred_at"] = ago(days_ago)
        await self.send(f"/v1/deals/{deal}/{verb}", body)

    async def get(self, path: str, who: str = "manager", **params: Any) -> httpx.Response:
        params.setdefault("min_position", self.position)
        r = await self.api.get(path, params=params, headers=auth(who))
        assert r.status_code == 200, r.text
        return r


async def per_stage_board(
    api: httpx.AsyncClient, pipeline_id: str, per_stage: int
) -> dict[str, Any]:
    """The board computed another way: per stage, one query for its open deals, whose stale
    ones are counted by the domain's own rule in Python (the service counts them in SQL)."""
    runtime = runtime_of(api)
    pid = UUID(pipeline_id)
    async with runtime.read_models.open("current_pipeline") as view:
        row = await current_pipeline.get_pipeline(view.conn, view.tables, pid)
        assert row is not None
        pipeline = pipeline_state_of(row)
        totals = await current_pipeline.stage_totals(view.conn, view.tables, pid)
        now = runtime.clock()
        stages = []
        sum_count, sum_value, sum_weight = 0, Decimal(0), Decimal(0)
        for stage in pipeline.stages:
            filters = DealFilter(pipeline_id=pid, stage=stage.id, status="open")
            rows = await current_pipeline.list_deals(view.conn, view.tables, filters, None, 10_000)
            stale = sum(
                1
                for r in rows
                if staleness(
                    status=r["status"],
                    rotting_days=stage.rotting_days,
                    stale_after_days=pipeline.stale_after_days,
                    stage_entered_at=r["entered_current_stage_at"],
                    last_activity_at=r["last_activity_at"],
                    snoozed_until=r["snoozed_until"],
                    now=now,
                ).stale
            )
            total = totals.get(stage.id, {})
            count = int(total.get("open_count", 0))
            value = total.get("open_value", Decimal(0))
            weight = total.get("weighted_value", Decimal(0))
            sum_count, sum_value, sum_weight = (
                sum_count + count,
                sum_value + value,
                sum_weight + weight,
            )
            page = rows[:per_stage]
            cursor = None
            if len(rows) > per_stage and page:
                cursor = encode_cursor([page[-1]["created_at"].isoformat(), page[-1]["deal_id"]])
            stages.append(
                {
                    "id": stage.id,
                    "name": stage.name,
                    "probability": stage.probability,
                    "rotting_days": stage.rotting_days,
                    "count": count,
                    "total_value": format_money(value),
                    "weighted_value": format_money(weight),
                    "stale_count": stale,
                    "deals": [live_view(r, {pipeline_id: pipeline}, now) for r in page],
                    "next_cursor": cursor,
                }
            )
        position = view.position
    return {
        "pipeline": {"id": pipeline_id, "name": pipeline.name, "currency": "EUR"},
        "stages": stages,
        "totals": {
            "count": sum_count,
            "total_value": format_money(sum_value),
            "weighted_value": format_money(sum_weight),
        },
        "position": position,
    }


def encoded(board: dict[str, Any]) -> bytes:
    """A board as the service sends it (compact JSON, non-ASCII kept)."""
    return json.dumps(board, ensure_ascii=False, separators=(",", ":")).encode()


async def test_the_single_pass_board_equals_the_per_stage_board_byte_for_byte(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    c = Client(api)
    main = await c.pipeline(
        name="Main",
        stale_after_days=20,
        stages=[
            {"name": "Lead", "probability": 10},
            {"name": "Demo", "probability": 30, "rotting_days": 10},
            {"name": "Proposal", "probability": 60, "rotting_days": 10},
            {"name": "Closing", "probability": 90, "rotting_days": 3},
        ],
    )
    other = await c.pipeline(
        name="Other",
        stages=[
            {"name": "Lead", "probability": 10},
            {"name": "Demo", "probability": 40, "rotting_days": 5},
        ],
    )
    # Lead: five deals, two created at the same moment (ordered by id), one idle for long.
    leads = [await c.deal(main, f"L{n}", days) for n, days in enumerate((30, 25, 25, 8, 2))]
    # Demo: rotting at different moments, one snoozed, one whose snooze has ended.
    demo = [await c.deal(main, f"D{n}", 40 - n, stage="Demo") for n in range(4)]
    await c.command(demo[0], "advance", 1, stage="Proposal")
    await c.command(demo[1], "snooze", None, until=(T + timedelta(days=3)).isoformat(), reason="r")
    await c.command(demo[2], "snooze", None, until=(T + timedelta(hours=1)).isoformat(), reason="r")
    # Closing: fresh, rotting soon; closed deals leave the board; one reopened.
    closing = [await c.deal(main, f"C{n}", n + 1, stage="Closing") for n in range(3)]
    await c.command(closing[0], "win", 0.5)
    await c.command(closing[1], "lose", 0.5, reason="Price")
    await c.command(closing[1], "reopen", 0.25)
    # A deal that moved in from the other pipeline, and one that moved out.
    moved_in = await c.deal(other, "M-in", 12, stage="Demo")
    await c.command(moved_in, "move", 6, pipeline_id=main, stage="Proposal")
    await c.command(leads[4], "move", 1, pipeline_id=other, stage="Demo")
    await c.deal(other, "O1", 9)

    for advance in (None, {"hours": 2}, {"days": 4}, {"days": 9}, {"days": 30}):
        if advance:
            clock.advance(**advance)
        for pipeline in (main, other):
            for per_stage in (0, 1, 2, 3, 100):
                r = await c.get(f"/v1/pipelines/{pipeline}/board", per_stage=per_stage)
                expected = await per_stage_board(api, pipeline, per_stage)
                assert r.content == encoded(expected), (pipeline, per_stage, advance)
    board = (await c.get(f"/v1/pipelines/{main}/board", per_stage=2)).json()
    counts = {s["id"]: s["stale_count"] for s in board["stages"]}
    assert counts == {"lead": 4, "demo": 3, "proposal": 2, "closing": 2}  # T+43: all stale
    lead = next(s for s in board["stages"] if s["id"] == "lead")
    assert [d["id"] for d in lead["deals"]] == [leads[0], min(leads[1], leads[2])]  # same time
    assert lead["next_cursor"] is not None


async def test_a_cached_board_and_report_show_a_new_command_at_its_position(
    api: httpx.AsyncClient,
) -> None:
    c = Client(api)
    pid = await c.pipeline(
        name="Sales",
        stages=[{"name": "Lead", "probability": 10}, {"name": "Demo", "probability": 30}],
    )
    deal = await c.deal(pid, "First", 5)
    board_path = f"/v1/pipelines/{pid}/board"
    report_path = "/v1/reports/stage-durations"

    first = await c.get(board_path)
    again = await c.get(board_path)
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("miss", "hit")
    assert again.content == first.content
    report = await c.get(report_path, pipeline_id=pid)
    assert (await c.get(report_path, pipeline_id=pid)).headers["X-Cache"] == "hit"
    csv_headers = {**auth("manager"), "Accept": "text/csv"}
    as_csv = await api.get(report_path, params={"pipeline_id": pid}, headers=csv_headers)
    assert as_csv.headers["X-Cache"] == "miss"  # CSV and JSON are different entries
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert as_csv.headers["content-disposition"] == 'attachment; filename="stage-durations.csv"'
    as_csv_again = await api.get(report_path, params={"pipeline_id": pid}, headers=csv_headers)
    assert as_csv_again.headers["X-Cache"] == "hit"
    assert as_csv_again.content == as_csv.content
    assert as_csv_again.headers["X-Position"] == as_csv.headers["X-Position"]

    await c.command(deal, "advance", 1, stage="Demo")
    moved = await c.get(board_path)  # min_position: the command's position
    assert moved.headers["X-Cache"] == "miss"
    assert moved.json()["position"] >= c.position
    stages = {s["id"]: [d["id"] for d in s["deals"]] for s in moved.json()["stages"]}
    assert stages == {"lead": [], "demo": [deal]}
    after = await c.get(report_path, pipeline_id=pid)
    assert after.headers["X-Cache"] == "miss"
    rows = {r["stage_id"]: r for r in after.json()["rows"]}
    assert rows["demo"]["open"] == 1
    assert after.json()["rows"] != report.json()["rows"]
    fresh_csv = await api.get(
        report_path, params={"pipeline_id": pid, "min_position": c.position}, headers=csv_headers
    )
    assert fresh_csv.headers["X-Cache"] == "miss"
    assert int(fresh_csv.headers["X-Position"]) >= c.position


async def test_concurrent_identical_requests_are_computed_once(api: httpx.AsyncClient) -> None:
    c = Client(api)
    pid = await c.pipeline(
        name="Busy",
        stale_after_days=10,
        stages=[{"name": "Lead", "probability": 10}, {"name": "Demo", "probability": 30}],
    )
    for n in range(6):
        await c.deal(pid, f"D{n}", 30 - n, stage="Demo" if n % 2 else "Lead")
    await c.get(f"/v1/deals/{(await c.deal(pid, 'Last', 1))}")  # the read model caught up
    cache = api.app.state.query_cache  # type: ignore[attr-defined]
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        (f"/v1/pipelines/{pid}/board", {"per_stage": 3}, {}),
        ("/v1/reports/stale-deals", {"pipeline_id": pid}, {}),
        ("/v1/reports/win-rate", {"pipeline_id": pid}, {"Accept": "text/csv"}),
    ]
    for path, params, headers in requests:
        misses = cache.misses
        answers = await asyncio.gather(
            *(
                api.get(path, params=params, headers={**auth(who), **headers})
                for who in ("manager", "rep", "admin", "auditor") * 5
            )
        )
        assert [a.status_code for a in answers] == [200] * 20
        assert sorted(a.headers["X-Cache"] for a in answers) == ["hit"] * 19 + ["miss"], path
        assert cache.misses == misses + 1
        # Boards and reports are the same for every caller, whoever asked first.
        assert len({a.content for a in answers}) == 1


async def test_answers_that_depend_on_the_clock_expire_after_the_time_bound(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    c = Client(api)
    pid = await c.pipeline(
        name="Clocked", stages=[{"name": "Lead", "probability": 10, "rotting_days": 10}]
    )
    await c.deal(pid, "Ages", 9)
    board_path = f"/v1/pipelines/{pid}/board"
    stale_path = "/v1/reports/stale-deals"

    first = await c.get(board_path)
    assert (await c.get(stale_path, pipeline_id=pid)).json()["summary"]["stale"] == 0
    clock.advance(seconds=TIME_BOUND_SECONDS - 1)
    assert (await c.get(board_path)).headers["X-Cache"] == "hit"
    assert (await c.get(stale_path, pipeline_id=pid)).headers["X-Cache"] == "hit"
    clock.advance(seconds=1)  # the bound: answered anew, with the deal one bound older
    later = await c.get(board_path)
    assert later.headers["X-Cache"] == "miss"
    ages = [
        r.json()["stages"][0]["deals"][0]["time_in_current_stage_seconds"] for r in (first, later)
    ]
    assert ages[1] - ages[0] == TIME_BOUND_SECONDS
    assert (await c.get(stale_path, pipeline_id=pid)).headers["X-Cache"] == "miss"

    clock.advance(days=1)  # and the deal is now rotting, without any new event
    board = (await c.get(board_path)).json()
    assert board["stages"][0]["stale_count"] == 1
    assert (await c.get(stale_path, pipeline_id=pid)).json()["summary"]["stale"] == 1


async def test_a_bounded_cache_drops_the_least_recently_used_answer(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    c = Client(api)
    pid = await c.pipeline(name="Small", stages=[{"name": "Lead", "probability": 10}])
    await c.deal(pid, "Only", 3)
    api.app.state.query_cache = QueryCache(clock, max_entries=2)  # type: ignore[attr-defined]
    path = f"/v1/pipelines/{pid}/board"

    async def cache_of(per_stage: int) -> str:
        return str((await c.get(path, per_stage=per_stage)).headers["X-Cache"])

    assert [await cache_of(n) for n in (1, 2, 1, 3)] == ["miss", "miss", "hit", "miss"]
    assert len(api.app.state.query_cache) == 2  # type: ignore[attr-defined]
    assert await cache_of(1) == "hit"  # recently used, kept
    assert await cache_of(2) == "miss"  # the least recently used, dropped for 3


async def test_a_board_as_of_a_moment_is_cached_per_moment(api: httpx.AsyncClient) -> None:
    c = Client(api)
    pid = await c.pipeline(
        name="Past",
        stages=[{"name": "Lead", "probability": 10}, {"name": "Demo", "probability": 30}],
    )
    deal = await c.deal(pid, "Old", 20)
    await c.command(deal, "advance", 10, stage="Demo")
    path = f"/v1/pipelines/{pid}/board"
    then = await c.get(path, as_of=ago(15))
    assert then.headers["X-Cache"] == "miss"
    assert (await c.get(path, as_of=ago(15))).headers["X-Cache"] == "hit"
    later = await c.get(path, as_of=ago(5))
    assert later.headers["X-Cache"] == "miss"
    counts = [{s["id"]: s["count"] for s in r.json()["stages"]} for r in (then, later)]
    assert counts == [{"lead": 1, "demo": 0}, {"lead": 0, "demo": 1}]


async def test_cache_control_no_cache_computes_afresh_and_keeps_the_answer(
    api: httpx.AsyncClient,
) -> None:
    c = Client(api)
    pid = await c.pipeline(name="Fresh", stages=[{"name": "Lead", "probability": 10}])
    await c.deal(pid, "One", 5)
    await settled(api)
    cache = api.app.state.query_cache  # type: ignore[attr-defined]
    for path, params in (
        (f"/v1/pipelines/{pid}/board", {}),
        ("/v1/reports/win-rate", {"pipeline_id": pid}),
    ):
        first = await api.get(path, params=params, headers=auth("manager"))
        assert first.headers["X-Cache"] == "miss"
        assert (await api.get(path, params=params, headers=auth("manager"))).headers[
            "X-Cache"
        ] == "hit"
        misses = cache.misses
        fresh = await asyncio.gather(
            *(
                api.get(
                    path, params=params, headers={**auth("manager"), "Cache-Control": "no-cache"}
                )
                for _ in range(3)
            )
        )
        assert [a.headers["X-Cache"] for a in fresh] == ["miss"] * 3
        assert cache.misses == misses + 3
        assert {a.content for a in fresh} == {first.content}
        again = await api.get(path, params=params, headers=auth("manager"))
        assert again.headers["X-Cache"] == "hit" and again.content == first.content
