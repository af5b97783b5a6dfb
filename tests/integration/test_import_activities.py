"""Importing deals with their activities (``--activities``): in time order with the deal's
own history, idempotent, only the difference on a changed row, bad rows reported, and a
pipeline's checklist rule holding for the importer as for the API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from libs.application.app import DealtrailApplication
from libs.application.handlers import handle
from libs.application.importing import ImportReport
from libs.application.records import decode
from libs.domain.commands import DefinePipeline
from libs.domain.deal import deal_id_for
from libs.domain.pipeline import default_template
from services.cli import main as cli
from services.importer.common import read_csv_text
from services.importer.generic import import_deals
from services.runtime.stores import open_application
from tests.conftest import Backend, TestClock
from tests.integration.test_import_generic import ANN

DEALS = (
    "external_id,title,pipeline,stage,status,value,owner,created_at,closed_at,lost_reason\n"
    "A-1,ACME renewal,Sales,,open,1200,rita,2026-01-05,,\n"
    "A-2,Globex upsell,Sales,Quote sent,won,5000,raj,2026-01-10,2026-02-01T10:30:00Z,\n"
)
ACTIVITIES_HEADER = (
    "deal_external_id,external_id,type,subject,due_at,status,completed_at,created_at,outcome\n"
)
ACTIVITIES = (
    "A-1,crm-1,call,Intro,2026-01-06T10:00:00Z,done,2026-01-06T11:00:00Z,,went well\n"
    "A-1,,task,Send quote,2026-06-10T09:00:00Z,,,,\n"
    "A-2,crm-2,meeting,Kickoff,2026-01-20T15:00:00Z,done,,,\n"
    "A-2,crm-3,email,Thanks,2026-02-05T09:00:00Z,open,,2026-02-02,\n"
)


@pytest.fixture
def app(backend: Backend, tmp_path: Path, clock: TestClock) -> Iterator[DealtrailApplication]:
    application = open_application(backend.settings(tmp_path / "data"), clock)
    template = default_template()
    for name, stages, rule in (
        ("Sales", template["stages"], False),
        (
            "Gated",
            [
                {
                    "name": "Lead",
                    "probability": 10,
                    "checklist": [{"title": "Qualify", "type": "call"}],
                },
                {"name": "Offer", "probability": 50},
            ],
            True,
        ),
    ):
        handle(
            application,
            DefinePipeline(
                actor=ANN,
                name=name,
                currency="EUR",
                stages=stages,
                lost_reasons=template["lost_reasons"],
                require_checklist_before_leaving=rule,
                occurred_at=datetime(2025, 12, 1, tzinfo=UTC),
            ),
        )
    yield application
    application.close()


def run(app: DealtrailApplication, deals: str, activities: str | None = None) -> ImportReport:
    return import_deals(
        app,
        read_csv_text(deals, "deals.csv"),
        activities=read_csv_text(activities, "activities.csv") if activities else None,
    )


def events_of(app: DealtrailApplication, aggregate: Any, after: int = 0) -> list[Any]:
    return [
        decode(app.mapper, n)
        for batch in app.iter_notifications(after + 1)
        for n in batch
        if str(n.originator_id) == str(aggregate)
    ]


def deal_of(app: DealtrailApplication, pipeline: str, external_id: str) -> Any:
    found = next(
        app.get_pipeline(p) for p in app.pipeline_ids() if app.get_pipeline(p).name == pipeline
    )
    return app.get_deal(deal_id_for(found.id, external_id))


def test_activities_join_their_deals_history_in_time_order_and_a_rerun_adds_nothing(
    app: DealtrailApplication,
) -> None:
    report = run(app, DEALS, ACTIVITIES_HEADER + ACTIVITIES)

    assert (report.created, report.rejected) == (2, [])
    won = deal_of(app, "Sales", "A-2")
    history = [(e.event_type, e.occurred_at) for e in events_of(app, won.id)]
    assert history == [
        ("DealCreated", datetime(2026, 1, 10, tzinfo=UTC)),
        ("ActivityScheduled", datetime(2026, 1, 10, tzinfo=UTC)),  # planned at creation
        ("ActivityCompleted", datetime(2026, 1, 20, 15, tzinfo=UTC)),  # when it was due
        ("DealWon", datetime(2026, 2, 1, 10, 30, tzinfo=UTC)),
        ("ActivityScheduled", datetime(2026, 2, 2, tzinfo=UTC)),  # a follow-up after the win
    ]
    open_deal = deal_of(app, "Sales", "A-1")
    by_subject = {a.subject: a for a in open_deal.activities}
    assert (by_subject["Intro"].status, by_subject["Intro"].outcome) == ("done", "went well")
    assert by_subject["Intro"].completed_at == datetime(2026, 1, 6, 11, tzinfo=UTC)
    assert (by_subject["Send quote"].status, by_subject["Send quote"].assignee) == ("open", "rita")
    assert {a.assignee for a in won.activities} == {"raj"}

    head = app.head_position()
    again = run(app, DEALS, ACTIVITIES_HEADER + ACTIVITIES)
    assert (again.created, again.changed, again.unchanged, again.events) == (0, 0, 2, 0)
    assert again.rejected == []
    assert app.head_position() == head


def test_a_changed_activity_row_appends_only_the_difference(app: DealtrailApplication) -> None:
    run(app, DEALS, ACTIVITIES_HEADER + ACTIVITIES)
    head = app.head_position()
    changed = ACTIVITIES.replace(
        "A-2,crm-3,email,Thanks,2026-02-05T09:00:00Z,open,,2026-02-02,",
        "A-2,crm-3,email,Thanks,2026-02-06T09:00:00Z,done,2026-02-07,2026-02-02,replied",
    )

    report = run(app, DEALS, ACTIVITIES_HEADER + changed)

    assert (report.changed, report.unchanged, report.rejected) == (1, 1, [])
    new = events_of(app, deal_of(app, "Sales", "A-2").id, head)
    assert [e.event_type for e in new] == ["ActivityUpdated", "ActivityCompleted"]
    assert new[0].payload["changes"] == {"due_at": datetime(2026, 2, 6, 9, tzinfo=UTC)}
    assert new[1].payload["outcome"] == "replied"

    # a done activity cannot be changed by an import: the deal's row is refused
    reopened = changed.replace("A-1,crm-1,call,Intro", "A-1,crm-1,meeting,Intro")
    report = run(app, DEALS, ACTIVITIES_HEADER + reopened)
    (rejected,) = report.rejected
    assert (rejected.file, rejected.line) == ("deals.csv", 2)
    assert "'crm-1' is done" in rejected.reason


def test_bad_activity_rows_are_reported_with_their_line_and_reason(
    app: DealtrailApplication,
) -> None:
    bad = (
        "A-9,x,call,Orphan,2026-01-06,,,,\n"  # line 6: no such deal row
        "A-1,x2,call,,2026-01-06,,,,\n"  # line 7: no subject
        "A-1,x3,call,Late,2026-01-06,maybe,,,\n"  # line 8: bad status
        "A-1,x4,call,Late,06/01/2026,,,,\n"  # line 9: bad date
        "A-1,crm-1,call,Twice,2026-01-06,,,,\n"  # line 10: the same activity again
        "A-1,x5,call,Open,2026-01-06,,2026-01-07,,\n"  # line 11: completed but open
    )

    report = run(app, DEALS, ACTIVITIES_HEADER + ACTIVITIES + bad)

    reasons = {(e.file, e.line): e.reason for e in report.rejected}
    assert sorted(line for _, line in reasons) == [6, 7, 8, 9, 10, 11]
    assert "no deal row with external id 'A-9'" in reasons[("activities.csv", 6)]
    assert "subject is empty" in reasons[("activities.csv", 7)]
    assert "status 'maybe'" in reasons[("activities.csv", 8)]
    assert "due_at '06/01/2026'" in reasons[("activities.csv", 9)]
    assert "appears twice" in reasons[("activities.csv", 10)]
    assert "completed_at is set but status is open" in reasons[("activities.csv", 11)]
    assert report.created == 2  # the deals and their good activities are in

    r = run(app, DEALS, ACTIVITIES_HEADER + "A-1,y,lunch,Food,2026-01-06,,,,\n")
    (refused,) = r.rejected  # a rule of the domain refuses the whole deal row
    assert (refused.file, refused.line) == ("deals.csv", 2)
    assert "type must be one of" in refused.reason


def test_a_pipeline_with_checklists_holds_imported_deals_in_their_stage_as_it_holds_the_api(
    app: DealtrailApplication,
) -> None:
    header = "external_id,title,pipeline,stage,status,value,owner,created_at,closed_at\n"
    deals = (
        "G-1,Gated open,Gated,Lead,open,100,rita,2026-01-05,\n"
        "G-2,Gated won,Gated,Lead,won,100,rita,2026-01-05,2026-01-09\n"
    )

    report = run(app, header + deals)

    assert report.created == 1
    (refused,) = report.rejected
    assert refused.line == 3 and "open checklist item(s): 'Qualify'" in refused.reason
    held = deal_of(app, "Gated", "G-1")
    assert [a.subject for a in held.open_checklist_items()] == ["Qualify"]

    moved = run(app, header + deals.replace("Gated,Lead,open", "Gated,Offer,open"))
    assert any("checklist" in e.reason and e.line == 2 for e in moved.rejected)
    assert deal_of(app, "Gated", "G-1").stage_id == "lead"


def test_the_command_line_takes_the_activities_file(
    backend: Backend,
    app: DealtrailApplication,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend.point_cli_at(monkeypatch, tmp_path / "data")
    deals, activities = tmp_path / "deals.csv", tmp_path / "activities.csv"
    deals.write_text(DEALS)
    activities.write_text(ACTIVITIES_HEADER + ACTIVITIES)

    assert cli(["import", "deals", str(deals), "--activities", str(activities), "--quiet"]) == 0
    assert "imported 2 deal(s) (2 new, 0 changed)" in capsys.readouterr().out
    head = app.head_position()
    assert cli(["import", "deals", str(deals), "--activities", str(activities), "--quiet"]) == 0
    assert "2 unchanged" in capsys.readouterr().out
    assert app.head_position() == head
    assert len(deal_of(app, "Sales", "A-1").activities) == 2
