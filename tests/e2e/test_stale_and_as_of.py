"""Stale deals and snoozes against a moved service clock; deals and boards as of past moments.

The service clock (``clock``) starts at 2026-06-01 12:00 UTC, called T below; "T+12"
means twelve days later. Staleness is measured against it at each request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.conftest import TestClock, auth

T = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat()


@dataclass
class Session:
    """Commands and queries of one test, remembering the last command's position."""

    api: httpx.AsyncClient
    position: int = 0
    ids: dict[str, str] = field(default_factory=dict)

    async def send(
        self, method: str, path: str, who: str, body: dict[str, Any] | None, status: int = 200
    ) -> dict[str, Any]:
        r = await self.api.request(method, path, json=body, headers=auth(who))
        assert r.status_code == status, r.text
        answer = dict(r.json())
        self.position = max(self.position, int(answer.get("position") or 0))
        return answer

    async def get(self, path: str, status: int = 200, **params: Any) -> dict[str, Any]:
        query = {"min_position": self.position, **params}
        r = await self.api.get(path, params=query, headers=auth("manager"))
        assert r.status_code == status, r.text
        return dict(r.json())

    async def create(self, label: str, who: str, **body: Any) -> str:
        answer = await self.send("POST", "/v1/deals", who, {"title": label, **body}, 201)
        self.ids[label] = answer["id"]
        return str(answer["id"])

    async def command(self, label: str, verb: str, who: str, **body: Any) -> dict[str, Any]:
        return await self.send("POST", f"/v1/deals/{self.ids[label]}/{verb}", who, body)

    async def stale(self, pipeline: str) -> list[dict[str, Any]]:
        report = await self.get("/v1/reports/stale-deals", pipeline_id=pipeline)
        assert report["summary"]["stale"] == len(report["rows"])
        return list(report["rows"])

    async def deal(self, label: str, **params: Any) -> dict[str, Any]:
        return await self.get(f"/v1/deals/{self.ids[label]}", **params)

    async def stale_counts(self, pipeline: str) -> dict[str, int]:
        board = await self.get(f"/v1/pipelines/{pipeline}/board")
        return {s["id"]: s["stale_count"] for s in board["stages"]}


# --- stale deals and snoozes ----------------------------------------------------------------


async def stale_fixture(api: httpx.AsyncClient) -> tuple[Session, str]:
    """Pipeline: Lead (no threshold), Demo (rotting_days 10), Proposal (none); deals untouched
    for stale_after_days 20 are stale. Deals, with the clock at T:

    - A (rita): created in Lead at T-2, moved to Demo at T -> rots in Demo from T+10;
    - B (raj): created in Lead at T-5, never touched again -> idle too long from T+15;
    - C (rita): created in Proposal at T -> idle too long from T+20;
    - W (rita): created and won at T -> closed, never stale.
    """
    s = Session(api)
    pipeline = await s.send(
        "POST",
        "/v1/pipelines",
        "admin",
        {
            "name": "Stale watch",
            "currency": "EUR",
            "stages": [
                {"name": "Lead", "probability": 10},
                {"name": "Demo", "probability": 30, "rotting_days": 10},
                {"name": "Proposal", "probability": 60},
            ],
            "lost_reasons": ["Price"],
            "stale_after_days": 20,
            "occurred_at": iso(T - timedelta(days=30)),
        },
        201,
    )
    pid = str(pipeline["id"])
    await s.create(
        "B", "rep2", pipeline_id=pid, value="2000", occurred_at=iso(T - timedelta(days=5))
    )
    await s.create(
        "A", "rep", pipeline_id=pid, value="1000", occurred_at=iso(T - timedelta(days=2))
    )
    await s.command("A", "advance", "rep", stage="Demo", occurred_at=iso(T))
    await s.create("C", "rep", pipeline_id=pid, value="3000", stage="Proposal")
    await s.create("W", "rep", pipeline_id=pid, value="500")
    await s.command("W", "win", "rep")
    return s, pid


def listed(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, float, float, float, str]]:
    """(title, owner, stage name, days in stage, days since activity, days stale, reasons)."""
    return [
        (
            r["title"],
            r["owner"],
            r["stage_name"],
            round(r["days_in_stage"], 6),
            round(r["days_since_activity"], 6),
            round(r["days_stale"], 6),
            r["reasons"],
        )
        for r in rows
    ]


async def test_deals_go_stale_by_rotting_in_a_stage_or_by_no_activity_most_stale_first(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    s, pid = await stale_fixture(api)
    # at T: A has been 0 days in Demo, B idle 5 days, C idle 0: nothing is stale
    assert await s.stale(pid) == []
    assert await s.stale_counts(pid) == {"lead": 0, "demo": 0, "proposal": 0}

    clock.advance(days=12)
    # T+12: A 12 days in Demo > 10 -> 2 days stale (idle 12 <= 20); B idle 17 <= 20
    assert listed(await s.stale(pid)) == [
        ("A", "rita", "Demo", 12.0, 12.0, 2.0, "rotting_in_stage"),
    ]

    clock.advance(days=6)
    # T+18: A 18 - 10 = 8 days stale; B idle 5 + 18 = 23 > 20 -> 3 days stale;
    # C idle 18 <= 20 and Proposal has no threshold; W is closed.
    # Most stale first: A before B, although B was created first.
    assert listed(await s.stale(pid)) == [
        ("A", "rita", "Demo", 18.0, 18.0, 8.0, "rotting_in_stage"),
        ("B", "raj", "Lead", 23.0, 23.0, 3.0, "no_activity"),
    ]
    assert await s.stale_counts(pid) == {"lead": 1, "demo": 1, "proposal": 0}

    deal_a = await s.deal("A")
    assert (deal_a["stale"], deal_a["stale_reasons"], deal_a["days_stale"]) == (
        True,
        ["rotting_in_stage"],
        8.0,
    )
    assert deal_a["snoozed_until"] is None
    assert deal_a["time_in_current_stage_seconds"] == 18 * 86400
    deal_c = await s.deal("C")
    assert (deal_c["stale"], deal_c["stale_reasons"], deal_c["days_stale"]) == (False, [], 0.0)
    deal_w = await s.deal("W")
    assert (deal_w["status"], deal_w["stale"]) == ("won", False)

    clock.advance(days=4)
    # T+22: A 22 days in Demo (12 over) and idle 22 (2 over): both reasons, 12 days stale;
    # B idle 27 -> 7; C idle 22 -> 2 (no threshold on Proposal, but no activity)
    assert listed(await s.stale(pid)) == [
        ("A", "rita", "Demo", 22.0, 22.0, 12.0, "rotting_in_stage,no_activity"),
        ("B", "raj", "Lead", 27.0, 27.0, 7.0, "no_activity"),
        ("C", "rita", "Proposal", 22.0, 22.0, 2.0, "no_activity"),
    ]
    assert await s.stale_counts(pid) == {"lead": 1, "demo": 1, "proposal": 1}

    # activity makes a deal fresh again: B moves to Demo now
    await s.command("B", "advance", "rep2", stage="Demo")
    assert [r["title"] for r in await s.stale(pid)] == ["A", "C"]
    assert await s.stale_counts(pid) == {"lead": 0, "demo": 1, "proposal": 1}


async def test_a_snoozed_deal_leaves_the_stale_list_until_the_snooze_ends(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    s, pid = await stale_fixture(api)
    clock.advance(days=18)  # T+18: A 8 days stale (rotting), B 3 days stale (no activity)
    until = T + timedelta(days=24)
    answer = await s.command("A", "snooze", "rep", until=iso(until), reason="budget in July")
    assert answer["position"] > 0

    # A is off the list and off the board's count; B stays
    assert [r["title"] for r in await s.stale(pid)] == ["B"]
    assert await s.stale_counts(pid) == {"lead": 1, "demo": 0, "proposal": 0}
    deal_a = await s.deal("A")
    assert deal_a["stale"] is False
    assert deal_a["stale_reasons"] == ["rotting_in_stage"]  # why it would be stale
    assert deal_a["days_stale"] == 8.0
    assert datetime.fromisoformat(deal_a["snoozed_until"]) == until
    assert deal_a["snooze_reason"] == "budget in July"
    # the snooze is an event of the deal, but no sales activity
    assert datetime.fromisoformat(deal_a["last_activity_at"]) == T
    history = await s.get(f"/v1/deals/{s.ids['A']}/history")
    assert history["data"][-1]["event_type"] == "DealSnoozed"
    assert history["data"][-1]["actor"] == "rita"

    clock.advance(days=5, hours=23)  # T+23 23:00, an hour before the snooze ends
    assert [r["title"] for r in await s.stale(pid)] == ["B", "C"]  # C: idle 23.96 > 20
    assert (await s.deal("A"))["stale"] is False

    clock.advance(hours=1)  # T+24, the snooze's end: A is back
    # A: 24 days in Demo (14 over), idle 24 (4 over) -> 14; B idle 29 -> 9; C idle 24 -> 4
    assert listed(await s.stale(pid)) == [
        ("A", "rita", "Demo", 24.0, 24.0, 14.0, "rotting_in_stage,no_activity"),
        ("B", "raj", "Lead", 29.0, 29.0, 9.0, "no_activity"),
        ("C", "rita", "Proposal", 24.0, 24.0, 4.0, "no_activity"),
    ]
    assert await s.stale_counts(pid) == {"lead": 1, "demo": 1, "proposal": 1}
    deal_a = await s.deal("A")
    assert (deal_a["stale"], deal_a["days_stale"]) == (True, 14.0)


async def test_a_snooze_needs_a_future_until_a_reason_an_open_deal_and_the_right_to_act(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    s, pid = await stale_fixture(api)
    clock.advance(days=18)
    now = clock()
    path = f"/v1/deals/{s.ids['A']}/snooze"
    before = await s.deal("A")

    cases: list[tuple[str, dict[str, Any], int, str | None]] = [
        ("rep", {"until": iso(now - timedelta(hours=1)), "reason": "late"}, 422, "until"),
        ("rep", {"until": iso(now), "reason": "now is not later"}, 422, "until"),
        ("rep", {"until": "2026-07-01T12:00:00", "reason": "no zone"}, 422, "until"),
        ("rep", {"until": iso(now + timedelta(days=3))}, 422, "reason"),
        ("rep", {"until": iso(now + timedelta(days=3)), "reason": "   "}, 422, "reason"),
        ("rep2", {"until": iso(now + timedelta(days=3)), "reason": "not mine"}, 403, None),
        ("auditor", {"until": iso(now + timedelta(days=3)), "reason": "audit"}, 403, None),
    ]
    for who, body, status, problem in cases:
        r = await api.post(path, json=body, headers=auth(who))
        assert r.status_code == status, (body, r.text)
        if problem is not None:
            assert r.json()["error"]["details"]["field"] == problem, (body, r.text)

    closed = await api.post(
        f"/v1/deals/{s.ids['W']}/snooze",
        json={"until": iso(now + timedelta(days=3)), "reason": "won already"},
        headers=auth("rep"),
    )
    assert closed.status_code == 409, closed.text
    unknown = await api.post(
        f"/v1/deals/{uuid.uuid4()}/snooze",
        json={"until": iso(now + timedelta(days=3)), "reason": "who?"},
        headers=auth("manager"),
    )
    assert unknown.status_code == 404, unknown.text

    # none of them recorded anything: A is still stale and unsnoozed, at the same version
    after = await s.deal("A")
    assert (after["version"], after["snoozed_until"], after["stale"]) == (
        before["version"],
        None,
        True,
    )
    assert [r["title"] for r in await s.stale(pid)] == ["A", "B"]


# --- as of a past moment --------------------------------------------------------------------


def at(month: int, day: int, hour: int = 9, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


async def history_fixture(api: httpx.AsyncClient) -> tuple[Session, str]:
    """Pipeline "History" (defined 1 Feb): Lead 10 %, Demo 30 %, Proposal 60 %. Deals (all
    events backdated, 09:00 UTC of 2026):

    - E (rita, 1000, expected close 2026-04-30): created in Lead 1.3, Demo 5.3, value 1500
      on 10.3, owner raj on 12.3, lost (Price) 20.3, reopened into Proposal 1.4, won 15.4;
    - F (raj, 2000): created in Lead 2.3, Proposal 8.3, still open;
    - G (rita, 3000): created in Demo 4.3, won 9.3.
    """
    s = Session(api)
    pipeline = await s.send(
        "POST",
        "/v1/pipelines",
        "admin",
        {
            "name": "History",
            "currency": "EUR",
            "stages": [
                {"name": "Lead", "probability": 10},
                {"name": "Demo", "probability": 30},
                {"name": "Proposal", "probability": 60},
            ],
            "lost_reasons": ["Price", "Timing"],
            "occurred_at": iso(at(2, 1)),
        },
        201,
    )
    pid = str(pipeline["id"])
    m = "manager"
    await s.create(
        "E",
        m,
        pipeline_id=pid,
        value="1000",
        owner="rita",
        expected_close_date="2026-04-30",
        occurred_at=iso(at(3, 1)),
    )
    await s.create("F", m, pipeline_id=pid, value="2000", owner="raj", occurred_at=iso(at(3, 2)))
    await s.create(
        "G", m, pipeline_id=pid, value="3000", owner="rita", stage="Demo", occurred_at=iso(at(3, 4))
    )
    await s.command("E", "advance", m, stage="Demo", occurred_at=iso(at(3, 5)))
    await s.command("F", "advance", m, stage="Proposal", occurred_at=iso(at(3, 8)))
    await s.command("G", "win", m, occurred_at=iso(at(3, 9)))
    deal_e = f"/v1/deals/{s.ids['E']}"
    await s.send("PATCH", deal_e, m, {"value": "1500", "occurred_at": iso(at(3, 10))})
    await s.send("PATCH", deal_e, m, {"owner": "raj", "occurred_at": iso(at(3, 12))})
    await s.command("E", "lose", m, reason="Price", occurred_at=iso(at(3, 20)))
    await s.command("E", "reopen", m, stage="Proposal", occurred_at=iso(at(4, 1)))
    await s.command("E", "win", m, occurred_at=iso(at(4, 15)))
    return s, pid


def state(deal: dict[str, Any]) -> tuple[str, str, str, str, int, str]:
    """(stage name, status, value, owner, probability, weighted value)."""
    return (
        deal["stage"]["name"],
        deal["status"],
        deal["value"],
        deal["owner"],
        deal["probability"],
        deal["weighted_value"],
    )


async def test_a_deal_as_of_a_moment_is_the_state_its_events_had_built_by_then(
    api: httpx.AsyncClient,
) -> None:
    s, _ = await history_fixture(api)
    expected = [
        # the moment of creation belongs to the new state
        (at(3, 1), ("Lead", "open", "1000.00", "rita", 10, "100.00"), at(3, 1)),
        # between creation and the move to Demo
        (at(3, 3, 12), ("Lead", "open", "1000.00", "rita", 10, "100.00"), at(3, 1)),
        (at(3, 5, 8, 59, 59), ("Lead", "open", "1000.00", "rita", 10, "100.00"), at(3, 1)),
        # Demo from 5.3 09:00: 30 % of 1000
        (at(3, 5), ("Demo", "open", "1000.00", "rita", 30, "300.00"), at(3, 5)),
        # value 1500 from 10.3: 30 % = 450
        (at(3, 11), ("Demo", "open", "1500.00", "rita", 30, "450.00"), at(3, 10)),
        # raj owns it from 12.3
        (at(3, 15), ("Demo", "open", "1500.00", "raj", 30, "450.00"), at(3, 12)),
        # lost on 20.3 in Demo: probability 0
        (at(3, 25), ("Demo", "lost", "1500.00", "raj", 0, "0.00"), at(3, 20)),
        # reopened into Proposal on 1.4: 60 % of 1500 = 900
        (at(4, 10), ("Proposal", "open", "1500.00", "raj", 60, "900.00"), at(4, 1)),
        # won on 15.4: counts fully
        (at(4, 20), ("Proposal", "won", "1500.00", "raj", 100, "1500.00"), at(4, 15)),
    ]
    for moment, want, since in expected:
        deal = await s.deal("E", as_of=iso(moment))
        assert state(deal) == want, moment
        assert datetime.fromisoformat(deal["state_since"]) == since, moment
        assert datetime.fromisoformat(deal["as_of"]) == moment
        assert deal["id"] == s.ids["E"]
        assert deal["expected_close_date"] == "2026-04-30"
        assert datetime.fromisoformat(deal["created_at"]) == at(3, 1)

    # the current state agrees with the last past one
    now = await s.deal("E")
    assert (now["stage"]["name"], now["status"], now["value"], now["owner"]) == (
        "Proposal",
        "won",
        "1500.00",
        "raj",
    )

    for before in (at(2, 28, 12), at(3, 1, 8, 59, 59)):
        r = await api.get(
            f"/v1/deals/{s.ids['E']}",
            params={"as_of": iso(before), "min_position": s.position},
            headers=auth("manager"),
        )
        assert r.status_code == 404, r.text
        assert r.json()["error"]["details"]["field"] == "as_of"

    r = await api.get(
        f"/v1/deals/{s.ids['E']}", params={"as_of": "2026-03-11T00:00:00"}, headers=auth("rep")
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["field"] == "as_of"
    r = await api.get(
        f"/v1/deals/{uuid.uuid4()}",
        params={"as_of": iso(at(3, 11)), "min_position": s.position},
        headers=auth("rep"),
    )
    assert r.status_code == 404, r.text


def board_figures(board: dict[str, Any]) -> dict[str, tuple[int, str, str, list[str]]]:
    """Per stage id: (count, total value, weighted value, ids of the deals listed)."""
    return {
        stage["id"]: (
            stage["count"],
            stage["total_value"],
            stage["weighted_value"],
            [d["id"] for d in stage["deals"]],
        )
        for stage in board["stages"]
    }


async def test_a_board_as_of_a_moment_counts_the_deals_open_then_in_their_stages_then(
    api: httpx.AsyncClient,
) -> None:
    s, pid = await history_fixture(api)
    e, f, g = s.ids["E"], s.ids["F"], s.ids["G"]
    expected = {
        # 3.3 12:00: E (1000) and F (2000) in Lead; weighted 10 % = 100 + 200
        at(3, 3, 12): (
            {
                "lead": (2, "3000.00", "300.00", [e, f]),
                "demo": (0, "0.00", "0.00", []),
                "proposal": (0, "0.00", "0.00", []),
            },
            (2, "3000.00", "300.00"),
        ),
        # 6.3 12:00: F in Lead (200); E (1000) and G (3000) in Demo, 30 % = 300 + 900
        at(3, 6, 12): (
            {
                "lead": (1, "2000.00", "200.00", [f]),
                "demo": (2, "4000.00", "1200.00", [e, g]),
                "proposal": (0, "0.00", "0.00", []),
            },
            (3, "6000.00", "1400.00"),
        ),
        # 10.3 12:00: G won (9.3) is off the board; E at 1500 in Demo (450);
        # F in Proposal, 60 % of 2000 = 1200
        at(3, 10, 12): (
            {
                "lead": (0, "0.00", "0.00", []),
                "demo": (1, "1500.00", "450.00", [e]),
                "proposal": (1, "2000.00", "1200.00", [f]),
            },
            (2, "3500.00", "1650.00"),
        ),
        # 25.3: E lost; only F
        at(3, 25): (
            {
                "lead": (0, "0.00", "0.00", []),
                "demo": (0, "0.00", "0.00", []),
                "proposal": (1, "2000.00", "1200.00", [f]),
            },
            (1, "2000.00", "1200.00"),
        ),
        # 10.4: E reopened into Proposal: 1500 (900) + F 2000 (1200)
        at(4, 10): (
            {
                "lead": (0, "0.00", "0.00", []),
                "demo": (0, "0.00", "0.00", []),
                "proposal": (2, "3500.00", "2100.00", [e, f]),
            },
            (2, "3500.00", "2100.00"),
        ),
    }
    for moment, (stages, totals) in expected.items():
        board = await s.get(f"/v1/pipelines/{pid}/board", as_of=iso(moment))
        assert board_figures(board) == stages, moment
        assert (
            board["totals"]["count"],
            board["totals"]["total_value"],
            board["totals"]["weighted_value"],
        ) == totals, moment
        assert datetime.fromisoformat(board["as_of"]) == moment

    # the deals on a past board are shown as they were then
    board = await s.get(f"/v1/pipelines/{pid}/board", as_of=iso(at(3, 15)))
    (shown,) = [d for st in board["stages"] for d in st["deals"] if d["id"] == e]
    assert state(shown) == ("Demo", "open", "1500.00", "raj", 30, "450.00")

    # now: E won (15.4), so only F; the board without as_of says the same
    past = board_figures(await s.get(f"/v1/pipelines/{pid}/board", as_of=iso(at(5, 1))))
    current = await s.get(f"/v1/pipelines/{pid}/board")
    assert past == {
        "lead": (0, "0.00", "0.00", []),
        "demo": (0, "0.00", "0.00", []),
        "proposal": (1, "2000.00", "1200.00", [f]),
    }
    assert {st["id"]: (st["count"], st["total_value"]) for st in current["stages"]} == {
        k: v[:2] for k, v in past.items()
    }

    for params, status, problem in (
        ({"as_of": "2026-03-10T12:00:00"}, 422, "as_of"),
        ({"as_of": iso(at(3, 10))}, 404, None),
    ):
        path = f"/v1/pipelines/{uuid.uuid4() if status == 404 else pid}/board"
        r = await api.get(path, params={**params, "min_position": s.position}, headers=auth("rep"))
        assert r.status_code == status, r.text
        if problem:
            assert r.json()["error"]["details"]["field"] == problem
