"""Each read model against a scripted history with backdated ``occurred_at``, to the second.

The commands go through the application directly; a projection worker then catches up
(in small batches, so batch boundaries fall in the middle of a deal's history) and the
tables are read back row by row, and through the query functions the API uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.domain import Aggregate, event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.app import DealtrailApplication
from libs.application.handlers import handle
from libs.application.sql import ensure_schema, make_engine
from libs.domain.actors import Actor, Role
from libs.domain.commands import (
    AdvanceDeal,
    ChangeStage,
    CommandResult,
    CreateDeal,
    DefinePipeline,
    LoseDeal,
    ReopenDeal,
    UpdateDeal,
    WinDeal,
)
from libs.domain.pipeline import default_template
from services.projections.audit_history import queries as audit_history
from services.projections.base import Projection, State, read_states
from services.projections.catalog import all_projections
from services.projections.current_pipeline import queries as current_pipeline
from services.projections.runner import Worker
from services.projections.source import EventSource
from services.projections.stage_durations import queries as stage_durations
from services.runtime.settings import Settings
from services.runtime.stores import open_application
from tests.conftest import Backend, TestClock

ANN = Actor("ann", Role.ADMIN)
MAX = Actor("max", Role.MANAGER)
RITA = Actor("rita", Role.REP)
MODELS = ("current_pipeline", "stage_durations", "audit_history")


def t(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """A moment of 2026 in UTC."""
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


# --- shared helpers (the other integration test modules import these) ------------------


@dataclass
class Stores:
    """The write side and the read side of one test's database."""

    settings: Settings
    app: DealtrailApplication
    engine: AsyncEngine
    worker: Worker
    projections: dict[str, Projection] = field(default_factory=dict)

    def head(self) -> int:
        return self.app.head_position()


async def open_stores(
    backend: Backend, data_dir: Path, clock: TestClock, batch_size: int = 7
) -> Stores:
    settings = backend.settings(data_dir, DEALTRAIL_EMBEDDED_WORKER=False)
    app = open_application(settings, clock)
    engine = make_engine(settings.store, pool_size=4)
    await ensure_schema(engine, settings.store)
    projections = all_projections()
    worker = Worker(
        engine=engine,
        source=EventSource(app),
        location=settings.store,
        projections=projections,
        batch_size=batch_size,
    )
    await worker.setup()
    return Stores(settings, app, engine, worker, {p.name: p for p in projections})


async def close_stores(stores: Stores) -> None:
    await stores.engine.dispose()
    stores.app.close()


async def states(engine: AsyncEngine) -> dict[str, State]:
    async with engine.connect() as conn:
        return await read_states(conn)


async def table_rows(
    engine: AsyncEngine, projection: Projection, key: str, generation: int | None = None
) -> list[dict[str, Any]]:
    """Every row of one of a projection's tables, sorted by primary key."""
    if generation is None:
        generation = (await states(engine))[projection.name].generation
    table = projection.tables(generation)[key]
    async with engine.connect() as conn:
        result = await conn.execute(select(table).order_by(*table.primary_key.columns))
        return [dict(r) for r in result.mappings().all()]


def define_default_pipeline(app: DealtrailApplication, name: str, when: datetime) -> UUID:
    template = default_template()
    return handle(
        app,
        DefinePipeline(
            actor=ANN,
            name=name,
            currency="EUR",
            stages=template["stages"],
            lost_reasons=template["lost_reasons"],
            occurred_at=when,
        ),
    ).id


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def stores(backend: Backend, tmp_path: Path, clock: TestClock) -> AsyncIterator[Stores]:
    opened = await open_stores(backend, tmp_path / "data", clock)
    try:
        yield opened
    finally:
        await close_stores(opened)


# --- the scripted history ----------------------------------------------------------------


@dataclass
class Expected:
    """One event the script caused, as the audit trail must show it."""

    position: int
    aggregate_id: str
    aggregate_type: str
    event_type: str
    version: int
    actor: str
    occurred_at: datetime
    changes: dict[str, Any] | None  # None: checked separately


class Script:
    """Runs commands and remembers what each one must leave in the audit trail."""

    def __init__(self, app: DealtrailApplication) -> None:
        self.app = app
        self.expected: list[Expected] = []

    def note(
        self,
        result: CommandResult,
        event_type: str,
        actor: Actor,
        when: datetime,
        changes: dict[str, Any] | None,
        aggregate_type: str = "Deal",
    ) -> CommandResult:
        self.expected.append(
            Expected(
                result.position,
                str(result.id),
                aggregate_type,
                event_type,
                result.version,
                actor.name,
                when,
                changes,
            )
        )
        return result


def ch(before: Any, after: Any) -> dict[str, Any]:
    return {"before": before, "after": after}


async def totals_of(stores: Stores, pipeline_id: UUID) -> dict[str, tuple[int, Decimal, Decimal]]:
    """Open deals per stage (count, total, weighted); stages with nothing are left out."""
    projection = stores.projections["current_pipeline"]
    generation = (await states(stores.engine))["current_pipeline"].generation
    async with stores.engine.connect() as conn:
        totals = await current_pipeline.stage_totals(
            conn, projection.tables(generation), pipeline_id
        )
    out = {}
    for stage_id, row in totals.items():
        entry = (row["open_count"], row["open_value"], row["weighted_value"])
        if entry != (0, 0, 0):
            out[stage_id] = entry
    return out


async def deal_row(stores: Stores, deal_id: UUID) -> dict[str, Any]:
    projection = stores.projections["current_pipeline"]
    generation = (await states(stores.engine))["current_pipeline"].generation
    async with stores.engine.connect() as conn:
        row = await current_pipeline.get_deal(conn, projection.tables(generation), deal_id)
    assert row is not None
    return row


async def visits_of(stores: Stores, deal_id: UUID) -> list[tuple[Any, ...]]:
    """A deal's visits as (stage, entered, exited, seconds, exit kind, owner) in order."""
    projection = stores.projections["stage_durations"]
    generation = (await states(stores.engine))["stage_durations"].generation
    async with stores.engine.connect() as conn:
        rows = await stage_durations.deal_visits(conn, projection.tables(generation), deal_id)
    assert [r["visit"] for r in rows] == list(range(1, len(rows) + 1))
    return [
        (
            r["stage_id"],
            r["entered_at"],
            r["exited_at"],
            r["duration_seconds"],
            r["exit_kind"],
            r["owner"],
        )
        for r in rows
    ]


async def stage_names_of_visits(stores: Stores, deal_id: UUID) -> list[str]:
    projection = stores.projections["stage_durations"]
    generation = (await states(stores.engine))["stage_durations"].generation
    async with stores.engine.connect() as conn:
        rows = await stage_durations.deal_visits(conn, projection.tables(generation), deal_id)
    return [r["stage_name"] for r in rows]


def latest_and_cumulative(
    visits: Sequence[tuple[Any, ...]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Per stage, the last completed visit's time and the sum over all completed visits."""
    latest: dict[str, float] = {}
    total: dict[str, float] = {}
    for stage, _entered, _exited, seconds, _kind, _owner in visits:
        if seconds is None:
            continue
        latest[stage] = seconds
        total[stage] = total.get(stage, 0.0) + seconds
    return latest, total


def check_deal(row: dict[str, Any], **expected: Any) -> None:
    got = {k: row[k] for k in expected}
    assert got == expected


async def test_each_read_model_follows_a_scripted_backdated_history_to_the_second(
    stores: Stores,
) -> None:
    app, worker = stores.app, stores.worker
    s = Script(app)
    wall_start = datetime.now(UTC)

    # Phase 1: two pipelines, four deals.
    p = s.note(
        handle(
            app,
            DefinePipeline(
                actor=ANN,
                name="New business",
                currency="EUR",
                stages=default_template()["stages"],
                lost_reasons=default_template()["lost_reasons"],
                occurred_at=t(1, 5, 9),
            ),
        ),
        "PipelineDefined",
        ANN,
        t(1, 5, 9),
        None,
        "Pipeline",
    ).id
    p2 = s.note(
        handle(
            app,
            DefinePipeline(
                actor=MAX,
                name="Partners",
                currency="EUR",
                stages=[{"name": "Lead", "probability": 20}, {"name": "Offer", "probability": 60}],
                lost_reasons=["Price"],
                occurred_at=t(1, 5, 10),
            ),
        ),
        "PipelineDefined",
        MAX,
        t(1, 5, 10),
        None,
        "Pipeline",
    ).id
    a = s.note(
        handle(
            app,
            CreateDeal(
                actor=RITA,
                pipeline_id=p,
                title="ACME renewal",
                value="10000.00",
                expected_close_date=date(2026, 2, 27),
                occurred_at=t(1, 6, 9),
            ),
        ),
        "DealCreated",
        RITA,
        t(1, 6, 9),
        {
            "pipeline_id": ch(None, str(p)),
            "title": ch(None, "ACME renewal"),
            "value": ch(None, "10000.00"),
            "owner": ch(None, "rita"),
            "expected_close_date": ch(None, "2026-02-27"),
            "stage": ch(None, "Deal created"),
            "status": ch(None, "open"),
        },
    ).id
    b = s.note(
        handle(
            app,
            CreateDeal(
                actor=RITA,
                pipeline_id=p,
                title="Globex expansion",
                value="5000",
                stage="Demo or meeting",
                occurred_at=t(1, 7, 14),
            ),
        ),
        "DealCreated",
        RITA,
        t(1, 7, 14),
        {
            "pipeline_id": ch(None, str(p)),
            "title": ch(None, "Globex expansion"),
            "value": ch(None, "5000"),
            "owner": ch(None, "rita"),
            "stage": ch(None, "Demo or meeting"),
            "status": ch(None, "open"),
        },
    ).id
    c = s.note(
        handle(
            app,
            CreateDeal(
                actor=MAX,
                pipeline_id=p,
                title="Initech pilot",
                value="2500.50",
                owner="rita",
                external_id="crm-17",
                occurred_at=t(1, 10, 8),
            ),
        ),
        "DealCreated",
        MAX,
        t(1, 10, 8),
        {
            "pipeline_id": ch(None, str(p)),
            "title": ch(None, "Initech pilot"),
            "value": ch(None, "2500.50"),
            "owner": ch(None, "rita"),
            "external_id": ch(None, "crm-17"),
            "stage": ch(None, "Deal created"),
            "status": ch(None, "open"),
        },
    ).id
    d = s.note(
        handle(
            app,
            CreateDeal(
                actor=ANN,
                pipeline_id=p2,
                title="Umbrella",
                value="800",
                occurred_at=t(1, 10, 9, 30),
            ),
        ),
        "DealCreated",
        ANN,
        t(1, 10, 9, 30),
        None,
    ).id
    await worker.catch_up()

    row_a = await deal_row(stores, a)
    check_deal(
        row_a,
        pipeline_id=str(p),
        title="ACME renewal",
        value=Decimal("10000.00"),
        owner="rita",
        stage_id="deal-created",
        status="open",
        probability=10,
        weighted_value=Decimal("1000"),
        expected_close_date=date(2026, 2, 27),
        entered_current_stage_at=t(1, 6, 9),
        last_activity_at=t(1, 6, 9),
        created_at=t(1, 6, 9),
        closed_at=None,
        lost_reason=None,
        version=1,
    )
    check_deal(
        await deal_row(stores, c),
        owner="rita",
        external_id="crm-17",
        probability=10,
        weighted_value=Decimal("250.05"),
    )
    assert await totals_of(stores, p) == {
        "deal-created": (2, Decimal("12500.50"), Decimal("1250.05")),
        "demo-or-meeting": (1, Decimal("5000"), Decimal("1250")),
    }
    assert await totals_of(stores, p2) == {"lead": (1, Decimal("800"), Decimal("160"))}

    # Phase 2: forward, back, forward again; a value update and an owner change.
    s.note(
        handle(
            app, AdvanceDeal(deal_id=a, actor=RITA, stage="Quote sent", occurred_at=t(1, 8, 10, 30))
        ),
        "StageAdvanced",
        RITA,
        t(1, 8, 10, 30),
        {"stage": ch("Deal created", "Quote sent"), "stage_id": ch("deal-created", "quote-sent")},
    )
    s.note(
        handle(
            app,
            AdvanceDeal(deal_id=a, actor=RITA, stage="demo-or-meeting", occurred_at=t(1, 9, 12)),
        ),
        "StageAdvanced",
        RITA,
        t(1, 9, 12),
        {
            "stage": ch("Quote sent", "Demo or meeting"),
            "stage_id": ch("quote-sent", "demo-or-meeting"),
        },
    )
    s.note(
        handle(
            app, AdvanceDeal(deal_id=b, actor=RITA, stage="negotiation", occurred_at=t(1, 10, 9))
        ),
        "StageAdvanced",
        RITA,
        t(1, 10, 9),
        {
            "stage": ch("Demo or meeting", "Negotiation"),
            "stage_id": ch("demo-or-meeting", "negotiation"),
        },
    )
    s.note(
        handle(app, UpdateDeal(deal_id=c, actor=MAX, owner="raj", occurred_at=t(1, 11, 10))),
        "OwnerChanged",
        MAX,
        t(1, 11, 10),
        {"owner": ch("rita", "raj")},
    )
    s.note(
        handle(
            app,
            AdvanceDeal(deal_id=a, actor=RITA, stage="quote-sent", occurred_at=t(1, 12, 8, 15, 30)),
        ),
        "StageAdvanced",
        RITA,
        t(1, 12, 8, 15, 30),
        {
            "stage": ch("Demo or meeting", "Quote sent"),
            "stage_id": ch("demo-or-meeting", "quote-sent"),
        },
    )
    s.note(
        handle(app, UpdateDeal(deal_id=a, actor=MAX, value="12000.00", occurred_at=t(1, 13, 9))),
        "DealUpdated",
        MAX,
        t(1, 13, 9),
        {"value": ch("10000.00", "12000.00")},
    )
    await worker.catch_up()

    check_deal(
        await deal_row(stores, a),
        stage_id="quote-sent",
        status="open",
        value=Decimal("12000"),
        probability=50,
        weighted_value=Decimal("6000"),
        entered_current_stage_at=t(1, 12, 8, 15, 30),
        last_activity_at=t(1, 13, 9),
        created_at=t(1, 6, 9),
        closed_at=None,
        version=5,
    )
    check_deal(
        await deal_row(stores, c),
        owner="raj",
        stage_id="deal-created",
        entered_current_stage_at=t(1, 10, 8),
        last_activity_at=t(1, 11, 10),
    )
    assert await totals_of(stores, p) == {
        "deal-created": (1, Decimal("2500.50"), Decimal("250.05")),
        "quote-sent": (1, Decimal("12000"), Decimal("6000")),
        "negotiation": (1, Decimal("5000"), Decimal("3750")),
    }

    # Phase 3a: two losses.
    s.note(
        handle(
            app,
            LoseDeal(
                deal_id=b,
                actor=RITA,
                reason="No budget",
                note="budget frozen",
                occurred_at=t(1, 14, 10),
            ),
        ),
        "DealLost",
        RITA,
        t(1, 14, 10),
        {
            "status": ch("open", "lost"),
            "lost_reason": ch(None, "No budget"),
            "lost_note": ch(None, "budget frozen"),
        },
    )
    s.note(
        handle(app, LoseDeal(deal_id=a, actor=MAX, reason="price", occurred_at=t(1, 15, 17))),
        "DealLost",
        MAX,
        t(1, 15, 17),
        {"status": ch("open", "lost"), "lost_reason": ch(None, "Price")},
    )
    await worker.catch_up()

    check_deal(
        await deal_row(stores, a),
        stage_id="quote-sent",
        status="lost",
        probability=0,  # a lost deal counts for nothing
        weighted_value=Decimal("0"),
        closed_at=t(1, 15, 17),
        lost_reason="Price",
        lost_note=None,
        entered_current_stage_at=t(1, 12, 8, 15, 30),
        last_activity_at=t(1, 15, 17),
    )
    check_deal(
        await deal_row(stores, b),
        stage_id="negotiation",
        status="lost",
        closed_at=t(1, 14, 10),
        lost_reason="No budget",
        lost_note="budget frozen",
    )
    assert await totals_of(stores, p) == {
        "deal-created": (1, Decimal("2500.50"), Decimal("250.05")),
    }
    visits_before_reopen = await visits_of(stores, a)
    assert len(visits_before_reopen) == 4

    # Between the two visits to it, "Quote sent" is renamed: later events carry the new name,
    # earlier ones keep the name they had.
    s.note(
        handle(
            app,
            ChangeStage(
                actor=MAX,
                pipeline_id=p,
                stage="quote-sent",
                name="Proposal",
                occurred_at=t(1, 16, 12),
            ),
        ),
        "StageRenamed",
        MAX,
        t(1, 16, 12),
        {"stages[quote-sent].name": ch("Quote sent", "Proposal")},
        "Pipeline",
    )

    # Phase 3b: a reopen, a win, and the reopened deal moves on.
    s.note(
        handle(app, ReopenDeal(deal_id=a, actor=MAX, occurred_at=t(1, 20, 10))),
        "DealReopened",
        MAX,
        t(1, 20, 10),
        {"status": ch("lost", "open")},
    )
    s.note(
        handle(app, WinDeal(deal_id=c, actor=MAX, occurred_at=t(1, 21, 15))),
        "DealWon",
        MAX,
        t(1, 21, 15),
        {"status": ch("open", "won")},
    )
    await worker.catch_up()
    check_deal(
        await deal_row(stores, a),
        stage_id="quote-sent",
        status="open",
        closed_at=None,
        lost_reason=None,
        entered_current_stage_at=t(1, 20, 10),
        last_activity_at=t(1, 20, 10),
        weighted_value=Decimal("6000"),
    )
    assert await totals_of(stores, p) == {"quote-sent": (1, Decimal("12000"), Decimal("6000"))}

    s.note(
        handle(
            app, AdvanceDeal(deal_id=a, actor=RITA, stage="Negotiation", occurred_at=t(1, 22, 11))
        ),
        "StageAdvanced",
        RITA,
        t(1, 22, 11),
        {
            "stage": ch("Proposal", "Negotiation"),
            "stage_id": ch("quote-sent", "negotiation"),
        },
    )
    await worker.catch_up()
    check_deal(
        await deal_row(stores, a),
        stage_id="negotiation",
        status="open",
        probability=75,
        weighted_value=Decimal("9000"),
        entered_current_stage_at=t(1, 22, 11),
        last_activity_at=t(1, 22, 11),
    )
    check_deal(
        await deal_row(stores, c),
        status="won",
        probability=100,
        weighted_value=Decimal("2500.50"),
        closed_at=t(1, 21, 15),
        owner="raj",
        last_activity_at=t(1, 21, 15),
    )
    assert await totals_of(stores, p) == {"negotiation": (1, Decimal("12000"), Decimal("9000"))}

    # Phase 4: a win, and the lost deal comes back into an earlier stage with a new value.
    s.note(
        handle(app, WinDeal(deal_id=a, actor=RITA, occurred_at=t(1, 25, 16, 45, 15))),
        "DealWon",
        RITA,
        t(1, 25, 16, 45, 15),
        {"status": ch("open", "won")},
    )
    s.note(
        handle(app, ReopenDeal(deal_id=b, actor=MAX, stage="Proposal", occurred_at=t(1, 26, 9))),
        "DealReopened",
        MAX,
        t(1, 26, 9),
        {
            "status": ch("lost", "open"),
            "stage": ch("Negotiation", "Proposal"),
            "stage_id": ch("negotiation", "quote-sent"),
        },
    )
    s.note(
        handle(app, UpdateDeal(deal_id=b, actor=MAX, value="7000", occurred_at=t(1, 27, 9))),
        "DealUpdated",
        MAX,
        t(1, 27, 9),
        {"value": ch("5000", "7000")},
    )
    await worker.catch_up()
    wall_end = datetime.now(UTC)

    # --- current pipeline, final state
    check_deal(
        await deal_row(stores, a),
        stage_id="negotiation",
        status="won",
        value=Decimal("12000"),
        probability=100,  # a won deal counts fully, whatever its stage
        weighted_value=Decimal("12000"),
        entered_current_stage_at=t(1, 22, 11),
        last_activity_at=t(1, 25, 16, 45, 15),
        created_at=t(1, 6, 9),
        closed_at=t(1, 25, 16, 45, 15),
        lost_reason=None,
        version=9,
    )
    check_deal(
        await deal_row(stores, b),
        stage_id="quote-sent",
        status="open",
        value=Decimal("7000"),
        probability=50,
        weighted_value=Decimal("3500"),
        entered_current_stage_at=t(1, 26, 9),
        last_activity_at=t(1, 27, 9),
        created_at=t(1, 7, 14),
        closed_at=None,
        lost_reason=None,
        lost_note=None,
        version=5,
    )
    check_deal(
        await deal_row(stores, d),
        pipeline_id=str(p2),
        stage_id="lead",
        probability=20,
        weighted_value=Decimal("160"),
        owner="ann",
    )
    assert await totals_of(stores, p) == {"quote-sent": (1, Decimal("7000"), Decimal("3500"))}
    assert await totals_of(stores, p2) == {"lead": (1, Decimal("800"), Decimal("160"))}
    generation = (await states(stores.engine))["current_pipeline"].generation
    async with stores.engine.connect() as conn:
        pipeline_row = await current_pipeline.get_pipeline(
            conn, stores.projections["current_pipeline"].tables(generation), p
        )
    assert pipeline_row is not None
    assert [(st["id"], st["name"]) for st in pipeline_row["stages"]] == [
        ("deal-created", "Deal created"),
        ("demo-or-meeting", "Demo or meeting"),
        ("quote-sent", "Proposal"),  # the id stays, the name is the current one
        ("negotiation", "Negotiation"),
    ]

    # --- stage durations: one row per visit, exits of every kind, revisits, a reopen
    visits_a = await visits_of(stores, a)
    assert visits_a == [
        ("deal-created", t(1, 6, 9), t(1, 8, 10, 30), 178200.0, "advanced", "rita"),
        ("quote-sent", t(1, 8, 10, 30), t(1, 9, 12), 91800.0, "moved_back", "rita"),
        ("demo-or-meeting", t(1, 9, 12), t(1, 12, 8, 15, 30), 245730.0, "advanced", "rita"),
        ("quote-sent", t(1, 12, 8, 15, 30), t(1, 15, 17), 290670.0, "lost", "rita"),
        ("quote-sent", t(1, 20, 10), t(1, 22, 11), 176400.0, "advanced", "rita"),
        ("negotiation", t(1, 22, 11), t(1, 25, 16, 45, 15), 279915.0, "won", "rita"),
    ]
    assert visits_a[:4] == visits_before_reopen  # a reopen keeps the earlier visits
    assert await stage_names_of_visits(stores, a) == [
        "Deal created",
        "Quote sent",
        "Demo or meeting",
        "Quote sent",
        "Proposal",  # renamed before this visit
        "Negotiation",
    ]
    latest, cumulative = latest_and_cumulative(visits_a)
    assert latest == {
        "deal-created": 178200.0,
        "quote-sent": 176400.0,
        "demo-or-meeting": 245730.0,
        "negotiation": 279915.0,
    }
    assert cumulative == {
        "deal-created": 178200.0,
        "quote-sent": 91800.0 + 290670.0 + 176400.0,
        "demo-or-meeting": 245730.0,
        "negotiation": 279915.0,
    }
    assert await visits_of(stores, b) == [
        ("demo-or-meeting", t(1, 7, 14), t(1, 10, 9), 241200.0, "advanced", "rita"),
        ("negotiation", t(1, 10, 9), t(1, 14, 10), 349200.0, "lost", "rita"),
        ("quote-sent", t(1, 26, 9), None, None, None, "rita"),
    ]
    # The owner changed while the only visit was open: the visit carries the new owner.
    assert await visits_of(stores, c) == [
        ("deal-created", t(1, 10, 8), t(1, 21, 15), 975600.0, "won", "raj"),
    ]
    assert await visits_of(stores, d) == [("lead", t(1, 10, 9, 30), None, None, None, "ann")]

    # --- audit history: one row per event, in log order, with before/after values
    audit = await table_rows(stores.engine, stores.projections["audit_history"], "events")
    assert len(audit) == len(s.expected) == stores.head()
    assert [r["position"] for r in audit] == list(range(1, stores.head() + 1))
    for row, want in zip(audit, s.expected, strict=True):
        got = {
            "position": row["position"],
            "aggregate_id": row["aggregate_id"],
            "aggregate_type": row["aggregate_type"],
            "event_type": row["event_type"],
            "version": row["version"],
            "actor": row["actor"],
            "occurred_at": row["occurred_at"],
        }
        assert got == {
            "position": want.position,
            "aggregate_id": want.aggregate_id,
            "aggregate_type": want.aggregate_type,
            "event_type": want.event_type,
            "version": want.version,
            "actor": want.actor,
            "occurred_at": want.occurred_at,
        }
        assert wall_start <= row["recorded_at"] <= wall_end
        if want.changes is not None:
            assert row["changes"] == want.changes, want.event_type
    # The pipeline's definition shows its name, currency and stages as "after" values.
    definition = audit[0]["changes"]
    assert definition["name"] == ch(None, "New business")
    assert definition["currency"] == ch(None, "EUR")
    assert [st["name"] for st in definition["stages"]["after"]] == [
        "Deal created",
        "Demo or meeting",
        "Quote sent",
        "Negotiation",
    ]
    # Recorded time is server time, in the order of the log; business time was backdated.
    recorded = [r["recorded_at"] for r in audit]
    assert recorded == sorted(recorded)
    assert all(r["occurred_at"] < wall_start for r in audit)

    # The query the API uses for a deal's history: oldest first, paginated by position.
    generation = (await states(stores.engine))["audit_history"].generation
    tables = stores.projections["audit_history"].tables(generation)
    async with stores.engine.connect() as conn:
        first = await audit_history.history(conn, tables, aggregate_id=a, limit=4)
        rest = await audit_history.history(
            conn, tables, aggregate_id=a, after_position=first[-1]["position"], limit=100
        )
        by_max = await audit_history.history(conn, tables, actor="max", limit=100)
        losses = await audit_history.history(conn, tables, event_type="DealLost", limit=100)
        mid_january = await audit_history.history(
            conn, tables, start=t(1, 12), end=t(1, 15, 17), limit=100
        )
    a_positions = [e.position for e in s.expected if e.aggregate_id == str(a)]
    assert [r["position"] for r in first + rest] == a_positions
    assert len(first) == 4
    assert [r["position"] for r in by_max] == [e.position for e in s.expected if e.actor == "max"]
    assert [r["aggregate_id"] for r in losses] == [str(b), str(a)]
    assert [r["occurred_at"] for r in mid_january] == [
        t(1, 12, 8, 15, 30),
        t(1, 13, 9),
        t(1, 14, 10),
    ]

    # Every projection is at the head and skipped nothing.
    final = await states(stores.engine)
    for name in MODELS:
        assert (final[name].position, final[name].skipped) == (stores.head(), 0), name


async def test_the_stage_totals_are_always_the_sum_of_the_open_deal_rows(
    stores: Stores,
) -> None:
    app, worker = stores.app, stores.worker
    p = define_default_pipeline(app, "Sums", t(2, 1))
    deals = [
        handle(
            app,
            CreateDeal(
                actor=MAX,
                pipeline_id=p,
                title=f"deal {i}",
                value=f"{100 + i * 37}.{i:02d}",
                owner="rita",
                occurred_at=t(2, 2, i),
            ),
        ).id
        for i in range(8)
    ]
    for i, deal in enumerate(deals):
        if i % 2 == 0:
            handle(
                app,
                AdvanceDeal(deal_id=deal, actor=MAX, stage="negotiation", occurred_at=t(2, 3, i)),
            )
        if i in (0, 3, 6):
            handle(app, LoseDeal(deal_id=deal, actor=MAX, reason="Timing", occurred_at=t(2, 4, i)))
        if i == 0:
            handle(
                app, ReopenDeal(deal_id=deal, actor=MAX, stage="Quote sent", occurred_at=t(2, 5, i))
            )
        if i == 5:
            handle(app, WinDeal(deal_id=deal, actor=MAX, occurred_at=t(2, 6)))
        if i in (1, 4):
            handle(app, UpdateDeal(deal_id=deal, actor=MAX, value="999.99", occurred_at=t(2, 7, i)))
    await worker.catch_up()

    rows = await table_rows(stores.engine, stores.projections["current_pipeline"], "deals")
    expected: dict[str, tuple[int, Decimal, Decimal]] = {}
    for row in rows:
        if row["status"] == "open":
            count, total, weight = expected.get(row["stage_id"], (0, Decimal(0), Decimal(0)))
            expected[row["stage_id"]] = (
                count + 1,
                total + row["value"],
                weight + row["weighted_value"],
            )
    assert await totals_of(stores, p) == expected
    assert sum(count for count, _, _ in expected.values()) == 5  # 8 deals, 1 won, 2 lost


# --- an event type no projection knows ---------------------------------------------------


class Gadget(Aggregate):
    """An aggregate only this test knows: its events are unknown to every projection."""

    @event("GadgetAssembled")
    def __init__(self, label: str) -> None:
        self.label = label

    @event("GadgetPolished")
    def polish(self, shine: int) -> None:
        self.shine = shine


async def test_an_unknown_event_type_is_skipped_and_counted_and_the_worker_goes_on(
    stores: Stores,
) -> None:
    app, worker = stores.app, stores.worker
    p = define_default_pipeline(app, "Mixed", t(3, 1))
    before = handle(
        app, CreateDeal(actor=RITA, pipeline_id=p, title="Before", value="100", occurred_at=t(3, 2))
    )
    gadget = Gadget(label="left-handed")
    gadget.polish(shine=3)
    app.save(gadget)
    after = handle(
        app, CreateDeal(actor=RITA, pipeline_id=p, title="After", value="200", occurred_at=t(3, 3))
    )
    handle(app, AdvanceDeal(deal_id=after.id, actor=RITA, stage="Quote sent", occurred_at=t(3, 4)))

    await worker.catch_up()

    head = stores.head()
    got = {name: (s.position, s.skipped) for name, s in (await states(stores.engine)).items()}
    assert {name: got[name] for name in MODELS} == {
        "current_pipeline": (head, 2),
        "stage_durations": (head, 2),
        "audit_history": (head, 0),  # the audit trail records every event, known or not
    }
    # Events after the unknown ones were projected.
    assert (await deal_row(stores, after.id))["stage_id"] == "quote-sent"
    assert (await deal_row(stores, before.id))["title"] == "Before"
    assert await totals_of(stores, p) == {
        "deal-created": (1, Decimal("100"), Decimal("10")),
        "quote-sent": (1, Decimal("200"), Decimal("100")),
    }
    assert [v[0] for v in await visits_of(stores, after.id)] == ["deal-created", "quote-sent"]
    audit = await table_rows(stores.engine, stores.projections["audit_history"], "events")
    unknown = [r for r in audit if r["aggregate_id"] == str(gadget.id)]
    assert [(r["aggregate_type"], r["event_type"], r["actor"]) for r in unknown] == [
        ("Gadget", "GadgetAssembled", None),
        ("Gadget", "GadgetPolished", None),
    ]
    assert unknown[0]["changes"] == {"label": ch(None, "left-handed")}
    assert unknown[1]["changes"] == {"shine": ch(None, 3)}
    assert len(audit) == head

    # The counts keep adding up over later batches.
    app.save(Gadget(label="again"))
    await worker.catch_up()
    skipped = {name: s.skipped for name, s in (await states(stores.engine)).items()}
    assert {name: skipped[name] for name in MODELS} == {
        "current_pipeline": 3,
        "stage_durations": 3,
        "audit_history": 0,
    }
