"""``GET /v1/audit/export``: the event log as JSON Lines, streamed, for auditors and admins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.exporter.events import EventExport, export_bounds
from services.pipeline_api.deps import ApplicationDep, CurrentPrincipal, RuntimeDep
from services.pipeline_api.openapi import raises
from services.queries.cursors import MAX_POSITION

router = APIRouter(prefix="/v1/audit", tags=["audit"])

NDJSON = "application/x-ndjson"


async def _stream(export: EventExport) -> AsyncIterator[bytes]:
    """Read one batch at a time off the event loop and send it before reading the next."""
    while (chunk := await run_in_threadpool(export.next_lines)) is not None:
        yield chunk[0].encode("utf-8")


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
@raises(403)
async def export_events(
    application: ApplicationDep,
    runtime: RuntimeDep,
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
    recorded_at, payload, and the hash chain's topic, state, prev_position, prev_hash and
    hash; checkpoints follow the event at their position. The ``Export-To-Position``
    header names the last position included, so the next export can start right after it.
    """
    principal.check_may_read_audit()
    start, stop = await run_in_threadpool(export_bounds, application, from_position, to_position)
    export = await run_in_threadpool(
        lambda: EventExport(application, start, stop, signer=runtime.settings.signer)
    )
    headers = {
        "Export-From-Position": str(start),
        "Export-To-Position": str(stop),
        "Content-Disposition": f'attachment; filename="dealtrail-events-{start}-{stop}.jsonl"',
        "Cache-Control": "no-store",
    }
    return StreamingResponse(_stream(export), media_type=NDJSON, headers=headers)
