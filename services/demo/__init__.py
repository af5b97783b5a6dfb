"""``dealtrail demo ...``: generated pipeline history for demos and benchmarks."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime

from libs.application.importing import DEFAULT_BATCH_SIZE
from services.demo.generator import DEFAULT_MONTHS, DemoError, generate
from services.importer.common import positive_int
from services.progress import Progress
from services.runtime.settings import Settings
from services.runtime.stores import open_application


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _end(text: str) -> datetime:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    app = open_application(settings)
    try:
        with Progress(
            args.deals, label="demo generate", unit="deals", enabled=not args.quiet
        ) as bar:
            result = generate(
                app,
                deals=args.deals,
                seed=args.seed,
                end=args.end,
                months=args.months,
                batch_size=args.batch_size,
                progress=bar.update,
            )
    except DemoError as exc:
        print(f"dealtrail demo: {exc}", file=sys.stderr)
        return 2
    finally:
        app.close()
    print(
        f"generated {result.deals:,} deals and {result.events:,} events in "
        f"{result.seconds:.1f}s ({result.events_per_second:,.0f} events/s); seed {args.seed}"
    )
    for name, pipeline_id in result.pipelines.items():
        print(f"  pipeline {name}: {pipeline_id}")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from services.cli.demo import run_demo

    return run_demo(args, settings)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``demo generate`` and ``demo run`` to the ``dealtrail`` parser."""
    from services.cli.demo import DEFAULT_DEALS, DEFAULT_SEED

    parser = commands.add_parser("demo", help="demo data", description=__doc__)
    kinds = parser.add_subparsers(dest="demo_command", required=True, metavar="COMMAND")

    gen = kinds.add_parser(
        "generate",
        help="write generated, realistic pipeline history (deterministic per seed)",
        description=(
            "Define three pipelines, owners in teams and regions, and N deals with months "
            "of backdated history, through the domain. The same seed and end date give "
            "the same events."
        ),
    )
    gen.add_argument("--deals", type=_count, default=DEFAULT_DEALS, metavar="N")
    gen.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S")
    gen.add_argument(
        "--end",
        type=_end,
        default=None,
        metavar="YYYY-MM-DD",
        help="the history ends at the start of this day (default: today, UTC)",
    )
    gen.add_argument(
        "--months",
        type=positive_int,
        default=DEFAULT_MONTHS,
        help=f"months of history (default: {DEFAULT_MONTHS})",
    )
    gen.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"deals stored per transaction (default: {DEFAULT_BATCH_SIZE})",
    )
    gen.add_argument("--quiet", action="store_true", help="no progress display")
    gen.set_defaults(handler=_generate)

    run = kinds.add_parser(
        "run",
        help="fill the demo database if empty, print a token and examples, then serve",
        description=(
            "Fill the configured database with generated data (unless it already holds "
            "events) or import a CRM-opportunities directory, print the admin token and "
            "a few curl commands, then run the HTTP API."
        ),
    )
    run.add_argument("--deals", type=_count, default=DEFAULT_DEALS, metavar="N")
    run.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S")
    run.add_argument(
        "--import-crm",
        default=None,
        metavar="DIR",
        help="import this CRM-opportunities directory instead of generating data",
    )
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--no-serve", action="store_true", help="stop after printing")
    run.set_defaults(handler=_run)
