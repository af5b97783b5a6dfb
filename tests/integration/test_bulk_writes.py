"""The projections' bulk write paths, and rebuilds whose batches fall anywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.handlers import handle
from libs.application.sql import ensure_schema, make_engine
from libs.domain.commands import AdvanceDeal, CreateDeal, LoseDeal, ReopenDeal, UpdateDeal, WinDeal
from services.projections import rebuild as rebuild_module
from services.projections.base import Projection
from services.projections.catalog import all_projections
from services.projections.rebuild import rebuild
from services.projections.source import EventSource
from services.projections.sql import Money, UtcDateTime, bulk_insert, bulk_update, bulk_upsert
from tests.conftest import Backend, TestClock
from tests.integration.test_read_models import (
    Stores,
    close_stores,
    define_default_pipeline,
    open_stores,
    states,
)
from tests.integration.test_rebuild import (
    ACTORS,
    JAN,
    assert_same_tables,
    snapshot,
    varied_history,
)

WHEN = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def sample_table(metadata: MetaData) -> Table:
    table = Table(
        "bulk_sample",
        metadata,
        Column("a", String(36), primary_key=True),
        Column("b", Integer, primary_key=True),
        Column("amount", Money(), nullable=True),
        Column("at", UtcDateTime(), nullable=True),
        Column("day", Date, nullable=True),
        Column("flag", Boolean, nullable=True),
        Column("ratio", Float, nullable=True),
        Column("doc", JSON, nullable=True),
        Column("note", String(100), nullable=True),
    )
    Index("ix_bulk_sample_note", table.c.note)
    return table


def sample_row(a: str, b: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "a": a,
        "b": b,
        "amount": Decimal("12.5"),
        "at": WHEN,
        "day": date(2026, 4, 30),
        "flag": True,
        "ratio": 0.25,
        "doc": {"stages": [{"id": "x", "probability": 10}], "name": "ü"},
        "note": "first",
    }
    row.update(values)
    return row


@pytest.fixture
async def engine(backend: Backend, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    settings = backend.settings(tmp_path / "data")
    engine = make_engine(settings.store, pool_size=2)
    await ensure_schema(engine, settings.store)
    try:
        yield engine
    finally:
        await engine.dispose()


async def rows_of(engine: AsyncEngine, table: Table) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(table).order_by(table.c.a, table.c.b))
        return [dict(r) for r in result.mappings().all()]


async def test_bulk_upsert_inserts_replaces_and_lets_the_last_row_of_a_key_win(
    engine: AsyncEngine,
) -> None:
    table = sample_table(MetaData())
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
        await bulk_upsert(conn, table, ["a", "b"], [sample_row("d1", 1), sample_row("d1", 2)])
    async with engine.begin() as conn:
        await bulk_upsert(
            conn,
            table,
            ["a", "b"],
            [
                sample_row("d1", 1, note="second", amount=Decimal("1.0001")),
                sample_row("d2", 1, amount=None, at=None, day=None, flag=None, ratio=None),
                sample_row("d1", 1, note="third", at=WHEN + timedelta(hours=1), doc=None),
                sample_row("d2", 1, note="d2 last", amount="7", doc=[1, "two", None]),
            ],
        )
        await bulk_upsert(conn, table, ["a", "b"], [])

    rows = await rows_of(engine, table)
    assert [(r["a"], r["b"], r["note"]) for r in rows] == [
        ("d1", 1, "third"),
        ("d1", 2, "first"),
        ("d2", 1, "d2 last"),
    ]
    third, first, last = rows
    assert third["at"] == WHEN + timedelta(hours=1) and third["at"].tzinfo is not None
    assert third["doc"] is None and third["amount"] == Decimal("12.5")
    assert first == sample_row("d1", 2)
    assert last["amount"] == Decimal(7) and last["doc"] == [1, "two", None]
    assert last["at"] == WHEN and last["day"] == date(2026, 4, 30)


async def test_bulk_insert_and_bulk_update_write_every_column_type(engine: AsyncEngine) -> None:
    table = sample_table(MetaData())
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
        await bulk_insert(conn, table, [sample_row(f"d{i}", i) for i in range(3)])
    later = WHEN + timedelta(days=2)
    async with engine.begin() as conn:
        await bulk_update(
            conn,
            table,
            ["a", "b"],
            ["at", "note"],
            [
                {"a": "d0", "b": 0, "at": later, "note": "moved"},
                {"a": "d2", "b": 2, "at": None, "note": None},
                {"a": "d9", "b": 9, "at": later, "note": "no such row"},
            ],
        )
        await bulk_update(conn, table, ["a", "b"], ["note"], [])

    rows = await rows_of(engine, table)
    assert rows == [
        sample_row("d0", 0, at=later, note="moved"),
        sample_row("d1", 1),
        sample_row("d2", 2, at=None, note=None),
    ]


@pytest.fixture
async def stores(backend: Backend, tmp_path: Path, clock: TestClock) -> AsyncIterator[Stores]:
    opened = await open_stores(backend, tmp_path / "data", clock, batch_size=11)
    try:
        yield opened
    finally:
        await close_stores(opened)


def busy_deal(stores: Stores) -> None:
    """One deal that changes many times in a row (one rebuild batch holds all of it)."""
    app = stores.app
    pipeline_id = define_default_pipeline(app, "Busy", JAN)
    admin = ACTORS[0]
    when = JAN + timedelta(days=1)
    deal = handle(
        app,
        CreateDeal(
            actor=admin, pipeline_id=pipeline_id, title="busy", value="100.00", occurred_at=when
        ),
    ).id
    stages = ["demo-or-meeting", "quote-sent", "negotiation", "demo-or-meeting", "quote-sent"]
    for n, stage in enumerate(stages):
        when += timedelta(hours=5)
        handle(app, AdvanceDeal(deal_id=deal, actor=admin, stage=stage, occurred_at=when))
        when += timedelta(hours=1)
        handle(app, UpdateDeal(deal_id=deal, actor=admin, value=f"{200 + n}.50", occurred_at=when))
    when += timedelta(hours=1)
    handle(app, LoseDeal(deal_id=deal, actor=admin, reason="Price", note=None, occurred_at=when))
    when += timedelta(hours=1)
    handle(app, ReopenDeal(deal_id=deal, actor=admin, stage="negotiation", occurred_at=when))
    when += timedelta(hours=1)
    handle(app, WinDeal(deal_id=deal, actor=admin, occurred_at=when))


@pytest.mark.parametrize("batch_size", [1, 6, 10_000])
async def test_a_rebuild_gives_the_incremental_tables_wherever_its_batches_fall(
    stores: Stores, batch_size: int
) -> None:
    # Batches of one event, batches that split every deal's history, and one batch
    # that holds the whole log (every deal's many changes in it).
    busy_deal(stores)
    varied_history(stores.app, deals=12, commands=30)
    await stores.worker.catch_up()
    incremental = await snapshot(stores.engine)
    before = await states(stores.engine)

    await rebuild(stores.engine, EventSource(stores.app), all_projections(), batch_size=batch_size)

    after = await states(stores.engine)
    for name, state in after.items():
        assert (state.generation, state.position, state.skipped) == (
            2,
            before[name].position,
            before[name].skipped,
        )
    assert before["current_pipeline"].skipped == 1  # the unknown event type
    assert_same_tables(await snapshot(stores.engine), incremental)


async def index_names(engine: AsyncEngine, table_name: str) -> set[str]:
    async with engine.connect() as conn:
        found = await conn.run_sync(lambda sync: inspect(sync).get_indexes(table_name))
    return {i["name"] for i in found if i["name"]}


def secondary_indexes(projection: Projection, generation: int) -> dict[str, set[str]]:
    return {
        t.name: {i.name for i in t.indexes if i.name}
        for t in projection.tables(generation).values()
    }


async def test_a_rebuild_fills_its_tables_first_and_indexes_them_before_switching(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    varied_history(stores.app, deals=5, commands=10)
    await stores.worker.catch_up()
    projection = stores.projections["audit_history"]
    while_filled: dict[str, set[str]] = {}
    real_finish = rebuild_module._finish_tables

    async def finish(engine: AsyncEngine, build: Any) -> None:
        for table_name in secondary_indexes(build.projection, build.generation):
            while_filled[table_name] = await index_names(engine, table_name)
        await real_finish(engine, build)

    monkeypatch.setattr(rebuild_module, "_finish_tables", finish)
    generations = await rebuild(stores.engine, EventSource(stores.app), [projection], batch_size=7)

    assert generations == {"audit_history": 2}
    expected = secondary_indexes(projection, 2)
    assert while_filled == {name: set() for name in expected}
    indexed = {table: names for table, names in expected.items() if names}
    assert indexed  # the events table has its secondary indexes; a counter table may have none
    for table_name, names in indexed.items():
        assert await index_names(stores.engine, table_name) == names


async def test_tables_created_without_indexes_get_exactly_their_indexes_later(
    engine: AsyncEngine,
) -> None:
    projection = all_projections()[0]
    async with engine.begin() as conn:
        await projection.create_tables(conn, 7, indexes=False)
    for table_name in secondary_indexes(projection, 7):
        assert await index_names(engine, table_name) == set()
    async with engine.begin() as conn:
        await projection.create_indexes(conn, 7)
        await projection.create_indexes(conn, 7)  # a second call finds nothing to do
    for table_name, expected in secondary_indexes(projection, 7).items():
        assert await index_names(engine, table_name) == expected
