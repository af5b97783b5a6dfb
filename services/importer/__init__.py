"""``dealtrail import ...``: bring existing deals in, with their history, through the domain."""

from __future__ import annotations

import argparse

from services.importer import crm, events, generic


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``import crm-opportunities``, ``import deals`` and ``import events`` to the parser."""
    parser = commands.add_parser(
        "import",
        help="import deals (CRM opportunities directory or a generic CSV) or restore events",
        description=__doc__,
    )
    kinds = parser.add_subparsers(dest="import_kind", required=True, metavar="KIND")
    crm.register(kinds)
    generic.register(kinds)
    events.register(kinds)
