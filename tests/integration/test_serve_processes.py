"""`dealtrail serve --workers N`: several API processes on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx

from services.pipeline_api.main import create_app
from tests.conftest import Backend, auth
from tests.integration.test_rebuild import DEALTRAIL, ROOT, cli_env

START_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_more_than_one_process_is_refused_on_sqlite(tmp_path: Path) -> None:
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'dealtrail.db'}")
    done = subprocess.run(
        [str(DEALTRAIL), "serve", "--workers", "2"],
        env=cli_env(backend, tmp_path / "data"),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert b"--workers above 1 needs PostgreSQL" in done.stderr


def test_two_api_processes_serve_commands_and_queries(
    postgres_backend: Backend, tmp_path: Path
) -> None:
    backend = postgres_backend
    port = free_port()
    log = tmp_path / "serve.log"
    env = cli_env(backend, tmp_path / "data")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(DEALTRAIL), "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        with httpx.Client(base_url=base, timeout=10) as api:
            while True:
                try:
                    if api.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            r = api.post(
                "/v1/pipelines", json={"name": "Two", "currency": "EUR"}, headers=auth("admin")
            )
            assert r.status_code == 201, r.text
            pipeline_id = r.json()["id"]
            positions = []
            # New connections each time, so the kernel spreads them over both processes.
            for i in range(20):
                with httpx.Client(base_url=base, timeout=10) as fresh:
                    r = fresh.post(
                        "/v1/deals",
                        json={"pipeline_id": pipeline_id, "title": f"Deal {i}", "value": "5"},
                        headers=auth("rep"),
                    )
                assert r.status_code == 201, r.text
                positions.append(r.json()["position"])
            r = api.get(
                f"/v1/pipelines/{pipeline_id}/board",
                params={"min_position": max(positions)},
                headers=auth("manager"),
            )
            assert r.status_code == 200, r.text
            assert r.json()["totals"]["count"] == 20
        text = log.read_text()
        assert "2 processes" in text
        started = set(re.findall(r"Started server process \[(\d+)\]", text))
        assert len(started) == 2, text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def test_processes_starting_at_once_on_a_fresh_schema_all_come_up(
    postgres_backend: Backend, tmp_path: Path
) -> None:
    """Start-up DDL is serialised: six simultaneous starts of the API (the runtime's tables
    and the API's own) on an empty schema all succeed."""
    postgres = postgres_backend
    settings = postgres.settings(tmp_path / "data", DEALTRAIL_EMBEDDED_WORKER=False)

    async def start() -> AsyncExitStack:
        app = create_app(settings)
        stack = AsyncExitStack()
        await stack.enter_async_context(app.router.lifespan_context(app))
        return stack

    started = await asyncio.gather(*(start() for _ in range(6)), return_exceptions=True)
    try:
        assert [s for s in started if isinstance(s, BaseException)] == []
    finally:
        for stack in started:
            if not isinstance(stack, BaseException):
                await stack.aclose()
