"""Server-sent events of the log (``GET /v1/events/stream``): from a position, following
new events as they are stored.

A stream reads the log a batch at a time through the event store (a connection is taken
for each read and given back at once) and, when it has caught up, waits without any
connection: for a command of this process to store events (:meth:`StreamHub.poke`, from
the application's ``on_saved``), for the next look at the log (other processes write
too), or for the next heartbeat. Each event goes out as ``id:`` (its position), ``event:``
(its type) and ``data:`` (the event as JSON in the one outbound shape, ``envelope``), so
that a client resuming with ``Last-Event-ID`` misses nothing and sees nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass

from libs.application.app import DealtrailApplication
from libs.application.failures import is_unavailable
from libs.application.records import EventRecord
from libs.observability import metrics
from services.feeds.envelope import envelope
from services.projections.source import EventSource, UndecodableRecord

log = logging.getLogger("dealtrail.feeds.stream")

HEARTBEAT_SECONDS = 15.0  # a comment line when nothing else was sent for this long
POLL_SECONDS = 1.0  # how often a caught-up stream looks at the log without being woken
STREAM_BATCH = 200  # events read from the log per look
OUTAGE_RETRY_SECONDS = 1.0  # between reads while the event store is unreachable
RETRY_MILLISECONDS = 2000  # what a browser's EventSource waits before reconnecting


def sse_event(application: DealtrailApplication, record: EventRecord) -> bytes:
    """One event in the text/event-stream format (a blocking call: see ``envelope``)."""
    body = envelope(application, record)
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return f"id: {record.position}\nevent: {record.event_type}\ndata: {data}\n\n".encode()


def _chunks(
    source: EventSource, after: int, wanted: frozenset[str]
) -> list[tuple[int, bytes | None]]:
    """The next events after ``after``: (position, its block, or None when filtered out)."""
    out: list[tuple[int, bytes | None]] = []
    for record in source.read(after, STREAM_BATCH):
        if isinstance(record, UndecodableRecord):
            block = f": position {record.position} cannot be decoded\n\n".encode()
        elif not wanted or record.event_type in wanted:
            block = sse_event(source.application, record)
        else:
            block = None
        out.append((record.position, block))
    return out


class StreamHub:
    """The streams of one process: how many may be open, and waking them on new events."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.open = 0
        self._waiters: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def try_open(self) -> bool:
        """Count one more open stream; False (and nothing counted) at the maximum."""
        if self.open >= self.max_streams:
            metrics.SSE_REFUSED.inc()
            return False
        self.open += 1
        metrics.SSE_STREAMS_OPEN.inc()
        return True

    def closed(self) -> None:
        self.open -= 1
        metrics.SSE_STREAMS_OPEN.dec()

    def poke(self, _position: int | None = None) -> None:
        """Events were stored: wake every waiting stream (safe from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for event in self._waiters:
            event.set()

    async def wait(self, seconds: float) -> None:
        """Wait until poked or ``seconds`` have passed."""
        self._loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self._waiters.add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=max(seconds, 0.0))
        finally:
            self._waiters.discard(event)


@dataclass
class LogStream:
    """One client's stream: the events after ``after`` (only ``types``, when given)."""

    source: EventSource
    hub: StreamHub
    after: int
    types: Collection[str] = ()
    lifetime_seconds: float = 3600.0
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    poll_seconds: float = POLL_SECONDS
    clock: Callable[[], float] = time.monotonic

    async def events(self) -> AsyncIterator[bytes]:
        """The stream's bytes until its lifetime ends (the client then reconnects with
        ``Last-Event-ID``). Whoever counted it open in the hub closes it there."""
        wanted = frozenset(self.types)
        position = sent_position = self.after
        started = self.clock()
        last_sent = started
        yield f"retry: {RETRY_MILLISECONDS}\n: events after position {position}\n\n".encode()
        while self.clock() - started < self.lifetime_seconds:
            try:
                read = await asyncio.to_thread(_chunks, self.source, position, wanted)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                log.warning("event stream: %s; retrying", exc)
                yield b": the event store is unreachable; retrying\n\n"
                last_sent = self.clock()
                await asyncio.sleep(OUTAGE_RETRY_SECONDS)
                continue
            chunks = []
            for position, block in read:
                if block is not None:
                    chunks.append(block)
                    sent_position = position
            if read:
                position = read[-1][0]
            if chunks:
                metrics.SSE_EVENTS_SENT.inc(sum(1 for c in chunks if c.startswith(b"id:")))
                yield b"".join(chunks)
                last_sent = self.clock()
            if len(read) == STREAM_BATCH:
                continue
            since = self.clock() - last_sent
            if since >= self.heartbeat_seconds:
                # A filtered stream moves the client's Last-Event-ID past the events it left
                # out, so that a reconnection does not read them again.
                moved = f"id: {position}\n" if position > sent_position else ""
                sent_position = position
                yield f": heartbeat\n{moved}\n".encode()
                last_sent = self.clock()
                since = 0.0
            left = self.lifetime_seconds - (self.clock() - started)
            await self.hub.wait(min(self.poll_seconds, self.heartbeat_seconds - since, left))
