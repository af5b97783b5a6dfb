"""A pipeline that changed over time keeps all of its history in every read model.

A stage is renamed, another renamed and then removed with its open deals moved out; a
full projection rebuild must then give exactly the tables the incremental worker built,
with every stage duration (those of the removed stage too) still in the report, and the
audit history must show each stage under the name it had when each event happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.handlers import handle
from libs.domain.commands import (
    AdvanceDeal,
    ChangeStage,
    CreateDeal,
    DefinePipeline,
    LoseDeal,
    MoveDeal,
    RemoveStage,
    ReopenDeal,
    UpdateDeal,
    WinDeal,
)
from libs.domain.pipeline import default_template
from services.projections.audit_history import queries as audit_history
from services.projections.catalog import all_projections
from services.projections.read_models import ReadModels
from services.projections.rebuild import drop_old_generations, rebuild
from services.projections.source import EventSource
from services.projections.stage_durations import queries as stage_durations
from services.queries.reports import ReportContext, ReportParams
from services.queries.reports.durations import stage_durations_report
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
    table_rows,
)

DAY = 86400.0


@pytest.fixture
async def stores(backend: Backend, tmp_path: Path, clock: TestClock) -> AsyncIterator[Stores]:
    # Batches of 3 events: batch boundaries fall inside the removal's multi-event save.
    opened = await open_stores(backend, tmp_path / "data", clock, batch_size=3)
    try:
        yield opened
    finally:
        await close_stores(opened)


@dataclass
class History:
    """Ids of what the scripted history created."""

    pipeline: UUID
    partners: UUID
    a: UUID  # demo (old name), demo (new name) -> quote-sent, moved out by the removal, lost
    b: UUID  # demo (old name), then moved to the partners pipeline
    c: UUID  # quote-sent, won there before the removal, reopened into negotiation
    d: UUID  # demo after the rename, with a probability override
    e: UUID  # created in quote-sent after its rename, moved out by the removal, won
    removal_position: int


def rename_stage(stores: Stores, pipeline_id: UUID, stage: str, name: str, when: datetime) -> None:
    rename = ChangeStage(
        actor=MAX, pipeline_id=pipeline_id, stage=stage, name=name, occurred_at=when
    )
    handle(stores.app, rename)


async def write_history(stores: Stores) -> History:
    """Business time runs through January 2026; the worker catches up between phases."""
    app, worker = stores.app, stores.worker
    template = default_template()
    pid = handle(
        app,
        DefinePipeline(
            actor=ANN,
            name="New business",
            currency="EUR",
            stages=template["stages"],
            lost_reasons=template["lost_reasons"],
            occurred_at=t(1, 1),
        ),
    ).id
    partners = handle(
        app,
        DefinePipeline(
            actor=ANN,
            name="Partners",
            currency="EUR",
            stages=[{"name": "Intake", "probability": 30}, {"name": "Offer", "probability": 60}],
            lost_reasons=["Price"],
            occurred_at=t(1, 1),
        ),
    ).id

    def deal(value: str, when: datetime, stage: str | None = None) -> UUID:
        return handle(
            app,
            CreateDeal(
                actor=RITA,
                pipeline_id=pid,
                title="ACME",
                value=value,
                stage=stage,
                occurred_at=when,
            ),
        ).id

    a, b = deal("1000", t(1, 2)), deal("2000", t(1, 2, 6))
    c = deal("3000", t(1, 3), stage="quote-sent")
    handle(app, AdvanceDeal(deal_id=a, actor=RITA, stage="Demo or meeting", occurred_at=t(1, 5)))
    handle(app, AdvanceDeal(deal_id=b, actor=RITA, stage="demo-or-meeting", occurred_at=t(1, 6)))
    handle(app, WinDeal(deal_id=c, actor=RITA, occurred_at=t(1, 7)))
    await worker.catch_up()

    # Phase 2: "Demo or meeting" becomes "Discovery call"; deals keep moving.
    rename_stage(stores, pid, "demo-or-meeting", "Discovery call", t(1, 10))
    d = deal("4000", t(1, 11))
    handle(app, AdvanceDeal(deal_id=d, actor=RITA, stage="Discovery call", occurred_at=t(1, 12)))
    handle(app, AdvanceDeal(deal_id=a, actor=RITA, stage="quote-sent", occurred_at=t(1, 12, 12)))
    await worker.catch_up()

    # Phase 3: "Quote sent" becomes "Proposal", then is removed; its open deals move on.
    rename_stage(stores, pid, "quote-sent", "Proposal", t(1, 14))
    e = deal("5000", t(1, 15), stage="Proposal")
    removal = handle(
        app,
        RemoveStage(
            pipeline_id=pid,
            stage="quote-sent",
            actor=MAX,
            move_open_deals_to="Negotiation",
            occurred_at=t(1, 20),
        ),
        open_deals_in_stage=lambda *_: [a, c, e],
    )
    assert sorted(removal.state["moved_deals"]) == sorted([str(a), str(e)])
    await worker.catch_up()

    # Phase 4: life goes on after the removal.
    handle(app, LoseDeal(deal_id=a, actor=RITA, reason="Price", occurred_at=t(1, 22)))
    handle(app, WinDeal(deal_id=e, actor=RITA, occurred_at=t(1, 23)))
    handle(
        app,
        MoveDeal(deal_id=b, actor=RITA, pipeline_id=partners, stage="Offer", occurred_at=t(1, 24)),
    )
    handle(app, UpdateDeal(deal_id=d, actor=RITA, probability_override=80, occurred_at=t(1, 25)))
    handle(app, ReopenDeal(deal_id=c, actor=RITA, stage="negotiation", occurred_at=t(1, 26)))

    reweigh = ChangeStage(
        actor=MAX, pipeline_id=pid, stage="negotiation", probability=70, occurred_at=t(1, 27)
    )
    handle(app, reweigh)
    await worker.catch_up()
    return History(pid, partners, a, b, c, d, e, removal.position)


async def every_table(
    engine: AsyncEngine, generations: dict[str, int]
) -> dict[str, list[dict[str, Any]]]:
    """Every read-model table of the given generations, rows sorted by primary key."""
    out = {}
    for projection in all_projections():
        generation = generations[projection.name]
        for key in projection.tables(generation):
            out[f"{projection.name}.{key}"] = await table_rows(engine, projection, key, generation)
    return out


async def generations(engine: AsyncEngine) -> dict[str, int]:
    return {name: s.generation for name, s in (await states(engine)).items()}


async def report_rows(stores: Stores, pipeline_id: UUID, clock: TestClock) -> dict[str, Any]:
    """The stage-durations report's rows by stage id, as the API serves them."""
    context = ReportContext(ReadModels(stores.engine, 5.0), clock)
    params = ReportParams(pipeline_id=pipeline_id, min_position=stores.head())
    report = (await stage_durations_report(context, params)).as_json()
    assert report["position"] == stores.head()
    return {row["stage_id"]: row for row in report["rows"]}


async def visits(stores: Stores, deal_id: UUID) -> list[tuple[Any, ...]]:
    """A deal's visits: (pipeline, stage id, name at the time, entered, exited, exit kind)."""
    projection = stores.projections["stage_durations"]
    generation = (await generations(stores.engine))["stage_durations"]
    async with stores.engine.connect() as conn:
        rows = await stage_durations.deal_visits(conn, projection.tables(generation), deal_id)
    return [
        (
            UUID(r["pipeline_id"]),
            r["stage_id"],
            r["stage_name"],
            r["entered_at"],
            r["exited_at"],
            r["exit_kind"],
        )
        for r in rows
    ]


async def audit_rows(stores: Stores, aggregate_id: UUID) -> list[dict[str, Any]]:
    projection = stores.projections["audit_history"]
    generation = (await generations(stores.engine))["audit_history"]
    async with stores.engine.connect() as conn:
        return await audit_history.history(
            conn, projection.tables(generation), aggregate_id=aggregate_id, limit=100
        )


def seconds(days: float) -> float:
    return days * DAY


# --- a full rebuild after a rename and a removal ---------------------------------------------


async def test_after_a_rename_and_a_removal_a_full_rebuild_equals_the_incremental_read_models(
    stores: Stores, clock: TestClock
) -> None:
    h = await write_history(stores)
    incremental_generations = await generations(stores.engine)
    incremental = await every_table(stores.engine, incremental_generations)
    for name in (
        "current_pipeline.deals",
        "current_pipeline.pipelines",
        "current_pipeline.totals",
        "stage_durations.visits",
        "audit_history.events",
    ):
        assert incremental[name], name
    incremental_report = await report_rows(stores, h.pipeline, clock)

    built = await rebuild(stores.engine, EventSource(stores.app), all_projections(), batch_size=50)

    assert built == {name: g + 1 for name, g in incremental_generations.items()}
    for state in (await states(stores.engine)).values():
        assert (state.position, state.building_generation) == (stores.head(), None)
    rebuilt = await every_table(stores.engine, built)
    assert sorted(rebuilt) == sorted(incremental)
    for name, rows in incremental.items():
        assert rebuilt[name] == rows, name
    await drop_old_generations(stores.engine, all_projections(), grace_seconds=0)

    # Every stage duration is still reported, those of the removed stage too.
    report = await report_rows(stores, h.pipeline, clock)
    assert report == incremental_report
    assert list(report) == ["deal-created", "demo-or-meeting", "negotiation", "quote-sent"]
    removed = report["quote-sent"]
    assert (removed["removed"], removed["stage_name"]) == (True, "Proposal")
    # c: 3rd to 7th (won there); a: 12th noon to 20th; e: 15th to 20th (both moved out).
    assert (removed["visits"], removed["completed"], removed["open"]) == (3, 3, 0)
    assert removed["mean_seconds"] == pytest.approx(seconds((4 + 7.5 + 5) / 3))
    assert removed["median_seconds"] == seconds(5)
    renamed = report["demo-or-meeting"]
    assert (renamed["removed"], renamed["stage_name"]) == (False, "Discovery call")
    # a: 5th to 12th noon; b: 6th to 24th (moved to partners); d: from the 12th, open.
    assert (renamed["visits"], renamed["completed"], renamed["open"]) == (3, 2, 1)
    assert renamed["mean_seconds"] == pytest.approx(seconds((7.5 + 18) / 2))
    negotiation = report["negotiation"]
    assert (negotiation["visits"], negotiation["completed"], negotiation["open"]) == (3, 2, 1)
    assert negotiation["removed"] is False
    assert await visits(stores, h.a) == [
        (h.pipeline, "deal-created", "Deal created", t(1, 2), t(1, 5), "advanced"),
        (h.pipeline, "demo-or-meeting", "Demo or meeting", t(1, 5), t(1, 12, 12), "advanced"),
        (h.pipeline, "quote-sent", "Quote sent", t(1, 12, 12), t(1, 20), "advanced"),
        (h.pipeline, "negotiation", "Negotiation", t(1, 20), t(1, 22), "lost"),
    ]
    assert await visits(stores, h.b) == [
        (h.pipeline, "deal-created", "Deal created", t(1, 2, 6), t(1, 6), "advanced"),
        (h.pipeline, "demo-or-meeting", "Demo or meeting", t(1, 6), t(1, 24), "moved_pipeline"),
        (h.partners, "offer", "Offer", t(1, 24), None, None),
    ]
    partners = await report_rows(stores, h.partners, clock)
    assert (partners["offer"]["visits"], partners["offer"]["open"]) == (1, 1)
    assert "demo-or-meeting" not in partners

    # The worker goes on incrementally on the rebuilt generation.
    handle(
        stores.app, AdvanceDeal(deal_id=h.d, actor=RITA, stage="negotiation", occurred_at=t(1, 28))
    )
    await stores.worker.catch_up()
    later = await report_rows(stores, h.pipeline, clock)
    assert (later["demo-or-meeting"]["completed"], later["demo-or-meeting"]["open"]) == (3, 0)
    assert later["quote-sent"] == removed


# --- the audit history: names as they were ---------------------------------------------------


def stage_changes(rows: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """(event type, stage name before, stage name after) of each event that names a stage."""
    return [
        (r["event_type"], r["changes"]["stage"]["before"], r["changes"]["stage"]["after"])
        for r in rows
        if "stage" in r["changes"]
    ]


async def test_the_audit_history_shows_each_stage_under_the_name_it_had_when_the_event_happened(
    stores: Stores,
) -> None:
    h = await write_history(stores)

    assert stage_changes(await audit_rows(stores, h.a)) == [
        ("DealCreated", None, "Deal created"),
        ("StageAdvanced", "Deal created", "Demo or meeting"),  # before the rename
        ("StageAdvanced", "Discovery call", "Quote sent"),  # after the first rename
        ("StageAdvanced", "Proposal", "Negotiation"),  # the removal, after the second
    ]
    assert stage_changes(await audit_rows(stores, h.b)) == [
        ("DealCreated", None, "Deal created"),
        ("StageAdvanced", "Deal created", "Demo or meeting"),
        ("DealMoved", "Discovery call", "Offer"),
    ]
    assert stage_changes(await audit_rows(stores, h.d)) == [
        ("DealCreated", None, "Deal created"),
        ("StageAdvanced", "Deal created", "Discovery call"),
    ]
    assert stage_changes(await audit_rows(stores, h.e)) == [
        ("DealCreated", None, "Proposal"),
        ("StageAdvanced", "Proposal", "Negotiation"),
    ]
    assert stage_changes(await audit_rows(stores, h.c)) == [
        ("DealCreated", None, "Quote sent"),
        ("DealReopened", "Proposal", "Negotiation"),  # reopened out of the removed stage
    ]
    moved_out = [
        r for deal in (h.a, h.e) for r in await audit_rows(stores, deal) if "cause" in r["changes"]
    ]
    assert [r["position"] <= h.removal_position for r in moved_out] == [True, True]
    for row in moved_out:
        assert row["actor"] == "max"
        assert row["changes"]["cause"] == {
            "before": None,
            "after": {
                "type": "StageRemoved",
                "pipeline_id": str(h.pipeline),
                "pipeline_version": 4,
                "stage_id": "quote-sent",
                "direction": "forward",  # Negotiation came after the removed Quote sent
            },
        }

    pipeline = await audit_rows(stores, h.pipeline)
    assert [r["event_type"] for r in pipeline] == [
        "PipelineDefined",
        "StageRenamed",
        "StageRenamed",
        "StageRemoved",
        "StageUpdated",
    ]
    assert pipeline[1]["changes"] == {
        "stages[demo-or-meeting].name": {"before": "Demo or meeting", "after": "Discovery call"}
    }
    assert pipeline[2]["changes"] == {
        "stages[quote-sent].name": {"before": "Quote sent", "after": "Proposal"}
    }
    assert pipeline[3]["changes"] == {
        "stages[quote-sent]": {"before": "Proposal", "after": None},
        "move_open_deals_to": {"before": None, "after": "negotiation"},
    }
    assert (pipeline[3]["occurred_at"], pipeline[3]["actor"]) == (t(1, 20), "max")
    assert all(r["occurred_at"].tzinfo is not None for r in pipeline)
    assert datetime.now(UTC) - pipeline[3]["recorded_at"] < timedelta(minutes=5)
