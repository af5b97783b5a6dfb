"""``dealtrail demo run``: fill a demo database (once), print how to try it, then serve.

``make demo`` calls it with ``DATABASE_URL=sqlite:///data/demo/dealtrail.db`` and
``DEALTRAIL_DATA_DIR=data/demo``. An empty database is filled with generated history
(or, with ``--import-crm DIR``, with a CRM-opportunities directory); a database that
already holds events is used as it is.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from uuid import UUID

from libs.application.app import DealtrailApplication
from libs.application.importing import ImportAborted, find_pipeline
from libs.application.records import decode, split_topic
from services.demo.generator import DemoError, generate
from services.importer import crm
from services.importer.common import print_report
from services.progress import Progress
from services.runtime.keys import load_or_create_admin_token
from services.runtime.settings import Settings
from services.runtime.stores import open_application

DEFAULT_DEALS = 2000
DEFAULT_SEED = 42
# How far into the log to look for a deal with a long history to show.
SHOWCASE_SCAN = 20_000


def _fill(app: DealtrailApplication, args: argparse.Namespace) -> UUID | None:
    """Fill the store; return the pipeline to show first (None: the oldest)."""
    if args.import_crm:
        data = crm.load(Path(args.import_crm))
        with Progress(len(data.opportunities.rows), label="import", unit="rows") as bar:
            report = crm.import_crm(app, data, progress=bar.update)
        print_report(report, out=sys.stdout, err=sys.stderr)
        return report.pipelines.get(crm.PIPELINE_NAME)
    head = app.head_position()
    if head:
        print(f"The demo database already holds {head:,} events; using them as they are.")
        return None
    with Progress(args.deals, label="demo generate", unit="deals") as bar:
        result = generate(app, deals=args.deals, seed=args.seed, progress=bar.update)
    print(f"Generated {result.deals:,} deals, {result.events:,} events (seed {args.seed}).")
    return None


def _showcase(app: DealtrailApplication, pipeline_id: UUID | None) -> tuple[UUID, UUID | None]:
    """A pipeline and one of its deals with a long history, to put in the examples."""
    if pipeline_id is None:
        ids = app.pipeline_ids()
        if not ids:
            raise DemoError("the demo database holds no pipeline")
        pipeline_id = ids[0]
    counts: Counter[UUID] = Counter()
    created_in: dict[UUID, UUID] = {}
    for batch in app.iter_notifications(1, SHOWCASE_SCAN):
        for n in batch:
            aggregate_type, event_type = split_topic(n.topic)
            if aggregate_type != "Deal":
                continue
            deal_id = UUID(str(n.originator_id))
            if event_type == "DealCreated":
                created_in[deal_id] = UUID(str(decode(app.mapper, n).payload["pipeline_id"]))
            counts[deal_id] += 1
    for deal_id, _ in counts.most_common():
        if created_in.get(deal_id) == pipeline_id:
            return pipeline_id, deal_id
    return pipeline_id, None


def print_examples(base: str, token: str | None, pipeline_id: UUID, deal_id: UUID | None) -> None:
    """The token and a few curl commands that show what the service does."""
    print()
    if token:
        print(f"Admin token: {token}")
        print(f'  TOKEN="{token}"')
    else:
        print("DEALTRAIL_API_KEYS is set: use one of its tokens as TOKEN.")
    print('  H="Authorization: Bearer $TOKEN"')
    print()
    print("Try:")
    print(f'  curl -s {base}/v1/pipelines -H "$H"')
    print(f'  curl -s {base}/v1/pipelines/{pipeline_id}/board -H "$H"')
    if deal_id is not None:
        print(f'  curl -s {base}/v1/deals/{deal_id}/history -H "$H"')
    print(f'  curl -s "{base}/v1/reports/stage-durations?pipeline_id={pipeline_id}" -H "$H"')
    print(f'  curl -s "{base}/v1/reports/win-rate?pipeline_id={pipeline_id}" -H "$H"')
    print(f'  curl -s {base}/v1/audit/export -H "$H" | head -3')
    print(f"API documentation: {base}/docs")
    print()


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    app = open_application(settings)
    try:
        chosen = _fill(app, args)
        if chosen is None and args.import_crm:
            found = find_pipeline(app, crm.PIPELINE_NAME)
            chosen = found.id if found else None
        pipeline_id, deal_id = _showcase(app, chosen)
    except (ImportAborted, DemoError) as exc:
        print(f"dealtrail demo: {exc}", file=sys.stderr)
        return 2
    finally:
        app.close()

    token = None
    if not settings.api_keys.strip():
        token, _ = load_or_create_admin_token(settings.admin_key_file)
    print_examples(f"http://{args.host}:{args.port}", token, pipeline_id, deal_id)
    if args.no_serve:
        return 0
    from services.cli import build_parser

    serve = build_parser().parse_args(["serve", "--host", args.host, "--port", str(args.port)])
    code: int = serve.handler(serve, settings)
    return code
