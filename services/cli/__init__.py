"""The ``dealtrail`` command line: serve the API and operate the service."""

# One module per command group (serve, projections, import, export with its report,
# demo, audit, relay): each adds its sub-commands to the parser and reaches the stores through
# the composition root (services/runtime), never through the HTTP API.

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from services.cli import audit, demo, exports, imports, projections, relay, report, serve
from services.runtime.logs import configure_logging
from services.runtime.settings import ConfigurationError, Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dealtrail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve.register(commands)
    projections.register(commands)
    imports.register(commands)
    report.register(exports.register(commands))
    demo.register(commands)
    audit.register(commands)
    relay.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"dealtrail: configuration error:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    handler: Handler = args.handler
    return handler(args, settings)
