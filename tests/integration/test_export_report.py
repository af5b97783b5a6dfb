"""`dealtrail export report NAME`: any report, as CSV or JSON, from the read models."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.application.handlers import handle
from libs.domain.actors import Actor, Role
from libs.domain.commands import AdvanceDeal, CreateDeal, DefinePipeline, LoseDeal, WinDeal
from libs.domain.pipeline import default_template
from services.cli import main as cli
from services.runtime.stores import open_application
from tests.conftest import Backend

ADMIN = Actor("ann", Role.ADMIN)
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def pipeline_id(backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Three deals: two won in Negotiation, one lost for Price in Quote sent."""
    app = open_application(backend.settings(tmp_path / "data"))
    try:
        pid = handle(
            app,
            DefinePipeline(
                actor=ADMIN, name="Sales", currency="EUR", occurred_at=START, **default_template()
            ),
        ).id
        for n, (stage, outcome) in enumerate(
            [("negotiation", "won"), ("negotiation", "won"), ("quote-sent", "lost")]
        ):
            at = START + timedelta(days=n)
            deal = handle(
                app,
                CreateDeal(
                    actor=ADMIN, pipeline_id=pid, title=f"D{n}", value="100", occurred_at=at
                ),
            ).id
            handle(
                app,
                AdvanceDeal(
                    deal_id=deal, actor=ADMIN, stage=stage, occurred_at=at + timedelta(days=1)
                ),
            )
            if outcome == "won":
                handle(app, WinDeal(deal_id=deal, actor=ADMIN, occurred_at=at + timedelta(days=2)))
            else:
                handle(
                    app,
                    LoseDeal(
                        deal_id=deal,
                        actor=ADMIN,
                        reason="Price",
                        occurred_at=at + timedelta(days=2),
                    ),
                )
    finally:
        app.close()
    backend.point_cli_at(monkeypatch, tmp_path / "data")
    return str(pid)


def test_a_report_exports_as_csv_with_the_rows_the_api_gives(
    pipeline_id: str, tmp_path: Path
) -> None:
    target = tmp_path / "win-rate.csv"
    code = cli(
        [
            "export",
            "report",
            "win-rate",
            "--pipeline-id",
            pipeline_id,
            "--catch-up",
            "--output",
            str(target),
        ]
    )

    assert code == 0
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    overall = next(r for r in rows if r["dimension"] == "overall")
    # won: D0, D1; lost: D2 -> 2 / 3
    assert (overall["won"], overall["lost"]) == ("2", "1")
    assert float(overall["win_rate"]) == pytest.approx(2 / 3)
    by_stage = {r["key"]: (r["won"], r["lost"]) for r in rows if r["dimension"] == "stage"}
    assert by_stage == {"Negotiation": ("2", "0"), "Quote sent": ("0", "1")}


def test_a_report_exports_as_json_with_its_period_applied(
    pipeline_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Closes happen on START+2d (D0), +3d (D1), +4d (D2); the period keeps D1 and D2.
    code = cli(
        [
            "export",
            "report",
            "lost-reasons",
            "--pipeline-id",
            pipeline_id,
            "--catch-up",
            "--format",
            "json",
            "--from",
            (START + timedelta(days=3)).isoformat(),
            "--to",
            (START + timedelta(days=10)).isoformat(),
        ]
    )

    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["report"] == "lost-reasons"
    assert report["summary"] == {"lost": 1, "lost_value": {"EUR": "100.00"}}
    reasons = [r for r in report["rows"] if r["dimension"] == "reason"]
    assert [(r["reason"], r["count"]) for r in reasons] == [("Price", 1)]


def test_a_report_that_needs_a_pipeline_says_so(pipeline_id: str) -> None:
    assert cli(["export", "report", "funnel", "--catch-up"]) == 2
