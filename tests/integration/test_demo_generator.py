"""The demo generator: the same seed gives the same events; the history looks real."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from libs.application.app import DealtrailApplication
from libs.application.records import EventRecord, decode
from services.demo.generator import DemoError, generate
from services.runtime.stores import open_application
from tests.conftest import Backend, TestClock

END = datetime(2026, 5, 1, tzinfo=UTC)
DEALS = 400


def records(app: DealtrailApplication) -> list[EventRecord]:
    return [decode(app.mapper, n) for batch in app.iter_notifications() for n in batch]


def comparable(record: EventRecord) -> tuple[Any, ...]:
    """Everything but the recording time (and the position, which is the list index)."""
    return (
        record.aggregate_id,
        record.aggregate_type,
        record.event_type,
        record.version,
        record.actor,
        record.occurred_at,
        record.payload,
    )


@pytest.fixture
def app(backend: Backend, tmp_path: Path, clock: TestClock) -> Iterator[DealtrailApplication]:
    application = open_application(backend.settings(tmp_path / "data"), clock)
    yield application
    application.close()


def test_the_same_seed_writes_the_same_events_into_two_databases(
    app: DealtrailApplication, backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    first = generate(app, deals=DEALS, seed=11, end=END)
    other_settings = Backend("sqlite", f"sqlite:///{tmp_path / 'other.db'}").settings(
        tmp_path / "other"
    )
    other = open_application(other_settings, clock)
    try:
        second = generate(other, deals=DEALS, seed=11, end=END)
        assert (first.deals, first.events) == (second.deals, second.events)
        assert first.pipelines == second.pipelines
        assert [comparable(r) for r in records(app)] == [comparable(r) for r in records(other)]
    finally:
        other.close()

    third = open_application(
        Backend("sqlite", f"sqlite:///{tmp_path / 'third.db'}").settings(tmp_path / "third"),
        clock,
    )
    try:
        generate(third, deals=50, seed=12, end=END)
        payloads = [r.payload for r in records(third)]
        assert payloads != [r.payload for r in records(app)][: len(payloads)]
    finally:
        third.close()


def test_generated_history_has_moves_back_wins_losses_reopenings_and_stale_deals(
    app: DealtrailApplication,
) -> None:
    result = generate(app, deals=DEALS, seed=5, end=END, months=9)
    history = records(app)
    assert result.events == len(history)
    assert result.deals == DEALS
    types = Counter(r.event_type for r in history)
    assert types["PipelineDefined"] == 3
    assert types["DealCreated"] == DEALS
    for kind in ("DealWon", "DealLost", "DealReopened", "DealUpdated", "OwnerChanged"):
        assert types[kind] > 0, kind
    assert types["TeamAssigned"] == 3
    directions = Counter(r.payload["direction"] for r in history if r.event_type == "StageAdvanced")
    assert directions["forward"] > directions["backward"] > 0
    reasons = Counter(r.payload["reason"] for r in history if r.event_type == "DealLost")
    assert len(reasons) >= 4
    teams = {r.payload["team"] for r in history if r.event_type == "OwnerRegistered"}
    regions = {r.payload["region"] for r in history if r.event_type == "OwnerRegistered"}
    assert len(teams) == 5 and len(regions) == 3

    times = [r.occurred_at for r in history if r.occurred_at is not None]
    assert max(times) < END
    assert min(times) < END - timedelta(days=9 * 30 - 10)
    last_activity: dict[object, datetime] = {}
    status: dict[object, str] = {}
    for r in history:
        if r.aggregate_type == "Deal" and r.occurred_at is not None:
            last_activity[r.aggregate_id] = r.occurred_at
            if r.event_type in ("DealCreated", "DealReopened"):
                status[r.aggregate_id] = "open"
            elif r.event_type in ("DealWon", "DealLost"):
                status[r.aggregate_id] = "closed"
    stale = [
        d for d, s in status.items() if s == "open" and last_activity[d] < END - timedelta(days=60)
    ]
    assert len(stale) >= DEALS // 50
    assert result.showcase_deal is not None


def test_generating_the_same_seed_twice_into_one_database_is_refused(
    app: DealtrailApplication,
) -> None:
    generate(app, deals=5, seed=3, end=END)
    head = app.head_position()
    with pytest.raises(DemoError, match="seed 3"):
        generate(app, deals=5, seed=3, end=END)
    assert app.head_position() == head


def test_generated_history_has_held_calls_and_meetings_planned_next_steps_and_checklists(
    app: DealtrailApplication,
) -> None:
    result = generate(app, deals=DEALS, seed=5, end=END, months=9)
    history = records(app)
    types = Counter(r.event_type for r in history)
    for kind in ("ActivityScheduled", "ActivityCompleted", "ChecklistApplied", "ChecklistWaived"):
        assert types[kind] > 0, kind
    held = Counter(
        r.payload["activity_type"] for r in history if r.event_type == "ActivityScheduled"
    )
    assert held["call"] > held["meeting"] > 0
    pipeline = app.get_pipeline(result.pipelines["Renewals"])
    assert pipeline.require_checklist_before_leaving
    assert [len(s.checklist) for s in pipeline.stages] == [2, 1, 1]

    # no deal ever left a stage (moved or won) with an item of that stage's checklist open
    open_items: dict[object, dict[str, str]] = {}  # deal -> open item -> its stage
    left = 0
    for r in history:
        if r.aggregate_type != "Deal":
            continue
        items = open_items.setdefault(r.aggregate_id, {})
        p = r.payload
        if r.event_type == "ChecklistApplied":
            items.update({str(i["activity_id"]): p["stage_id"] for i in p["items"]})
        elif r.event_type in ("ActivityCompleted", "ActivityCancelled"):
            items.pop(str(p["activity_id"]), None)
        elif r.event_type == "ChecklistWaived":
            for waived in p["activity_ids"]:
                del items[str(waived)]
        elif r.event_type in ("StageAdvanced", "DealWon") and p.get("cause") is None:
            here = p.get("from_stage_id", p.get("stage_id"))
            assert here not in items.values(), (r.aggregate_id, r.event_type, items)
            left += here in {s.id for s in pipeline.stages}
    assert left > 0

    # open deals end with next steps, some of them overdue by the end of the history
    planned = [
        a
        for deal_id in {r.aggregate_id for r in history if r.event_type == "DealCreated"}
        for a in app.get_deal(deal_id).activities
        if a.status == "open" and a.checklist_stage_id is None
    ]
    overdue = sum(a.is_overdue(END) for a in planned)
    assert 0 < overdue < len(planned)
