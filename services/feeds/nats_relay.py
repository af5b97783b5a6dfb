"""The NATS relay: publishes every event of the log to a NATS JetStream stream, in order.

Each event goes to the subject ``<prefix>.<aggregate type, lower case>.<event type>``
(``dealtrail.deal.DealWon``) with the header ``Nats-Msg-Id`` set to its position, and
its body is the event as JSON in the one outbound shape (``envelope.py``: the export's
line, and for a deal's event the deal as it stood after it).
The relay keeps its position like a projection does, in ``nats_relay_state`` (a row per
stream), and moves it only after the server has acknowledged every message of a batch.
A relay killed between the acknowledgement and that write sends at most that batch
again: the stream drops messages whose ``Nats-Msg-Id`` it has seen within its duplicate
window. To hold beyond that window too (a relay down for longer), a relay that
(re)connects resumes after the newest position the stream already holds when that is
ahead of its stored one.

A batch is sent in log order on one connection before its acknowledgements are awaited,
so what the server stored when a batch fails is a prefix of it; the relay sends again
from its stored position and the duplicates are dropped: the stream keeps log order.

When NATS cannot be reached the relay backs off (0.5 s doubling to 30 s), says so in
its status and metrics, and carries on when NATS is back; a database outage is waited
out the same way the projection worker does. On PostgreSQL only the holder of the
relay's advisory lock publishes; another relay stands by and takes over when the first
one's connection ends. An event whose stored state cannot be decoded is parked (as the
projections park it, under the consumer name ``nats:<stream>``) and not published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import Column, MetaData, String, Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.application.app import DealtrailApplication
from libs.application.failures import is_unavailable
from libs.application.records import EventRecord
from libs.application.sql import advisory_key, connect_raw, setup_lock
from libs.application.store import StoreLocation
from libs.observability import metrics
from services.feeds.envelope import envelope
from services.projections.base import create_state_table, projection_parked
from services.projections.parking import park
from services.projections.source import EventSource, UndecodableRecord
from services.projections.sql import Position, UtcDateTime

log = logging.getLogger("dealtrail.feeds.nats")

RELAY_BATCH = 500  # events read, published and acknowledged before the position moves
POLL_SECONDS = 0.2  # how often a caught-up relay looks at the log (also woken by NOTIFY)
LOCK_RETRY_SECONDS = 1.0  # a standby tries the lock this often
CONNECT_SECONDS = 2.0  # to reach a NATS server
ACK_SECONDS = 10.0  # for the acknowledgements of one batch
BACKOFF_FIRST_SECONDS = 0.5  # after a failure to reach NATS; doubled each time...
BACKOFF_MAX_SECONDS = 30.0  # ...up to this
DUPLICATE_WINDOW_SECONDS = 120  # of a stream the relay creates (JetStream's default)
BEHIND_LIMIT = 100_000  # events counted behind the relay for its metrics, at most
BEHIND_EVERY_SECONDS = 5.0  # how often a caught-up relay counts what is behind it
MSG_ID = "Nats-Msg-Id"

relay_metadata = MetaData()
nats_relay_state = Table(
    "nats_relay_state",
    relay_metadata,
    Column("stream", String(64), primary_key=True),
    Column("position", Position, nullable=False),
    Column("published", Position, nullable=False, server_default="0"),
    Column("updated_at", UtcDateTime(), nullable=True),
)

_NOT_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def subject_of(prefix: str, record: EventRecord) -> str:
    """``dealtrail.deal.DealWon``: the prefix, the aggregate type in lower case, the event
    type (anything a subject token cannot hold replaced by ``_``)."""
    aggregate = _NOT_A_TOKEN.sub("_", record.aggregate_type.lower()) or "unknown"
    event = _NOT_A_TOKEN.sub("_", record.event_type) or "unknown"
    return f"{prefix}.{aggregate}.{event}"


def body_of(application: DealtrailApplication, record: EventRecord) -> bytes:
    """The message body: the event in the one outbound shape (``envelope``), as JSON (a
    blocking call: a deal's event carries the deal as it stood after it)."""
    return orjson.dumps(envelope(application, record))


def consumer_name(stream: str) -> str:
    """The name the relay parks events under, and its advisory lock's."""
    return f"nats:{stream}"


class StreamMisconfigured(RuntimeError):
    """The stream exists but does not take the relay's subjects."""


@dataclass
class RelayHealth:
    """What the relay knows about itself now (its status and ``/health/ready``)."""

    connected: bool = False
    active: bool = False
    position: int | None = None
    error: str | None = None
    error_since: datetime | None = None
    retry_in: float | None = None
    published: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "active": self.active,
            "position": self.position,
            "published": self.published,
            "error": self.error,
            "error_since": self.error_since.isoformat() if self.error_since else None,
            "retry_in_seconds": self.retry_in,
        }


@dataclass
class NatsRelay:
    """Keeps a JetStream stream caught up with the event log until stopped."""

    engine: AsyncEngine
    source: EventSource
    location: StoreLocation
    url: str = "nats://127.0.0.1:4222"
    stream: str = "DEALTRAIL"
    subject_prefix: str = "dealtrail"
    batch_size: int = RELAY_BATCH
    poll_seconds: float = POLL_SECONDS
    use_advisory_lock: bool = True
    health: RelayHealth = field(default_factory=RelayHealth)

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._lock_conn: Any = None
        self._held = False
        self._stream_head: int | None = None  # newest position in the stream at connect
        self._behind_counted = 0.0
        self._set_up = False
        self._labels = (self.stream,)

    # --- control ------------------------------------------------------------------------

    def poke(self, _position: int | None = None) -> None:
        """Wake the relay now (events were stored); safe from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Whether the relay works (or stands by) without a failure, and what it knows."""
        health = self.health
        ok = health.error is None and (health.connected or not health.active)
        return ok, {"nats_relay": {"stream": self.stream, **health.as_dict()}}

    @property
    def subjects(self) -> str:
        return f"{self.subject_prefix}.>"

    async def setup(self) -> None:
        """Create the relay's state table and its stream's row (position 0) if missing."""
        await create_state_table(self.engine)  # where undecodable events are parked
        async with self.engine.begin() as conn:
            await conn.run_sync(relay_metadata.create_all)
            if await _stored_position(conn, self.stream) is None:
                await conn.execute(
                    insert(nats_relay_state).values(stream=self.stream, position=0, published=0)
                )
        self._set_up = True

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Relay until :meth:`stop`; outlives NATS and database outages."""
        self._loop = asyncio.get_running_loop()
        backoff = BACKOFF_FIRST_SECONDS
        try:
            while not self._stopping.is_set():
                try:
                    if not self._set_up:
                        async with setup_lock(self.location):
                            await self.setup()
                    if not await self._may_relay():
                        await self._sleep(LOCK_RETRY_SECONDS)
                        continue
                    await self._ensure_nats()
                    progressed = await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the relay outlives every failure
                    wait = await self._failed(exc, backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_SECONDS) if wait == backoff else backoff
                    await self._sleep(wait)
                    continue
                backoff = BACKOFF_FIRST_SECONDS
                self._recovered()
                if not progressed:
                    await self._count_behind()
                    await self._sleep(self.poll_seconds)
        finally:
            await self._close_nats()
            await self._drop_lock()
            self.health.active = False
            metrics.NATS_RELAY_ACTIVE.labels(*self._labels).set(0)

    async def step(self) -> int:
        """Publish the next batch and store the new position; how many events were read."""
        async with self.engine.connect() as conn:
            stored = await _stored_position(conn, self.stream) or 0
        position = max(stored, self._stream_head or 0)
        records = await asyncio.to_thread(self.source.read, position, self.batch_size)
        if not records:
            if position > stored:  # the stream holds what was sent before a crash
                async with self.engine.begin() as conn:
                    await self._store(conn, position, 0)
            self._set_position(position)
            return 0
        undecodable = [r for r in records if isinstance(r, UndecodableRecord)]
        sendable = [r for r in records if not isinstance(r, UndecodableRecord)]
        duplicates = await self._publish(sendable)
        new_position = records[-1].position
        async with self.engine.begin() as conn:
            for record in undecodable:
                error = record.error or ValueError("the stored event cannot be decoded")
                await park(conn, consumer_name(self.stream), 1, record, error)
            await self._store(conn, new_position, len(sendable))
        published = len(sendable)
        self.health.published += published
        metrics.NATS_RELAY_PUBLISHED.labels(self.stream, "stored").inc(published - duplicates)
        if duplicates:
            metrics.NATS_RELAY_PUBLISHED.labels(self.stream, "duplicate").inc(duplicates)
        if undecodable:
            metrics.NATS_RELAY_PARKED.labels(*self._labels).inc(len(undecodable))
        self._stream_head = None
        self._set_position(new_position)
        return len(records)

    async def _store(self, conn: AsyncConnection, position: int, published: int) -> None:
        """Move the stored position forward (never back), in the caller's transaction."""
        await conn.execute(
            update(nats_relay_state)
            .where(nats_relay_state.c.stream == self.stream)
            .where(nats_relay_state.c.position < position)
            .values(
                position=position,
                published=nats_relay_state.c.published + published,
                updated_at=datetime.now(UTC),
            )
        )

    async def _publish(self, records: Sequence[EventRecord]) -> int:
        """Send the batch in order, then wait for every acknowledgement; how many the
        stream dropped as duplicates. Raises when any is not acknowledged."""
        js = self._js
        assert js is not None
        application = self.source.application
        bodies = await asyncio.to_thread(lambda: [body_of(application, r) for r in records])
        pending: list[asyncio.Future[Any]] = []
        try:
            for record, body in zip(records, bodies, strict=True):
                pending.append(
                    await js.publish_async(
                        subject_of(self.subject_prefix, record),
                        body,
                        stream=self.stream,
                        headers={MSG_ID: str(record.position)},
                    )
                )
            acks = await asyncio.wait_for(asyncio.gather(*pending), timeout=ACK_SECONDS)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        return sum(1 for ack in acks if ack.duplicate)

    # --- NATS -----------------------------------------------------------------------------

    async def _ensure_nats(self) -> None:
        nc = self._nc
        if nc is not None and nc.is_connected:
            return
        await self._close_nats()
        nc = await connect(self.url)
        self._nc = nc
        try:
            js = nc.jetstream(timeout=ACK_SECONDS, publish_async_max_pending=self.batch_size)
            self._stream_head = await self._prepare_stream(js)
        except BaseException:
            await self._close_nats()
            raise
        self._js = js
        self.health.connected = True
        metrics.NATS_RELAY_CONNECTED.labels(*self._labels).set(1)
        log.info(
            "nats relay: connected, publishing to stream %s (subjects %s)",
            self.stream,
            self.subjects,
        )

    async def _prepare_stream(self, js: JetStreamContext) -> int | None:
        """Create the stream if missing; the newest position it holds (None: empty)."""
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            info = await js.add_stream(
                name=self.stream,
                subjects=[self.subjects],
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
            )
            log.info("nats relay: created stream %s", self.stream)
        subjects = info.config.subjects or []
        if self.subjects not in subjects:
            raise StreamMisconfigured(
                f"stream {self.stream} takes the subjects {', '.join(subjects) or 'none'}, "
                f"not {self.subjects}; add them to it or set DEALTRAIL_NATS_STREAM or "
                "DEALTRAIL_NATS_SUBJECT_PREFIX"
            )
        last = info.state.last_seq if info.state else 0
        if not last:
            return None
        try:
            message = await js.get_msg(self.stream, seq=last)
        except NotFoundError:
            return None
        value = (message.headers or {}).get(MSG_ID, "")
        return int(value) if isinstance(value, str) and value.isdigit() else None

    async def _close_nats(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self.health.connected = False
        metrics.NATS_RELAY_CONNECTED.labels(*self._labels).set(0)
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), timeout=2)

    # --- failures ---------------------------------------------------------------------------

    async def _failed(self, exc: Exception, backoff: float) -> float:
        """Log and record a failure; how long to wait before the next attempt."""
        if is_unavailable(exc):
            log.warning("nats relay: the database is unreachable (%s); retrying", exc)
            await self._drop_lock()
            self._record_error(f"database unreachable: {exc}", LOCK_RETRY_SECONDS)
            return LOCK_RETRY_SECONDS
        if isinstance(exc, StreamMisconfigured):
            log.error("nats relay: %s; retrying in %.0f s", exc, BACKOFF_MAX_SECONDS)
            await self._close_nats()
            self._record_error(str(exc), BACKOFF_MAX_SECONDS)
            return BACKOFF_MAX_SECONDS
        if _is_nats_failure(exc):
            message = f"NATS at {_hosts(self.url)}: {_describe(exc)}"
            log.warning("nats relay: %s; retrying in %.1f s", message, backoff)
            metrics.NATS_RELAY_ERRORS.labels(*self._labels).inc()
            await self._close_nats()
            self._record_error(message, backoff)
            return backoff
        log.exception("nats relay failed; retrying", exc_info=exc)
        await self._close_nats()
        self._record_error(_describe(exc), LOCK_RETRY_SECONDS)
        return LOCK_RETRY_SECONDS

    def _record_error(self, message: str, retry_in: float) -> None:
        if self.health.error is None:
            self.health.error_since = datetime.now(UTC)
        self.health.error = message
        self.health.retry_in = retry_in

    def _recovered(self) -> None:
        if self.health.error is not None:
            log.info("nats relay: publishing again")
        self.health.error = None
        self.health.error_since = None
        self.health.retry_in = None

    # --- position and metrics --------------------------------------------------------------

    def _set_position(self, position: int) -> None:
        self.health.position = position
        metrics.NATS_RELAY_POSITION.labels(*self._labels).set(position)

    async def _count_behind(self) -> None:
        now = time.monotonic()
        if now - self._behind_counted < BEHIND_EVERY_SECONDS or self.health.position is None:
            return
        self._behind_counted = now
        async with self.engine.connect() as conn:
            behind = await self.source.count_after(conn, self.health.position, BEHIND_LIMIT)
        metrics.NATS_RELAY_BEHIND.labels(*self._labels).set(behind)

    # --- PostgreSQL: the advisory lock and LISTEN ---------------------------------------------

    async def _may_relay(self) -> bool:
        """True when this relay is the one that publishes (always on SQLite)."""
        if not (self.location.is_postgres and self.use_advisory_lock):
            self._set_active(True)
            return True
        conn = self._lock_conn
        if conn is None or conn.is_closed():
            self._held = False
            conn = await connect_raw(self.location)
            self._lock_conn = conn
            channel = self.source.channel
            if channel:
                await conn.add_listener(channel, lambda *_: self._wake.set())
        if not self._held:
            key = advisory_key(self.location, consumer_name(self.stream))
            self._held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
            if self._held:
                log.info("nats relay for stream %s: this process took the lock", self.stream)
        self._set_active(self._held)
        return self._held

    def _set_active(self, active: bool) -> None:
        self.health.active = active
        metrics.NATS_RELAY_ACTIVE.labels(*self._labels).set(1 if active else 0)

    async def _drop_lock(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        self._held = False
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()


def _is_nats_failure(exc: BaseException) -> bool:
    return isinstance(exc, (nats.errors.Error, TimeoutError, ConnectionError, OSError))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _hosts(url: str) -> str:
    """The servers of ``DEALTRAIL_NATS_URL`` without credentials."""
    return ",".join(u.rsplit("@", 1)[-1] for u in url.split(","))


async def _stored_position(conn: AsyncConnection, stream: str) -> int | None:
    row = (
        await conn.execute(
            select(nats_relay_state.c.position).where(nats_relay_state.c.stream == stream)
        )
    ).first()
    return None if row is None else int(row[0])


async def relay_status(
    engine: AsyncEngine, source: EventSource, stream: str, *, behind_limit: int = 1_000_000
) -> dict[str, Any]:
    """The relay's stored position for ``stream``, the log's head, events behind (counted
    up to ``behind_limit``), events published, parked events and when it last moved."""
    head = await asyncio.to_thread(source.head)
    await create_state_table(engine)
    async with engine.begin() as conn:
        await conn.run_sync(relay_metadata.create_all)
        row = (
            (
                await conn.execute(
                    select(nats_relay_state).where(nats_relay_state.c.stream == stream)
                )
            )
            .mappings()
            .first()
        )
        position = int(row["position"]) if row else 0
        behind = await source.count_after(conn, position, behind_limit)
        parked = (
            await conn.execute(
                select(func.count())
                .select_from(projection_parked)
                .where(projection_parked.c.name == consumer_name(stream))
            )
        ).scalar_one()
    return {
        "stream": stream,
        "position": position,
        "head": head,
        "behind": behind,
        "behind_exact": behind < behind_limit,
        "published": int(row["published"]) if row else 0,
        "parked": int(parked),
        "updated_at": row["updated_at"].isoformat() if row and row["updated_at"] else None,
    }


async def stream_state(url: str, stream: str) -> dict[str, Any]:
    """What the NATS server holds of ``stream``: messages, first and last sequence, and
    the newest message's ``Nats-Msg-Id`` (its position). Raises when NATS cannot be
    reached; ``{"exists": False}`` when the stream is missing."""
    nc = await connect(url)
    try:
        js = nc.jetstream(timeout=ACK_SECONDS)
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return {"exists": False}
        state = info.state
        last_position = None
        if state.last_seq:
            with contextlib.suppress(NotFoundError):
                message = await js.get_msg(stream, seq=state.last_seq)
                value = (message.headers or {}).get(MSG_ID)
                last_position = int(value) if isinstance(value, str) and value.isdigit() else None
        return {
            "exists": True,
            "subjects": list(info.config.subjects or []),
            "messages": state.messages,
            "first_seq": state.first_seq,
            "last_seq": state.last_seq,
            "last_position": last_position,
        }
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout=2)


async def connect(url: str) -> NatsClient:
    """One connection to the first server of ``url`` that answers, without the client's
    own reconnection (the relay decides when to try again); raises when none answers."""
    servers = url.split(",")
    # max_reconnect_attempts=1: the client tries each server twice, then gives up (0
    # would make it try for ever).
    return await asyncio.wait_for(
        nats.connect(
            servers=servers,
            connect_timeout=int(CONNECT_SECONDS),
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=_quiet,
        ),
        timeout=CONNECT_SECONDS * 2 * len(servers) + 1,
    )


async def _quiet(exc: Exception) -> None:
    log.debug("nats: %s", exc)
