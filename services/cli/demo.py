"""``dealtrail demo ...``: generated pipeline history for demos and benchmarks."""

# ``demo run`` is what ``make demo`` runs, with DATABASE_URL=sqlite:///data/demo/dealtrail.db
# and DEALTRAIL_DATA_DIR=data/demo: it fills the demo database once (generated history,
# or with --import-crm DIR a CRM-opportunities directory; a database that already holds
# events is used as it is), prints the dashboard's address, a token and a few requests to
# try, then serves.

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from uuid import UUID

from libs.application.app import DealtrailApplication
from libs.application.importing import DEFAULT_BATCH_SIZE, ImportAborted, find_pipeline
from services.cli.arguments import SubCommands, day_start, positive_int
from services.cli.imports import print_report
from services.cli.serve import serve
from services.demo.generator import DEFAULT_MONTHS, DemoError, generate
from services.demo.showcase import showcase
from services.importer import crm
from services.progress import Progress
from services.runtime.keys import load_or_create_admin_token
from services.runtime.settings import Settings
from services.runtime.stores import open_application

DEFAULT_DEALS = 2000
DEFAULT_SEED = 42


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    application = open_application(settings)
    try:
        with Progress(
            args.deals, label="demo generate", unit="deals", enabled=not args.quiet
        ) as bar:
            result = generate(
                application,
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
        application.close()
    print(
        f"generated {result.deals:,} deals and {result.events:,} events in "
        f"{result.seconds:.1f}s ({result.events_per_second:,.0f} events/s); seed {args.seed}"
    )
    for name, pipeline_id in result.pipelines.items():
        print(f"  pipeline {name}: {pipeline_id}")
    return 0


def _fill(application: DealtrailApplication, args: argparse.Namespace) -> UUID | None:
    """Fill the store; return the pipeline to show first (None: the oldest)."""
    if args.import_crm:
        data = crm.load(Path(args.import_crm))
        with Progress(len(data.opportunities.rows), label="import", unit="rows") as bar:
            report = crm.import_crm(application, data, progress=bar.update)
        print_report(report, out=sys.stdout, err=sys.stderr)
        return report.pipelines.get(crm.PIPELINE_NAME)
    head = application.head_position()
    if head:
        print(f"The demo database already holds {head:,} events; using them as they are.")
        return None
    with Progress(args.deals, label="demo generate", unit="deals") as bar:
        result = generate(application, deals=args.deals, seed=args.seed, progress=bar.update)
    print(f"Generated {result.deals:,} deals, {result.events:,} events (seed {args.seed}).")
    return None


def print_examples(base: str, token: str | None, pipeline_id: UUID, deal_id: UUID | None) -> None:
    """The dashboard's address, the token to sign in with, and a few curl commands."""
    print()
    print(f"Dashboard: {base}/  (open it in a browser and sign in with the token below)")
    if token:
        print(f"Admin token: {token}")
        print(f'  TOKEN="{token}"')
    else:
        print("DEALTRAIL_API_KEYS is set: sign in (and set TOKEN) with one of its tokens.")
    print('  H="Authorization: Bearer $TOKEN"')
    print()
    print("Try:")
    print(f'  curl -s {base}/v1/pipelines -H "$H"')
    print(f'  curl -s {base}/v1/pipelines/{pipeline_id}/board -H "$H"')
    if deal_id is not None:
        print(f'  curl -s {base}/v1/deals/{deal_id}/history -H "$H"')
    print(f'  curl -s "{base}/v1/reports/stage-durations?pipeline_id={pipeline_id}" -H "$H"')
    print(f'  curl -s "{base}/v1/reports/win-rate?pipeline_id={pipeline_id}" -H "$H"')
    print(f'  curl -s "{base}/v1/activities?status=overdue&limit=10" -H "$H"')
    print(f'  curl -s "{base}/v1/deals?has_next_activity=false&limit=10" -H "$H"')
    print(f'  curl -s "{base}/v1/reports/activities" -H "$H"')
    print(f'  curl -s {base}/v1/audit/export -H "$H" | head -3')
    print(f"API documentation: {base}/docs")
    print()


def _run(args: argparse.Namespace, settings: Settings) -> int:
    application = open_application(settings)
    try:
        chosen = _fill(application, args)
        if chosen is None and args.import_crm:
            found = find_pipeline(application, crm.PIPELINE_NAME)
            chosen = found.id if found else None
        pipeline_id, deal_id = showcase(application, chosen)
    except (ImportAborted, DemoError) as exc:
        print(f"dealtrail demo: {exc}", file=sys.stderr)
        return 2
    finally:
        application.close()

    token = None
    if not settings.api_key_map:
        token, _ = load_or_create_admin_token(settings.admin_key_file)
    print_examples(f"http://{args.host}:{args.port}", token, pipeline_id, deal_id)
    if args.no_serve:
        return 0
    return serve(settings, host=args.host, port=args.port)


def register(commands: SubCommands) -> None:
    """Add ``demo generate`` and ``demo run`` to the ``dealtrail`` parser."""
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
        type=day_start,
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
        help="fill the demo database if empty, print the dashboard and a token, then serve",
        description=(
            "Fill the configured database with generated data (unless it already holds "
            "events) or import a CRM-opportunities directory, print the dashboard's address, "
            "the admin token and a few curl commands, then run the HTTP API and the "
            "dashboard."
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
