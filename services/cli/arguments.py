"""Argument types shared by several command groups."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TypeAlias

from libs.chain_verifier import load_public_key


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def day_start(text: str) -> datetime:
    """``YYYY-MM-DD`` as the start of that day, UTC."""
    try:
        return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


SubCommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: each command group's ``register`` adds to it."""


def export_file_keys(command: str, path: Path, given: list[str]) -> list[bytes] | None:
    """The public keys given with ``--public-key`` for reading the event export at
    ``path``; None, after saying why on stderr, when a key cannot be read or the file is
    not there."""
    try:
        keys = [load_public_key(k) for k in given]
    except ValueError as exc:
        print(f"--public-key: {exc}", file=sys.stderr)
        return None
    if not path.is_file():
        print(f"dealtrail {command}: no such file: {path}", file=sys.stderr)
        return None
    return keys
