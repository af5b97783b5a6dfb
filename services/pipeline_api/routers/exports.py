"""``GET /v1/audit/export``: the event log as JSON Lines, streamed, for auditors and admins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from libs.application.app import DealtrailApplication
from services.exporter.events import BATCH_SIZE, export_bounds, lines_of, read_batch
from services.pipeline_api.deps import CurrentPrincipal, PipelineApp
from services.pipeline_api.errors import ERROR_RESPONSES
from services.pipeline_api.readmodels import MAX_POSITION

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ERROR_RESPONSES)

NDJSON = "application/x-ndjson"


async def _stream(app: DealtrailApplication, start: int, stop: int) -> AsyncIterator[bytes]:
    """Read one batch at a time off the event loop and send it before reading the next."""
    while start <= stop:
        batch = await run_in_threadpool(read_batch, app, start, stop, BATCH_SIZE)
        if not batch:
            return
        yield lines_of(batch).encode("utf-8")
        start = batch[-1].position + 1


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One event a line, in position order",
            "content": {NDJSON: {"schema": {"type": "string"}}},
        }
    },
)
async def export_events(
    app: PipelineApp,
    principal: CurrentPrincipal,
    from_position: Annotated[
        int, Query(ge=1, le=MAX_POSITION, description="First position to export")
    ] = 1,
    to_position: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_POSITION,
            description="Last position (default and at most: the newest event when the export "
            "starts)",
        ),
    ] = None,
) -> StreamingResponse:
    """Every event from ``from_position`` to ``to_position`` as JSON Lines (streamed).

    Each line: position, aggregate_id, aggregate_type, type, version, actor, occurred_at,
    recorded_at, payload. The ``Export-To-Position`` header names the last position
    included, so the next export can start right after it.
    """
    principal.check_may_read_audit()
    start, stop = await run_in_threadpool(export_bounds, app, from_position, to_position)
    headers = {
        "Export-From-Position": str(start),
        "Export-To-Position": str(stop),
        "Content-Disposition": f'attachment; filename="dealtrail-events-{start}-{stop}.jsonl"',
        "Cache-Control": "no-store",
    }
    return StreamingResponse(_stream(app, start, stop), media_type=NDJSON, headers=headers)
