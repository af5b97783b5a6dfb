"""Importing the shared CRM sales-opportunities dataset, checked against the CSV itself.

The expectations are computed here from the files with the csv module, independently
of the importer. The full-dataset test runs once per backend and then imports a
modified copy: the unchanged rows append nothing, the changed ones exactly the
difference. A literal re-import of the same data is checked on a 300-row subset.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest

from libs.application.app import DealtrailApplication
from libs.application.importing import find_pipeline
from libs.application.records import decode
from libs.domain.deal import deal_id_for
from services.cli import main as cli
from services.importer import crm
from services.runtime.stores import open_application
from tests.conftest import Backend

REPO_ROOT = Path(__file__).resolve().parents[2]
CRM_DIR = Path(
    os.environ.get("DEALTRAIL_CRM_DATA")
    or REPO_ROOT.parent / "shared" / "data" / "crm-sales-opportunities"
)
needs_crm_data = pytest.mark.skipif(
    not (CRM_DIR / "sales_pipeline.csv").exists(),
    reason=(
        f"the CRM dataset is not at {CRM_DIR} "
        "(set DEALTRAIL_CRM_DATA to a crm-sales-opportunities directory)"
    ),
)


@dataclass
class Expected:
    """What the CSV says, computed with the csv module alone."""

    rows: int = 0
    status_by_agent: Counter[tuple[str, str]] = field(default_factory=Counter)
    status: Counter[str] = field(default_factory=Counter)
    won_value_by_agent: defaultdict[str, Decimal] = field(
        default_factory=lambda: defaultdict(Decimal)
    )
    won_value: Decimal = Decimal(0)
    agents_in_teams: int = 0
    events: int = 0


STATUS = {"Won": "won", "Lost": "lost", "Engaging": "open", "Prospecting": "open"}


def expected_from(directory: Path) -> Expected:
    expected = Expected()
    with (directory / "sales_pipeline.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            status = STATUS[row["deal_stage"]]
            expected.rows += 1
            expected.status[status] += 1
            expected.status_by_agent[(row["sales_agent"], status)] += 1
            if status == "won":
                expected.won_value_by_agent[row["sales_agent"]] += Decimal(row["close_value"])
                expected.won_value += Decimal(row["close_value"])
    with (directory / "sales_teams.csv").open(newline="") as f:
        expected.agents_in_teams = sum(1 for _ in csv.DictReader(f))
    closed = expected.status["won"] + expected.status["lost"]
    # one PipelineDefined, one OwnerRegistered per agent, one DealCreated per row and
    # one DealWon or DealLost per closed row
    expected.events = 1 + expected.agents_in_teams + expected.rows + closed
    return expected


def opportunity_ids(directory: Path) -> list[str]:
    with (directory / "sales_pipeline.csv").open(newline="") as f:
        return [row["opportunity_id"] for row in csv.DictReader(f)]


def all_records(app: DealtrailApplication, start: int = 1) -> list[tuple[int, UUID, str]]:
    return [
        (n.id, UUID(str(n.originator_id)), decode(app.mapper, n).event_type)
        for batch in app.iter_notifications(start)
        for n in batch
    ]


UseBackend = Callable[[Backend], None]


@pytest.fixture
def env_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[UseBackend]:
    """Point the command line's settings (read from the environment) at a backend."""

    def apply(backend: Backend) -> None:
        backend.point_cli_at(monkeypatch, tmp_path / "data")
        monkeypatch.setenv("DEALTRAIL_API_KEYS", "")

    yield apply


def write_modified_copy(source: Path, target: Path) -> dict[str, list[str]]:
    """A copy with four rows changed or added; returns the events each should append."""
    target.mkdir()
    for name in ("sales_teams.csv", "products.csv", "accounts.csv"):
        shutil.copy(source / name, target / name)
    with (source / "sales_pipeline.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    expected: dict[str, list[str]] = {}

    engaging = next(r for r in rows if r["deal_stage"] == "Engaging" and r["account"])
    engaging.update(deal_stage="Won", close_date="2017-12-30", close_value="1234")
    expected[engaging["opportunity_id"]] = ["DealUpdated", "DealWon"]  # value, then won

    prospecting = next(r for r in rows if r["deal_stage"] == "Prospecting")
    prospecting.update(deal_stage="Engaging", engage_date="2017-12-01")
    expected[prospecting["opportunity_id"]] = ["StageAdvanced"]

    won = next(r for r in rows if r["deal_stage"] == "Won")
    won["close_value"] = str(int(won["close_value"]) + 1)
    # a closed deal's value only changes through a reopening
    expected[won["opportunity_id"]] = ["DealReopened", "DealUpdated", "DealWon"]

    rows.append(
        {
            "opportunity_id": "ZZTEST01",
            "sales_agent": rows[0]["sales_agent"],
            "product": "GTX Basic",
            "account": "Cancity",
            "deal_stage": "Lost",
            "engage_date": "2017-05-02",
            "close_date": "2017-06-01",
            "close_value": "0",
        }
    )
    expected["ZZTEST01"] = ["DealCreated", "DealLost"]
    with (target / "sales_pipeline.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return expected


@needs_crm_data
def test_the_full_dataset_imports_with_the_counts_values_and_events_the_csv_implies(
    backend: Backend, tmp_path: Path, env_for: UseBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = expected_from(CRM_DIR)
    env_for(backend)

    assert cli(["import", "crm-opportunities", str(CRM_DIR), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"imported {expected.rows} deal(s) ({expected.rows} new, 0 changed)" in out

    app = open_application(backend.settings(tmp_path / "data"))
    try:
        pipeline = find_pipeline(app, crm.PIPELINE_NAME)
        assert pipeline is not None
        assert [s.name for s in pipeline.stages] == ["Prospecting", "Engaging"]
        assert crm.IMPORTED_LOST_REASON in pipeline.lost_reasons

        # fold the stored events into each deal's owner, status and value
        deals: dict[UUID, dict[str, object]] = {}
        events = 0
        for batch in app.iter_notifications():
            for n in batch:
                events += 1
                record = decode(app.mapper, n)
                if record.event_type == "DealCreated":
                    deals[record.aggregate_id] = {
                        "owner": record.payload["owner"],
                        "value": Decimal(str(record.payload["value"])),
                        "status": "open",
                    }
                elif record.event_type == "DealWon":
                    deals[record.aggregate_id]["status"] = "won"
                elif record.event_type == "DealLost":
                    deals[record.aggregate_id]["status"] = "lost"
                    assert record.payload["reason"] == crm.IMPORTED_LOST_REASON
        assert events == expected.events
        assert set(deals) == {
            deal_id_for(pipeline.id, opportunity) for opportunity in opportunity_ids(CRM_DIR)
        }
        status = Counter(str(d["status"]) for d in deals.values())
        status_by_agent = Counter((str(d["owner"]), str(d["status"])) for d in deals.values())
        won_by_agent: defaultdict[str, Decimal] = defaultdict(Decimal)
        for d in deals.values():
            if d["status"] == "won":
                won_by_agent[str(d["owner"])] += Decimal(str(d["value"]))
        assert status == expected.status
        assert status_by_agent == expected.status_by_agent
        assert won_by_agent == expected.won_value_by_agent
        assert sum(won_by_agent.values()) == expected.won_value
        owner = app.get_owner("Anna Snelling")
        assert owner is not None
        assert (owner.team, owner.region) == ("Dustin Brinkmann", "Central")

        head = app.head_position()

        # a modified copy appends exactly the difference: nothing for the rows that are
        # the same, the expected events for the four that changed or are new
        modified = tmp_path / "modified"
        wanted = write_modified_copy(CRM_DIR, modified)
        assert cli(["import", "crm-opportunities", str(modified), "--quiet"]) == 0
        assert f"(1 new, 3 changed), {expected.rows - 3} unchanged" in capsys.readouterr().out
        appended: defaultdict[UUID, list[str]] = defaultdict(list)
        for _, aggregate_id, event_type in all_records(app, head + 1):
            appended[aggregate_id].append(event_type)
        assert dict(appended) == {
            deal_id_for(pipeline.id, opportunity): types for opportunity, types in wanted.items()
        }
        won = app.get_deal(deal_id_for(pipeline.id, next(iter(wanted))))
        assert won.status == "won"
        assert won.value == Decimal(1234)
        assert won.closed_at == datetime(2017, 12, 30, tzinfo=UTC)
    finally:
        app.close()


def write_subset(target: Path, rows: int, bad_line: dict[str, str] | None = None) -> None:
    target.mkdir()
    for name in ("sales_teams.csv", "products.csv", "accounts.csv"):
        shutil.copy(CRM_DIR / name, target / name)
    with (CRM_DIR / "sales_pipeline.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        kept = [row for _, row in zip(range(rows), reader, strict=False)]
    if bad_line is not None:
        kept.insert(rows // 2, bad_line)
    with (target / "sales_pipeline.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(kept)


BAD_ROW = {
    "opportunity_id": "BAD00001",
    "sales_agent": "Moses Frase",
    "product": "GTX Basic",
    "account": "Cancity",
    "deal_stage": "Won",
    "engage_date": "2017-13-45",
    "close_date": "2017-03-01",
    "close_value": "100",
}


@needs_crm_data
def test_strict_import_with_one_bad_row_writes_nothing_and_names_file_line_and_reason(
    backend: Backend, tmp_path: Path, env_for: UseBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    env_for(backend)
    subset = tmp_path / "subset"
    write_subset(subset, 300, BAD_ROW)
    bad_line = 2 + 150  # header is line 1, the bad row is the 151st data row

    assert cli(["import", "crm-opportunities", str(subset), "--strict", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert f"sales_pipeline.csv:{bad_line}: engage_date '2017-13-45'" in captured.err
    assert "nothing was imported" in captured.out
    app = open_application(backend.settings(tmp_path / "data"))
    try:
        assert app.head_position() == 0

        # without --strict the good rows go in and the bad one is reported
        assert cli(["import", "crm-opportunities", str(subset), "--quiet"]) == 1
        captured = capsys.readouterr()
        assert "imported 300 deal(s)" in captured.out
        assert "1 rejected" in captured.out
        assert f"rejected sales_pipeline.csv:{bad_line}:" in captured.err
        head = app.head_position()
        assert head > 0

        # the same data again appends nothing
        assert cli(["import", "crm-opportunities", str(subset), "--quiet"]) == 1
        assert "300 unchanged, 1 rejected; 0 event(s)" in capsys.readouterr().out
        assert app.head_position() == head
    finally:
        app.close()


@needs_crm_data
def test_a_missing_file_aborts_before_anything_is_written(
    backend: Backend, tmp_path: Path, env_for: UseBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    env_for(backend)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(CRM_DIR / "sales_pipeline.csv", partial / "sales_pipeline.csv")
    assert cli(["import", "crm-opportunities", str(partial)]) == 2
    assert "sales_teams.csv: no such file" in capsys.readouterr().err
    app = open_application(backend.settings(tmp_path / "data"))
    try:
        assert app.head_position() == 0
    finally:
        app.close()
