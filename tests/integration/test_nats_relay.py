"""The NATS relay against the real NATS JetStream at 127.0.0.1:4222 and real stores: every
event once, in order, with its subject and ``Nats-Msg-Id``; killed mid-stream and
restarted; NATS down, then up; the standby on PostgreSQL; inside the worker process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from libs.application.records import EventRecord
from libs.observability import metrics
from services.demo.generator import generate
from services.feeds.envelope import envelope
from services.feeds.nats_relay import NatsRelay, relay_status
from services.projections.source import EventSource
from tests.conftest import Backend, TestClock
from tests.integration.test_read_models import Stores, close_stores, open_stores
from tests.integration.test_rebuild import DEALTRAIL, DEMO_END, ROOT, cli_env
from tests.jetstream import (
    Message,
    Target,
    delete_stream,
    free_port,
    message_count,
    need_nats,
    new_target,
    own_nats_server,
    read_stream,
)
from tests.started import started_worker

WAIT_SECONDS = 60.0


@pytest.fixture
def target() -> Iterator[Target]:
    need_nats()
    made = new_target()
    try:
        yield made
    finally:
        delete_stream(made)


@pytest.fixture
async def stores(backend: Backend, tmp_path: Path, clock: TestClock) -> AsyncIterator[Stores]:
    opened = await open_stores(backend, tmp_path / "data", clock)
    try:
        yield opened
    finally:
        await close_stores(opened)


def relay_on(stores: Stores, target: Target, **options: object) -> NatsRelay:
    return NatsRelay(
        engine=stores.engine,
        source=EventSource(stores.app),
        location=stores.settings.store,
        url=target.url,
        stream=target.stream,
        subject_prefix=target.prefix,
        **options,  # type: ignore[arg-type]
    )


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def all_records(stores: Stores) -> list[EventRecord]:
    return EventSource(stores.app).read(0, 1_000_000)


def assert_one_message_per_event(messages: list[Message], records: list[EventRecord]) -> None:
    """Exactly one message per position, in log order, each the event's outbound shape."""
    ids = [m.msg_id for m in messages]
    assert len(ids) == len(set(ids)), "a position was published twice"
    assert ids == [str(r.position) for r in records]
    seqs = [m.seq for m in messages]
    assert seqs == sorted(seqs)


async def test_the_relay_publishes_every_event_once_with_its_subject_and_msg_id(
    stores: Stores, target: Target
) -> None:
    generate(stores.app, deals=12, seed=5, end=DEMO_END)
    records = all_records(stores)
    relay = relay_on(stores, target, batch_size=25)
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: _at(relay, records[-1].position), "the relay to reach the head")
        messages = await read_stream(target)
        assert_one_message_per_event(messages, records)
        for message, record in zip(messages, records, strict=True):
            assert message.subject == (
                f"{target.prefix}.{record.aggregate_type.lower()}.{record.event_type}"
            )
            assert message.body == json.loads(json.dumps(envelope(stores.app, record)))
        assert {m.subject.split(".")[1] for m in messages} >= {"deal", "pipeline"}
        # a deal's event carries the deal as it stood after it
        won = next(m for m in messages if m.subject.endswith(".DealWon"))
        assert won.body["deal"]["status"] == "won"
        assert won.body["deal"]["id"] == won.body["aggregate_id"]

        # it follows new events: one more deal's history arrives without a restart
        generate(stores.app, deals=2, seed=6, end=DEMO_END)
        relay.poke()
        more = all_records(stores)
        assert len(more) > len(records)
        await until(lambda: _at(relay, more[-1].position), "the relay to follow new events")
        assert_one_message_per_event(await read_stream(target), more)
        ok, checks = relay.ready()
        assert ok, checks
        assert checks["nats_relay"]["connected"] is True
    finally:
        relay.stop()
        await task

    # a new relay resumes from the stored position: nothing is sent again
    again = relay_on(stores, target)
    await again.setup()
    await again._ensure_nats()
    try:
        assert await again.step() == 0
    finally:
        await again._close_nats()
    assert await message_count(target) == len(more)
    status = await relay_status(stores.engine, EventSource(stores.app), target.stream)
    assert status["position"] == more[-1].position
    assert status["behind"] == 0
    assert status["published"] == len(more)


async def _at(relay: NatsRelay, position: int) -> bool:
    return relay.health.position == position


async def test_a_relay_killed_mid_stream_and_restarted_leaves_one_message_per_position(
    stores: Stores, backend: Backend, target: Target, tmp_path: Path
) -> None:
    generate(stores.app, deals=260, seed=11, end=DEMO_END)
    records = all_records(stores)
    assert len(records) > 3000
    env = {**cli_env(backend, tmp_path / "relay-data"), **target.env()}

    def start(n: int) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"relay-{n}.log").open("wb")
        return subprocess.Popen(
            [str(DEALTRAIL), "relay", "nats", "--batch-size", "40"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    first = start(1)
    try:
        # kill it as soon as it has published part of the log
        deadline = time.monotonic() + WAIT_SECONDS
        while (count := await message_count(target)) < 200:
            assert first.poll() is None, (tmp_path / "relay-1.log").read_text()
            assert time.monotonic() < deadline, "the relay published nothing"
            await asyncio.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    killed_at = await message_count(target)
    assert count <= killed_at < len(records), "killed after it had published everything"
    stored = await relay_status(stores.engine, EventSource(stores.app), target.stream)
    assert stored["position"] < records[-1].position

    second = start(2)
    try:

        async def caught_up() -> bool:
            assert second.poll() is None, (tmp_path / "relay-2.log").read_text()
            status = await relay_status(stores.engine, EventSource(stores.app), target.stream)
            return bool(status["position"] == records[-1].position)

        await until(caught_up, "the restarted relay to reach the head")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert second.returncode == 0, (tmp_path / "relay-2.log").read_text()
    messages = await read_stream(target)
    assert len(messages) == len(records)
    assert_one_message_per_event(messages, records)

    result = await asyncio.to_thread(
        subprocess.run,
        [str(DEALTRAIL), "relay", "status", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["relay"]["position"] == records[-1].position
    assert status["relay"]["behind"] == 0
    assert status["nats"]["messages"] == len(records)
    assert status["nats"]["last_position"] == records[-1].position


async def test_the_relay_waits_out_nats_being_down_and_catches_up(
    stores: Stores, tmp_path: Path
) -> None:
    need_nats()
    port = free_port()
    down = Target(f"nats://127.0.0.1:{port}", "T_DOWN", "tdown")
    generate(stores.app, deals=5, seed=3, end=DEMO_END)
    records = all_records(stores)
    errors = metrics.NATS_RELAY_ERRORS.labels(down.stream)
    errors_before = errors._value.get()
    relay = relay_on(stores, down)
    task = asyncio.create_task(relay.run())
    try:

        async def failing() -> bool:
            return relay.health.error is not None and errors._value.get() >= errors_before + 2

        await until(failing, "the relay to notice NATS is down (twice)")
        assert not task.done(), "the relay gave up"
        ok, checks = relay.ready()
        assert not ok
        assert checks["nats_relay"]["connected"] is False
        assert f"127.0.0.1:{port}" in checks["nats_relay"]["error"]
        status = await relay_status(stores.engine, EventSource(stores.app), down.stream)
        assert status["position"] == 0
        assert status["behind"] == len(records)

        with own_nats_server(port, tmp_path / "nats-store"):
            await until(lambda: _at(relay, records[-1].position), "the relay to catch up")
            assert_one_message_per_event(await read_stream(down), records)
            assert relay.ready()[0]
            assert relay.health.error is None
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)


async def test_on_postgresql_only_the_holder_of_the_lock_relays(
    postgres_backend: Backend, tmp_path: Path, clock: TestClock, target: Target
) -> None:
    stores = await open_stores(postgres_backend, tmp_path / "data", clock)
    try:
        generate(stores.app, deals=4, seed=9, end=DEMO_END)
        records = all_records(stores)
        first, second = relay_on(stores, target), relay_on(stores, target)
        first_task = asyncio.create_task(first.run())
        await until(lambda: _at(first, records[-1].position), "the first relay to publish")
        second_task = asyncio.create_task(second.run())
        try:

            async def standing_by() -> bool:
                return second._lock_conn is not None and not second.health.active

            await until(standing_by, "the second relay to stand by")
            assert second.health.connected is False
            assert second.ready()[0]  # standing by is not a failure
            first.stop()
            await asyncio.wait_for(first_task, 30)
            generate(stores.app, deals=2, seed=10, end=DEMO_END)
            more = all_records(stores)
            await until(lambda: _at(second, more[-1].position), "the standby to take over")
            assert_one_message_per_event(await read_stream(target), more)
        finally:
            first.stop()
            second.stop()
            await asyncio.wait_for(asyncio.gather(first_task, second_task), 30)
    finally:
        await close_stores(stores)


async def test_the_worker_process_relays_when_told_to(
    stores: Stores, backend: Backend, target: Target, tmp_path: Path
) -> None:
    generate(stores.app, deals=3, seed=2, end=DEMO_END)
    records = all_records(stores)
    env = {**target.env(), "DEALTRAIL_NATS_RELAY": "true"}
    with started_worker(backend, tmp_path, **env) as worker:
        await until(
            lambda: _count_is(target, len(records)), "the worker's relay to publish the log"
        )
        async with httpx.AsyncClient(base_url=worker.base_url, timeout=10) as client:

            async def relayed() -> bool:
                ready = await client.get("/health/ready")
                assert ready.status_code == 200, ready.text
                position = ready.json()["checks"]["nats_relay"]["position"]
                return bool(position == records[-1].position)

            await until(relayed, "the worker's relay to store its position")
            scraped = (await client.get("/metrics")).text
        assert f'dealtrail_nats_relay_position{{stream="{target.stream}"}}' in scraped
        assert f'dealtrail_nats_relay_connected{{stream="{target.stream}"}} 1.0' in scraped
    assert_one_message_per_event(await read_stream(target), records)


async def _count_is(target: Target, count: int) -> bool:
    return await message_count(target) == count
