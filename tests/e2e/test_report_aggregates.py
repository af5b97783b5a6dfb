"""Reports computed by the database: exact money sums, exact day counts, memberships as of
each event, the funnel after a stage reorder, and the most stale deals when there are more
than the report lists.

The service clock (``clock``) stands at T = 2026-06-01 12:00 UTC; events are backdated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.queries.reports import stale
from tests.conftest import auth

T = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def days_before(days: float) -> str:
    return iso(T - timedelta(days=days))


@dataclass
class Session:
    api: httpx.AsyncClient
    position: int = 0
    ids: dict[str, str] = field(default_factory=dict)

    async def send(
        self, method: str, path: str, body: dict[str, Any] | None, status: int = 200
    ) -> dict[str, Any]:
        r = await self.api.request(method, path, json=body, headers=auth("admin"))
        assert r.status_code == status, r.text
        answer = dict(r.json())
        self.position = max(self.position, int(answer.get("position") or 0))
        return answer

    async def pipeline(self, stages: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "name": "Aggregates",
            "currency": "EUR",
            "stages": stages,
            "lost_reasons": ["Price", "Timing"],
            "occurred_at": days_before(400),
            **extra,
        }
        return str((await self.send("POST", "/v1/pipelines", body, 201))["id"])

    async def create(self, label: str, pipeline: str, value: str, when: str, **body: Any) -> None:
        body = {
            "pipeline_id": pipeline,
            "title": label,
            "value": value,
            "occurred_at": when,
            **body,
        }
        self.ids[label] = (await self.send("POST", "/v1/deals", body, 201))["id"]

    async def command(self, label: str, verb: str, when: str, **body: Any) -> None:
        await self.send(
            "POST", f"/v1/deals/{self.ids[label]}/{verb}", {"occurred_at": when, **body}
        )

    async def report(self, name: str, **params: Any) -> dict[str, Any]:
        query = {"min_position": self.position, **params}
        r = await self.api.get(f"/v1/reports/{name}", params=query, headers=auth("manager"))
        assert r.status_code == 200, r.text
        return dict(r.json())


STAGES = [{"name": "Lead", "probability": 10}, {"name": "Demo", "probability": 30}]


async def test_money_is_summed_exactly_to_the_fourth_decimal(api: httpx.AsyncClient) -> None:
    """Amounts that REAL arithmetic would round: 0.1 + 0.2, and sums past 15 digits."""
    s = Session(api)
    pid = await s.pipeline(STAGES)
    await s.create("L1", pid, "0.1", days_before(20), owner="rita")
    await s.create("L2", pid, "0.2", days_before(20), owner="rita")
    await s.create("W1", pid, "1234.5678", days_before(15), owner="rita")
    await s.create("W2", pid, "999999999999.9999", days_before(20), owner="rita")
    await s.create("O1", pid, "0.0005", days_before(3), owner="rita", stage="Demo")
    await s.create("O2", pid, "10.0001", days_before(3), owner="rita")
    await s.command("L1", "lose", days_before(10), reason="Price")
    await s.command("L2", "lose", days_before(10), reason="Price")
    await s.command("W1", "win", days_before(10))  # 5 days
    await s.command("W2", "win", days_before(10))  # 10 days

    lost = await s.report("lost-reasons", pipeline_id=pid)
    assert lost["summary"] == {"lost": 2, "lost_value": {"EUR": "0.30"}}
    assert [(r["reason"], r["count"], r["value"]) for r in lost["rows"]] == [
        ("Price", 2, "0.30"),
        ("Price", 2, "0.30"),
    ]

    forecast = await s.report("forecast", pipeline_id=pid)
    # weighted: 0.0005 * 30 % = 0.00015 -> 0.0002 (half even); 10.0001 * 10 % -> 1.0000
    assert forecast["summary"] == {
        "open_value": {"EUR": "10.0006"},
        "weighted_value": {"EUR": "1.0002"},
        "won_value": {"EUR": "1000000001234.5677"},
        "today": "2026-06-01",
    }

    owners = await s.report("owners", pipeline_id=pid)
    (rita,) = owners["rows"]
    assert (rita["won_value"], rita["average_deal_size"]) == (
        "1000000001234.5677",
        "500000000617.28",  # 500000000617.28385
    )
    assert (rita["open_value"], rita["weighted_value"]) == ("10.0006", "1.0002")

    velocity = await s.report(
        "velocity", pipeline_id=pid, **{"from": days_before(30), "to": iso(T)}
    )
    # 2 open * 2/4 won * 500000000617.28385 / 7.5 days = 66666666748.97118
    assert velocity["summary"] == {
        "open_deals": 2,
        "win_rate": 0.5,
        "average_won_value": {"EUR": "500000000617.28"},
        "average_days_to_win": 7.5,
        "velocity_per_day": {"EUR": "66666666748.97"},
    }


async def test_day_counts_keep_microseconds_and_months_are_utc(api: httpx.AsyncClient) -> None:
    s = Session(api)
    pid = await s.pipeline(STAGES)
    created = datetime(2026, 2, 1, 0, 0, 0, 1, tzinfo=UTC)
    # 2026-03-01 00:30 at UTC+1 is still February in UTC
    won = datetime.fromisoformat("2026-03-01T00:30:00.5+01:00")
    await s.create("A", pid, "100", iso(created), owner="rita")
    await s.command("A", "win", won.isoformat())
    created_b = datetime(2026, 3, 10, 8, 0, 0, 999999, tzinfo=UTC)
    won_b = datetime(2026, 4, 2, 17, 45, 12, 3, tzinfo=UTC)
    await s.create("B", pid, "100", iso(created_b), owner="rita")
    await s.command("B", "win", iso(won_b))

    a = (won - created).total_seconds() / 86400
    b = (won_b - created_b).total_seconds() / 86400
    low, high = sorted((a, b))
    cycle = await s.report("cycle-time", pipeline_id=pid)
    won_stats = cycle["summary"]["won"]
    assert won_stats == {
        "count": 2,
        "mean_days": round((a + b) / 2, 6),
        "median_days": round(low + (high - low) * 0.5, 6),
        "p90_days": round(low + (high - low) * 0.9, 6),
    }

    forecast = await s.report("forecast", pipeline_id=pid)
    assert [(r["bucket"], r["won_count"]) for r in forecast["rows"]] == [
        ("2026-02", 1),
        ("2026-04", 1),
    ]


async def test_memberships_of_the_same_moment_take_the_later_one(api: httpx.AsyncClient) -> None:
    """Two team assignments with one occurred_at: the later one holds from then on; a close
    before any assignment has no team."""
    s = Session(api)
    pid = await s.pipeline(STAGES)
    await s.create("Early", pid, "100", days_before(60), owner="sam")
    await s.command("Early", "win", days_before(50))
    for team in ("Alpha", "Beta"):
        await s.send("PUT", "/v1/owners/sam", {"team": team, "occurred_at": days_before(40)})
    await s.create("Late", pid, "100", days_before(30), owner="sam")
    await s.command("Late", "lose", days_before(20), reason="Timing")

    report = await s.report("win-rate", pipeline_id=pid)
    teams = {r["key"]: (r["won"], r["lost"]) for r in report["rows"] if r["dimension"] == "team"}
    assert teams == {None: (1, 0), "Beta": (0, 1)}
    beta = await s.report("win-rate", pipeline_id=pid, team="Beta")
    assert beta["summary"] == {"won": 0, "lost": 1, "win_rate": 0.0}
    alpha = await s.report("win-rate", pipeline_id=pid, team="Alpha")
    assert alpha["summary"] == {"won": 0, "lost": 0, "win_rate": None}
    funnel = await s.report("funnel", pipeline_id=pid, team="Beta")
    assert [r["entered"] for r in funnel["rows"]] == [1, 0]


async def test_the_funnel_follows_the_current_stage_order(api: httpx.AsyncClient) -> None:
    """X skips Demo on its way to Proposal; after the stages are reordered to Lead, Proposal,
    Demo, Demo is the last stage and Proposal counts X's reach of Demo as an advance. A deal
    won in a stage removed afterwards still counts as won for the stages it reached."""
    s = Session(api)
    pid = await s.pipeline(
        [
            {"name": "Lead", "probability": 10},
            {"name": "Demo", "probability": 30},
            {"name": "Proposal", "probability": 60},
            {"name": "Extra", "probability": 70},
        ]
    )
    await s.create("X", pid, "100", days_before(30))
    await s.command("X", "advance", days_before(20), stage="Proposal")
    await s.create("Y", pid, "100", days_before(30))
    await s.command("Y", "advance", days_before(25), stage="Demo")
    await s.command("Y", "lose", days_before(24), reason="Price")
    await s.create("Z", pid, "100", days_before(30))
    await s.command("Z", "advance", days_before(20), stage="Extra")
    await s.command("Z", "win", days_before(10))
    await s.send("DELETE", f"/v1/pipelines/{pid}/stages/extra", None)
    await s.send(
        "PUT", f"/v1/pipelines/{pid}/stage-order", {"stage_order": ["lead", "proposal", "demo"]}
    )

    funnel = await s.report("funnel", pipeline_id=pid)
    rows = {
        r["stage_id"]: (
            r["entered"],
            r["of_which_skipped"],
            r["advanced"],
            r["lost_here"],
            r["won"],
        )
        for r in funnel["rows"]
    }
    assert list(rows) == ["lead", "proposal", "demo"]
    assert rows == {
        # X, Y, Z; all reached a later stage; Z won (in Extra, removed since)
        "lead": (3, 0, 3, 0, 1),
        # X (entered), Z (skipped past it to Extra); both reached Demo (now later) at the
        # same moment as Proposal - an advance each
        "proposal": (2, 1, 2, 0, 1),
        # X (skipped), Y (entered, lost there), Z (skipped); nothing comes after Demo now
        "demo": (3, 2, 0, 1, 1),
    }


async def test_the_most_stale_deals_are_listed_when_there_are_more(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stale, "STALE_LIMIT", 2)
    s = Session(api)
    pid = await s.pipeline(STAGES, stale_after_days=20)
    await s.create("A", pid, "100", days_before(30))
    await s.create("B", pid, "100", days_before(25))
    await s.create("C", pid, "100", days_before(25))
    await s.create("D", pid, "100", days_before(21))
    await s.create("Fresh", pid, "100", days_before(5))

    report = await s.report("stale-deals", pipeline_id=pid)
    assert report["summary"]["stale"] == 4
    assert report["summary"]["shown"] == 2
    # A is the most stale; B and C are equally stale, the smaller id first
    second = min(s.ids["B"], s.ids["C"])
    assert [r["deal_id"] for r in report["rows"]] == [s.ids["A"], second]
    assert [r["days_stale"] for r in report["rows"]] == [10.0, 5.0]


# --- money never adds across currencies ---------------------------------------------------


async def test_reports_over_every_pipeline_keep_each_currency_apart(api: httpx.AsyncClient) -> None:
    s = Session(api)
    euros = await s.pipeline(STAGES, name="Euros")
    dollars = await s.pipeline(STAGES, name="Dollars", currency="USD")
    for label, pipeline in (("E", euros), ("U", dollars)):
        await s.create(f"{label} open", pipeline, "100", days_before(30), owner="rita")
        await s.create(f"{label} won", pipeline, "100", days_before(30), owner="rita")
        await s.create(f"{label} lost", pipeline, "100", days_before(30), owner="rita")
        await s.command(f"{label} won", "win", days_before(10))
        await s.command(f"{label} lost", "lose", days_before(10), reason="Price")

    forecast = await s.report("forecast")
    # one open 100 and one win of 100 in each currency: never "200.00"
    for field_name in ("open_value", "won_value"):
        assert forecast["summary"][field_name] == {"EUR": "100.00", "USD": "100.00"}
    assert sorted((r["bucket"], r["currency"]) for r in forecast["rows"]) == sorted(
        [("no date", "EUR"), ("no date", "USD"), ("2026-05", "EUR"), ("2026-05", "USD")]
    )

    owners = await s.report("owners")
    ritas = {r["currency"]: r for r in owners["rows"] if r["owner"] == "rita"}
    assert set(ritas) == {"EUR", "USD"}
    for row in ritas.values():
        assert (row["open_value"], row["won_value"], row["won"], row["lost"]) == (
            "100.00",
            "100.00",
            1,
            1,
        )
    assert owners["summary"] == {"owners": 1}

    lost = await s.report("lost-reasons")
    assert lost["summary"] == {"lost": 2, "lost_value": {"EUR": "100.00", "USD": "100.00"}}
    per_reason = [(r["reason"], r["currency"], r["value"]) for r in lost["rows"]]
    assert ("Price", "EUR", "100.00") in per_reason and ("Price", "USD", "100.00") in per_reason

    velocity = await s.report("velocity")
    assert [r["currency"] for r in velocity["rows"]] == ["EUR", "USD"]
    assert set(velocity["summary"]["average_won_value"]) == {"EUR", "USD"}

    # one pipeline: one currency
    only = await s.report("forecast", pipeline_id=dollars)
    assert only["summary"]["open_value"] == {"USD": "100.00"}
