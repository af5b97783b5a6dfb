"""``dealtrail export report NAME``: any report as CSV or JSON on stdout or into a file."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from uuid import UUID

from libs.application.app import utc_now
from libs.domain.errors import InvalidInput
from libs.domain.times import parse_moment
from services.cli.arguments import SubCommands
from services.projections.read_models import ReadModels
from services.projections.runner import Worker
from services.queries.errors import QueryError
from services.queries.reports import ReportContext, ReportParams
from services.queries.reports.catalog import REPORTS
from services.runtime.settings import Settings
from services.runtime.stores import open_stores


def _moment(text: str) -> datetime:
    try:
        return parse_moment(text, "time")
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


async def _run(args: argparse.Namespace, settings: Settings) -> str:
    params = ReportParams(args.pipeline_id, args.start, args.end, args.owner, args.team)
    async with open_stores(settings) as stores:
        worker = Worker(engine=stores.engine, source=stores.source, location=settings.store)
        await worker.setup()
        if args.catch_up:
            await worker.catch_up()
        report = await REPORTS[args.name](
            ReportContext(ReadModels(stores.engine, settings.read_wait_seconds), utc_now), params
        )
    if args.format == "csv":
        return report.as_csv()
    return json.dumps(report.as_json(), indent=2) + "\n"


def _export_report(args: argparse.Namespace, settings: Settings) -> int:
    try:
        text = asyncio.run(_run(args, settings))
    except QueryError as exc:
        print(f"dealtrail: {exc.message}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def register(kinds: SubCommands) -> None:
    """Add ``report`` to the ``export`` sub-commands."""
    report = kinds.add_parser(
        "report",
        help="write a report as CSV or JSON",
        description=(
            "Write one of the reports (as GET /v1/reports/NAME answers it) from the read "
            "models. With --catch-up the read models are first brought up to the newest "
            "event (useful when no worker is running)."
        ),
    )
    report.add_argument("name", choices=sorted(REPORTS))
    report.add_argument("--format", choices=("csv", "json"), default="csv")
    report.add_argument("--pipeline-id", type=UUID, default=None)
    report.add_argument("--from", dest="start", type=_moment, default=None, metavar="TIME")
    report.add_argument("--to", dest="end", type=_moment, default=None, metavar="TIME")
    report.add_argument("--owner", default=None)
    report.add_argument("--team", default=None)
    report.add_argument("--catch-up", action="store_true")
    report.add_argument("--output", "-o", default=None, metavar="FILE")
    report.set_defaults(handler=_export_report)
