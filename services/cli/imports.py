"""``dealtrail import ...``: bring existing deals in, with their history, through the domain."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from eventsourcing.persistence import PersistenceError

from libs.application.app import DealtrailApplication
from libs.application.importing import (
    DEFAULT_BATCH_SIZE,
    IMPORT_ACTOR,
    ImportAborted,
    ImportReport,
)
from libs.application.integrity import ChainError
from libs.chain_verifier import Malformed
from libs.domain.actors import Actor, Role
from services.cli.arguments import SubCommands, day_start, export_file_keys, positive_int
from services.importer import crm, events, generic
from services.importer.common import read_csv_file
from services.progress import Progress
from services.projections.catalog import all_projections
from services.projections.rebuild import drop_old_generations, rebuild
from services.projections.runner import Worker
from services.runtime.settings import Settings
from services.runtime.stores import Stores, open_application, open_stores

# Exit codes of the import commands.
EXIT_OK, EXIT_REJECTED, EXIT_ABORTED = 0, 1, 2


def print_report(report: ImportReport, *, out: TextIO, err: TextIO) -> None:
    """Rejected rows (file:line: reason) on ``err``, the summary on ``out``."""
    for error in sorted(report.rejected, key=lambda e: (e.file, e.line)):
        print(f"rejected {error}", file=err)
    if not report.written:
        print(
            f"strict: {len(report.rejected)} bad row(s); nothing was imported",
            file=out,
        )
        return
    print(
        f"imported {report.imported} deal(s) ({report.created} new, {report.changed} changed), "
        f"{report.unchanged} unchanged, {len(report.rejected)} rejected; "
        f"{report.events} event(s) appended",
        file=out,
    )


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strict",
        action="store_true",
        help="write nothing at all if any row is bad (default: import the good rows)",
    )
    parser.add_argument(
        "--actor",
        default=IMPORT_ACTOR.name,
        help=f"name recorded as the actor of every event (default: {IMPORT_ACTOR.name})",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"deals stored per transaction (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def actor_from(args: argparse.Namespace) -> Actor:
    return Actor(name=str(args.actor), role=Role.ADMIN)


ImportRun = Callable[[DealtrailApplication, Callable[[int], None]], ImportReport]


def run_cli_import(
    settings: Settings,
    *,
    label: str,
    total: int | None,
    run: ImportRun,
    quiet: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Open the store, run one import with a progress display, print its report."""
    out = out or sys.stdout
    err = err or sys.stderr
    application = open_application(settings)
    try:
        with Progress(total, label=label, unit="rows", stream=err, enabled=not quiet) as bar:
            report = run(application, bar.update)
    except ImportAborted as exc:
        print(f"dealtrail import: {exc}", file=err)
        return EXIT_ABORTED
    except PersistenceError as exc:
        print(
            f"dealtrail import: database error: {exc}\n"
            "Deals stored before the error are complete (never half-written); "
            "run the import again to add the rest.",
            file=err,
        )
        return EXIT_ABORTED
    finally:
        application.close()
    print_report(report, out=out, err=err)
    return EXIT_OK if not report.rejected else EXIT_REJECTED


def _crm_opportunities(args: argparse.Namespace, settings: Settings) -> int:
    try:
        data = crm.load(Path(args.directory))
    except ImportAborted as exc:
        print(f"dealtrail import: {exc}", file=sys.stderr)
        return EXIT_ABORTED
    return run_cli_import(
        settings,
        label="import crm-opportunities",
        total=len(data.opportunities.rows),
        quiet=args.quiet,
        run=lambda application, progress: crm.import_crm(
            application,
            data,
            actor=actor_from(args),
            strict=args.strict,
            batch_size=args.batch_size,
            progress=progress,
            pipeline_name=args.pipeline,
            undated=args.undated_date,
        ),
    )


def _deals(args: argparse.Namespace, settings: Settings) -> int:
    try:
        table = read_csv_file(Path(args.file))
        activities = read_csv_file(Path(args.activities)) if args.activities else None
    except ImportAborted as exc:
        print(f"dealtrail import: {exc}", file=sys.stderr)
        return EXIT_ABORTED
    return run_cli_import(
        settings,
        label="import deals",
        total=len(table.rows),
        quiet=args.quiet,
        run=lambda application, progress: generic.import_deals(
            application,
            table,
            actor=actor_from(args),
            strict=args.strict,
            batch_size=args.batch_size,
            progress=progress,
            default_pipeline=args.pipeline,
            activities=activities,
        ),
    )


async def _rebuild_read_models(stores: Stores, settings: Settings, quiet: bool) -> None:
    await Worker(engine=stores.engine, source=stores.source, location=settings.store).setup()
    with Progress(None, label="rebuild read models", unit="events", enabled=not quiet) as bar:
        await rebuild(stores.engine, stores.source, all_projections(), progress=bar.advance_to)
    await drop_old_generations(stores.engine, all_projections())


async def _restore(settings: Settings, path: Path, trusted: list[bytes], quiet: bool) -> int:
    async with open_stores(settings) as stores:
        count = await asyncio.to_thread(
            events.restore, stores.application, path, trusted, quiet=quiet
        )
        await _rebuild_read_models(stores, settings, quiet)
    return count


def _events(args: argparse.Namespace, settings: Settings) -> int:
    path: Path = args.file
    trusted = export_file_keys("import events", path, args.public_key)
    if trusted is None:
        return 2
    try:
        count = asyncio.run(_restore(settings, path, trusted, args.quiet))
    except (ChainError, Malformed, UnicodeDecodeError) as exc:
        print(f"dealtrail import events: {exc}", file=sys.stderr)
        return 1
    print(f"restored {count} event(s); the chain verifies; read models rebuilt")
    return 0


def register(commands: SubCommands) -> None:
    """Add ``import crm-opportunities``, ``import deals`` and ``import events`` to the parser."""
    parser = commands.add_parser(
        "import",
        help="import deals (CRM opportunities directory or a generic CSV) or restore events",
        description=__doc__,
    )
    kinds = parser.add_subparsers(dest="import_kind", required=True, metavar="KIND")

    opportunities = kinds.add_parser(
        "crm-opportunities",
        help="import a CRM sales-opportunities directory (sales_pipeline.csv and friends)",
        description=crm.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    opportunities.add_argument("directory", help="directory holding sales_pipeline.csv etc.")
    opportunities.add_argument(
        "--pipeline",
        default=crm.PIPELINE_NAME,
        help=f"name of the pipeline to import into (default: {crm.PIPELINE_NAME!r})",
    )
    opportunities.add_argument(
        "--undated-date",
        type=day_start,
        default=None,
        help="date given to rows without engage_date (default: the latest date in the file)",
    )
    add_common_options(opportunities)
    opportunities.set_defaults(handler=_crm_opportunities)

    deals = kinds.add_parser(
        "deals",
        help="import deals from a CSV file (columns: " + ",".join(generic.COLUMNS) + ")",
        description=generic.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    deals.add_argument("file", help="the CSV file")
    deals.add_argument(
        "--pipeline", default=None, help="pipeline of rows whose pipeline column is empty"
    )
    deals.add_argument(
        "--activities",
        default=None,
        metavar="ACTIVITIES.csv",
        help="the deals' activities, keyed by deal_external_id (columns: "
        + ",".join(generic.ACTIVITY_COLUMNS)
        + ")",
    )
    add_common_options(deals)
    deals.set_defaults(handler=_deals)

    restore = kinds.add_parser(
        "events",
        help="restore an event export (JSON Lines) into an empty store",
        description=events.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restore.add_argument("file", type=Path, metavar="FILE", help="a complete event export")
    restore.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="KEY",
        help="signatures in the file must be by this Ed25519 public key (base64, PEM or a "
        "file); may repeat",
    )
    restore.add_argument("--quiet", action="store_true", help="no progress display")
    restore.set_defaults(handler=_events)
