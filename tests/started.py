"""The service as a real process (``dealtrail serve``) on a free port, for tests over TCP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import API_KEYS, Backend

ROOT = Path(__file__).resolve().parents[1]
DEALTRAIL = ROOT / ".venv" / "bin" / "dealtrail"
START_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(backend: Backend, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``dealtrail`` process on ``backend``."""
    return {
        **os.environ,
        "DATABASE_URL": backend.url,
        "DEALTRAIL_DB_SCHEMA": backend.schema,
        "DEALTRAIL_API_KEYS": API_KEYS,
        "DEALTRAIL_DATA_DIR": str(data_dir),
        "DEALTRAIL_STORE_POOL_SIZE": "4",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


@dataclass(frozen=True)
class Started:
    """A running service: where it answers and where it logs."""

    base_url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def started_service(backend: Backend, tmp_path: Path, *args: str, **env: str) -> Iterator[Started]:
    """``dealtrail serve`` until the block ends; waits (bounded) until /health answers."""
    with started_command(backend, tmp_path, ["serve"], *args, **env) as started:
        yield started


@contextmanager
def started_worker(backend: Backend, tmp_path: Path, *args: str, **env: str) -> Iterator[Started]:
    """``dealtrail projections run --metrics-port P ARGS`` until the block ends; waits
    (bounded) until its endpoint answers. ``base_url`` is that endpoint."""
    command = ["projections", "run"]
    with started_command(
        backend, tmp_path, command, *args, port_option="--metrics-port", ready="/health/live", **env
    ) as started:
        yield started


@contextmanager
def started_command(
    backend: Backend,
    tmp_path: Path,
    command: list[str],
    *args: str,
    port_option: str = "--port",
    ready: str = "/health",
    **env: str,
) -> Iterator[Started]:
    """``dealtrail COMMAND --port P ARGS`` (a command that ends up serving HTTP on P) until
    the block ends; waits (bounded) until ``ready`` answers 200."""
    port = free_port()
    log = tmp_path / f"{command[0]}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(DEALTRAIL), *command, port_option, str(port), *args],
            env=service_env(backend, tmp_path / "data", **env),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = Started(f"http://127.0.0.1:{port}", log, proc)
    try:
        deadline = time.monotonic() + START_SECONDS
        with httpx.Client(base_url=started.base_url, timeout=10) as client:
            while True:
                try:
                    if client.get(ready).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, started.log_text()
                assert time.monotonic() < deadline, started.log_text()
                time.sleep(0.2)
        yield started
    finally:
        os.killpg(proc.pid, signal.SIGCONT)  # a test may have stopped it
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
