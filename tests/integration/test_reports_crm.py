"""The sales reports on the shared CRM dataset, checked against the CSV files themselves.

The dataset is imported once per backend with the CRM importer; a projection worker then
catches up and the report functions are called directly. Every expectation is computed
here from the files with the csv module alone, following the documented mapping
(docs/import-demo-export.md): each agent is an owner with team = manager and region =
regional office; a closed opportunity is created at ``engage_date`` and won or lost at
``close_date`` (midnight UTC); a won deal is worth ``close_value``, any other deal its
product's ``sales_price``.
"""

from __future__ import annotations

import csv
import os
import statistics
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.sql import ensure_schema, make_engine
from services.importer import crm
from services.projections.read_models import ReadModels
from services.projections.runner import Worker
from services.projections.source import EventSource
from services.queries.reports import ReportContext, ReportParams
from services.queries.reports.catalog import REPORTS
from services.runtime.stores import open_application
from tests.conftest import PG_URL, Backend, TestClock, need_postgres

REPO_ROOT = Path(__file__).resolve().parents[2]
CRM_DIR = Path(
    os.environ.get("DEALTRAIL_CRM_DATA")
    or REPO_ROOT.parent / "shared" / "data" / "crm-sales-opportunities"
)

pytestmark = [
    pytest.mark.skipif(
        not (CRM_DIR / "sales_pipeline.csv").exists(),
        reason=(
            f"the CRM dataset is not at {CRM_DIR} "
            "(set DEALTRAIL_CRM_DATA to a crm-sales-opportunities directory)"
        ),
    ),
    # one import per backend, shared by the tests of this module on one event loop
    pytest.mark.asyncio(loop_scope="module"),
]

# The read models the reports below use; stage_durations is left out to save time.
NEEDED = ("current_pipeline", "analytics", "audit_history")


# --- the independent computation ------------------------------------------------------------


def product_key(name: str) -> str:
    """Product names of sales_pipeline.csv match products.csv ignoring case and spacing."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


@dataclass
class Facts:
    """What the CSV files say, per agent and per regional office / manager."""

    team_of: dict[str, str] = field(default_factory=dict)
    region_of: dict[str, str] = field(default_factory=dict)
    won: Counter[str] = field(default_factory=Counter)
    won_value: defaultdict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    lost: Counter[str] = field(default_factory=Counter)
    open: Counter[str] = field(default_factory=Counter)
    open_value: defaultdict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    won_days: defaultdict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    lost_days: list[int] = field(default_factory=list)
    won_value_by_month: defaultdict[str, Decimal] = field(
        default_factory=lambda: defaultdict(Decimal)
    )

    def by(self, group_of: dict[str, str]) -> dict[str | None, tuple[int, int]]:
        """(won, lost) per group (team or region) of each agent."""
        out: defaultdict[str | None, list[int]] = defaultdict(lambda: [0, 0])
        for agent in set(self.won) | set(self.lost):
            out[group_of.get(agent)][0] += self.won[agent]
            out[group_of.get(agent)][1] += self.lost[agent]
        return {k: (w, lost) for k, (w, lost) in out.items()}


def facts_from(directory: Path) -> Facts:
    facts = Facts()
    with (directory / "sales_teams.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            facts.team_of[row["sales_agent"]] = row["manager"]
            facts.region_of[row["sales_agent"]] = row["regional_office"]
    with (directory / "products.csv").open(newline="") as f:
        price = {product_key(r["product"]): Decimal(r["sales_price"]) for r in csv.DictReader(f)}
    with (directory / "sales_pipeline.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            agent, stage = row["sales_agent"], row["deal_stage"]
            if stage in ("Won", "Lost"):
                days = (
                    date.fromisoformat(row["close_date"]) - date.fromisoformat(row["engage_date"])
                ).days
            if stage == "Won":
                facts.won[agent] += 1
                facts.won_value[agent] += Decimal(row["close_value"])
                facts.won_days[agent].append(days)
                facts.won_value_by_month[row["close_date"][:7]] += Decimal(row["close_value"])
            elif stage == "Lost":
                facts.lost[agent] += 1
                facts.lost_days.append(days)
            else:
                facts.open[agent] += 1
                facts.open_value[agent] += price[product_key(row["product"])]
    return facts


# --- the imported dataset, once per backend ---------------------------------------------------


@dataclass
class Imported:
    pipeline_id: UUID
    engine: AsyncEngine
    clock: TestClock
    facts: Facts

    async def report(self, name: str, **params: Any) -> dict[str, Any]:
        context = ReportContext(ReadModels(self.engine, 5.0), self.clock)
        result = await REPORTS[name](context, ReportParams(pipeline_id=self.pipeline_id, **params))
        return result.as_json()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def crm_backend(
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
async def imported(
    crm_backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Imported]:
    settings = crm_backend.settings(
        tmp_path_factory.mktemp("data"), DEALTRAIL_EMBEDDED_WORKER=False
    )
    clock = TestClock()
    app = open_application(settings, clock)
    engine = make_engine(settings.store, pool_size=4)
    try:
        result = crm.import_crm(app, crm.load(CRM_DIR))
        assert result.rejected == []
        pipeline_id = result.pipelines[crm.PIPELINE_NAME]
        await ensure_schema(engine, settings.store)
        worker = Worker(
            engine=engine, source=EventSource(app), location=settings.store, batch_size=5000
        )
        await worker.setup()
        await worker.catch_up([p for p in worker.projections if p.name in NEEDED])
        assert {worker.positions[name] for name in NEEDED} == {app.head_position()}
        yield Imported(pipeline_id, engine, clock, facts_from(CRM_DIR))
    finally:
        await engine.dispose()
        app.close()


# --- the reports against the CSV --------------------------------------------------------------


async def test_the_owners_report_gives_each_agents_won_count_and_value_as_in_the_csv(
    imported: Imported,
) -> None:
    facts = imported.facts
    report = await imported.report("owners")
    rows = {r["owner"]: r for r in report["rows"]}
    agents = set(facts.won) | set(facts.lost) | set(facts.open)
    assert set(rows) == agents
    for agent in sorted(agents):
        row = rows[agent]
        won, lost = facts.won[agent], facts.lost[agent]
        assert (row["won"], Decimal(row["won_value"])) == (won, facts.won_value[agent]), agent
        assert row["lost"] == lost, agent
        assert row["win_rate"] == pytest.approx(won / (won + lost) if won + lost else None)
        # open deals: Prospecting and Engaging rows, each worth its product's price
        assert (row["open_deals"], Decimal(row["open_value"])) == (
            facts.open[agent],
            facts.open_value[agent],
        ), agent
        assert (row["team"], row["region"]) == (
            facts.team_of.get(agent),
            facts.region_of.get(agent),
        ), agent
    assert sum(r["won"] for r in rows.values()) == sum(facts.won.values())
    assert sum(Decimal(r["won_value"]) for r in rows.values()) == sum(facts.won_value.values())


async def test_the_win_rate_per_regional_office_and_per_manager_matches_the_csv(
    imported: Imported,
) -> None:
    facts = imported.facts
    report = await imported.report("win-rate")
    rows = {
        (r["dimension"], r["key"]): (r["won"], r["lost"], r["win_rate"]) for r in report["rows"]
    }
    won, lost = sum(facts.won.values()), sum(facts.lost.values())
    assert rows[("overall", None)] == (won, lost, pytest.approx(won / (won + lost)))
    for dimension, group_of in (("region", facts.region_of), ("team", facts.team_of)):
        expected = facts.by(group_of)
        got = {k: v for (d, k), v in rows.items() if d == dimension}
        assert set(got) == set(expected), dimension
        for key, (w, lost_here) in expected.items():
            assert got[key] == (w, lost_here, pytest.approx(w / (w + lost_here))), (dimension, key)


async def test_the_median_days_from_engage_to_close_of_won_deals_match_the_csv(
    imported: Imported,
) -> None:
    facts = imported.facts
    report = await imported.report("cycle-time")
    won_days = [d for days in facts.won_days.values() for d in days]
    won = report["summary"]["won"]
    assert won["count"] == len(won_days)
    assert won["median_days"] == pytest.approx(statistics.median(won_days))
    assert won["mean_days"] == pytest.approx(statistics.fmean(won_days), abs=1e-6)
    lost = report["summary"]["lost"]
    assert (lost["count"], lost["median_days"]) == (
        len(facts.lost_days),
        pytest.approx(statistics.median(facts.lost_days)),
    )
    by_owner = {
        r["key"]: r["median_days"]
        for r in report["rows"]
        if r["dimension"] == "owner" and r["outcome"] == "won"
    }
    assert by_owner == {
        agent: pytest.approx(statistics.median(days)) for agent, days in facts.won_days.items()
    }
    # the owners report's median days to win is the same figure per agent
    owners = {r["owner"]: r for r in (await imported.report("owners"))["rows"]}
    for agent, days in facts.won_days.items():
        assert owners[agent]["median_days_to_win"] == pytest.approx(statistics.median(days))


async def test_the_forecast_shows_the_won_value_of_each_close_month_as_in_the_csv(
    imported: Imported,
) -> None:
    report = await imported.report("forecast")
    won_by_month = {r["bucket"]: Decimal(r["won_value"]) for r in report["rows"] if r["won_count"]}
    assert won_by_month == dict(imported.facts.won_value_by_month)
