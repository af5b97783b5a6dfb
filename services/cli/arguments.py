"""Argument types shared by several command groups."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, time
from typing import TypeAlias


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
