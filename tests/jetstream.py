"""NATS JetStream for the change feed's tests: the server at 127.0.0.1:4222 (``.ci/run``
starts one when none answers), a stream of each test's own, and what a stream holds."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

NATS_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")
REQUIRED = os.environ.get("REQUIRE_NATS") == "1" or os.environ.get("REQUIRE_POSTGRES") == "1"


def _reachable(url: str) -> str | None:
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return None
    except OSError as exc:
        return f"NATS at {url} unreachable: {exc}"


def need_nats() -> None:
    """Fail (CI: ``REQUIRE_NATS=1`` or ``REQUIRE_POSTGRES=1``) or skip without NATS."""
    problem = _reachable(NATS_URL)
    if problem:
        if REQUIRED:
            pytest.fail(f"REQUIRE_NATS=1 but {problem}")
        pytest.skip(problem)


@dataclass(frozen=True)
class Target:
    """A stream of one test's own and its subjects, and the settings that name them."""

    url: str
    stream: str
    prefix: str

    def env(self) -> dict[str, str]:
        return {
            "DEALTRAIL_NATS_URL": self.url,
            "DEALTRAIL_NATS_STREAM": self.stream,
            "DEALTRAIL_NATS_SUBJECT_PREFIX": self.prefix,
        }


def new_target(url: str = NATS_URL) -> Target:
    tag = uuid.uuid4().hex[:10]
    return Target(url, f"T_{tag}", f"t{tag}")


def delete_stream(target: Target) -> None:
    async def delete() -> None:
        nc = await nats.connect(target.url, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            with suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(target.stream)
        finally:
            await nc.close()

    asyncio.run(delete())


@dataclass(frozen=True)
class Message:
    seq: int
    subject: str
    msg_id: str | None
    body: dict[str, Any]


async def stream_info(target: Target) -> Any | None:
    """The stream's info, or None while it does not exist."""
    nc = await nats.connect(target.url, allow_reconnect=False, max_reconnect_attempts=1)
    try:
        try:
            return await nc.jetstream().stream_info(target.stream)
        except nats.js.errors.NotFoundError:
            return None
    finally:
        await nc.close()


async def message_count(target: Target) -> int:
    info = await stream_info(target)
    return 0 if info is None else int(info.state.messages)


async def read_stream(target: Target) -> list[Message]:
    """Every message the stream holds, in its order (an ephemeral consumer, no acks)."""
    nc = await nats.connect(target.url, allow_reconnect=False, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        info = await js.stream_info(target.stream)
        total = int(info.state.messages)
        sub = await js.pull_subscribe(
            f"{target.prefix}.>",
            durable=None,
            stream=target.stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        out: list[Message] = []
        deadline = time.monotonic() + 60
        while len(out) < total and time.monotonic() < deadline:
            try:
                batch = await sub.fetch(500, timeout=2)
            except nats.errors.TimeoutError:
                continue
            for msg in batch:
                out.append(
                    Message(
                        msg.metadata.sequence.stream,
                        msg.subject,
                        (msg.headers or {}).get("Nats-Msg-Id"),
                        orjson.loads(msg.data),
                    )
                )
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def own_nats_server(port: int, store_dir: Path) -> Iterator[str]:
    """A nats-server with JetStream of the test's own on ``port`` until the block ends."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        message = "nats-server is not installed (Debian package nats-server)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    log = store_dir.parent / f"nats-{port}.log"
    command = [binary, "--jetstream", "--store_dir", str(store_dir)]
    command += ["-a", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"nats://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while _reachable(url):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
