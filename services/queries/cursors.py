"""Opaque page cursors: what the query layer issues, and the only thing it accepts back.

A cursor is base64 of a small JSON value (a log position, or a deal's creation time and
id). Anything else, however it was made, is refused as ``invalid_cursor``.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any
from uuid import UUID

from libs.domain.errors import InvalidInput
from libs.domain.times import LATEST, parse_moment
from services.queries.errors import QueryError

# Positions are PostgreSQL bigints; anything larger cannot name an event.
MAX_POSITION = 2**63 - 1
# A cursor this service issues is a few dozen characters.
MAX_CURSOR_LENGTH = 512


def encode_cursor(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _invalid_cursor(field: str) -> QueryError:
    return QueryError(
        f"{field} is not a cursor this service issued; start again without it",
        field=field,
        code="invalid_cursor",
    )


def decode_cursor(cursor: str, field: str = "cursor") -> Any:
    """The JSON value inside a cursor, or 422 ``invalid_cursor`` for anything else."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise _invalid_cursor(field)
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise _invalid_cursor(field) from None


def position_cursor(cursor: str | None, field: str = "cursor") -> int:
    """The log position a page ends at (0 without a cursor)."""
    if not cursor:
        return 0
    value = decode_cursor(cursor, field)
    if type(value) is not int or not 0 <= value <= MAX_POSITION:
        raise _invalid_cursor(field)
    return value


def deal_cursor(cursor: str | None, field: str = "cursor") -> tuple[datetime, str] | None:
    """The (creation time, deal id) a page of deals ends at (None without a cursor)."""
    return _moment_and_id(cursor, field, end_allowed=False)


def activity_cursor(cursor: str | None, field: str = "cursor") -> tuple[datetime, str] | None:
    """The (due time, activity id) a page of activities ends at (None without a cursor);
    activities without a due date sort at the end of the time window."""
    return _moment_and_id(cursor, field, end_allowed=True)


def _moment_and_id(
    cursor: str | None, field: str, *, end_allowed: bool
) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    value = decode_cursor(cursor, field)
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, str) and len(v) <= 64 for v in value)
    ):
        raise _invalid_cursor(field)
    try:
        if end_allowed and value[0] == LATEST.isoformat():
            return LATEST, str(UUID(value[1]))
        return parse_moment(value[0], field), str(UUID(value[1]))
    except (InvalidInput, ValueError):
        raise _invalid_cursor(field) from None


def deal_cursor_after(last: tuple[datetime, str] | None) -> str | None:
    """The cursor of the page after the deal ``(created_at, deal_id)`` (or the activity
    ``(due_order, activity_id)``; None: no more)."""
    return encode_cursor([last[0].isoformat(), last[1]]) if last else None


def position_cursor_after(last: int | None) -> str | None:
    """The cursor of the page after log position ``last`` (None: no more)."""
    return encode_cursor(last) if last is not None else None
