"""Poison events: an event a projection cannot apply is parked, and nothing stops.

The bad events are written straight into the event store, past the domain's checks, as a
buggy older version or a bad import would have written them; a projection bug is
injected by wrapping a real projection's ``apply`` for one event.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.app import DealtrailApplication
from libs.application.failures import is_unavailable
from libs.application.handlers import handle
from libs.domain.commands import AdvanceDeal, CreateDeal, WinDeal
from libs.domain.deal import Deal
from services.cli import main as cli
from services.projections import rebuild as rebuild_module
from services.projections.base import projection_parked
from services.projections.catalog import all_projections
from services.projections.parking import Parked, list_parked, retry_parked
from services.projections.rebuild import rebuild
from services.projections.runner import projection_status
from services.projections.source import EventSource
from services.projections.stage_durations import queries as stage_durations
from services.projections.stage_durations.projector import StageDurations
from tests.conftest import PG_URL, Backend, TestClock, auth, need_postgres
from tests.integration.test_read_models import (
    RITA,
    Stores,
    close_stores,
    deal_row,
    define_default_pipeline,
    open_stores,
    states,
    t,
    table_rows,
)

WAIT_SECONDS = 30.0
NAMES = [p.name for p in all_projections()]
# Valid ISO 8601 with a zone, but in UTC it is in the year 10000: no datetime holds it.
BEYOND_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-1)))


def store_event(app: DealtrailApplication, deal_id: UUID, event: str, **fields: Any) -> int:
    """Append one event of ``event`` type to the deal straight into the store, past every
    check of the domain; return its position."""
    deal = app.repository.get(deal_id)
    assert isinstance(deal, Deal)
    cls = getattr(Deal, event)
    stored = app.mapper.to_stored_event(
        cls(
            originator_id=deal.id,
            originator_version=deal.version + 1,
            timestamp=cls.create_timestamp(),
            **fields,
        )
    )
    positions = app.recorder.insert_events([stored])
    assert positions
    return positions[-1]


def store_unbounded_snooze(app: DealtrailApplication, deal_id: UUID, when: datetime) -> int:
    return store_event(
        app, deal_id, "DealSnoozed", until=BEYOND_TIME, reason="forever", actor="rita",
        occurred_at=when,
    )  # fmt: skip


Apply = Callable[[Any, AsyncConnection, Any, Sequence[Any]], Awaitable[None]]


@contextmanager
def stage_durations_bug(monkeypatch: pytest.MonkeyPatch, position: int) -> Iterator[None]:
    """While inside, the stage_durations projection fails on the event at ``position``."""
    real: Apply = StageDurations.apply

    async def buggy(self: Any, conn: AsyncConnection, tables: Any, records: Sequence[Any]) -> None:
        if any(r.position == position for r in records):
            raise RuntimeError(f"a bug in stage_durations at {position}")
        await real(self, conn, tables, records)

    with monkeypatch.context() as patch:
        patch.setattr(StageDurations, "apply", buggy)
        yield


def parked_keys(parked: Sequence[Parked]) -> list[tuple[str, int, str]]:
    return [(p.name, p.position, p.event_type) for p in parked]


async def all_parked(stores: Stores, name: str | None = None) -> list[Parked]:
    async with stores.engine.connect() as conn:
        return await list_parked(conn, None if name is None else [name])


async def visit_stages(stores: Stores, deal_id: UUID) -> list[tuple[str, str | None]]:
    """A deal's visits in the serving generation: (stage, how it was left), in order."""
    projection = stores.projections["stage_durations"]
    generation = (await states(stores.engine))["stage_durations"].generation
    async with stores.engine.connect() as conn:
        rows = await stage_durations.deal_visits(conn, projection.tables(generation), deal_id)
    return [(r["stage_id"], r["exit_kind"]) for r in rows]


@pytest.fixture
async def stores(backend: Backend, tmp_path: Path, clock: TestClock) -> AsyncIterator[Stores]:
    # Batches of 4: the bad events fall in the middle of batches, between good ones.
    opened = await open_stores(backend, tmp_path / "data", clock, batch_size=4)
    try:
        yield opened
    finally:
        await close_stores(opened)


class History:
    """Deals around two bad events: one no projection code can store, one a bug trips on."""

    def __init__(self, app: DealtrailApplication) -> None:
        self.pipeline = define_default_pipeline(app, "Poison", t(3, 1))

        def create(title: str, day: int) -> UUID:
            return handle(
                app,
                CreateDeal(
                    actor=RITA,
                    pipeline_id=self.pipeline,
                    title=title,
                    value="100",
                    occurred_at=t(3, day),
                ),
            ).id

        self.a = create("A", 2)
        self.b = create("B", 2)
        self.snooze = store_unbounded_snooze(app, self.a, t(3, 3))
        handle(
            app, AdvanceDeal(deal_id=self.a, actor=RITA, stage="Quote sent", occurred_at=t(3, 4))
        )
        handle(
            app,
            AdvanceDeal(deal_id=self.b, actor=RITA, stage="Demo or meeting", occurred_at=t(3, 4)),
        )
        handle(
            app, AdvanceDeal(deal_id=self.b, actor=RITA, stage="Quote sent", occurred_at=t(3, 5))
        )
        self.won = handle(app, WinDeal(deal_id=self.b, actor=RITA, occurred_at=t(3, 6))).position
        self.c = create("C", 7)


# --- the worker ------------------------------------------------------------------------------


async def test_poison_events_are_parked_and_every_projection_reaches_the_head(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = History(stores.app)
    head = stores.head()

    with stage_durations_bug(monkeypatch, history.won):
        await asyncio.wait_for(stores.worker.catch_up(), WAIT_SECONDS)

    assert {name: s.position for name, s in (await states(stores.engine)).items()} == {
        name: head for name in NAMES
    }
    parked = await all_parked(stores)
    assert parked_keys(parked) == [
        ("current_pipeline", history.snooze, "DealSnoozed"),
        ("stage_durations", history.won, "DealWon"),
    ]
    snooze, won = parked
    assert snooze.aggregate_id == str(history.a) and won.aggregate_id == str(history.b)
    assert "date value out of range" in snooze.error
    assert "OverflowError" in snooze.traceback
    assert won.error == f"RuntimeError: a bug in stage_durations at {history.won}"
    assert "buggy" in won.traceback
    assert snooze.attempts == won.attempts == 1 and snooze.generation == 1

    # The events around the bad ones were applied, by every projection.
    a, b = await deal_row(stores, history.a), await deal_row(stores, history.b)
    assert (a["stage_id"], a["snoozed_until"]) == ("quote-sent", None)
    assert (b["stage_id"], b["status"]) == ("quote-sent", "won")
    assert (await deal_row(stores, history.c))["title"] == "C"
    b_visits = [("deal-created", "advanced"), ("demo-or-meeting", "advanced")]
    assert await visit_stages(stores, history.b) == [*b_visits, ("quote-sent", None)]
    assert await visit_stages(stores, history.a) == [
        ("deal-created", "advanced"),
        ("quote-sent", None),
    ]
    assert await visit_stages(stores, history.c) == [("deal-created", None)]
    audit = await table_rows(stores.engine, stores.projections["audit_history"], "events")
    assert [r["position"] for r in audit] == list(range(1, head + 1))

    # A retry while the cause is still there keeps the event, with the new attempt counted.
    with stage_durations_bug(monkeypatch, history.won):
        again = await retry_parked(
            stores.engine, stores.worker.source, stores.projections["stage_durations"]
        )
    assert again.applied == [] and parked_keys(again.failed) == parked_keys([won])
    assert again.failed[0].attempts == 2

    # With the bug gone, the retry applies it and it leaves the parked list.
    fixed = await retry_parked(
        stores.engine, stores.worker.source, stores.projections["stage_durations"]
    )
    assert (fixed.applied, fixed.failed) == ([history.won], [])
    assert await all_parked(stores, "stage_durations") == []
    assert await visit_stages(stores, history.b) == [*b_visits, ("quote-sent", "won")]

    # The unbounded snooze still cannot be stored: it stays parked with its new error.
    still = await retry_parked(
        stores.engine, stores.worker.source, stores.projections["current_pipeline"]
    )
    assert still.applied == [] and [p.position for p in still.failed] == [history.snooze]
    assert parked_keys(await all_parked(stores)) == [
        ("current_pipeline", history.snooze, "DealSnoozed")
    ]

    # A rebuild after the fix parks nothing of stage_durations and gives the same visits.
    await rebuild(stores.engine, stores.worker.source, [stores.projections["stage_durations"]])
    assert await all_parked(stores, "stage_durations") == []
    assert await visit_stages(stores, history.b) == [*b_visits, ("quote-sent", "won")]


async def test_a_poison_event_parked_by_one_projection_leaves_the_others_alone(
    stores: Stores,
) -> None:
    """Batches that mix good events and a bad one: only the bad event is held back."""
    history = History(stores.app)
    for day in range(8, 20):
        handle(
            stores.app,
            CreateDeal(
                actor=RITA, pipeline_id=history.pipeline, title=f"D{day}", value="5",
                occurred_at=t(3, day),
            ),
        )  # fmt: skip
    await asyncio.wait_for(stores.worker.catch_up(), WAIT_SECONDS)

    head = stores.head()
    assert {s.position for s in (await states(stores.engine)).values()} == {head}
    assert parked_keys(await all_parked(stores)) == [
        ("current_pipeline", history.snooze, "DealSnoozed")
    ]
    deals = await table_rows(stores.engine, stores.projections["current_pipeline"], "deals")
    assert len(deals) == 3 + 12
    # The analytics history recorded the snooze the current pipeline could not.
    rows = await table_rows(stores.engine, stores.projections["analytics"], "history")
    assert any(r["position"] == history.snooze for r in rows)


def store_undecodable_snooze(app: DealtrailApplication, deal_id: UUID) -> int:
    """A DealSnoozed whose stored ``until`` is no date at all: it cannot even be decoded."""
    deal = app.repository.get(deal_id)
    cls = Deal.DealSnoozed
    stored = app.mapper.to_stored_event(
        cls(
            originator_id=deal.id,
            originator_version=deal.version + 1,
            timestamp=cls.create_timestamp(),
            until=t(4, 1),
            reason="garbled",
            actor="rita",
            occurred_at=t(3, 8),
        )
    )
    state = json.loads(stored.state)
    state["until"] = {"_type_": "datetime_iso", "_data_": "not a date"}
    positions = app.recorder.insert_events([replace(stored, state=json.dumps(state).encode())])
    assert positions
    return positions[-1]


async def test_an_event_that_cannot_be_decoded_is_parked_where_its_type_is_read(
    stores: Stores,
) -> None:
    history = History(stores.app)
    garbled = store_undecodable_snooze(stores.app, history.c)
    later = handle(
        stores.app,
        AdvanceDeal(deal_id=history.a, actor=RITA, stage="Negotiation", occurred_at=t(3, 9)),
    )
    await asyncio.wait_for(stores.worker.catch_up(), WAIT_SECONDS)

    assert {s.position for s in (await states(stores.engine)).values()} == {later.position}
    readers = [p.name for p in all_projections() if "DealSnoozed" in p.handles]
    assert set(readers) >= {"current_pipeline", "audit_history"}
    garbled_parks = [p for p in await all_parked(stores) if p.position == garbled]
    assert sorted((p.name, p.event_type, p.aggregate_id) for p in garbled_parks) == [
        (name, "DealSnoozed", str(history.c)) for name in sorted(readers)
    ]
    assert all("not a date" in p.error for p in garbled_parks)
    assert (await deal_row(stores, history.a))["stage_id"] == "negotiation"
    assert (await deal_row(stores, history.c))["snooze_reason"] is None
    assert (await visit_stages(stores, history.a))[-1] == ("negotiation", None)


# --- rebuilds --------------------------------------------------------------------------------


async def test_a_rebuild_parks_poison_events_and_completes(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = stores.app
    history = History(app)
    await asyncio.wait_for(stores.worker.catch_up(), WAIT_SECONDS)
    assert [p.generation for p in await all_parked(stores)] == [1]

    late: list[int] = []
    real_switch = rebuild_module._switch

    async def switch_after_a_late_poison(*args: Any, **kwargs: Any) -> None:
        # A bad event that arrives after the replay, applied by the switch's catch-up.
        if not late:
            late.append(await asyncio.to_thread(store_unbounded_snooze, app, history.c, t(3, 8)))
        await real_switch(*args, **kwargs)

    monkeypatch.setattr(rebuild_module, "_switch", switch_after_a_late_poison)
    generations = await asyncio.wait_for(
        rebuild(stores.engine, EventSource(app), all_projections(), batch_size=3), WAIT_SECONDS
    )

    assert generations == {name: 2 for name in NAMES}
    final = await states(stores.engine)
    assert {s.position for s in final.values()} == {stores.head()}
    parked = await all_parked(stores)
    assert parked_keys(parked) == [
        ("current_pipeline", history.snooze, "DealSnoozed"),
        ("current_pipeline", late[0], "DealSnoozed"),
    ]
    assert {p.generation for p in parked} == {2}
    # The first generation's parked row went with the switch.
    async with stores.engine.connect() as conn:
        rows = await conn.execute(select(func.count()).select_from(projection_parked))
        assert rows.scalar_one() == 2
    c = await deal_row(stores, history.c)
    assert (c["title"], c["snoozed_until"]) == ("C", None)
    assert (await deal_row(stores, history.a))["stage_id"] == "quote-sent"


# --- status and lag --------------------------------------------------------------------------


def leave_a_gap(backend: Backend, app: DealtrailApplication, size: int) -> None:
    """On PostgreSQL, inserts that roll back: they use up positions (sequence values)."""
    if backend.name != "postgres":
        return
    table = app.recorder.events_table_name  # type: ignore[attr-defined]
    with psycopg.connect(backend.url) as conn:
        conn.execute(f'SET search_path TO "{backend.schema}"')
        for version in range(size):
            conn.execute(
                f'INSERT INTO "{table}" (originator_id, originator_version, topic, state) '
                "VALUES (gen_random_uuid(), %s, 'x', '')",
                (version,),
            )
        conn.rollback()


async def test_status_counts_events_behind_and_parked_events(
    backend: Backend, stores: Stores
) -> None:
    app, source = stores.app, stores.worker.source
    history = History(app)
    written = stores.head()
    leave_a_gap(backend, app, 5)
    for day in (8, 9):
        handle(
            app,
            CreateDeal(
                actor=RITA,
                pipeline_id=history.pipeline,
                title="E",
                value="1",
                occurred_at=t(3, day),
            ),
        )
    events = written + 2
    head = stores.head()
    if backend.name == "postgres":
        assert head == events + 5  # the positions skip the rolled-back inserts

    before = {r["name"]: r for r in await projection_status(stores.engine, source)}
    assert {n: (r["position"], r["behind"], r["parked"]) for n, r in before.items()} == {
        name: (0, events, 0) for name in NAMES
    }
    assert all(r["head"] == head and r["behind_exact"] for r in before.values())
    capped = await projection_status(stores.engine, source, behind_limit=3)
    assert {(r["behind"], r["behind_exact"]) for r in capped} == {(3, False)}

    await asyncio.wait_for(stores.worker.catch_up(), WAIT_SECONDS)
    after = {r["name"]: r for r in await projection_status(stores.engine, source)}
    assert {n: (r["position"], r["behind"], r["parked"]) for n, r in after.items()} == {
        name: (head, 0, 1 if name == "current_pipeline" else 0) for name in NAMES
    }


async def test_health_shows_events_behind_and_parked_per_projection(
    api: httpx.AsyncClient,
) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    made = await api.post(
        "/v1/pipelines", json={"name": "Health", "currency": "EUR"}, headers=auth("admin")
    )
    assert made.status_code == 201, made.text
    deal = await api.post(
        "/v1/deals", json={"pipeline_id": made.json()["id"], "title": "A", "value": "1"},
        headers=auth("rep"),
    )  # fmt: skip
    assert deal.status_code == 201, deal.text
    when = datetime.now(UTC)
    bad = await asyncio.to_thread(
        store_unbounded_snooze, runtime.application, UUID(deal.json()["id"]), when
    )
    after = await api.post(
        "/v1/deals", json={"pipeline_id": made.json()["id"], "title": "B", "value": "2"},
        headers=auth("rep"),
    )  # fmt: skip
    head = after.json()["position"]
    assert head > bad

    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        health = await api.get("/health")
        assert health.status_code == 200, health.text
        body = health.json()
        projections = body["projections"]
        if all(p["position"] == head for p in projections.values()):
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
    assert body["position"] == head
    assert {name: (p["events_behind"], p["parked"]) for name, p in projections.items()} == {
        name: (0, 1 if name == "current_pipeline" else 0) for name in NAMES
    }
    # The deal after the bad event is served.
    got = await api.get(f"/v1/deals/{after.json()['id']}", headers=auth("rep"))
    assert got.status_code == 200, got.text


# --- the embedded worker and the API's breaker -----------------------------------------------


async def test_the_embedded_worker_trips_the_breaker_only_when_the_database_is_unreachable(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    worker, breaker = runtime.worker, runtime.breaker
    failures: list[BaseException] = []
    real_read = worker.source.read

    def failing_read(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures[-1]
        return real_read(*args, **kwargs)

    async def wait_until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            assert time.monotonic() < deadline
            worker.poke()
            await asyncio.sleep(0.05)

    seen: list[int] = []
    real_on_error = worker.on_error

    def counting_on_error(exc: BaseException) -> None:
        real_on_error(exc)
        seen.append(1)

    monkeypatch.setattr(worker, "on_error", counting_on_error)
    monkeypatch.setattr(worker.source, "read", failing_read)

    failures.append(ValueError("the worker's own failure"))
    await wait_until(lambda: len(seen) >= 2)
    assert not breaker.tripped

    failures.append(ConnectionRefusedError("database refuses connections"))
    await wait_until(lambda: breaker.tripped)


# --- the command line ------------------------------------------------------------------------


def test_the_projections_commands_list_retry_and_show_parked_events(
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend.point_cli_at(monkeypatch, tmp_path / "data")

    async def write_and_project() -> History:
        stores = await open_stores(backend, tmp_path / "data", TestClock(), batch_size=4)
        try:
            history = History(stores.app)
            with stage_durations_bug(monkeypatch, history.won):
                await asyncio.wait_for(stores.worker.catch_up(), WAIT_SECONDS)
            return history
        finally:
            await close_stores(stores)

    history = asyncio.run(write_and_project())
    capsys.readouterr()

    def run(*args: str) -> tuple[int, str]:
        code = cli(["projections", *args])
        out = capsys.readouterr()
        return code, out.out + out.err

    def listed(out: str) -> list[tuple[str, int, str, str]]:
        """(projection, position, event type, aggregate) of each parked event listed."""
        lines = [line.split() for line in out.splitlines()]
        return [(w[0], int(w[1]), w[2], w[3]) for w in lines if w and w[0] in NAMES]

    code = cli(["projections", "status"])
    assert code == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    # projection, generation, position, head, behind, parked, skipped
    assert {name: rows[name][4:6] for name in NAMES} == {
        "current_pipeline": ["0", "1"],
        "stage_durations": ["0", "1"],
        "audit_history": ["0", "0"],
        "analytics": ["0", "0"],
        "automations": ["0", "0"],
    }

    code, out = run("parked")
    assert code == 0
    assert listed(out) == [
        ("current_pipeline", history.snooze, "DealSnoozed", str(history.a)),
        ("stage_durations", history.won, "DealWon", str(history.b)),
    ]
    assert "date value out of range" in out
    assert f"RuntimeError: a bug in stage_durations at {history.won}" in out
    assert "2 parked events" in out

    code, out = run("parked", "stage_durations", "--traceback")
    assert code == 0 and "1 parked event" in out
    assert [p[0] for p in listed(out)] == ["stage_durations"] and "Traceback" in out

    code, out = run("parked", "no_such_projection")
    assert code == 2 and "unknown projection" in out

    code, out = run("retry", "stage_durations", "--position", str(history.snooze))
    assert code == 1 and f"no parked event at position {history.snooze}" in out

    with stage_durations_bug(monkeypatch, history.won):
        code, out = run("retry", "stage_durations")
    assert code == 1 and "0 applied" in out and "1 still failing" in out

    code, out = run("retry", "stage_durations", "--position", str(history.won))
    assert code == 0 and f"1 applied (positions {history.won})" in out
    code, out = run("parked", "stage_durations")
    assert code == 0 and "no parked events" in out

    code, out = run("retry", "current_pipeline")
    assert code == 1 and "1 still failing" in out and "(2 attempts)" in out

    code, out = run("rebuild", "current_pipeline")
    assert code == 0
    assert "current_pipeline: now serving generation 2; 1 event parked" in out
    code, out = run("parked")
    assert code == 0 and "1 parked event" in out
    assert listed(out) == [("current_pipeline", history.snooze, "DealSnoozed", str(history.a))]


# --- an outage is not a poison event ---------------------------------------------------------


@pytest.fixture
async def pg_stores(tmp_path: Path, clock: TestClock) -> AsyncIterator[Stores]:
    """Stores on PostgreSQL only: the test drops the worker's own server connection."""
    need_postgres()
    backend = Backend("postgres", PG_URL, f"t_{uuid.uuid4().hex[:12]}")
    opened = await open_stores(backend, tmp_path / "data", clock, batch_size=4)
    try:
        yield opened
    finally:
        await close_stores(opened)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '30s'")
            conn.execute(f'DROP SCHEMA IF EXISTS "{backend.schema}" CASCADE')


async def test_a_connection_lost_while_applying_is_retried_not_parked(
    pg_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = pg_stores
    history = History(stores.app)
    real: Apply = StageDurations.apply
    cut: list[int] = []

    async def losing_its_connection(
        self: Any, conn: AsyncConnection, tables: Any, records: Sequence[Any]
    ) -> None:
        if any(r.position == history.won for r in records) and not cut:
            cut.append(1)
            await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        await real(self, conn, tables, records)

    monkeypatch.setattr(StageDurations, "apply", losing_its_connection)
    with pytest.raises(Exception) as caught:  # the worker's run loop logs and retries it
        await asyncio.wait_for(stores.worker.catch_up(), WAIT_SECONDS)
    assert is_unavailable(caught.value)
    assert cut and await all_parked(stores, "stage_durations") == []
    assert (await states(stores.engine))["stage_durations"].position < history.won

    # The next attempt, on a fresh connection, applies the event like any other.
    await asyncio.wait_for(stores.worker.catch_up(), WAIT_SECONDS)
    assert {s.position for s in (await states(stores.engine)).values()} == {stores.head()}
    assert parked_keys(await all_parked(stores)) == [
        ("current_pipeline", history.snooze, "DealSnoozed")
    ]
    b_visits = await visit_stages(stores, history.b)
    assert b_visits[-1] == ("quote-sent", "won")
