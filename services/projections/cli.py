"""``dealtrail projections run|status|rebuild``: operate the read models."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.app import DealtrailApplication
from libs.application.sql import ensure_schema, make_engine, setup_lock
from services.audit.checkpoints import Checkpointer
from services.pipeline_api.settings import Settings
from services.progress import Progress
from services.projections.rebuild import (
    REBUILD_BATCH_SIZE,
    RebuildInProgress,
    drop_old_generations,
    rebuild,
)
from services.projections.runner import (
    EventSource,
    Worker,
    all_projections,
    projection_status,
    projections_named,
)


@dataclass
class Stores:
    app: DealtrailApplication
    engine: AsyncEngine
    source: EventSource


@asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[Stores]:
    from services.pipeline_api.bootstrap import open_application

    async with setup_lock(settings.store):  # start-up DDL, one process at a time
        app = await asyncio.to_thread(open_application, settings)
        engine = make_engine(settings.store, pool_size=4)
        try:
            await ensure_schema(engine, settings.store)
        except BaseException:
            await engine.dispose()
            await asyncio.to_thread(app.close)
            raise
    try:
        yield Stores(app, engine, EventSource(app))
    finally:
        await engine.dispose()
        await asyncio.to_thread(app.close)


async def _run(settings: Settings, names: list[str], batch_size: int) -> int:
    async with open_stores(settings) as stores:
        worker = Worker(
            engine=stores.engine,
            source=stores.source,
            location=settings.store,
            projections=projections_named(names),
            batch_size=batch_size,
        )
        async with setup_lock(settings.store):
            await worker.setup()
        checkpointer = Checkpointer(stores.app, settings.signer, settings.checkpoint_policy)

        def stop() -> None:
            worker.stop()
            checkpointer.stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop)
        print(
            f"projection worker for {', '.join(p.name for p in worker.projections)} "
            f"on {settings.store.describe()}",
            flush=True,
        )
        await asyncio.gather(worker.run(), checkpointer.run())
    return 0


async def _status(settings: Settings) -> list[dict[str, Any]]:
    async with open_stores(settings) as stores:
        return await projection_status(stores.engine, stores.source)


async def _rebuild(settings: Settings, names: list[str], batch_size: int, force: bool) -> int:
    projections = projections_named(names)
    async with open_stores(settings) as stores:
        label = "rebuild " + ", ".join(p.name for p in projections)
        bar = Progress(None, label=label, unit="events")
        seen = 0

        def report(done: int, total: int) -> None:
            nonlocal seen
            bar.total = total
            bar.update(done - seen)
            seen = done

        with bar:
            generations = await rebuild(
                stores.engine,
                stores.source,
                projections,
                progress=report,
                batch_size=batch_size,
                force=force,
            )
        for name, generation in generations.items():
            print(f"{name}: now serving generation {generation}", flush=True)
        dropped = await drop_old_generations(stores.engine, projections)
        if dropped:
            print(f"dropped the previous tables: {', '.join(dropped)}")
    return 0


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(settings, args.names, args.batch_size))


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    rows = asyncio.run(_status(settings))
    print(
        f"{'projection':<18} {'generation':>10} {'position':>10} {'head':>10} "
        f"{'lag':>8} {'skipped':>8}"
    )
    for r in rows:
        building = f"  (rebuilding into generation {r['rebuilding']})" if r["rebuilding"] else ""
        print(
            f"{r['name']:<18} {r['generation'] or '-':>10} {r['position']:>10} {r['head']:>10} "
            f"{r['lag']:>8} {r['skipped']:>8}{building}"
        )
    return 0


def _cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    names = [] if args.all else args.names
    if not names and not args.all:
        print("name at least one projection, or --all", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_rebuild(settings, names, args.batch_size, args.force))
    except RebuildInProgress as exc:
        print(f"dealtrail: {exc}", file=sys.stderr)
        return 1


def register(commands: Any) -> None:
    """Add ``projections`` and its sub-commands to the ``dealtrail`` parser."""
    known = ", ".join(p.name for p in all_projections())
    parser = commands.add_parser("projections", help="run, inspect or rebuild read models")
    sub = parser.add_subparsers(dest="projections_command", required=True)

    run = sub.add_parser("run", help="follow the event log and keep read models current")
    run.add_argument("names", nargs="*", help=f"projections to run (default all: {known})")
    run.add_argument("--batch-size", type=int, default=500)
    run.set_defaults(handler=_cmd_run)

    status = sub.add_parser("status", help="position, head and lag per projection")
    status.set_defaults(handler=_cmd_status)

    rb = sub.add_parser("rebuild", help="replay from position 0 into fresh tables, then switch")
    rb.add_argument("names", nargs="*", help=f"projections to rebuild ({known})")
    rb.add_argument("--all", action="store_true", help="rebuild every projection in one pass")
    rb.add_argument("--batch-size", type=int, default=REBUILD_BATCH_SIZE)
    rb.add_argument("--force", action="store_true", help="take over from a rebuild that died")
    rb.set_defaults(handler=_cmd_rebuild)
