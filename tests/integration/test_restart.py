"""A real server process: commands over HTTP, a restart, and the state still there."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import API_KEYS, Backend, auth

ROOT = Path(__file__).resolve().parents[2]
DEALTRAIL = Path(sys.executable).with_name("dealtrail")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(base_url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not healthy after {START_TIMEOUT} s:\n{log.read_text()}")


@contextmanager
def server(backend: Backend, data_dir: Path, log: Path) -> Iterator[httpx.Client]:
    """``dealtrail serve`` on a free port; always stopped (and killed if need be) on exit."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": backend.url,
        "DEALTRAIL_DB_SCHEMA": backend.schema,
        "DEALTRAIL_API_KEYS": API_KEYS,
        "DEALTRAIL_DATA_DIR": str(data_dir),
    }
    base_url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(DEALTRAIL), "serve", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_healthy(base_url, proc, log)
        with httpx.Client(base_url=base_url, timeout=10.0) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def ok(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return dict(r.json())


def test_a_restarted_server_keeps_deals_and_versions_and_continues_positions(
    backend: Backend, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    data_dir = tmp_path / "data"

    with server(backend, data_dir, log) as http:
        pipeline = ok(
            http.post(
                "/v1/pipelines",
                json={"name": "New business", "currency": "EUR"},
                headers=auth("admin"),
            ),
            201,
        )
        deal = ok(
            http.post(
                "/v1/deals",
                json={"pipeline_id": pipeline["id"], "title": "ACME", "value": "12000.50"},
                headers={**auth("rep"), "Idempotency-Key": "create-acme"},
            ),
            201,
        )
        deal_id = deal["id"]
        advanced = ok(
            http.post(
                f"/v1/deals/{deal_id}/advance",
                json={"stage": "Quote sent"},
                headers={**auth("rep"), "If-Match": '"1"'},
            )
        )
        lost = ok(
            http.post(
                f"/v1/deals/{deal_id}/lose",
                json={"reason": "Price", "note": "too dear"},
                headers=auth("rep"),
            )
        )
        positions = [pipeline["position"], deal["position"], advanced["position"], lost["position"]]
        assert positions == sorted(set(positions))
        assert lost["version"] == 3
        health_before = ok(http.get("/health"))
        assert health_before["position"] == lost["position"]

    with server(backend, data_dir, log) as http:
        assert ok(http.get("/health"))["position"] == lost["position"]
        got = http.get(
            f"/v1/deals/{deal_id}",
            params={"min_position": lost["position"]},
            headers=auth("auditor"),
        )
        state = ok(got)
        assert got.headers["ETag"] == '"3"'
        for field in ("version", "status", "stage", "value", "lost_reason", "lost_note", "owner"):
            assert state[field] == lost[field], field
        at = {"min_position": lost["position"]}
        got = http.get(f"/v1/pipelines/{pipeline['id']}", params=at, headers=auth("rep"))
        assert ok(got)["version"] == 1

        replay = http.post(
            "/v1/deals",
            json={"pipeline_id": pipeline["id"], "title": "ACME", "value": "12000.50"},
            headers={**auth("rep"), "Idempotency-Key": "create-acme"},
        )
        assert replay.status_code == 201
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json() == deal

        stale = http.post(f"/v1/deals/{deal_id}/reopen", headers={**auth("rep"), "If-Match": '"2"'})
        assert stale.status_code == 412, stale.text
        reopened = ok(
            http.post(f"/v1/deals/{deal_id}/reopen", headers={**auth("rep"), "If-Match": '"3"'})
        )
        won = ok(http.post(f"/v1/deals/{deal_id}/win", headers=auth("rep")))
        assert (reopened["version"], won["version"]) == (4, 5)
        assert reopened["position"] == lost["position"] + 1
        assert won["position"] == lost["position"] + 2
        assert ok(http.get("/health"))["position"] == won["position"]
        assert won["stage"]["id"] == "quote-sent"
