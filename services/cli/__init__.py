"""The ``dealtrail`` command line: serve the API and operate the service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from services.runtime.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from services.pipeline_api.main import create_app
    from services.runtime.keys import build_keyring

    workers: int = args.workers
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
        f"Dealtrail on http://{args.host}:{args.port}  (store: {settings.store.describe()}"
        f"{f', {workers} processes' if workers > 1 else ''})"
    )
    if generated:
        print(f"No DEALTRAIL_API_KEYS set; admin token (kept in {settings.admin_key_file}):")
        print(f"  {generated}")
    if workers == 1:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
        return 0
    # Each process builds its own app from the same environment.
    uvicorn.run(
        "services.pipeline_api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=workers,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dealtrail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("DEALTRAIL_WEB_WORKERS", "1")),
        help="API processes (PostgreSQL only; default DEALTRAIL_WEB_WORKERS or 1)",
    )
    serve.set_defaults(handler=_serve)

    from services.projections.cli import register as register_projections

    register_projections(commands)

    from services import audit, demo, exporter, importer

    importer.register(commands)
    exporter.register(commands)
    demo.register(commands)
    audit.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"dealtrail: configuration error:\n{exc}", file=sys.stderr)
        return 2
    handler: Handler = args.handler
    return handler(args, settings)


if __name__ == "__main__":
    sys.exit(main())
