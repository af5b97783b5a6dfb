"""``dealtrail projections run|status|rebuild|parked|retry``: operate the read models."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from libs.application.app import utc_now
from libs.application.sql import setup_lock
from services.cli.arguments import SubCommands, positive_int
from services.feeds.webhooks.store import create_webhook_tables
from services.progress import Progress
from services.projections.base import create_state_table
from services.projections.catalog import all_projections, projections_named
from services.projections.parking import (
    OutdatedTables,
    Parked,
    RetryResult,
    list_parked,
    parked_counts,
    retry_parked,
)
from services.projections.rebuild import (
    PARALLEL_MIN_EVENTS,
    REBUILD_BATCH_SIZE,
    RebuildInProgress,
    Replayed,
    drop_old_generations,
    rebuild,
)
from services.projections.runner import Worker, ensure_projection, projection_status
from services.runtime import metrics
from services.runtime.bootstrap import (
    checkpointer_for,
    evaluator_for,
    relay_for,
    webhook_dispatcher,
)
from services.runtime.settings import Settings
from services.runtime.stores import open_stores

PARKED_LIST_LIMIT = 100  # parked events listed by default


async def _run(settings: Settings, names: list[str], batch_size: int, metrics_port: int) -> int:
    async with open_stores(settings) as stores:
        worker = Worker(
            engine=stores.engine,
            source=stores.source,
            location=settings.store,
            projections=projections_named(names),
            batch_size=batch_size,
        )
        evaluator = evaluator_for(settings, stores.application, stores.engine)
        async with setup_lock(settings.store):
            await worker.setup()
            await create_webhook_tables(stores.engine)
            await evaluator.setup()
        checkpointer = checkpointer_for(settings, stores.application)
        background = [worker.run(), checkpointer.run()]
        dispatcher = None
        if settings.webhooks:
            dispatcher = webhook_dispatcher(settings, stores.application, stores.engine, utc_now)
            background.append(dispatcher.run())
        relay = relay_for(settings, stores.engine, stores.source) if settings.nats_relay else None
        if relay is not None:
            background.append(relay.run())
        if settings.automation:
            background.append(evaluator.run())

        def stop() -> None:
            worker.stop()
            checkpointer.stop()
            if dispatcher is not None:
                dispatcher.stop()
            if relay is not None:
                relay.stop()
            evaluator.stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop)
        endpoint = None
        host = settings.worker_metrics_host
        if metrics_port:

            async def scrape() -> bytes:
                return await metrics.render(stores.engine, stores.source, worker)

            try:
                ready = relay.ready if relay is not None else None
                endpoint = await metrics.start_endpoint(scrape, host, metrics_port, ready)
            except OSError as exc:
                print(
                    f"dealtrail: cannot serve metrics on {host}:{metrics_port}: {exc}",
                    file=sys.stderr,
                )
                return 2
        print(
            f"projection worker for {', '.join(p.name for p in worker.projections)} "
            f"on {settings.store.describe()}"
            + (f"; metrics on http://{host}:{metrics_port}/metrics" if endpoint else "")
            + (f"; relaying to NATS stream {relay.stream}" if relay is not None else ""),
            flush=True,
        )
        try:
            await asyncio.gather(*background)
        finally:
            if endpoint is not None:
                await endpoint.stop()
    return 0


async def _status(settings: Settings) -> list[dict[str, Any]]:
    async with open_stores(settings) as stores:
        await create_state_table(stores.engine)
        return await projection_status(stores.engine, stores.source)


async def _rebuild(
    settings: Settings, names: list[str], batch_size: int, force: bool, processes: int | None
) -> int:
    projections = projections_named(names)
    stats: dict[str, Replayed] = {}
    async with open_stores(settings) as stores:
        label = "rebuild " + ", ".join(p.name for p in projections)
        with Progress(None, label=label, unit="events") as bar:
            generations = await rebuild(
                stores.engine,
                stores.source,
                projections,
                progress=bar.advance_to,
                batch_size=batch_size,
                force=force,
                processes=processes,
                stats=stats,
            )
        async with stores.engine.connect() as conn:
            parked = await parked_counts(conn)
        for name, generation in generations.items():
            print(f"{name}: now serving generation {generation}{_parked_note(name, parked)}")
        for replayed in stats.values():
            print(_replayed_note(replayed))
        dropped = await drop_old_generations(stores.engine, projections)
        if dropped:
            print(f"dropped the previous tables: {', '.join(dropped)}")
    return 0


def _replayed_note(replayed: Replayed) -> str:
    shared = (
        f", together with {', '.join(n for n in replayed.together if n != replayed.name)}"
        if len(replayed.together) > 1
        else ""
    )
    return (
        f"{replayed.name}: replayed {replayed.events:,} events in {replayed.seconds:.1f} s "
        f"({replayed.events_per_second:,.0f} events/s, {replayed.cpu_seconds:.1f} s of CPU "
        f"in process {replayed.pid}{shared})"
    )


def _parked_note(name: str, parked: dict[str, int]) -> str:
    count = parked.get(name, 0)
    if not count:
        return ""
    events = "event" if count == 1 else "events"
    return f"; {count} {events} parked (dealtrail projections parked {name})"


async def _parked(settings: Settings, names: list[str], limit: int) -> tuple[list[Parked], int]:
    async with open_stores(settings) as stores:
        await create_state_table(stores.engine)
        async with stores.engine.connect() as conn:
            shown = await list_parked(conn, names or None, limit=limit)
            counts = await parked_counts(conn)
    return shown, sum(n for name, n in counts.items() if not names or name in names)


async def _retry(settings: Settings, name: str, position: int | None) -> RetryResult:
    (projection,) = projections_named([name])
    async with open_stores(settings) as stores:
        await create_state_table(stores.engine)
        await ensure_projection(stores.engine, projection)
        with Progress(None, label=f"retry {name}", unit="events") as bar:
            return await retry_parked(
                stores.engine, stores.source, projection, position=position, progress=bar.advance_to
            )


def _known(names: list[str]) -> str | None:
    """None when every name is a projection, else the message saying which are not."""
    try:
        projections_named(names)
    except KeyError as exc:
        return f"dealtrail: {exc.args[0]}"
    return None


def _print_parked(parked: Parked, *, with_traceback: bool = False) -> None:
    attempts = "1 attempt" if parked.attempts == 1 else f"{parked.attempts} attempts"
    print(
        f"{parked.name:<18} {parked.position:>10}  {parked.event_type:<20} "
        f"{parked.aggregate_id}  {parked.parked_at.isoformat(timespec='seconds')}  ({attempts})"
    )
    print(f"    {parked.error}")
    if with_traceback:
        for line in parked.traceback.rstrip().splitlines():
            print(f"      {line}")


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    return asyncio.run(_run(settings, args.names, args.batch_size, port))


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    rows = asyncio.run(_status(settings))
    print(
        f"{'projection':<18} {'generation':>10} {'position':>10} {'head':>10} "
        f"{'behind':>8} {'parked':>7} {'skipped':>8} {'schema':>6}"
    )
    for r in rows:
        building = f"  (rebuilding into generation {r['rebuilding']})" if r["rebuilding"] else ""
        behind = f"{r['behind']}" if r["behind_exact"] else f"{r['behind']}+"
        print(
            f"{r['name']:<18} {r['generation'] or '-':>10} {r['position']:>10} {r['head']:>10} "
            f"{behind:>8} {r['parked']:>7} {r['skipped']:>8} {r['schema_version'] or '-':>6}"
            f"{building}"
        )
    problems = [r["schema_problem"] for r in rows if r["schema_problem"]]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


def _cmd_parked(args: argparse.Namespace, settings: Settings) -> int:
    problem = _known(args.names)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    shown, total = asyncio.run(_parked(settings, args.names, args.limit))
    if not shown:
        print("no parked events")
        return 0
    print(f"{'projection':<18} {'position':>10}  {'event type':<20} {'aggregate':<36}  parked at")
    for parked in shown:
        _print_parked(parked, with_traceback=args.traceback)
    more = f" ({total - len(shown)} more not shown; --limit)" if total > len(shown) else ""
    print(f"{total} parked {'event' if total == 1 else 'events'}{more}")
    return 0


def _cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    problem = _known([args.name])
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_retry(settings, args.name, args.position))
    except OutdatedTables as exc:
        print(f"dealtrail: {exc}", file=sys.stderr)
        return 1
    if args.position is not None and not (result.applied or result.failed or result.missing):
        print(f"dealtrail: {args.name} has no parked event at position {args.position}")
        return 1
    applied = ", ".join(str(p) for p in result.applied) or "none"
    print(f"{args.name}: {len(result.applied)} applied (positions {applied})")
    if result.failed:
        print(f"{len(result.failed)} still failing, kept parked with the new error:")
        for parked in result.failed:
            _print_parked(parked)
    if result.missing:
        missing = ", ".join(str(p) for p in result.missing)
        print(f"not found in the event log, kept parked: positions {missing}")
    return 1 if result.failed or result.missing else 0


def _cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    names = [] if args.all else args.names
    if not names and not args.all:
        print("name at least one projection, or --all", file=sys.stderr)
        return 2
    problem = _known(names)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        return asyncio.run(_rebuild(settings, names, args.batch_size, args.force, args.processes))
    except RebuildInProgress as exc:
        print(f"dealtrail: {exc}", file=sys.stderr)
        return 1


def register(commands: SubCommands) -> None:
    """Add ``projections`` and its sub-commands to the ``dealtrail`` parser."""
    known = ", ".join(p.name for p in all_projections())
    parser = commands.add_parser("projections", help="run, inspect or rebuild read models")
    sub = parser.add_subparsers(dest="projections_command", required=True)

    run = sub.add_parser("run", help="follow the event log and keep read models current")
    run.add_argument("names", nargs="*", help=f"projections to run (default all: {known})")
    run.add_argument("--batch-size", type=int, default=500)
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics and /health/live on this port "
        "(default DEALTRAIL_WORKER_METRICS_PORT; 0: none)",
    )
    run.set_defaults(handler=_cmd_run)

    status = sub.add_parser(
        "status",
        help="position, head, events behind, parked and skipped per projection; "
        "exits 1 when a projection's tables need a rebuild",
    )
    status.set_defaults(handler=_cmd_status)

    parked = sub.add_parser("parked", help="list events the projections could not apply")
    parked.add_argument("names", nargs="*", help=f"projections to list (default all: {known})")
    parked.add_argument(
        "--limit", type=int, default=PARKED_LIST_LIMIT, help="list at most this many"
    )
    parked.add_argument("--traceback", action="store_true", help="show each short traceback")
    parked.set_defaults(handler=_cmd_parked)

    retry = sub.add_parser("retry", help="apply a projection's parked events again")
    retry.add_argument("name", help=f"the projection ({known})")
    retry.add_argument("--position", type=int, help="only the parked event at this position")
    retry.set_defaults(handler=_cmd_retry)

    rb = sub.add_parser("rebuild", help="replay from position 0 into fresh tables, then switch")
    rb.add_argument("names", nargs="*", help=f"projections to rebuild ({known})")
    rb.add_argument("--all", action="store_true", help="rebuild every projection in one pass")
    rb.add_argument("--batch-size", type=int, default=REBUILD_BATCH_SIZE)
    rb.add_argument("--force", action="store_true", help="take over from a rebuild that died")
    rb.add_argument(
        "--processes",
        type=positive_int,
        default=None,
        help="PostgreSQL: processes that replay side by side, each reading the log "
        f"(default one per projection; logs under {PARALLEL_MIN_EVENTS:,} events use one)",
    )
    rb.set_defaults(handler=_cmd_rebuild)
