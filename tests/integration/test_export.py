"""Exporting the event log as JSON Lines: every event, in position order, within bounds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.cli import main as cli
from services.demo.generator import generate
from services.runtime.stores import open_application
from tests.conftest import Backend

KEYS = {
    "position",
    "aggregate_id",
    "aggregate_type",
    "type",
    "version",
    "actor",
    "occurred_at",
    "recorded_at",
    "payload",
    # the hash chain
    "topic",
    "state",
    "prev_position",
    "prev_hash",
    "hash",
}


@pytest.fixture
def stored_positions(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """A generated history in the backend; the command line pointed at it."""
    app = open_application(backend.settings(tmp_path / "data"))
    try:
        generate(app, deals=150, seed=21, end=datetime(2026, 5, 1, tzinfo=UTC))
        positions = [n.id for batch in app.iter_notifications(batch_size=300) for n in batch]
    finally:
        app.close()
    backend.point_cli_at(monkeypatch, tmp_path / "data")
    return positions


def parse(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert all(line for line in lines)
    return [json.loads(line) for line in lines]


def test_export_writes_every_event_once_in_position_order(
    stored_positions: list[int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "events.jsonl"
    assert cli(["export", "events", "--output", str(target), "--quiet"]) == 0
    events = parse(target.read_text(encoding="utf-8"))

    assert [e["position"] for e in events] == stored_positions
    # class_version: the shape the event was stored in, when above 1 (as stored)
    assert all(set(e) - {"class_version"} == KEYS for e in events)
    assert events[0]["type"] == "PipelineDefined"
    assert events[0]["class_version"] == 2
    created = next(e for e in events if e["type"] == "DealCreated")
    assert created["class_version"] == 2
    assert not any("class_version" in e for e in events if e["type"] == "DealWon")
    assert created["aggregate_type"] == "Deal"
    assert created["occurred_at"].endswith("+00:00") and created["recorded_at"]
    assert isinstance(created["payload"]["value"], str)  # decimals as strings
    assert f"exported {len(stored_positions)} event(s)" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.partial"))


def test_export_respects_from_and_to_positions_and_writes_to_stdout_by_default(
    stored_positions: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    low, high = stored_positions[10], stored_positions[60]
    args = ["export", "events", "--from-position", str(low), "--to-position", str(high)]
    assert cli([*args, "--quiet"]) == 0
    events = parse(capsys.readouterr().out)
    assert [e["position"] for e in events] == [p for p in stored_positions if low <= p <= high]

    assert cli(["export", "events", "--from-position", str(stored_positions[-1] + 1)]) == 0
    assert capsys.readouterr().out == ""
