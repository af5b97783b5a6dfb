"""Rebuilds: same tables as incremental work, no downtime, nothing lost, one at a time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import random
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.app import DealtrailApplication
from libs.application.handlers import handle
from libs.domain.actors import Actor, Role
from libs.domain.commands import (
    AdvanceDeal,
    CancelActivity,
    CompleteActivity,
    CreateDeal,
    DefinePipeline,
    LoseDeal,
    ReopenDeal,
    ScheduleActivity,
    UpdateActivity,
    UpdateDeal,
    WinDeal,
)
from libs.domain.pipeline import default_template
from services.demo.generator import generate
from services.projections import rebuild as rebuild_module
from services.projections.base import Projection
from services.projections.catalog import all_projections
from services.projections.parking import list_parked
from services.projections.read_models import ReadModels
from services.projections.rebuild import RebuildInProgress, rebuild
from services.projections.source import EventSource
from tests.conftest import API_KEYS, Backend, TestClock
from tests.integration.test_parking import store_unbounded_snooze
from tests.integration.test_read_models import (
    Gadget,
    Stores,
    close_stores,
    open_stores,
    states,
    table_rows,
)

ROOT = Path(__file__).resolve().parents[2]
DEALTRAIL = ROOT / ".venv" / "bin" / "dealtrail"
WAIT_SECONDS = 30.0
ALL = all_projections()  # names only; each test builds its own instances

JAN = datetime(2026, 1, 1, tzinfo=UTC)
DEMO_END = datetime(2026, 5, 1, tzinfo=UTC)  # the test clock stands at 1 June 2026
ACTORS = [Actor("ann", Role.ADMIN), Actor("max", Role.MANAGER)]
OWNERS = ["rita", "raj", "sam"]
STAGES_B = [
    {"name": "Lead", "probability": 15},
    {
        "name": "Offer",
        "probability": 55,
        "checklist": [
            {"title": "Send the offer", "type": "email", "due_in_days": 2},
            {"title": "Call the buyer", "type": "call"},
        ],
    },
    {"name": "Contract", "probability": 90},
]


# --- a varied history (the other integration modules use it too) ----------------------


def define_pipelines(app: DealtrailApplication, when: datetime) -> list[tuple[UUID, list[str]]]:
    """Two pipelines: the default B2B stages, and three stages of its own (one with a
    checklist, which its pipeline does not enforce)."""
    template = default_template()
    first = handle(
        app,
        DefinePipeline(
            actor=ACTORS[0],
            name="New business",
            currency="EUR",
            stages=template["stages"],
            lost_reasons=template["lost_reasons"],
            occurred_at=when,
        ),
    )
    second = handle(
        app,
        DefinePipeline(
            actor=ACTORS[1],
            name="Partners",
            currency="USD",
            stages=STAGES_B,
            lost_reasons=["Price", "Timing"],
            occurred_at=when,
        ),
    )
    return [
        (first.id, ["deal-created", "demo-or-meeting", "quote-sent", "negotiation"]),
        (second.id, ["lead", "offer", "contract"]),
    ]


def write_history(
    app: DealtrailApplication,
    pipelines: Sequence[tuple[UUID, list[str]]],
    commands: int,
    seed: int,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    label: str = "",
) -> None:
    """``commands`` random but valid commands of every kind, with backdated occurred_at;
    now and then an activity is planned, rescheduled, completed or cancelled between them.

    Business time moves forward one minute per command, so every deal's events are in
    order. Each deal is known only to the caller (threads may run this side by side).
    """
    rng = random.Random(seed)
    deals: list[dict[str, Any]] = []
    when = start
    for n in range(commands):
        when += timedelta(minutes=1)
        if deals:
            _activity_step(app, random.Random(f"{seed}:{n}"), deals, when - timedelta(seconds=30))
        actor = rng.choice(ACTORS)
        open_deals = [d for d in deals if d["status"] == "open"]
        closed = [d for d in deals if d["status"] != "open"]
        roll = rng.random()
        if not open_deals or roll < 0.2:
            pipeline_id, stages = rng.choice(pipelines)
            value = f"{rng.randint(0, 90_000)}.{rng.randint(0, 99):02d}"
            result = handle(
                app,
                CreateDeal(
                    actor=actor,
                    pipeline_id=pipeline_id,
                    title=f"{label}deal {n}",
                    value=value,
                    owner=rng.choice(OWNERS),
                    stage=rng.choice(stages[:2]),
                    occurred_at=when,
                ),
            )
            deals.append(
                {
                    "id": result.id,
                    "stages": stages,
                    "stage": result.state["stage"]["id"],
                    "status": "open",
                    "value": value,
                    "owner": result.state["owner"],
                }
            )
            continue
        if closed and roll < 0.28:
            deal = rng.choice(closed)
            stage = rng.choice([None, *deal["stages"]])
            result = handle(
                app, ReopenDeal(deal_id=deal["id"], actor=actor, stage=stage, occurred_at=when)
            )
            deal.update(status="open", stage=result.state["stage"]["id"])
            continue
        deal = rng.choice(open_deals)
        if roll < 0.55:
            target = rng.choice([s for s in deal["stages"] if s != deal["stage"]])
            handle(
                app, AdvanceDeal(deal_id=deal["id"], actor=actor, stage=target, occurred_at=when)
            )
            deal["stage"] = target
        elif roll < 0.65:
            handle(app, WinDeal(deal_id=deal["id"], actor=actor, occurred_at=when))
            deal["status"] = "won"
        elif roll < 0.75:
            reason = rng.choice(["Price", "Timing"])
            note = rng.choice([None, "went elsewhere"])
            handle(
                app,
                LoseDeal(
                    deal_id=deal["id"], actor=actor, reason=reason, note=note, occurred_at=when
                ),
            )
            deal["status"] = "lost"
        else:
            fields: dict[str, Any] = {}
            value = f"{rng.randint(0, 90_000)}.{rng.randint(0, 99):02d}"
            if value != deal["value"]:
                fields["value"] = value
                deal["value"] = value
            if roll > 0.88:
                owner = rng.choice([o for o in OWNERS if o != deal["owner"]])
                fields["owner"] = owner  # with a value change: two events, one save
                deal["owner"] = owner
            if roll > 0.95:
                fields["title"] = f"{label}renamed deal {n}"
            if fields:
                handle(app, UpdateDeal(deal_id=deal["id"], actor=actor, **fields, occurred_at=when))


def varied_history(app: DealtrailApplication, deals: int, commands: int, seed: int = 7) -> None:
    """The demo generator's history (pipelines, owners, teams, months of deal life), an
    event no projection knows, then ``commands`` more commands of every kind."""
    generate(app, deals=deals, seed=seed, end=DEMO_END)
    app.save(Gadget(label="unknown to every projection"))
    write_history(app, define_pipelines(app, JAN), commands, seed, label="b ")


def _activity_step(
    app: DealtrailApplication, rng: random.Random, deals: list[dict[str, Any]], when: datetime
) -> None:
    """Maybe one activity command on one of ``deals`` (their open activities are tracked
    in ``deal["activities"]``)."""
    open_deals = [d for d in deals if d["status"] == "open"]
    roll = rng.random()
    if roll < 0.6:
        return
    actor = rng.choice(ACTORS)
    if roll < 0.75 and open_deals:
        deal = rng.choice(open_deals)
        result = handle(
            app,
            ScheduleActivity(
                deal_id=deal["id"],
                actor=actor,
                type=rng.choice(["call", "meeting", "task"]),
                subject=f"follow-up {rng.randrange(100)}",
                due_at=when + timedelta(days=rng.randint(-5, 5)),
                occurred_at=when,
            ),
        )
        deal.setdefault("activities", []).append(result.id)
        return
    with_open = [d for d in deals if d.get("activities")]
    if not with_open:
        return
    deal = rng.choice(with_open)
    activity = rng.choice(deal["activities"])
    if roll < 0.85 and deal["status"] == "open":
        due = when + timedelta(days=rng.randint(1, 9))
        change = UpdateActivity(
            deal_id=deal["id"], actor=actor, activity_id=activity, due_at=due, occurred_at=when
        )
        handle(app, change)
        return
    if roll < 0.95:
        handle(
            app,
            CompleteActivity(
                deal_id=deal["id"], actor=actor, activity_id=activity, occurred_at=when
            ),
        )
    else:
        handle(
            app,
            CancelActivity(deal_id=deal["id"], actor=actor, activity_id=activity, occurred_at=when),
        )
    deal["activities"].remove(activity)


# --- comparing read models table by table -----------------------------------------------


async def snapshot(
    engine: AsyncEngine, generations: dict[str, int] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every read-model table (of the given, else the active, generation), rows by key."""
    if generations is None:
        generations = {name: s.generation for name, s in (await states(engine)).items()}
    out: dict[str, list[dict[str, Any]]] = {}
    for projection in all_projections():
        generation = generations[projection.name]
        for key in projection.tables(generation):
            out[f"{projection.name}.{key}"] = await table_rows(engine, projection, key, generation)
    return out


def assert_same_tables(
    got: dict[str, list[dict[str, Any]]], expected: dict[str, list[dict[str, Any]]]
) -> None:
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert len(got[name]) == len(expected[name]), name
        for got_row, expected_row in zip(got[name], expected[name], strict=True):
            assert got_row == expected_row, name


async def wait_for_head(engine: AsyncEngine, head: int) -> None:
    """Wait (bounded) until every projection's position has reached ``head``."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if {s.position for s in (await states(engine)).values()} == {head}:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"projections did not reach position {head}: {await states(engine)}")


async def existing_tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
async def stores(backend: Backend, tmp_path: Path, clock: TestClock) -> AsyncIterator[Stores]:
    opened = await open_stores(backend, tmp_path / "data", clock, batch_size=13)
    try:
        yield opened
    finally:
        await close_stores(opened)


# --- tests ------------------------------------------------------------------------------------


async def test_a_rebuild_gives_exactly_the_tables_built_incrementally(stores: Stores) -> None:
    varied_history(stores.app, deals=25, commands=40)
    await stores.worker.catch_up()  # batches of 13: boundaries fall mid-history
    incremental = await snapshot(stores.engine)
    before = await states(stores.engine)
    for projection in ("current_pipeline", "stage_durations", "audit_history"):
        assert all(rows for name, rows in incremental.items() if name.startswith(projection))

    generations = await rebuild(
        stores.engine, EventSource(stores.app), all_projections(), batch_size=50
    )

    assert generations == {p.name: 2 for p in all_projections()}
    after = await states(stores.engine)
    for name, state in after.items():
        assert state.generation == 2
        assert state.building_generation is None
        assert (state.position, state.skipped) == (before[name].position, before[name].skipped)
        assert state.position == stores.head()
    assert before["current_pipeline"].skipped == 1  # the Gadget event
    assert_same_tables(await snapshot(stores.engine), incremental)


async def test_a_rebuild_of_one_projection_leaves_the_others_alone(stores: Stores) -> None:
    varied_history(stores.app, deals=10, commands=15)
    await stores.worker.catch_up()
    incremental = await snapshot(stores.engine)

    await rebuild(stores.engine, EventSource(stores.app), [stores.projections["stage_durations"]])

    generations = {name: s.generation for name, s in (await states(stores.engine)).items()}
    assert generations == {p.name: 2 if p.name == "stage_durations" else 1 for p in ALL}
    assert_same_tables(await snapshot(stores.engine), incremental)


async def test_queries_keep_working_on_the_old_tables_during_a_rebuild_and_switch_at_once(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, engine = stores.app, stores.engine
    varied_history(app, deals=15, commands=20)
    await stores.worker.catch_up()
    pipeline_id = app.pipeline_ids()[0]
    deals_before = len(await table_rows(engine, stores.projections["current_pipeline"], "deals"))
    start_head = stores.head()

    # The incremental worker keeps running throughout, as it would in production.
    worker_task = asyncio.create_task(stores.worker.run())
    models = ReadModels(engine, wait_seconds=WAIT_SECONDS)
    observed: list[tuple[int, str, int, int, int, bool]] = []
    failures: list[BaseException] = []
    rebuilding = threading.Event()
    done = asyncio.Event()
    sequence = iter(range(1_000_000))

    async def query_forever() -> None:
        while not done.is_set():
            try:
                for name, key in (("current_pipeline", "deals"), ("audit_history", "events")):
                    async with models.open(name) as view:
                        # Taken right after the state was read (no await in between), so
                        # the numbers order the reads of the state.
                        seq = next(sequence)
                        table = view.tables[key]
                        count = (
                            await view.conn.execute(select(func.count()).select_from(table))
                        ).scalar_one()
                        observed.append(
                            (seq, name, view.generation, view.position, count, rebuilding.is_set())
                        )
            except Exception as exc:
                failures.append(exc)
            await asyncio.sleep(0.002)

    appended: dict[str, UUID] = {}
    writes: list[asyncio.Task[Any]] = []

    def create(title: str, value: str) -> UUID:
        return handle(
            app, CreateDeal(actor=ACTORS[0], pipeline_id=pipeline_id, title=title, value=value)
        ).id

    async def append(key: str, title: str, value: str) -> None:
        # Off the event loop: on SQLite a blocking write here would wait for the very
        # transactions this loop has open.
        appended[key] = await asyncio.to_thread(create, title, value)

    def during_the_rebuild(done_events: int, total: int) -> None:
        rebuilding.set()
        if not writes:
            writes.append(asyncio.create_task(append("replay", "while replaying", "10")))

    real_switch = rebuild_module._switch

    async def switch_after_a_late_event(*args: Any, **kwargs: Any) -> None:
        # An event that arrives after the replay read the head but before the switch.
        if "switch" not in appended:
            await append("switch", "before switch", "20")
        await real_switch(*args, **kwargs)

    monkeypatch.setattr(rebuild_module, "_switch", switch_after_a_late_event)
    queries = [asyncio.create_task(query_forever()) for _ in range(2)]
    try:
        await asyncio.sleep(0.05)
        generations = await asyncio.wait_for(
            rebuild(
                engine,
                EventSource(app),
                all_projections(),
                progress=during_the_rebuild,
                batch_size=20,
            ),
            WAIT_SECONDS,
        )
        await asyncio.gather(*writes)
        await wait_for_head(engine, stores.head())
    finally:
        done.set()
        await asyncio.gather(*queries)
        stores.worker.stop()
        await asyncio.wait_for(worker_task, WAIT_SECONDS)

    assert generations == {p.name: 2 for p in all_projections()}
    assert failures == []
    for name in ("current_pipeline", "audit_history"):
        seen = [o[2:] for o in sorted(observed) if o[1] == name]
        # Served from the old generation while the new one was being filled ...
        assert any(gen == 1 and during for gen, _, _, during in seen), name
        assert any(gen == 2 for gen, _, _, _ in seen), name
        # ... then switched once, for good, and never showed a half-built table.
        gens = [gen for gen, _, _, _ in seen]
        assert gens == sorted(gens), name
        for _, position, count, _ in seen:
            if name == "audit_history":
                assert count >= position >= start_head  # one row per event
            else:
                assert count >= deals_before
    # Both late events are in the new generation, which is at the head.
    final = await states(engine)
    assert {s.position for s in final.values()} == {stores.head()}
    async with models.open("current_pipeline", min_position=stores.head()) as view:
        titles = set(
            (
                await view.conn.execute(
                    select(view.tables["deals"].c.title).where(
                        view.tables["deals"].c.deal_id.in_([str(i) for i in appended.values()])
                    )
                )
            ).scalars()
        )
    assert titles == {"while replaying", "before switch"}
    assert view.generation == 2
    audit = await table_rows(engine, stores.projections["audit_history"], "events")
    assert [r["position"] for r in audit] == list(range(1, stores.head() + 1))

    # And the new generation, built by replay plus incremental work, equals a fresh replay.
    after_switch = await snapshot(engine)
    monkeypatch.setattr(rebuild_module, "_switch", real_switch)
    await rebuild(engine, EventSource(app), all_projections())
    assert_same_tables(await snapshot(engine), after_switch)


class GatedSource(EventSource):
    """An event source whose reads wait until the test opens the gate."""

    def __init__(self, app: DealtrailApplication) -> None:
        super().__init__(app)
        self.gate = threading.Event()

    def read(self, after: int, limit: int, stop: int | None = None) -> list[Any]:
        if not self.gate.wait(WAIT_SECONDS):
            raise TimeoutError("the test never opened the gate")
        return super().read(after, limit, stop)


async def wait_until_building(engine: AsyncEngine, name: str) -> int:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        building = (await states(engine))[name].building_generation
        if building is not None:
            return building
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} never started rebuilding")


async def test_a_second_rebuild_of_the_same_projection_is_refused_while_one_runs(
    stores: Stores,
) -> None:
    varied_history(stores.app, deals=8, commands=20)
    await stores.worker.catch_up()
    incremental = await snapshot(stores.engine)
    audit = stores.projections["audit_history"]
    gated = GatedSource(stores.app)
    first = asyncio.create_task(rebuild(stores.engine, gated, [audit]))
    try:
        assert await wait_until_building(stores.engine, "audit_history") == 2

        with pytest.raises(RebuildInProgress):
            await rebuild(stores.engine, EventSource(stores.app), [audit_history_again()])
        # A rebuild of everything is refused too, and claims nothing on its way out.
        with pytest.raises(RebuildInProgress):
            await rebuild(stores.engine, EventSource(stores.app), all_projections())
        building = {n: s.building_generation for n, s in (await states(stores.engine)).items()}
        assert building == {p.name: 2 if p.name == "audit_history" else None for p in ALL}
    finally:
        gated.gate.set()
        generations = await asyncio.wait_for(first, WAIT_SECONDS)

    assert generations == {"audit_history": 2}
    final = await states(stores.engine)
    assert final["audit_history"].generation == 2
    assert all(s.building_generation is None for s in final.values())
    assert_same_tables(await snapshot(stores.engine), incremental)
    # Once it is over, the next rebuild is welcome.
    again = await rebuild(stores.engine, EventSource(stores.app), all_projections())
    assert again == {p.name: 3 if p.name == "audit_history" else 2 for p in ALL}


def audit_history_again() -> Projection:
    """A fresh instance, as a second process would have."""
    return next(p for p in all_projections() if p.name == "audit_history")


def read_all(fd: int, into: bytearray) -> None:
    """Read a pty's output until the other side is closed."""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        into.extend(chunk)


def cli_env(backend: Backend, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=backend.url,
        DEALTRAIL_DB_SCHEMA=backend.schema,
        DEALTRAIL_API_KEYS=API_KEYS,
        DEALTRAIL_DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
    )
    return env


def start_cli(args: list[str], env: dict[str, str], stderr: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(DEALTRAIL), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
    )


async def test_the_rebuild_command_shows_progress_and_ends_serving_the_new_generation(
    stores: Stores, backend: Backend, tmp_path: Path
) -> None:
    varied_history(stores.app, deals=12, commands=10)
    await stores.worker.catch_up()
    incremental = await snapshot(stores.engine)

    # stderr on a terminal, so the progress bar draws (with rate and ETA) as it would
    # for an operator.
    master, slave = pty.openpty()
    progress = bytearray()
    reader = threading.Thread(target=read_all, args=(master, progress), daemon=True)
    proc = start_cli(
        ["projections", "rebuild", "current_pipeline", "--batch-size", "10"],
        cli_env(backend, tmp_path / "cli-data"),
        stderr=slave,
    )
    os.close(slave)
    reader.start()
    try:
        stdout, _ = await asyncio.to_thread(proc.communicate, timeout=WAIT_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        with contextlib.suppress(OSError):
            os.close(master)
    text = stdout.decode()
    bar = progress.decode(errors="replace")
    assert proc.returncode == 0, text + bar
    assert "rebuild current_pipeline" in bar
    assert "events/s" in bar and "ETA" in bar, bar
    events = stores.head()
    assert f"{events:,} events in" in bar, bar  # the final summary counts every event
    assert "current_pipeline: now serving generation 2" in text

    generations = {name: s.generation for name, s in (await states(stores.engine)).items()}
    assert generations == {p.name: 2 if p.name == "current_pipeline" else 1 for p in ALL}
    assert_same_tables(await snapshot(stores.engine), incremental)
    # The previous tables are gone once the grace period is over.
    tables = await existing_tables(stores.engine)
    assert not {t for t in tables if t.startswith("current_pipeline_") and t.endswith("_g1")}
    assert {t for t in tables if t.startswith("current_pipeline_") and t.endswith("_g2")}


# --- replaying in several processes (PostgreSQL) ----------------------------------------------


@pytest.fixture
async def pg_stores(
    postgres_backend: Backend, tmp_path: Path, clock: TestClock
) -> AsyncIterator[Stores]:
    opened = await open_stores(postgres_backend, tmp_path / "data", clock, batch_size=13)
    try:
        yield opened
    finally:
        await close_stores(opened)


async def test_a_rebuild_spread_over_processes_gives_exactly_the_tables_built_incrementally(
    pg_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = pg_stores
    varied_history(stores.app, deals=25, commands=40)
    await stores.worker.catch_up()
    deal = (await table_rows(stores.engine, stores.projections["current_pipeline"], "deals"))[0]
    # A moment no column holds: current_pipeline parks the event, the others apply it.
    poison = store_unbounded_snooze(stores.app, UUID(deal["deal_id"]), DEMO_END)
    write_history(stores.app, define_pipelines(stores.app, JAN), 15, seed=11, label="c ")
    await stores.worker.catch_up()
    incremental = await snapshot(stores.engine)
    before = await states(stores.engine)
    async with stores.engine.connect() as conn:
        parked_before = [(p.name, p.position) for p in await list_parked(conn)]
    assert parked_before == [("current_pipeline", poison)]

    # Every log is long enough here: three processes (this one and two more) share the four
    # projections, each reading the log in batches of 17.
    monkeypatch.setattr(rebuild_module, "PARALLEL_MIN_EVENTS", 0)
    replayed: dict[str, rebuild_module.Replayed] = {}
    started = time.monotonic()
    generations = await asyncio.wait_for(
        rebuild(
            stores.engine,
            EventSource(stores.app),
            all_projections(),
            batch_size=17,
            processes=3,
            stats=replayed,
        ),
        120,
    )

    assert generations == {p.name: 2 for p in ALL}
    assert len({r.pid for r in replayed.values()}) == 3
    assert all(r.events == stores.head() for r in replayed.values())
    # each replay's own figures lie within the rebuild's time
    assert all(0 < r.seconds <= time.monotonic() - started for r in replayed.values())
    assert all(r.cpu_seconds > 0 for r in replayed.values())
    after = await states(stores.engine)
    for name, state in after.items():
        assert (state.generation, state.building_generation) == (2, None)
        assert (state.position, state.skipped) == (before[name].position, before[name].skipped)
    assert_same_tables(await snapshot(stores.engine), incremental)
    async with stores.engine.connect() as conn:
        parked = await list_parked(conn)
        logged = await conn.execute(
            text(
                "SELECT count(*) FROM pg_class JOIN pg_namespace n ON n.oid = relnamespace "
                "WHERE relpersistence = 'u' AND n.nspname = current_schema()"
            )
        )
        assert logged.scalar_one() == 0  # every table of the new generation is logged
    assert [(p.name, p.position, p.generation) for p in parked] == [("current_pipeline", poison, 2)]


async def test_a_replay_process_that_fails_stops_the_rebuild_and_releases_the_claim(
    pg_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = pg_stores
    varied_history(stores.app, deals=5, commands=5)
    await stores.worker.catch_up()
    monkeypatch.setattr(rebuild_module, "PARALLEL_MIN_EVENTS", 0)
    source = EventSource(stores.app)
    # The second process cannot even set up its decoder.
    broken = {
        "PERSISTENCE_MODULE": "no_such_module",
        "DEALTRAIL_PERSISTENCE_MODULE": "no_such_module",
    }
    monkeypatch.setattr(rebuild_module, "_mapper_env", lambda source: broken)

    with pytest.raises(rebuild_module.ReplayFailed, match="no_such_module"):
        await asyncio.wait_for(rebuild(stores.engine, source, all_projections(), processes=2), 120)

    assert all(s.building_generation is None for s in (await states(stores.engine)).values())
