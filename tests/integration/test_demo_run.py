"""``dealtrail demo run`` (what ``make demo`` runs): fill once, print the dashboard's address,
a token to sign in with and requests, then serve the API."""

from __future__ import annotations

import re
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from services.cli import main as cli
from services.runtime.stores import open_application
from tests.conftest import Backend
from tests.started import started_command


def test_demo_run_fills_an_empty_store_once_and_prints_a_token_and_requests(
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    backend.point_cli_at(monkeypatch, data)
    monkeypatch.setenv("DEALTRAIL_API_KEYS", "")
    argv = ["demo", "run", "--deals", "40", "--seed", "7", "--port", "8123", "--no-serve"]

    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "Generated 40 deals" in out
    token = (data / "admin-token").read_text().strip()
    assert f"Admin token: {token}" in out
    # the dashboard's address comes first, then the token to sign in with
    assert re.search(r"^Dashboard: http://127\.0\.0\.1:8123/ ", out, re.MULTILINE), out
    assert out.index("Dashboard:") < out.index("Admin token:")
    board = re.search(r"curl -s http://127\.0\.0\.1:8123/v1/pipelines/([0-9a-f-]{36})/board", out)
    history = re.search(r"/v1/deals/([0-9a-f-]{36})/history", out)
    assert board and history, out
    application = open_application(backend.settings(data))
    try:
        assert UUID(board.group(1)) in application.pipeline_ids()
        deal = application.get_deal(UUID(history.group(1)))
        assert str(deal.pipeline_id) == board.group(1)
        head = application.head_position()
    finally:
        application.close()

    assert cli(argv) == 0  # a second run uses the store as it is
    again = capsys.readouterr().out
    assert f"already holds {head:,} events" in again
    assert "Generated" not in again
    assert f"Admin token: {token}" in again


def test_demo_run_serves_the_api_on_the_filled_store(backend: Backend, tmp_path: Path) -> None:
    command = ["demo", "run", "--deals", "25", "--seed", "3"]
    with started_command(backend, tmp_path, command, DEALTRAIL_API_KEYS="") as started:
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        log = started.log_text()
        assert f"Admin token: {token}" in log
        assert "Dealtrail on http://127.0.0.1:" in log
        with httpx.Client(base_url=started.base_url, timeout=10) as client:
            r = client.get("/v1/pipelines", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 3
