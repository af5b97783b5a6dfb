"""The sales reports over HTTP against one hand-worked history, every number worked out here.

The service clock stands at 2026-06-01 12:00 UTC; every event below is backdated (all at
midnight UTC of 2026, so day counts are whole). The fixture, on both backends:

Pipeline "Sales" (defined 1 Jan): Lead 10 %, Demo 30 % (rotting_days 14), Proposal 60 %,
Negotiation 80 %; stale_after_days 45; lost reasons Price, Timing, Competitor.

Owners (PUT /v1/owners by ann): rita North/EU and raj South/US from 1 Jan; sam North/EU
from 1 Jan, then South/US from 1 Mar - so sam's February events count for North and his
later ones for South ("membership as of each event").

rita's and raj's deals are worked by themselves (reps), sam's by max (manager):

    deal  owner value   history (day.month)                                     cycle
    D1    rita   1000   Lead 5.1, Demo 10.1, Proposal 20.1, won 4.2              won 30
    D2    rita   2000   Lead 6.1, Demo 16.1, lost 5.2 in Demo (Price)            lost 30
    D3    raj    3000   Lead 8.1, Proposal 18.1 (skips Demo), Negotiation 1.2,
                        won 9.3                                                 won 60
    D4    raj    4000   created in Demo 12.1 (skips Lead), Proposal 1.2,
                        back to Demo 11.2, won 21.2 in Demo                     won 40
    D5    sam    5000   Lead 1.2, Demo 11.2, lost 21.2 in Demo (Price)  [North]  lost 20
    D6    sam    6000   Lead 5.2, Proposal 15.2 (skips Demo), value 6500 on 10.3,
                        lost 27.3 in Proposal (Timing)                  [South]  lost 50
    D7    rita   1500   Lead 10.2, lost 20.2 in Lead (Competitor), reopened 1.3
                        into Demo, won 11.5 in Demo                             lost 10, won 90
    D8    raj    8000   Lead 1.3, Demo 1.4; open, expected close 2026-05-15 (overdue)
    D9    rita   9000   Lead 1.4, Proposal 20.5 (skips Demo); open, expected 2026-06-20
    D10   sam   10000   Lead 25.5; open, no expected close date

Day counts: Jan 5 -> Feb 4 = 30; Jan 6 -> Feb 5 = 30; Jan 8 -> Mar 9 = 31 + 28 + 1 = 60;
Jan 12 -> Feb 21 = 31 + 9 = 40; Feb 1 -> Feb 21 = 20; Feb 5 -> Mar 27 = 28 + 22 = 50;
Feb 10 -> Feb 20 = 10; Feb 10 -> May 11 = 28 + 31 + 30 + 1 = 90.

Closes (8; D7 closes twice): won D1 (rita, Proposal, 4.2), D3 (raj, Negotiation, 9.3),
D4 (raj, Demo, 21.2), D7 (rita, Demo, 11.5); lost D2 (rita, Demo, 5.2), D5 (sam/North,
Demo, 21.2), D6 (sam/South, Proposal, 27.3), D7 (rita, Lead, 20.2).
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio

from tests.conftest import PG_URL, Backend, TestClock, auth, client_for, need_postgres

# The reports only read, so the fixture is built once per backend and shared by the tests
# of this module (on one event loop); the client is made exactly like the ``api`` fixture.
pytestmark = pytest.mark.asyncio(loop_scope="module")

STAGES = [
    {"name": "Lead", "probability": 10},
    {"name": "Demo", "probability": 30, "rotting_days": 14},
    {"name": "Proposal", "probability": 60},
    {"name": "Negotiation", "probability": 80},
]
REASONS = ["Price", "Timing", "Competitor"]


def at(month: int, day: int) -> str:
    """Midnight UTC of a day of 2026, ISO 8601."""
    return datetime(2026, month, day, tzinfo=UTC).isoformat()


# who: "rep" is rita, "rep2" is raj, "manager" is max (working sam's deals)
TEAMS = [
    ("rita", "North", "EU", at(1, 1)),
    ("raj", "South", "US", at(1, 1)),
    ("sam", "North", "EU", at(1, 1)),
    ("sam", "South", "US", at(3, 1)),
]
SCRIPT: list[tuple[str, str, str, dict[str, Any]]] = [
    ("D1", "rep", "create", {"value": "1000", "occurred_at": at(1, 5)}),
    ("D1", "rep", "advance", {"stage": "Demo", "occurred_at": at(1, 10)}),
    ("D1", "rep", "advance", {"stage": "Proposal", "occurred_at": at(1, 20)}),
    ("D1", "rep", "win", {"occurred_at": at(2, 4)}),
    ("D2", "rep", "create", {"value": "2000", "occurred_at": at(1, 6)}),
    ("D2", "rep", "advance", {"stage": "Demo", "occurred_at": at(1, 16)}),
    ("D2", "rep", "lose", {"reason": "Price", "occurred_at": at(2, 5)}),
    ("D3", "rep2", "create", {"value": "3000", "occurred_at": at(1, 8)}),
    ("D3", "rep2", "advance", {"stage": "Proposal", "occurred_at": at(1, 18)}),
    ("D3", "rep2", "advance", {"stage": "Negotiation", "occurred_at": at(2, 1)}),
    ("D3", "rep2", "win", {"occurred_at": at(3, 9)}),
    ("D4", "rep2", "create", {"value": "4000", "stage": "Demo", "occurred_at": at(1, 12)}),
    ("D4", "rep2", "advance", {"stage": "Proposal", "occurred_at": at(2, 1)}),
    ("D4", "rep2", "advance", {"stage": "Demo", "occurred_at": at(2, 11)}),
    ("D4", "rep2", "win", {"occurred_at": at(2, 21)}),
    ("D5", "manager", "create", {"value": "5000", "owner": "sam", "occurred_at": at(2, 1)}),
    ("D5", "manager", "advance", {"stage": "Demo", "occurred_at": at(2, 11)}),
    ("D5", "manager", "lose", {"reason": "Price", "occurred_at": at(2, 21)}),
    ("D6", "manager", "create", {"value": "6000", "owner": "sam", "occurred_at": at(2, 5)}),
    ("D6", "manager", "advance", {"stage": "Proposal", "occurred_at": at(2, 15)}),
    ("D6", "manager", "patch", {"value": "6500", "occurred_at": at(3, 10)}),
    ("D6", "manager", "lose", {"reason": "Timing", "occurred_at": at(3, 27)}),
    ("D7", "rep", "create", {"value": "1500", "occurred_at": at(2, 10)}),
    ("D7", "rep", "lose", {"reason": "Competitor", "occurred_at": at(2, 20)}),
    ("D7", "rep", "reopen", {"stage": "Demo", "occurred_at": at(3, 1)}),
    ("D7", "rep", "win", {"occurred_at": at(5, 11)}),
    (
        "D8",
        "rep2",
        "create",
        {"value": "8000", "expected_close_date": "2026-05-15", "occurred_at": at(3, 1)},
    ),
    ("D8", "rep2", "advance", {"stage": "Demo", "occurred_at": at(4, 1)}),
    (
        "D9",
        "rep",
        "create",
        {"value": "9000", "expected_close_date": "2026-06-20", "occurred_at": at(4, 1)},
    ),
    ("D9", "rep", "advance", {"stage": "Proposal", "occurred_at": at(5, 20)}),
    ("D10", "manager", "create", {"value": "10000", "owner": "sam", "occurred_at": at(5, 25)}),
]


@dataclass
class Book:
    """The fixture as built: pipeline id, deal ids by label, last command position."""

    api: httpx.AsyncClient
    pipeline: str = ""
    deals: dict[str, str] = field(default_factory=dict)
    position: int = 0

    async def call(
        self, method: str, path: str, who: str, body: dict[str, Any], status: int = 200
    ) -> dict[str, Any]:
        r = await self.api.request(method, path, json=body, headers=auth(who))
        assert r.status_code == status, r.text
        answer = dict(r.json())
        self.position = max(self.position, int(answer.get("position") or 0))
        return answer

    async def report(self, name: str, **params: Any) -> dict[str, Any]:
        query = {"pipeline_id": self.pipeline, "min_position": self.position, **params}
        r = await self.api.get(f"/v1/reports/{name}", params=query, headers=auth("manager"))
        assert r.status_code == 200, r.text
        return dict(r.json())


async def build(api: httpx.AsyncClient) -> Book:
    book = Book(api)
    pipeline = await book.call(
        "POST",
        "/v1/pipelines",
        "admin",
        {
            "name": "Sales",
            "currency": "EUR",
            "stages": STAGES,
            "lost_reasons": REASONS,
            "stale_after_days": 45,
            "occurred_at": at(1, 1),
        },
        201,
    )
    book.pipeline = pipeline["id"]
    for owner, team, region, when in TEAMS:
        body = {"team": team, "region": region, "occurred_at": when}
        await book.call("PUT", f"/v1/owners/{owner}", "admin", body)
    for label, who, verb, body in SCRIPT:
        if verb == "create":
            body = {"pipeline_id": book.pipeline, "title": label, **body}
            book.deals[label] = (await book.call("POST", "/v1/deals", who, body, 201))["id"]
        elif verb == "patch":
            await book.call("PATCH", f"/v1/deals/{book.deals[label]}", who, body)
        else:
            await book.call("POST", f"/v1/deals/{book.deals[label]}/{verb}", who, body)
    return book


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """Like the ``backend`` fixture, once for the module."""
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path_factory.mktemp('db') / 'dealtrail.db'}")
        return
    need_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield Backend("postgres", PG_URL, schema)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def book(
    shared_backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Book]:
    """The hand-worked history, built through the HTTP API with the clock at 1 June 2026."""
    settings = shared_backend.settings(tmp_path_factory.mktemp("data"))
    clock = TestClock()
    async with client_for(settings, clock) as client:
        yield await build(client)


def by(rows: list[dict[str, Any]], *keys: str) -> dict[Any, dict[str, Any]]:
    """Rows indexed by one key (or a tuple of keys)."""
    if len(keys) == 1:
        return {r[keys[0]]: r for r in rows}
    return {tuple(r[k] for k in keys): r for r in rows}


def funnel_counts(report: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Per stage id: (entered, of_which_skipped, advanced, lost_here, won)."""
    return {
        r["stage_id"]: (
            r["entered"],
            r["of_which_skipped"],
            r["advanced"],
            r["lost_here"],
            r["won"],
        )
        for r in report["rows"]
    }


def conversions(report: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        r["stage_id"]: (r["conversion_to_next"], r["conversion_to_won"]) for r in report["rows"]
    }


def win_rows(report: dict[str, Any]) -> dict[tuple[str, Any], tuple[int, int, Any]]:
    """(dimension, key) -> (won, lost, win_rate)."""
    return {
        (r["dimension"], r["key"]): (r["won"], r["lost"], r["win_rate"]) for r in report["rows"]
    }


def cycle_rows(report: dict[str, Any]) -> dict[tuple[str, Any, str], tuple[Any, ...]]:
    """(dimension, key, outcome) -> (count, mean, median, p90)."""
    return {
        (r["dimension"], r["key"], r["outcome"]): (
            r["count"],
            r["mean_days"],
            r["median_days"],
            r["p90_days"],
        )
        for r in report["rows"]
    }


# --- funnel ---------------------------------------------------------------------------------


async def test_the_funnel_counts_entries_with_skipped_stages_advances_losses_and_wins(
    book: Book,
) -> None:
    report = await book.report("funnel")
    assert [r["stage_name"] for r in report["rows"]] == ["Lead", "Demo", "Proposal", "Negotiation"]
    assert report["position"] >= book.position
    assert funnel_counts(report) == {
        # Lead: entered = all ten deals, D4 skipped past it (created in Demo) = 10, 1 skipped;
        # advanced = every deal but D10 reached a later stage afterwards (D7 only through its
        # reopening into Demo on 1.3) = 9; lost here = D7 (20.2) = 1;
        # won afterwards = D1, D3, D4, D7 = 4
        "lead": (10, 1, 9, 1, 4),
        # Demo: entered = D1, D2, D4, D5, D7 (by its reopening), D8, plus D3, D6, D9 that
        # skipped past it = 9, 3 skipped (D4's move back on 11.2 counts nothing new);
        # advanced = D1, D3, D4, D6, D9 reached Proposal later = 5;
        # lost here = D2, D5 = 2 (D7 was lost in Lead, before it reached Demo);
        # won = D1, D3, D4, D7 (won 11.5, after reaching Demo on 1.3) = 4
        "demo": (9, 3, 5, 2, 4),
        # Proposal: entered = D1, D3, D4, D6, D9 = 5; advanced = D3 (Negotiation) = 1 (D4
        # went back, which is no advance); lost here = D6 = 1;
        # won = D1, D3, D4 (won in Demo after moving back: still won afterwards) = 3
        "proposal": (5, 0, 1, 1, 3),
        # Negotiation: entered = D3 = 1; won = D3 = 1
        "negotiation": (1, 0, 0, 0, 1),
    }
    got = conversions(report)
    # Lead 9/10 and 4/10; Demo 5/9 and 4/9; Proposal 1/5 and 3/5; Negotiation 0/1 and 1/1
    assert got["lead"] == pytest.approx((0.9, 0.4))
    assert got["demo"] == pytest.approx((5 / 9, 4 / 9))
    assert got["proposal"] == pytest.approx((0.2, 0.6))
    assert got["negotiation"] == pytest.approx((0.0, 1.0))


async def test_the_funnel_period_owner_and_team_filters_pick_the_matching_reaches(
    book: Book,
) -> None:

    february = await book.report("funnel", **{"from": at(2, 1), "to": at(3, 1)})
    assert funnel_counts(february) == {
        # Lead reached in [1.2, 1.3): D5 (1.2), D6 (5.2), D7 (10.2) = 3; advanced = D5 and
        # D6 (Demo 11.2 / 15.2) = 2 - D7 reached Demo on 1.3, not before `to`; lost here =
        # D7 (20.2) = 1; won before `to` = none (D6, D7 close later or lose) = 0
        "lead": (3, 0, 2, 1, 0),
        # Demo reached in February: D5 (11.2), D6 skipped past it (15.2) = 2, 1 skipped -
        # D4's move back to Demo on 11.2 reaches nothing new; advanced = D6 = 1;
        # lost here = D5 (21.2) = 1; won = 0
        "demo": (2, 1, 1, 1, 0),
        # Proposal: D4 (1.2), D6 (15.2) = 2; advanced = 0; lost here = D6 lost on 27.3,
        # after `to` = 0; won = D4 (21.2) = 1
        "proposal": (2, 0, 0, 0, 1),
        # Negotiation: D3 (1.2) = 1; its win on 9.3 is after `to` = 0
        "negotiation": (1, 0, 0, 0, 0),
    }
    assert conversions(february)["proposal"] == pytest.approx((0.0, 0.5))  # 0/2, 1/2

    ritas = await book.report("funnel", owner="rita")
    assert funnel_counts(ritas) == {
        # rita's deals: D1, D2, D7, D9
        # Lead: all four = 4; advanced = all four = 4; lost here = D7; won = D1, D7 = 2
        "lead": (4, 0, 4, 1, 2),
        # Demo: D1, D2, D7, D9 (skipped) = 4, 1 skipped; advanced = D1, D9 = 2;
        # lost here = D2 = 1; won = D1, D7 = 2
        "demo": (4, 1, 2, 1, 2),
        # Proposal: D1, D9 = 2; won = D1 = 1
        "proposal": (2, 0, 0, 0, 1),
        "negotiation": (0, 0, 0, 0, 0),
    }
    assert conversions(ritas)["negotiation"] == (None, None)  # nothing entered

    south = await book.report("funnel", team="South")
    assert funnel_counts(south) == {
        # team as of each reach: raj's D3, D4, D8 always; sam's D10 (25.5, after his move
        # on 1.3); sam's D5 and D6 reached their stages in February, in North
        # Lead: D3, D4 (skipped), D8, D10 = 4, 1 skipped; advanced = D3, D4, D8 = 3;
        # won = D3, D4 = 2
        "lead": (4, 1, 3, 0, 2),
        # Demo: D3 (skipped), D4, D8 = 3, 1 skipped; advanced = D3, D4 = 2; won = D3, D4
        "demo": (3, 1, 2, 0, 2),
        # Proposal: D3, D4 = 2; advanced = D3 = 1; won = D3, D4 = 2
        "proposal": (2, 0, 1, 0, 2),
        # Negotiation: D3 = 1, won 1
        "negotiation": (1, 0, 0, 0, 1),
    }


# --- win rate -------------------------------------------------------------------------------


async def test_the_win_rate_is_given_overall_by_owner_by_team_at_the_close_and_by_stage(
    book: Book,
) -> None:
    report = await book.report("win-rate")
    # won D1, D3, D4, D7; lost D2, D5, D6, D7 (a reopened deal closed twice counts twice)
    assert report["summary"] == {"won": 4, "lost": 4, "win_rate": 0.5}
    rows = win_rows(report)
    assert rows == {
        ("overall", None): (4, 4, 0.5),
        # raj: D3, D4 won = 2/2
        ("owner", "raj"): (2, 0, 1.0),
        # rita: D1, D7 won; D2, D7 lost = 2/4
        ("owner", "rita"): (2, 2, 0.5),
        # sam: D5, D6 lost = 0/2
        ("owner", "sam"): (0, 2, 0.0),
        # team as of each close: North = rita's four closes + D5 (21.2, sam still in North)
        # = won D1, D7; lost D2, D7, D5 = 2/5
        ("team", "North"): (2, 3, 0.4),
        # South = raj's D3, D4 won + D6 (27.3, sam in South by then) lost = 2/3
        # (with sam's team as of now it would be 2/4 and 2/4)
        ("team", "South"): (2, 1, pytest.approx(2 / 3)),
        # regions follow the teams: EU = North, US = South
        ("region", "EU"): (2, 3, 0.4),
        ("region", "US"): (2, 1, pytest.approx(2 / 3)),
        # stage each deal closed in: Demo = D4, D7 won; D2, D5 lost = 2/4
        ("stage", "Demo"): (2, 2, 0.5),
        # Lead = D7 lost = 0/1
        ("stage", "Lead"): (0, 1, 0.0),
        # Negotiation = D3 won = 1/1
        ("stage", "Negotiation"): (1, 0, 1.0),
        # Proposal = D1 won, D6 lost = 1/2
        ("stage", "Proposal"): (1, 1, 0.5),
    }


async def test_the_win_rate_period_team_and_owner_filters_change_the_closes_counted(
    book: Book,
) -> None:

    spring = await book.report("win-rate", **{"from": at(3, 1), "to": at(6, 1)})
    # closes in [1.3, 1.6): D3 won (9.3), D6 lost (27.3), D7 won (11.5) = 2/3
    assert spring["summary"] == {"won": 2, "lost": 1, "win_rate": pytest.approx(2 / 3)}
    rows = win_rows(spring)
    assert rows[("owner", "raj")] == (1, 0, 1.0)  # D3
    assert rows[("owner", "rita")] == (1, 0, 1.0)  # D7's win (its loss was on 20.2)
    assert rows[("owner", "sam")] == (0, 1, 0.0)  # D6
    assert rows[("team", "South")] == (1, 1, 0.5)  # D3 won, D6 lost
    assert rows[("team", "North")] == (1, 0, 1.0)  # D7

    north = await book.report("win-rate", team="North")
    # closes whose owner was in North at the close: rita's four and sam's D5 = 2/5
    assert north["summary"] == {"won": 2, "lost": 3, "win_rate": 0.4}
    rows = win_rows(north)
    assert rows[("owner", "rita")] == (2, 2, 0.5)
    assert rows[("owner", "sam")] == (0, 1, 0.0)  # D5 only; D6 closed in South
    assert ("owner", "raj") not in rows
    assert {k for d, k in rows if d == "team"} == {"North"}

    sams = await book.report("win-rate", owner="sam")
    # D5 lost in North, D6 lost in South = 0/2
    assert win_rows(sams) == {
        ("overall", None): (0, 2, 0.0),
        ("owner", "sam"): (0, 2, 0.0),
        ("team", "North"): (0, 1, 0.0),
        ("team", "South"): (0, 1, 0.0),
        ("region", "EU"): (0, 1, 0.0),
        ("region", "US"): (0, 1, 0.0),
        ("stage", "Demo"): (0, 1, 0.0),
        ("stage", "Proposal"): (0, 1, 0.0),
    }


# --- lost reasons ---------------------------------------------------------------------------


async def test_lost_reasons_give_count_value_and_share_per_reason_and_per_stage(book: Book) -> None:
    report = await book.report("lost-reasons")
    # losses: D2 Price 2000 (Demo), D5 Price 5000 (Demo), D6 Timing 6500 (Proposal: the
    # value at the loss, after the change on 10.3), D7 Competitor 1500 (Lead)
    # total = 2000 + 5000 + 6500 + 1500 = 15000
    assert report["summary"] == {"lost": 4, "lost_value": {"EUR": "15000.00"}}
    reasons = [
        (r["reason"], r["count"], r["value"], r["share"])
        for r in report["rows"]
        if r["dimension"] == "reason"
    ]
    # most frequent first, then by name: Price 2 (2000 + 5000), then Competitor, Timing
    assert reasons == [
        ("Price", 2, "7000.00", 0.5),
        ("Competitor", 1, "1500.00", 0.25),
        ("Timing", 1, "6500.00", 0.25),
    ]
    stages = [
        (r["stage_id"], r["stage_name"], r["reason"], r["count"], r["value"])
        for r in report["rows"]
        if r["dimension"] == "stage"
    ]
    assert stages == [
        ("demo", "Demo", "Price", 2, "7000.00"),  # D2 + D5
        ("lead", "Lead", "Competitor", 1, "1500.00"),  # D7
        ("proposal", "Proposal", "Timing", 1, "6500.00"),  # D6
    ]

    february = await book.report("lost-reasons", **{"from": at(2, 1), "to": at(3, 1)})
    # D2 (5.2), D7 (20.2), D5 (21.2); D6's loss on 27.3 is outside
    assert february["summary"] == {"lost": 3, "lost_value": {"EUR": "8500.00"}}
    assert [
        (r["reason"], r["count"], r["value"])
        for r in february["rows"]
        if r["dimension"] == "reason"
    ] == [("Price", 2, "7000.00"), ("Competitor", 1, "1500.00")]

    sams = await book.report("lost-reasons", owner="sam")
    # D5 Price 5000, D6 Timing 6500
    assert sams["summary"] == {"lost": 2, "lost_value": {"EUR": "11500.00"}}
    assert [
        (r["stage_id"], r["reason"], r["count"], r["value"], r["share"])
        for r in sams["rows"]
        if r["dimension"] == "stage"
    ] == [("demo", "Price", 1, "5000.00", 0.5), ("proposal", "Timing", 1, "6500.00", 0.5)]


# --- forecast -------------------------------------------------------------------------------


def forecast_rows(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            r["bucket"],
            r["open_count"],
            r["open_value"],
            r["weighted_value"],
            r["won_count"],
            r["won_value"],
        )
        for r in report["rows"]
    ]


async def test_the_forecast_buckets_open_deals_by_close_month_beside_won_value_per_month(
    book: Book,
) -> None:
    report = await book.report("forecast")
    # today (service clock) = 2026-06-01; open deals now: D8 (Demo 30 %, 8000, expected
    # 15.5 < today: overdue), D9 (Proposal 60 %, 9000, June), D10 (Lead 10 %, 10000, no date)
    # weighted: 8000 * 0.3 = 2400; 9000 * 0.6 = 5400; 10000 * 0.1 = 1000
    # won per close month: February D1 1000 + D4 4000 = 5000 (2); March D3 3000 (1);
    # May D7 1500 (1)
    assert forecast_rows(report) == [
        ("overdue", 1, "8000.00", "2400.00", 0, "0.00"),
        ("no date", 1, "10000.00", "1000.00", 0, "0.00"),
        ("2026-02", 0, "0.00", "0.00", 2, "5000.00"),
        ("2026-03", 0, "0.00", "0.00", 1, "3000.00"),
        ("2026-05", 0, "0.00", "0.00", 1, "1500.00"),
        ("2026-06", 1, "9000.00", "5400.00", 0, "0.00"),
    ]
    # open 8000 + 10000 + 9000 = 27000; weighted 2400 + 1000 + 5400 = 8800;
    # won 5000 + 3000 + 1500 = 9500
    assert report["summary"] == {
        "open_value": {"EUR": "27000.00"},
        "weighted_value": {"EUR": "8800.00"},
        "won_value": {"EUR": "9500.00"},
        "today": "2026-06-01",
    }
    assert {r["currency"] for r in report["rows"]} == {"EUR"}


async def test_the_forecast_period_bounds_the_months_shown_and_team_uses_each_membership(
    book: Book,
) -> None:
    spring = await book.report("forecast", **{"from": at(3, 1), "to": at(6, 1)})
    # months 2026-03 .. 2026-05: D9 (June) is left out; overdue and undated stay;
    # wins in [1.3, 1.6): D3 (March) 3000, D7 (May) 1500
    assert forecast_rows(spring) == [
        ("overdue", 1, "8000.00", "2400.00", 0, "0.00"),
        ("no date", 1, "10000.00", "1000.00", 0, "0.00"),
        ("2026-03", 0, "0.00", "0.00", 1, "3000.00"),
        ("2026-05", 0, "0.00", "0.00", 1, "1500.00"),
    ]
    assert spring["summary"]["open_value"] == {"EUR": "18000.00"}  # 8000 + 10000
    assert spring["summary"]["weighted_value"] == {"EUR": "3400.00"}  # 2400 + 1000
    assert spring["summary"]["won_value"] == {"EUR": "4500.00"}  # 3000 + 1500

    south = await book.report("forecast", team="South")
    # open deals of owners in South now: D8 (raj), D10 (sam); wins closed in South:
    # D4 (February, 4000), D3 (March, 3000)
    assert forecast_rows(south) == [
        ("overdue", 1, "8000.00", "2400.00", 0, "0.00"),
        ("no date", 1, "10000.00", "1000.00", 0, "0.00"),
        ("2026-02", 0, "0.00", "0.00", 1, "4000.00"),
        ("2026-03", 0, "0.00", "0.00", 1, "3000.00"),
    ]

    ritas = await book.report("forecast", owner="rita")
    # D9 in June; wins D1 (February, 1000), D7 (May, 1500)
    assert forecast_rows(ritas) == [
        ("2026-02", 0, "0.00", "0.00", 1, "1000.00"),
        ("2026-05", 0, "0.00", "0.00", 1, "1500.00"),
        ("2026-06", 1, "9000.00", "5400.00", 0, "0.00"),
    ]


# --- cycle time -----------------------------------------------------------------------------


async def test_cycle_time_gives_mean_median_and_p90_days_to_won_and_to_lost(book: Book) -> None:
    report = await book.report("cycle-time")
    # won: D1 30, D4 40, D3 60, D7 90 (from creation, not from the reopening)
    #   mean (30 + 40 + 60 + 90) / 4 = 55; median (40 + 60) / 2 = 50;
    #   p90: rank 3 * 0.9 = 2.7 -> 60 + (90 - 60) * 0.7 = 81
    # lost: D7 10, D5 20, D2 30, D6 50
    #   mean 110 / 4 = 27.5; median (20 + 30) / 2 = 25; p90: 30 + (50 - 30) * 0.7 = 44
    summary = report["summary"]
    assert (summary["won"]["count"], summary["lost"]["count"]) == (4, 4)
    won, lost = summary["won"], summary["lost"]
    assert (won["mean_days"], won["median_days"], won["p90_days"]) == pytest.approx((55, 50, 81))
    assert (lost["mean_days"], lost["median_days"], lost["p90_days"]) == pytest.approx(
        (27.5, 25, 44)
    )
    rows = cycle_rows(report)
    expected = {
        ("overall", None, "won"): (4, 55, 50, 81),
        ("overall", None, "lost"): (4, 27.5, 25, 44),
        # raj won [40, 60]: mean 50, median 50, p90 rank 0.9 -> 40 + 20 * 0.9 = 58
        ("owner", "raj", "won"): (2, 50, 50, 58),
        ("owner", "raj", "lost"): (0, None, None, None),
        # rita won [30, 90]: mean 60, median 60, p90 30 + 60 * 0.9 = 84
        ("owner", "rita", "won"): (2, 60, 60, 84),
        # rita lost [10 (D7), 30 (D2)]: mean 20, median 20, p90 10 + 20 * 0.9 = 28
        ("owner", "rita", "lost"): (2, 20, 20, 28),
        ("owner", "sam", "won"): (0, None, None, None),
        # sam lost [20 (D5), 50 (D6)]: mean 35, median 35, p90 20 + 30 * 0.9 = 47
        ("owner", "sam", "lost"): (2, 35, 35, 47),
        # team as of the close: North won = D1 30, D7 90 -> as rita
        ("team", "North", "won"): (2, 60, 60, 84),
        # North lost = D7 10, D5 20, D2 30: mean 20, median 20,
        #   p90 rank 2 * 0.9 = 1.8 -> 20 + 10 * 0.8 = 28
        ("team", "North", "lost"): (3, 20, 20, 28),
        # South won = D4 40, D3 60 -> as raj; lost = D6 50
        ("team", "South", "won"): (2, 50, 50, 58),
        ("team", "South", "lost"): (1, 50, 50, 50),
    }
    assert set(rows) == set(expected)
    for key, values in expected.items():
        assert rows[key] == pytest.approx(values), key


async def test_cycle_time_period_and_team_filters_select_the_closes(book: Book) -> None:
    spring = await book.report("cycle-time", **{"from": at(3, 1)})
    # closes from 1.3: won D3 60, D7 90 -> mean 75, median 75, p90 60 + 30 * 0.9 = 87;
    # lost D6 50
    won, lost = spring["summary"]["won"], spring["summary"]["lost"]
    assert (won["count"], won["mean_days"], won["median_days"], won["p90_days"]) == (
        pytest.approx((2, 75, 75, 87))
    )
    assert (lost["count"], lost["mean_days"]) == (1, pytest.approx(50))

    north = await book.report("cycle-time", team="North")
    # North at the close: won D1 30, D7 90; lost D7 10, D5 20, D2 30
    won, lost = north["summary"]["won"], north["summary"]["lost"]
    assert (won["count"], won["mean_days"], won["median_days"]) == pytest.approx((2, 60, 60))
    assert (lost["count"], lost["mean_days"], lost["p90_days"]) == pytest.approx((3, 20, 28))
    assert {r["key"] for r in north["rows"] if r["dimension"] == "owner"} == {"rita", "sam"}


# --- velocity -------------------------------------------------------------------------------


async def test_velocity_shows_each_factor_and_their_product(book: Book) -> None:
    report = await book.report("velocity")
    # default period: the 90 days before now = [2026-03-03 12:00, 2026-06-01 12:00)
    assert (report["params"]["from"], report["params"]["to"]) == (
        "2026-03-03T12:00:00+00:00",
        "2026-06-01T12:00:00+00:00",
    )
    # closes in it: D3 won (9.3), D6 lost (27.3), D7 won (11.5) -> win rate 2/3
    # average won value (3000 + 1500) / 2 = 2250; average days to win (60 + 90) / 2 = 75
    # open deals now: D8, D9, D10 = 3
    # velocity = 3 * 2/3 * 2250 / 75 = 60.00 per day
    summary = report["summary"]
    assert summary == {
        "open_deals": 3,
        "win_rate": pytest.approx(2 / 3),
        "average_won_value": {"EUR": "2250.00"},
        "average_days_to_win": pytest.approx(75),
        "velocity_per_day": {"EUR": "60.00"},
    }
    # one row per currency, with the same figures
    assert report["rows"] == [
        {
            "currency": "EUR",
            "open_deals": 3,
            "win_rate": pytest.approx(2 / 3),
            "average_won_value": "2250.00",
            "average_days_to_win": pytest.approx(75),
            "velocity_per_day": "60.00",
        }
    ]

    year = await book.report("velocity", **{"from": at(1, 1), "to": at(6, 1)})
    # every close: 4 won of 8 -> 0.5; average won (1000 + 3000 + 4000 + 1500) / 4 = 2375;
    # days (30 + 60 + 40 + 90) / 4 = 55; velocity 3 * 0.5 * 2375 / 55 = 64.7727 -> 64.77
    assert year["summary"] == {
        "open_deals": 3,
        "win_rate": 0.5,
        "average_won_value": {"EUR": "2375.00"},
        "average_days_to_win": pytest.approx(55),
        "velocity_per_day": {"EUR": "64.77"},
    }

    south = await book.report("velocity", team="South")
    # open deals of South owners now: D8 (raj), D10 (sam) = 2; closes in the default period
    # in South at the close: D3 won, D6 lost -> 0.5; average won 3000; days 60
    # velocity 2 * 0.5 * 3000 / 60 = 50.00
    assert south["summary"] == {
        "open_deals": 2,
        "win_rate": 0.5,
        "average_won_value": {"EUR": "3000.00"},
        "average_days_to_win": pytest.approx(60),
        "velocity_per_day": {"EUR": "50.00"},
    }

    ritas = await book.report("velocity", owner="rita")
    # open D9 = 1; closes in the default period: D7 won -> 1.0; 1500; 90 days
    # velocity 1 * 1.0 * 1500 / 90 = 16.666.. -> 16.67
    assert ritas["summary"] == {
        "open_deals": 1,
        "win_rate": 1.0,
        "average_won_value": {"EUR": "1500.00"},
        "average_days_to_win": pytest.approx(90),
        "velocity_per_day": {"EUR": "16.67"},
    }


# --- owners ---------------------------------------------------------------------------------


OWNER_COLUMNS = (
    "team",
    "region",
    "open_deals",
    "open_value",
    "weighted_value",
    "won",
    "won_value",
    "lost",
    "win_rate",
    "average_deal_size",
    "median_days_to_win",
    "events_recorded",
)


def owner_rows(report: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {r["owner"]: tuple(r[c] for c in OWNER_COLUMNS) for r in report["rows"]}


async def test_the_owners_report_gives_every_column_per_rep(book: Book) -> None:
    report = await book.report("owners")
    assert [r["owner"] for r in report["rows"]] == ["raj", "rita", "sam"]
    assert owner_rows(report) == {
        # raj (South/US now): open D8 8000, weighted 2400; won D3 3000 + D4 4000 = 2 / 7000;
        # lost 0; win rate 1.0; average deal 7000 / 2 = 3500; median days to win
        # [40, 60] = 50; events he made: D3 4, D4 4, D8 2 = 10
        "raj": ("South", "US", 1, "8000.00", "2400.00", 2, "7000.00", 0, 1.0, "3500.00", 50.0, 10),
        # rita (North/EU): open D9 9000, weighted 5400; won D1 1000 + D7 1500 = 2 / 2500;
        # lost D2, D7 = 2; win rate 0.5; average 1250; median [30, 90] = 60;
        # events: D1 4, D2 3, D7 4, D9 2 = 13
        "rita": (
            "North",
            "EU",
            1,
            "9000.00",
            "5400.00",
            2,
            "2500.00",
            2,
            0.5,
            "1250.00",
            60.0,
            13,
        ),
        # sam (South/US now): open D10 10000, weighted 1000; won 0; lost D5, D6 = 2;
        # win rate 0.0; no average or median; events 0 (max worked his deals)
        "sam": ("South", "US", 1, "10000.00", "1000.00", 0, "0.00", 2, 0.0, None, None, 0),
    }


async def test_the_owners_report_honours_period_team_and_owner(book: Book) -> None:
    february = await book.report("owners", **{"from": at(2, 1), "to": at(3, 1)})
    # open deals are counted now (unchanged); closes in [1.2, 1.3): D1 won (rita), D2 lost
    # (rita), D7 lost (rita), D4 won (raj), D5 lost (sam)
    # events that occurred in February: rita D1 win 4.2, D2 loss 5.2, D7 created 10.2 and
    # lost 20.2 = 4; raj D3 to Negotiation 1.2, D4 to Proposal 1.2, back 11.2, won 21.2 = 4
    assert owner_rows(february) == {
        # raj: won D4 4000; median [40] = 40
        "raj": ("South", "US", 1, "8000.00", "2400.00", 1, "4000.00", 0, 1.0, "4000.00", 40.0, 4),
        # rita: won D1 1000; lost 2; win rate 1/3; median [30] = 30
        "rita": (
            "North",
            "EU",
            1,
            "9000.00",
            "5400.00",
            1,
            "1000.00",
            2,
            pytest.approx(1 / 3),
            "1000.00",
            30.0,
            4,
        ),
        "sam": ("South", "US", 1, "10000.00", "1000.00", 0, "0.00", 1, 0.0, None, None, 0),
    }

    north = await book.report("owners", team="North")
    # open deals of owners in North now: rita's D9 (sam is in South now, so D10 is not);
    # closes in North at the close: rita's four, and sam's D5 (21.2)
    rows = owner_rows(north)
    assert set(rows) == {"rita", "sam"}
    assert rows["rita"][2:9] == (1, "9000.00", "5400.00", 2, "2500.00", 2, 0.5)
    # sam: no open deal counted, D5 lost; his team column shows his team now
    assert rows["sam"][:9] == ("South", "US", 0, "0.00", "0.00", 0, "0.00", 1, 0.0)

    rajs = await book.report("owners", owner="raj")
    assert list(owner_rows(rajs)) == ["raj"]


# --- CSV and errors -------------------------------------------------------------------------


def as_text(row: dict[str, Any], columns: list[str]) -> dict[str, str]:
    return {c: "" if row.get(c) is None else str(row[c]) for c in columns}


REPORT_NAMES = (
    "funnel",
    "win-rate",
    "lost-reasons",
    "forecast",
    "cycle-time",
    "velocity",
    "owners",
)


async def test_each_report_as_csv_gives_the_same_rows_as_its_json(book: Book) -> None:
    params: dict[str, Any] = {
        "pipeline_id": book.pipeline,
        "min_position": book.position,
        "from": at(2, 1),
    }
    for name in REPORT_NAMES:
        as_json = await book.report(name, **{"from": at(2, 1)})
        r = await book.api.get(
            f"/v1/reports/{name}", params=params, headers={**auth("manager"), "Accept": "text/csv"}
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        assert int(r.headers["X-Position"]) >= book.position
        reader = csv.DictReader(io.StringIO(r.text))
        rows = list(reader)
        columns = list(reader.fieldnames or [])
        assert as_json["rows"], name
        assert set(columns) == {k for row in as_json["rows"] for k in row}, name
        assert rows == [as_text(row, columns) for row in as_json["rows"]], name


async def test_an_unknown_pipeline_is_404_and_a_funnel_without_pipeline_id_is_422(
    book: Book,
) -> None:
    headers = auth("manager")
    nowhere = str(uuid.uuid4())
    for name in ("funnel", "win-rate", "lost-reasons", "stage-durations"):
        r = await book.api.get(
            f"/v1/reports/{name}", params={"pipeline_id": nowhere}, headers=headers
        )
        assert r.status_code == 404, (name, r.text)
        assert r.json()["error"]["code"] == "not_found"
        assert nowhere in r.json()["error"]["message"]

    r = await book.api.get("/v1/reports/funnel", headers=headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["details"]["field"] == "pipeline_id"
    assert "pipeline_id" in error["message"]


@pytest.mark.parametrize("key", ["from", "to"])
async def test_a_period_bound_without_a_time_zone_is_422_naming_it(book: Book, key: str) -> None:
    for name in ("funnel", "win-rate", "owners"):
        r = await book.api.get(
            f"/v1/reports/{name}",
            params={"pipeline_id": book.pipeline, key: "2026-03-01T00:00:00"},
            headers=auth("manager"),
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]["field"] == key


async def test_a_period_that_ends_before_it_starts_is_422(book: Book) -> None:
    r = await book.api.get(
        "/v1/reports/funnel",
        params={"pipeline_id": book.pipeline, "from": at(3, 1), "to": at(2, 1)},
        headers=auth("manager"),
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["field"] == "from"
