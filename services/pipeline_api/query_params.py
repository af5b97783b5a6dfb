"""Query parameters: ``min_position`` and the opaque cursors of paginated answers."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import Query

from libs.domain.errors import InvalidInput
from libs.domain.times import parse_moment
from services.pipeline_api.errors import ApiError

# Positions are PostgreSQL bigints; anything larger cannot name an event.
MAX_POSITION = 2**63 - 1
# A cursor this service issues is a few dozen characters.
MAX_CURSOR_LENGTH = 512

MinPosition = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_POSITION,
        description=(
            "Wait (up to the configured read wait, 5 s by default) until the read model "
            "has reached this log position, e.g. the `position` of your last command; "
            "503 if it does not."
        ),
    ),
]

CursorParam = Annotated[
    str | None,
    Query(max_length=MAX_CURSOR_LENGTH, description="`next_cursor` of the previous page"),
]


def encode_cursor(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _invalid_cursor(field: str) -> ApiError:
    return ApiError(
        422,
        f"{field} is not a cursor this service issued; start again without it",
        code="invalid_cursor",
        details={"field": field},
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
        return parse_moment(value[0], field), str(UUID(value[1]))
    except (InvalidInput, ValueError):
        raise _invalid_cursor(field) from None


def deal_cursor_after(row: dict[str, Any]) -> str:
    """The cursor of the page that ends at this deal row."""
    return encode_cursor([row["created_at"].isoformat(), row["deal_id"]])
