"""The activities and response-time reports and the owners report's activity counts,
against a hand-worked history (every figure below is worked out in the comments).

The service clock stands at T = 2026-06-01 12:00 UTC; every event is backdated.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import auth
from tests.e2e.test_report_aggregates import STAGES, Session, T, iso


def at(days: float, hours: float = 0) -> str:
    """T minus ``days`` days plus ``hours`` hours."""
    return iso(T - timedelta(days=days) + timedelta(hours=hours))


class Activities(Session):
    """A session that also plans and closes activities, remembering their ids."""

    async def plan(self, label: str, deal: str, when: str, **body: Any) -> None:
        answer = await self.send(
            "POST", f"/v1/deals/{self.ids[deal]}/activities", {"occurred_at": when, **body}, 201
        )
        self.ids[label] = answer["id"]

    async def close(self, label: str, deal: str, verb: str, when: str) -> None:
        path = f"/v1/deals/{self.ids[deal]}/activities/{self.ids[label]}/{verb}"
        await self.send("POST", path, {"occurred_at": when})


@pytest.fixture
async def history(api: httpx.AsyncClient) -> Activities:
    s = Activities(api)
    await s.send("PUT", "/v1/owners/rita", {"team": "North", "occurred_at": at(400)})
    await s.send("PUT", "/v1/owners/raj", {"team": "South", "occurred_at": at(400)})
    pid = await s.pipeline(STAGES)
    s.ids["pipeline"] = pid
    # D1 (rita): a1 call done after 26 h, a2 meeting overdue, a3 task due after T
    await s.create("D1", pid, "100", at(10), owner="rita")
    await s.plan("a1", "D1", at(10, 1), type="call", subject="Intro", due_at=at(9))
    await s.plan("a2", "D1", at(10, 2), type="meeting", subject="Demo", due_at=at(2))
    await s.plan("a3", "D1", at(10, 3), type="task", subject="Quote", due_at=at(-3))
    await s.close("a1", "D1", "complete", at(9, 2))
    # D2 (rita): x1 task due long before, cancelled; b1 call done after 24 h; b2 cancelled
    await s.create("D2", pid, "100", at(8), owner="rita")
    await s.plan("x1", "D2", at(8, 0.5), type="task", subject="Old", due_at=at(20))
    await s.close("x1", "D2", "cancel", at(8, 1))
    await s.plan("b1", "D2", at(8, 2), type="call", subject="Call", due_at=at(7))
    await s.plan("b2", "D2", at(8, 3), type="call", subject="Again", due_at=at(6))
    await s.close("b1", "D2", "complete", at(7))
    await s.close("b2", "D2", "cancel", at(6))
    # D3 (raj): c1 email done after 48 h, c2 call overdue; D4 (raj): nothing yet
    await s.create("D3", pid, "100", at(6), owner="raj")
    await s.plan("c1", "D3", at(6, 1), type="email", subject="Deck", due_at=at(5))
    await s.plan("c2", "D3", at(6, 2), type="call", subject="Chase", due_at=at(1))
    await s.close("c1", "D3", "complete", at(4))
    await s.create("D4", pid, "100", at(5), owner="raj")
    return s


def counts(report: dict[str, Any]) -> dict[tuple[str, str], tuple[Any, ...]]:
    keys = ("planned", "completed", "cancelled", "overdue", "open", "completion_rate")
    return {(r["owner"], r["type"]): tuple(r[k] for k in keys) for r in report["rows"]}


async def test_the_activities_report_counts_work_planned_in_the_period_per_rep_and_type(
    history: Activities,
) -> None:
    q1 = await history.report("activities", **{"from": at(10), "to": iso(T)})

    # due in [T-10d, T): a1 b1 b2 (rita's calls), a2 (rita's meeting), c1, c2 (raj's)
    assert counts(q1) == {
        ("raj", "call"): (1, 0, 0, 1, 0, 0.0),
        ("raj", "email"): (1, 1, 0, 0, 0, 1.0),
        ("rita", "call"): (3, 2, 1, 0, 0, 1.0),  # 2 / (3 - 1)
        ("rita", "meeting"): (1, 0, 0, 1, 0, 0.0),
    }
    assert [r["team"] for r in q1["rows"]] == ["South", "South", "North", "North"]
    assert q1["summary"] == {
        "planned": 6,
        "completed": 3,
        "cancelled": 1,
        "overdue": 2,
        "open": 0,
        "completion_rate": 0.6,  # 3 / (6 - 1)
    }

    every = await history.report("activities")
    # and beyond the period: x1 (due T-20d, cancelled) and a3 (due after T, open)
    assert counts(every)[("rita", "task")] == (2, 0, 1, 0, 1, 0.0)
    assert every["summary"]["planned"] == 8
    assert every["summary"]["completion_rate"] == 0.5  # 3 / (8 - 2)

    south = await history.report("activities", team="South")
    assert {owner for owner, _ in counts(south)} == {"raj"}
    rita = await history.report("activities", owner="rita", pipeline_id=history.ids["pipeline"])
    assert {owner for owner, _ in counts(rita)} == {"rita"}

    r = await history.api.get(
        "/v1/reports/activities",
        params={"min_position": history.position},
        headers={**auth("rep"), "Accept": "text/csv"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == [
        "owner",
        "team",
        "type",
        "planned",
        "completed",
        "cancelled",
        "overdue",
        "open",
        "completion_rate",
    ]
    assert {(row["owner"], row["type"], row["planned"]) for row in rows} >= {
        ("rita", "call", "3"),
        ("rita", "task", "2"),
    }


async def test_response_time_is_creation_to_first_completed_activity_per_rep_and_team(
    history: Activities,
) -> None:
    report = await history.report("response-time")

    # D1 26 h, D2 24 h (x1 was cancelled: no response), D3 48 h, D4 still waiting
    rows = {(r["dimension"], r["key"]): r for r in report["rows"]}
    figures = ("deals", "count", "waiting", "median_hours", "p90_hours")

    def of(dimension: str, key: str | None) -> tuple[Any, ...]:
        return tuple(rows[(dimension, key)][f] for f in figures)

    assert of("overall", None) == (4, 3, 1, 26.0, 43.6)  # p90: 26 + 0.8 * (48 - 26)
    assert of("owner", "rita") == (2, 2, 0, 25.0, 25.8)
    assert of("owner", "raj") == (2, 1, 1, 48.0, 48.0)
    assert of("team", "North") == of("owner", "rita")
    assert of("team", "South") == of("owner", "raj")
    assert report["summary"] == {
        "deals": 4,
        "count": 3,
        "waiting": 1,
        "median_hours": 26.0,
        "p90_hours": 43.6,
    }

    recent = await history.report("response-time", **{"from": at(7), "to": iso(T)})
    assert recent["summary"] == {
        "deals": 2,
        "count": 1,
        "waiting": 1,
        "median_hours": 48.0,
        "p90_hours": 48.0,
    }
    north = await history.report("response-time", team="North")
    assert north["summary"]["deals"] == 2 and north["summary"]["median_hours"] == 25.0


async def test_the_owners_report_counts_each_reps_completed_and_overdue_activities(
    history: Activities,
) -> None:
    every = {r["owner"]: r for r in (await history.report("owners"))["rows"]}
    assert (every["rita"]["activities_completed"], every["rita"]["activities_overdue"]) == (2, 1)
    assert (every["raj"]["activities_completed"], every["raj"]["activities_overdue"]) == (1, 1)

    # completed in the period counts by when it was completed; overdue is always now
    period = {"from": at(8, 2), "to": iso(T)}
    recent = {r["owner"]: r for r in (await history.report("owners", **period))["rows"]}
    assert (recent["rita"]["activities_completed"], recent["rita"]["activities_overdue"]) == (1, 1)
    assert recent["raj"]["activities_completed"] == 1
