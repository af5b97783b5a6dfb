"""Query parameters: ``min_position`` and the cursor of paginated answers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from services.queries.cursors import MAX_CURSOR_LENGTH, MAX_POSITION

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
