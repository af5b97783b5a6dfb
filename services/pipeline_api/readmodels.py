"""Query-side dependencies: the read models, ``min_position`` and opaque cursors."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import Depends, Query

from services.pipeline_api.deps import ReachableServices
from services.pipeline_api.errors import ApiError
from services.projections.reading import ReadModels


async def get_read_models(services: ReachableServices) -> ReadModels:
    models: ReadModels | None = getattr(services, "read_models", None)
    if models is None:
        raise ApiError(503, "read models are not available", code="starting")
    return models


ReadModelsDep = Annotated[ReadModels, Depends(get_read_models)]

MinPosition = Annotated[
    int | None,
    Query(
        ge=0,
        description=(
            "Wait (up to the configured read wait, 5 s by default) until the read model "
            "has reached this log position, e.g. the `position` of your last command; "
            "503 if it does not."
        ),
    ),
]


def encode_cursor(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, field: str = "cursor") -> Any:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            422, f"{field} is not a cursor this service issued", details={"field": field}
        ) from None
