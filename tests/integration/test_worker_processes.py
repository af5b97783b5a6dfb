"""Projection workers as real processes: killed mid-batch, tailing concurrent writers, and
two of them on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from libs.application.records import decode_all
from services.demo.generator import generate
from services.projections.catalog import all_projections
from services.projections.rebuild import rebuild
from services.projections.runner import advisory_key
from services.projections.source import EventSource
from tests.conftest import Backend, TestClock
from tests.integration.test_read_models import (
    Stores,
    close_stores,
    open_stores,
    states,
    table_rows,
)
from tests.integration.test_rebuild import (
    DEALTRAIL,
    DEMO_END,
    ROOT,
    assert_same_tables,
    cli_env,
    define_pipelines,
    snapshot,
    write_history,
)

WAIT_SECONDS = 30.0
NAMES = [p.name for p in all_projections()]
JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
async def stores(backend: Backend, tmp_path: Path, clock: TestClock) -> AsyncIterator[Stores]:
    opened = await open_stores(backend, tmp_path / "data", clock, batch_size=20)
    try:
        yield opened
    finally:
        await close_stores(opened)


class Workers:
    """Worker processes started by one test; every one is killed when the test ends."""

    def __init__(self, backend: Backend, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp_path / f"worker-{len(self.started) + 1}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(DEALTRAIL), "projections", "run", *args],
                env=cli_env(self.backend, self.tmp_path / "worker-data"),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append((proc, log))
        return proc, log

    def kill_all(self) -> None:
        for proc, _ in self.started:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


@pytest.fixture
def workers(backend: Backend, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(backend, tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


# Concurrent writers and advisory-lock standby need PostgreSQL (SQLite has one writer at
# a time and no advisory locks): these tests run on PostgreSQL only.
POSTGRES_ONLY = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, seconds: float = WAIT_SECONDS
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"waited {seconds:g} s for {what}")


async def positions(stores: Stores) -> dict[str, int]:
    try:
        found = await states(stores.engine)
    except Exception:  # the worker process may not have created the state table yet
        return {}
    return {name: found[name].position for name in NAMES if name in found}


async def at_head(stores: Stores) -> bool:
    found = await positions(stores)
    return len(found) == len(NAMES) and set(found.values()) == {stores.head()}


def alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    assert proc.poll() is None, f"worker exited with {proc.returncode}:\n{log.read_text()}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Ask a worker to stop (SIGTERM) and wait; kill it if it does not."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError("the worker ignored SIGTERM") from None


async def assert_equal_to_a_clean_rebuild(stores: Stores) -> None:
    """Every read-model table equals a replay from position 0 into the next generation."""
    incremental = await snapshot(stores.engine)
    before = await states(stores.engine)
    await rebuild(stores.engine, EventSource(stores.app), all_projections())
    after = await states(stores.engine)
    for name in NAMES:
        assert after[name].generation == before[name].generation + 1
        assert (after[name].position, after[name].skipped) == (
            before[name].position,
            before[name].skipped,
        )
    assert_same_tables(await snapshot(stores.engine), incremental)


async def assert_projected_exactly_once(stores: Stores) -> None:
    """Checks that need no rebuild: one audit row per event, in log order, and sums."""
    app = stores.app
    log = [r for batch in app.iter_notifications() for r in decode_all(app.mapper, batch)]
    head = stores.head()
    assert [r.position for r in log] == list(range(1, head + 1))  # gap-free log
    audit = await table_rows(stores.engine, _projection(stores, "audit_history"), "events")
    assert [(r["position"], r["aggregate_id"], r["event_type"], r["version"]) for r in audit] == [
        (r.position, str(r.aggregate_id), r.event_type, r.version) for r in log
    ]
    last_version = {str(r.aggregate_id): r.version for r in log if r.aggregate_type == "Deal"}
    deals = await table_rows(stores.engine, _projection(stores, "current_pipeline"), "deals")
    assert {d["deal_id"]: d["version"] for d in deals} == last_version
    totals: dict[tuple[str, str], tuple[int, Decimal, Decimal]] = {}
    for d in deals:
        if d["status"] == "open":
            key = (d["pipeline_id"], d["stage_id"])
            count, value, weight = totals.get(key, (0, Decimal(0), Decimal(0)))
            totals[key] = (count + 1, value + d["value"], weight + d["weighted_value"])
    rows = await table_rows(stores.engine, _projection(stores, "current_pipeline"), "totals")
    assert {
        (r["pipeline_id"], r["stage_id"]): (r["open_count"], r["open_value"], r["weighted_value"])
        for r in rows
        if r["open_count"]
    } == totals
    entries = Counter(
        str(r.aggregate_id)
        for r in log
        if r.event_type in ("DealCreated", "StageAdvanced", "DealReopened")
    )
    visits = await table_rows(stores.engine, _projection(stores, "stage_durations"), "visits")
    assert Counter(v["deal_id"] for v in visits) == entries


def _projection(stores: Stores, name: str) -> Any:
    return stores.projections[name]


# --- crash safety ---------------------------------------------------------------------------


async def test_a_worker_killed_mid_batch_and_restarted_leaves_the_read_models_equal_to_a_rebuild(
    stores: Stores, workers: Workers
) -> None:
    app = stores.app
    generate(app, deals=15, seed=31, end=DEMO_END)
    head = stores.head()
    assert head > 100

    proc, log = workers.start("--batch-size", "2")

    async def part_way() -> bool:
        alive(proc, log)
        found = await positions(stores)
        return len(found) == len(NAMES) and max(found.values()) >= 10

    await wait_until(part_way, "the worker to get part of the way")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    killed_at = await positions(stores)
    assert min(killed_at.values()) < head, "the worker finished before it was killed"

    # More events while no worker runs, then a fresh worker picks up where it stopped.
    write_history(app, define_pipelines(app, JAN), 20, seed=12, label="after crash ")
    proc, log = workers.start("--batch-size", "50")

    async def caught_up() -> bool:
        alive(proc, log)
        return await at_head(stores)

    await wait_until(caught_up, "the restarted worker to reach the head")
    stop(proc)

    for name, position in (await positions(stores)).items():
        assert position >= killed_at[name]
    await assert_projected_exactly_once(stores)
    await assert_equal_to_a_clean_rebuild(stores)


# --- concurrent writers --------------------------------------------------------------------


@POSTGRES_ONLY
async def test_every_event_of_concurrent_writers_is_projected_exactly_once(
    stores: Stores, backend: Backend
) -> None:
    app = stores.app
    pipelines = define_pipelines(app, JAN)
    worker_task = asyncio.create_task(stores.worker.run())
    heads: list[int] = []
    try:
        # Rounds of four concurrent writers; the worker runs throughout, and each round
        # starts only once the worker has projected the one before, so it follows the log
        # while writers append (whatever the machine's speed), not just a finished log.
        for round_ in range(3):
            await asyncio.gather(
                *(
                    asyncio.to_thread(
                        write_history,
                        app,
                        pipelines,
                        14,
                        100 + 10 * round_ + i,
                        JAN,
                        f"round {round_} writer {i} ",
                    )
                    for i in range(4)
                )
            )
            heads.append(stores.head())
            await wait_until(lambda: at_head(stores), f"the worker to reach round {round_}")
    finally:
        stores.worker.stop()
        await asyncio.wait_for(worker_task, WAIT_SECONDS)

    assert heads[0] < heads[1] < heads[2] and heads[-1] > 160
    await assert_projected_exactly_once(stores)
    await assert_equal_to_a_clean_rebuild(stores)


# --- two workers on one database -----------------------------------------------------------


def lock_holders(backend: Backend, stores: Stores) -> dict[str, int]:
    """Which PostgreSQL backend (pid) holds each projection's advisory lock."""
    keys = {advisory_key(stores.settings.store, name): name for name in NAMES}
    with psycopg.connect(backend.url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT classid::bigint, objid::bigint, pid FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    held: dict[str, int] = {}
    for high, low, pid in rows:
        key = (high << 32) | low
        if key >= 1 << 63:
            key -= 1 << 64
        if key in keys:
            held[keys[key]] = pid
    return held


def took_locks(log: Path) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()
    return sorted(
        line.split("projection ", 1)[1].split(":", 1)[0]
        for line in lines
        if "this worker took the lock" in line
    )


@POSTGRES_ONLY
async def test_two_workers_on_one_database_process_one_at_a_time_and_the_second_takes_over(
    stores: Stores, backend: Backend, workers: Workers
) -> None:
    app = stores.app
    pipelines = define_pipelines(app, JAN)
    write_history(app, pipelines, 20, seed=21)

    first, first_log = workers.start()

    async def first_has_everything() -> bool:
        alive(first, first_log)
        return took_locks(first_log) == sorted(NAMES) and await at_head(stores)

    await wait_until(first_has_everything, "the first worker to lock every projection")
    second, second_log = workers.start()

    async def second_is_waiting() -> bool:
        alive(second, second_log)
        return "projection worker for" in second_log.read_text(errors="replace")

    await wait_until(second_is_waiting, "the second worker to start")
    await asyncio.sleep(1.5)  # it tries for the locks at once, then every second
    write_history(app, pipelines, 15, seed=22, start=FEB, label="first ")
    await wait_until(lambda: at_head(stores), "the first worker to process new events")

    holders = lock_holders(backend, stores)
    assert sorted(holders) == sorted(NAMES)
    assert len(set(holders.values())) == 1  # one connection, one process, holds them all
    assert took_locks(second_log) == []
    alive(second, second_log)

    first.send_signal(signal.SIGKILL)
    first.wait(10)
    write_history(app, pipelines, 15, seed=23, start=MAR, label="second ")

    async def second_took_over() -> bool:
        alive(second, second_log)
        return took_locks(second_log) == sorted(NAMES) and await at_head(stores)

    await wait_until(second_took_over, "the second worker to take over and catch up")
    new_holders = lock_holders(backend, stores)
    assert sorted(new_holders) == sorted(NAMES)
    assert len(set(new_holders.values())) == 1
    assert set(new_holders.values()) != set(holders.values())
    stop(second)

    await assert_projected_exactly_once(stores)
    await assert_equal_to_a_clean_rebuild(stores)
