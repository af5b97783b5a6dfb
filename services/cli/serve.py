"""``dealtrail serve``: run the HTTP API with uvicorn, in one process or several."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from services.cli.arguments import SubCommands
from services.runtime.keys import build_keyring
from services.runtime.logs import log_config
from services.runtime.metrics import MULTIPROCESS_ENV
from services.runtime.settings import Settings

# uvicorn builds the app in each process from the same environment.
API_FACTORY = "services.pipeline_api.main:create_app"


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int | None = None,
    log_level: str = "info",
) -> int:
    """Print where the API answers (and a generated admin token), then serve until stopped."""
    workers = settings.web_workers if workers is None else workers
    if workers < 1:
        print("dealtrail serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 and not settings.store.is_postgres:
        print(
            "dealtrail serve: --workers above 1 needs PostgreSQL (DATABASE_URL=postgresql://...);"
            " the embedded SQLite store has one writer at a time",
            file=sys.stderr,
        )
        return 2
    _, generated = build_keyring(settings)
    print(
        f"Dealtrail on http://{host}:{port}  (store: {settings.store.describe()}"
        f"{f', {workers} processes' if workers > 1 else ''})"
    )
    if generated:
        print(f"No DEALTRAIL_API_KEYS set; admin token (kept in {settings.admin_key_file}):")
        print(f"  {generated}")
    with shared_metrics(workers):
        uvicorn.run(
            API_FACTORY,
            factory=True,
            host=host,
            port=port,
            log_level=log_level,
            log_config=log_config(settings),
            access_log=False,  # the API writes its own access line, with the request id
            workers=workers,
        )
    return 0


@contextlib.contextmanager
def shared_metrics(workers: int) -> Iterator[None]:
    """With several processes, prometheus-client's multiprocess mode: each process keeps
    its metrics in files of one directory, and a scrape of any of them adds all up. The
    directory is ``PROMETHEUS_MULTIPROC_DIR`` when set (emptied first), else a new
    temporary one, removed at the end."""
    if workers < 2:
        yield
        return
    given = os.environ.get(MULTIPROCESS_ENV)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="dealtrail-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROCESS_ENV] = str(directory)  # the worker processes inherit it
    try:
        yield
    finally:
        if given is None:
            del os.environ[MULTIPROCESS_ENV]
            shutil.rmtree(directory, ignore_errors=True)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    return serve(
        settings, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level
    )


def register(commands: SubCommands) -> None:
    """Add ``serve`` to the ``dealtrail`` parser."""
    parser = commands.add_parser("serve", help="run the HTTP API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="API processes (PostgreSQL only; default DEALTRAIL_WEB_WORKERS or 1)",
    )
    parser.set_defaults(handler=_serve)
