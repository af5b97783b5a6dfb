"""Importing the generic deals CSV: good rows in, bad rows reported, re-runs idempotent."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from libs.application.app import DealtrailApplication
from libs.application.handlers import handle
from libs.application.importing import ImportAborted
from libs.application.records import decode
from libs.domain.actors import Actor, Role
from libs.domain.commands import DefinePipeline
from libs.domain.deal import deal_id_for
from libs.domain.pipeline import default_template
from services.cli import main as cli
from services.importer.common import read_csv_text
from services.importer.generic import import_deals, import_deals_text
from services.runtime.stores import open_application
from tests.conftest import Backend, TestClock

ANN = Actor("ann", Role.ADMIN)

HEADER = "external_id,title,pipeline,stage,status,value,owner,created_at,closed_at,lost_reason\n"
GOOD = (
    "A-1,ACME renewal,Sales,,open,1200,rita,2026-01-05,,\n"
    "A-2,Globex upsell,sales,Quote sent,won,5000.50,raj,2026-01-10,2026-02-01T10:30:00Z,\n"
    "A-3,Initech pilot,Sales,Negotiation,lost,800,rita,2026-01-12,2026-03-01,Price\n"
)
BAD = (
    "B-1,Wrong stage,Sales,Nowhere,open,100,rita,2026-01-05,,\n"  # line 5
    "B-2,Bad status,Sales,,maybe,100,rita,2026-01-05,,\n"  # line 6
    "B-3,Backwards,Sales,,won,100,rita,2026-02-05,2026-01-05,\n"  # line 7
    "B-4,No reason,Sales,,lost,100,rita,2026-01-05,2026-01-06,\n"  # line 8
    "B-5,Unknown pipe,Nope,,open,100,rita,2026-01-05,,\n"  # line 9
    "A-1,Duplicate,Sales,,open,100,rita,2026-01-05,,\n"  # line 10
    "B-6,Negative,Sales,,open,-5,rita,2026-01-05,,\n"  # line 11
    "B-7,Bad date,Sales,,open,5,rita,05/01/2026,,\n"  # line 12
    "B-8,Unknown reason,Sales,,lost,5,rita,2026-01-05,2026-01-06,Aliens\n"  # line 13
)


@pytest.fixture
def app(backend: Backend, tmp_path: Path, clock: TestClock) -> Iterator[DealtrailApplication]:
    application = open_application(backend.settings(tmp_path / "data"), clock)
    template = default_template()
    handle(
        application,
        DefinePipeline(
            actor=ANN,
            name="Sales",
            currency="EUR",
            stages=template["stages"],
            lost_reasons=template["lost_reasons"],
            occurred_at=datetime(2025, 12, 1, tzinfo=UTC),
        ),
    )
    yield application
    application.close()


def test_good_rows_are_imported_and_each_bad_row_is_reported_with_line_and_reason(
    app: DealtrailApplication,
) -> None:
    report = import_deals_text(app, HEADER + GOOD + BAD, name="deals.csv")

    assert (report.created, report.changed, report.unchanged) == (3, 0, 0)
    reasons = {e.line: e.reason for e in report.rejected}
    assert all(e.file == "deals.csv" for e in report.rejected)
    assert sorted(reasons) == list(range(5, 14))
    assert "stage 'Nowhere' is not in pipeline" in reasons[5]
    assert "status 'maybe'" in reasons[6]
    assert "closed_at 2026-01-05 is before created_at" in reasons[7]
    assert "lost_reason is empty" in reasons[8]
    assert "no pipeline named 'Nope'" in reasons[9]
    assert "appears more than once" in reasons[10] and "line 2" in reasons[10]
    assert "must not be negative" in reasons[11]
    assert "created_at '05/01/2026'" in reasons[12]
    assert "'Aliens' is not one of the pipeline's lost reasons" in reasons[13]

    pipeline = app.get_pipeline(app.pipeline_ids()[0])
    won = app.get_deal(deal_id_for(pipeline.id, "A-2"))
    assert (won.status, won.value, won.owner, won.stage_id) == (
        "won",
        Decimal("5000.50"),
        "raj",
        "quote-sent",
    )
    assert won.created_at == datetime(2026, 1, 10, tzinfo=UTC)
    assert won.closed_at == datetime(2026, 2, 1, 10, 30, tzinfo=UTC)
    lost = app.get_deal(deal_id_for(pipeline.id, "A-3"))
    assert (lost.status, lost.lost_reason) == ("lost", "Price")
    first = app.get_deal(deal_id_for(pipeline.id, "A-1"))
    assert (first.stage_id, first.title) == ("deal-created", "ACME renewal")
    actors = {
        decode(app.mapper, n).actor
        for batch in app.iter_notifications()
        for n in batch
        if n.topic.endswith("DealCreated")
    }
    assert actors == {"import"}


def test_reimporting_appends_nothing_and_a_changed_row_appends_only_the_difference(
    app: DealtrailApplication,
) -> None:
    import_deals_text(app, HEADER + GOOD)
    head = app.head_position()

    again = import_deals_text(app, HEADER + GOOD)
    assert (again.created, again.changed, again.unchanged, again.events) == (0, 0, 3, 0)
    assert app.head_position() == head

    changed = GOOD.replace("A-1,ACME renewal,Sales,,open,1200", "A-1,ACME renewal,Sales,,open,1500")
    changed = changed.replace(
        ",lost,800,rita,2026-01-12,2026-03-01,Price", ",won,800,rita,2026-01-12,2026-03-05,"
    )
    report = import_deals_text(app, HEADER + changed)
    assert (report.created, report.changed, report.unchanged) == (0, 2, 1)
    new = [
        (decode(app.mapper, n).event_type, decode(app.mapper, n).payload)
        for batch in app.iter_notifications(head + 1)
        for n in batch
    ]
    assert [t for t, _ in new] == ["DealUpdated", "DealReopened", "DealWon"]
    assert new[0][1]["changes"] == {"value": Decimal(1500)}


def test_strict_import_with_a_bad_row_writes_nothing(app: DealtrailApplication) -> None:
    head = app.head_position()
    report = import_deals_text(app, HEADER + GOOD + BAD, strict=True)
    assert not report.written
    assert len(report.rejected) == 9
    assert app.head_position() == head

    report = import_deals_text(app, HEADER + GOOD, strict=True)
    assert report.written and report.created == 3


def test_a_file_without_the_needed_columns_is_refused_as_a_whole(
    app: DealtrailApplication,
) -> None:
    with pytest.raises(ImportAborted, match="missing column"):
        import_deals(app, read_csv_text("external_id,title\nx,y\n", "short.csv"))


def test_the_command_line_import_reports_bad_rows_on_stderr_and_exits_with_1(
    backend: Backend,
    app: DealtrailApplication,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend.point_cli_at(monkeypatch, tmp_path / "data")
    path = tmp_path / "deals.csv"
    path.write_text(HEADER + GOOD + BAD.splitlines(keepends=True)[0])

    assert cli(["import", "deals", str(path), "--strict", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "rejected deals.csv:5: stage 'Nowhere'" in captured.err
    assert app.head_position() == 1  # only the pipeline

    assert cli(["import", "deals", str(path), "--quiet"]) == 1
    assert "imported 3 deal(s) (3 new, 0 changed), 0 unchanged, 1 rejected" in (
        capsys.readouterr().out
    )
    assert cli(["import", "deals", str(path), "--quiet", "--actor", "migration"]) == 1
    assert "3 unchanged" in capsys.readouterr().out
