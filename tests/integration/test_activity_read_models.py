"""Activities in the read models, against a scripted history with backdated times: the
rows of each activity and its deal's summary (``current_pipeline``), each activity's
states over time and the deals' first responses (``analytics``), the answers built on
them, and a rebuild that gives the same tables."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import select

from libs.application.handlers import handle
from libs.domain.commands import (
    AdvanceDeal,
    CancelActivity,
    CommandResult,
    CompleteActivity,
    CreateDeal,
    DefinePipeline,
    ScheduleActivity,
    UpdateActivity,
)
from libs.domain.pipeline import default_template
from services.projections.catalog import all_projections
from services.projections.current_pipeline.queries import ActivityFilter
from services.projections.read_models import ReadModels
from services.projections.rebuild import rebuild
from services.projections.source import EventSource
from services.queries import deals
from services.queries.activities import activity_page
from tests.conftest import Backend, TestClock
from tests.integration.test_read_models import (
    ANN,
    MAX,
    RITA,
    Stores,
    close_stores,
    open_stores,
    states,
    t,
)
from tests.integration.test_rebuild import assert_same_tables, snapshot


@pytest.fixture
async def stores(backend: Backend, tmp_path: Path, clock: TestClock) -> AsyncIterator[Stores]:
    opened = await open_stores(backend, tmp_path / "data", clock, batch_size=3)
    try:
        yield opened
    finally:
        await close_stores(opened)


class History:
    """The scripted history: who did what, and the positions it left."""

    def __init__(self, stores: Stores) -> None:
        self.app = app = stores.app
        stages = default_template()["stages"]
        stages[1] = {
            **stages[1],
            "checklist": [{"title": "Send the agenda", "type": "email", "due_in_days": 1}],
        }
        self.pipeline = handle(
            app,
            DefinePipeline(
                actor=ANN,
                name="New business",
                currency="EUR",
                stages=stages,
                lost_reasons=["Price"],
                occurred_at=t(1, 1),
            ),
        ).id
        self.deal = self.create("ACME", t(3, 1, 9))
        self.idle = self.create("Idle", t(3, 2))
        deal = {"deal_id": self.deal}
        self.call = self.run(
            ScheduleActivity(
                actor=RITA,
                type="call",
                subject="Discovery",
                due_at=t(3, 5, 10),
                occurred_at=t(3, 2, 9),
                **deal,
            )
        )
        self.task = self.run(
            ScheduleActivity(
                actor=MAX,
                type="task",
                subject="Deck",
                due_at=t(3, 3, 10),
                assignee="raj",
                occurred_at=t(3, 2, 10),
                **deal,
            )
        )
        self.entered = self.run(
            AdvanceDeal(actor=RITA, stage="demo-or-meeting", occurred_at=t(3, 4, 9), **deal)
        )
        self.completed = self.run(
            CompleteActivity(
                actor=MAX,
                activity_id=self.task.id,
                outcome="sent",
                occurred_at=t(3, 4, 12),
                **deal,
            )
        )
        self.rescheduled = self.run(
            UpdateActivity(
                actor=RITA,
                activity_id=self.call.id,
                due_at=t(3, 8, 10),
                occurred_at=t(3, 6, 9),
                **deal,
            )
        )
        (agenda,) = app.get_deal(self.deal).open_checklist_items()  # due a day after entry
        self.agenda = agenda.id
        self.cancelled = self.run(
            CancelActivity(
                actor=RITA,
                activity_id=self.agenda,
                reason="met already",
                occurred_at=t(3, 6, 10),
                **deal,
            )
        )

    def create(self, title: str, when: datetime) -> UUID:
        command = CreateDeal(
            actor=MAX,
            pipeline_id=self.pipeline,
            title=title,
            value="1000",
            owner="rita",
            occurred_at=when,
        )
        return handle(self.app, command).id

    def run(self, command: Any) -> CommandResult:
        result: CommandResult = handle(self.app, command)
        return result


@pytest.fixture
async def history(stores: Stores) -> History:
    scripted = History(stores)
    await stores.worker.catch_up()
    return scripted


async def rows(stores: Stores, projection: str, key: str) -> list[dict[str, Any]]:
    generation = (await states(stores.engine))[projection].generation
    table = stores.projections[projection].tables(generation)[key]
    async with stores.engine.connect() as conn:
        result = await conn.execute(select(table).order_by(*table.primary_key.columns))
        return [dict(r) for r in result.mappings().all()]


async def test_each_activity_has_one_row_as_it_is_now_and_its_deal_a_summary(
    stores: Stores, history: History
) -> None:
    found = {r["activity_id"]: r for r in await rows(stores, "current_pipeline", "activities")}
    call, task, agenda = (
        found[str(history.call.id)],
        found[str(history.task.id)],
        found[history.agenda],
    )

    assert (call["status"], call["due_at"], call["changed_at"]) == ("open", t(3, 8, 10), t(3, 6, 9))
    assert call["position"] == history.rescheduled.position
    assert (task["status"], task["completed_at"], task["outcome"]) == ("done", t(3, 4, 12), "sent")
    assert task["assignee"] == "raj" and task["position"] == history.completed.position
    assert (agenda["status"], agenda["cancel_reason"]) == ("cancelled", "met already")
    assert (agenda["subject"], agenda["due_at"]) == ("Send the agenda", t(3, 5, 9))
    assert (agenda["checklist_stage_id"], agenda["checklist_version"]) == ("demo-or-meeting", 1)
    assert {r["deal_id"] for r in found.values()} == {str(history.deal)}
    assert {r["pipeline_id"] for r in found.values()} == {str(history.pipeline)}

    deal = next(
        r
        for r in await rows(stores, "current_pipeline", "deals")
        if r["deal_id"] == str(history.deal)
    )
    assert deal["open_activities"] == 1
    assert deal["open_due"] == [t(3, 8, 10).isoformat()]
    assert deal["next_activity"]["id"] == str(history.call.id)
    assert deal["last_completed_activity"]["id"] == str(history.task.id)
    # sales activity moves the deal's "last activity" clock
    assert deal["last_activity_at"] == t(3, 6, 10)


async def test_answers_count_overdue_activities_at_the_moment_they_are_asked(
    stores: Stores, history: History
) -> None:
    models = ReadModels(stores.engine, wait_seconds=5)

    before = await deals.deal_now(models, history.deal, None, t(3, 8, 9))
    after = await deals.deal_now(models, history.deal, None, t(3, 8, 11))
    assert (before["overdue_activities"], before["next_activity"]["overdue"]) == (0, False)
    assert (after["overdue_activities"], after["next_activity"]["overdue"]) == (1, True)

    overdue = await activity_page(
        models,
        ActivityFilter(status="overdue", now=t(3, 9)),
        after=None,
        limit=10,
        min_position=None,
    )
    assert [a["id"] for a in overdue.data] == [str(history.call.id)]
    raj = await activity_page(
        models,
        ActivityFilter(assignee="raj", now=t(3, 9)),
        after=None,
        limit=10,
        min_position=None,
    )
    assert [(a["subject"], a["status"], a["overdue"]) for a in raj.data] == [
        ("Deck", "done", False)
    ]

    idle = await deals.deal_page(
        models,
        pipeline_id=history.pipeline,
        stage=None,
        status=None,
        owner=None,
        updated_since=None,
        after=None,
        limit=10,
        min_position=None,
        now=t(3, 9),
        has_next_activity=False,
    )
    assert [d["id"] for d in idle.data] == [str(history.idle)]


async def test_the_history_keeps_each_activity_state_and_the_deal_as_of_a_moment_shows_them(
    stores: Stores, history: History
) -> None:
    states_of_call = [
        (r["valid_from"], r["valid_to"], r["due_at"])
        for r in await rows(stores, "analytics", "activities")
        if r["activity_id"] == str(history.call.id)
    ]
    assert states_of_call == [
        (t(3, 2, 9), t(3, 6, 9), t(3, 5, 10)),
        (t(3, 6, 9), None, t(3, 8, 10)),
    ]
    # activity events add nothing to the deal's own history
    deal_states = [
        r for r in await rows(stores, "analytics", "history") if r["deal_id"] == str(history.deal)
    ]
    assert len(deal_states) == 2  # created, advanced

    models = ReadModels(stores.engine, wait_seconds=5)
    then = await deals.deal_as_of(models, history.deal, t(3, 5, 12), None)
    shown = {a["subject"]: (a["status"], a["due_at"], a["overdue"]) for a in then["activities"]}
    assert shown == {
        "Discovery": ("open", t(3, 5, 10).isoformat(), True),
        "Deck": ("done", t(3, 3, 10).isoformat(), False),
        "Send the agenda": ("open", t(3, 5, 9).isoformat(), True),
    }
    earlier = await deals.deal_as_of(models, history.deal, t(3, 2, 9, 30), None)
    assert [a["subject"] for a in earlier["activities"]] == ["Discovery"]


async def test_each_deal_keeps_its_first_response(stores: Stores, history: History) -> None:
    responses = {r["deal_id"]: r for r in await rows(stores, "analytics", "responses")}

    acme, idle = responses[str(history.deal)], responses[str(history.idle)]
    assert (acme["created_at"], acme["responded_at"]) == (t(3, 1, 9), t(3, 4, 12))
    assert (acme["activity_id"], acme["owner"]) == (str(history.task.id), "rita")
    assert (idle["responded_at"], idle["activity_id"]) == (None, None)


async def test_a_rebuild_gives_the_activity_tables_built_incrementally(
    stores: Stores, history: History
) -> None:
    incremental = await snapshot(stores.engine)
    assert incremental["current_pipeline.activities"] and incremental["analytics.activities"]

    await rebuild(stores.engine, EventSource(stores.app), all_projections(), batch_size=4)

    assert_same_tables(await snapshot(stores.engine), incremental)
