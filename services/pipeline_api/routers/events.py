"""``GET /v1/events/stream``: the event log as server-sent events, from a position on,
following new events; for auditors and admins (as the JSON Lines export)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from libs.domain.events import EventType
from services.feeds.stream import LogStream, StreamHub
from services.pipeline_api.deps import ApplicationDep, CurrentPrincipal, RuntimeDep
from services.pipeline_api.errors import ApiError
from services.pipeline_api.openapi import raises
from services.projections.source import EventSource
from services.queries.cursors import MAX_POSITION
from services.queries.errors import QueryError

router = APIRouter(prefix="/v1/events", tags=["events"])

EVENT_STREAM = "text/event-stream"
MAX_TYPES_TEXT = 2000  # characters of the ``types`` filter
KNOWN_TYPES = frozenset(t.value for t in EventType)


def _last_event_id(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or int(text) > MAX_POSITION:
        raise QueryError(
            f"Last-Event-ID must be a log position (0 to {MAX_POSITION})", field="Last-Event-ID"
        )
    return int(text)


def _types(value: str | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - KNOWN_TYPES)
    if unknown:
        raise QueryError(
            f"types: unknown event type {unknown[0]!r}", field="types", code="unknown_event_type"
        )
    if not names:
        raise QueryError("types names no event type", field="types")
    return frozenset(names)


class EventStreamResponse(StreamingResponse):
    """A streaming answer that gives its stream's place in the hub back however it ends
    (finished, the client gone, or gone before the first byte)."""

    def __init__(self, stream: LogStream, headers: dict[str, str]) -> None:
        super().__init__(stream.events(), media_type=EVENT_STREAM, headers=headers)
        self._hub = stream.hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._hub.closed()


def _hub(request: Request) -> StreamHub:
    hub: StreamHub | None = getattr(request.app.state, "event_streams", None)
    if hub is None:
        raise ApiError(503, "the service is starting; retry shortly", code="starting")
    return hub


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events: `id:` the position, `event:` the event type, "
            "`data:` the event as JSON (as a line of the JSON Lines export, without the hash "
            "fields); a comment line every 15 s while nothing happens",
            "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
        }
    },
)
@raises(403, 503)
async def stream_events(
    request: Request,
    application: ApplicationDep,
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    after: Annotated[
        int,
        Query(ge=0, le=MAX_POSITION, description="Send the events after this position (0: all)"),
    ] = 0,
    types: Annotated[
        str | None,
        Query(
            max_length=MAX_TYPES_TEXT,
            description="Only these event types, separated by commas (e.g. `DealWon,DealLost`)",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=32,
            description="The last position received (sent by a reconnecting EventSource); "
            "when present it replaces `after`",
        ),
    ] = None,
) -> StreamingResponse:
    """The events after a position as server-sent events, then every new one as it is
    stored, until the stream's lifetime ends (reconnect with ``Last-Event-ID``)."""
    principal.check_may_read_audit()
    resume = _last_event_id(last_event_id)
    wanted = _types(types)
    hub = _hub(request)
    if not hub.try_open():
        raise ApiError(
            503,
            f"{hub.max_streams} event streams are open in this process already; retry shortly",
            code="too_many_streams",
            details={"max_streams": hub.max_streams},
            headers={"Retry-After": "5"},
        )
    stream = LogStream(
        EventSource(application),
        hub,
        after=after if resume is None else resume,
        types=wanted,
        lifetime_seconds=runtime.settings.sse_max_minutes * 60,
    )
    return EventStreamResponse(stream, {"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
