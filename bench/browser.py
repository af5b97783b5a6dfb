"""Debian's Chromium driven by Playwright, and a demo service for it to open: what the
dashboard's browser tests and its benchmark (``python -m bench.dashboard``) share.

Browsers cannot be downloaded here, so Playwright never installs one: it starts
``/usr/bin/chromium`` from the ``chromium`` Debian package (``.ci/run`` installs it when
it is missing; ``DEALTRAIL_CHROMIUM`` names another binary).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import BenchError, Proc, dealtrail_command, free_port, wait_healthy

CHROMIUM = Path(os.environ.get("DEALTRAIL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CATCH_UP_SECONDS = 300.0  # a fresh demo service projects its history before tests start

# One query per read model, to wait until each has projected the whole demo history.
READ_MODEL_PROBES = (
    ("/v1/deals", {"limit": 1}),
    ("/v1/audit", {"limit": 1}),
    ("/v1/owners", {}),
    ("/v1/reports/stage-durations", {"pipeline_id": None}),
)


def launch(playwright: Any) -> Any:
    """Chromium, headless, with nothing that reaches beyond this machine."""
    if not CHROMIUM.exists():
        raise BenchError(f"{CHROMIUM} is missing: apt-get install chromium")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@dataclass(frozen=True)
class DemoService:
    """A started ``dealtrail demo run`` on its own SQLite file."""

    base_url: str
    admin_token: str
    log: Path

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=60,
        )


def wait_caught_up(base_url: str, token: str, timeout: float = CATCH_UP_SECONDS) -> None:
    """Until every read model has reached the log's head (``min_position`` answers 200)."""
    head = int(httpx.get(base_url + "/health", timeout=10).json()["position"])
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:

        def at_head(probe: str, params: dict[str, Any]) -> Any:
            while True:
                answer = client.get(probe, params={**params, "min_position": head})
                if answer.status_code == 200:
                    return answer.json()
                if answer.status_code != 503 or time.monotonic() > deadline:
                    raise BenchError(f"{probe} answered {answer.status_code}: {answer.text}")

        # the pipelines come from a read model too
        pipeline = at_head("/v1/pipelines", {})["data"][0]["id"]
        for probe, params in READ_MODEL_PROBES:
            at_head(probe, {k: v or pipeline for k, v in params.items()})


@contextlib.contextmanager
def demo_service(
    workdir: Path, *, deals: int, seed: int = 42, api_keys: str, admin_token: str
) -> Iterator[DemoService]:
    """``dealtrail demo run`` (as ``make demo`` runs it) with ``deals`` generated deals,
    on a free port, with the given keys; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DEALTRAIL_") and k != "DATABASE_URL"
    }
    env.update(
        DATABASE_URL=f"sqlite:///{workdir / 'dealtrail.db'}",
        DEALTRAIL_DATA_DIR=str(workdir / "data"),
        DEALTRAIL_API_KEYS=api_keys,
        DEALTRAIL_ENV="development",
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    args = ["demo", "run", "--deals", str(deals), "--seed", str(seed)]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    proc = Proc("demo", [*dealtrail_command(), *args], env, workdir, sample=False)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, proc, timeout=CATCH_UP_SECONDS)
        wait_caught_up(base_url, admin_token)
        yield DemoService(base_url, admin_token, proc.log)
    finally:
        proc.stop()
