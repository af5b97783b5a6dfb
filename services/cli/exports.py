"""``dealtrail export events``: the event log as JSON Lines, for auditors and archives."""

# ``dealtrail export report`` (services/cli/report.py) joins the group registered here.

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from services.cli.arguments import SubCommands
from services.exporter.events import export_bounds, export_to_path, write_events
from services.progress import Progress
from services.runtime.settings import Settings
from services.runtime.stores import open_application


def _position(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("positions start at 1")
    return value


def _export_events(args: argparse.Namespace, settings: Settings) -> int:
    application = open_application(settings)
    try:
        start, stop = export_bounds(application, args.from_position, args.to_position)
        total = max(0, stop - start + 1)
        with Progress(total, label="export events", unit="events", enabled=not args.quiet) as bar:

            def write(out: TextIO) -> int:
                return write_events(
                    application,
                    out,
                    from_position=start,
                    to_position=stop,
                    signer=settings.signer,
                    progress=bar.update,
                )

            if args.output and args.output != "-":
                count = export_to_path(Path(args.output), write)
            else:
                count = write(sys.stdout)
    except BrokenPipeError:
        return 1
    finally:
        application.close()
    where = args.output if args.output and args.output != "-" else "standard output"
    print(f"exported {count} event(s), positions {start} to {stop}, to {where}", file=sys.stderr)
    return 0


def register(commands: SubCommands) -> SubCommands:
    """Add ``export events`` to the ``dealtrail`` parser; return the ``export`` group."""
    parser = commands.add_parser("export", help="export the event log", description=__doc__)
    kinds = parser.add_subparsers(dest="export_kind", required=True, metavar="WHAT")
    events = kinds.add_parser(
        "events",
        help="every event as JSON Lines, in position order",
        description=(
            "Write the event log as JSON Lines (one event a line: position, aggregate_id, "
            "aggregate_type, type, version, actor, occurred_at, recorded_at, payload, and "
            "the hash chain's topic, state, prev_position, prev_hash, hash; each checkpoint "
            "after the event at its position), streaming, in position order. With "
            "DEALTRAIL_SIGNING_KEY the last event gets a signed checkpoint first. Progress "
            "goes to stderr."
        ),
    )
    events.add_argument("--from-position", type=_position, default=1, metavar="N")
    events.add_argument(
        "--to-position",
        type=_position,
        default=None,
        metavar="M",
        help="last position to export (default: the newest event when the export starts)",
    )
    events.add_argument(
        "--output", "-o", default=None, metavar="FILE", help="write here instead of stdout"
    )
    events.add_argument("--quiet", action="store_true", help="no progress display")
    events.set_defaults(handler=_export_events)
    return kinds
