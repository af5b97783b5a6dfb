"""Webhook delivery: every subscription follows the log on its own, at least once, in order.

One :class:`Dispatcher` per worker process. Its main loop learns the subscriptions from
the log's webhook events, watches the log's head and runs one task per active
subscription, so a slow or dead endpoint only ever holds up its own subscription. A
subscription's task takes the first event after its cursor that is meant for it, signs
it (Standard Webhooks) and POSTs it; the outcome and the cursor's move (past the event
when delivered, else to the next attempt's time) are written in one transaction
(``store.record_outcome``). Retries back off exponentially with jitter on the runtime's
clock; after the last attempt the subscription is paused (``WebhookPaused``, reason
``failing``) and starts again from the same event when an admin resumes it.

On PostgreSQL only the process holding the ``webhooks`` advisory lock delivers; another
worker stands by and takes over when that session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import orjson
from eventsourcing.utils import get_topic
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.app import Clock, DealtrailApplication
from libs.application.failures import is_unavailable
from libs.application.handlers import handle
from libs.application.records import EventRecord
from libs.application.sql import advisory_key, connect_raw
from libs.application.store import StoreLocation
from libs.domain.actors import Actor, Role
from libs.domain.commands import PauseWebhook
from libs.domain.errors import DomainError
from libs.domain.events import EventType as E
from libs.domain.webhook import ACTIVE, FAILING, Webhook
from libs.observability import metrics
from services.feeds.envelope import envelope
from services.feeds.webhooks import store
from services.feeds.webhooks.guard import RefusedTarget, resolve
from services.feeds.webhooks.signing import message_id, signed_headers
from services.projections.source import EventSource

log = logging.getLogger("dealtrail.webhooks")

DELIVERY_ACTOR = Actor(name="webhook-delivery", role=Role.ADMIN)
READ_BATCH = 200  # events a subscription reads at a time looking for its next one
RESPONSE_KEPT_BYTES = 4096  # of a response body read (the rest is not read)
BODY_CACHE = 1024  # outbound bodies kept for the next subscription that wants them
POLL_SECONDS = 0.2
LOCK_RETRY_SECONDS = 1.0
LAG_EVERY_SECONDS = 5.0
LAG_LIMIT = 100_000  # events counted behind a subscription, at most
JITTER = 0.2  # each delay is drawn from ±20 % of its nominal value
USER_AGENT = "Dealtrail-Webhooks/1"


@dataclass(frozen=True)
class DeliveryPolicy:
    """How deliveries are sent and retried (from the settings)."""

    retry_base_seconds: float = 10.0
    retry_cap_seconds: float = 3 * 3600.0
    max_attempts: int = 18
    timeout_seconds: float = 10.0
    allow_private: bool = False

    def nominal_delay(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones, before jitter."""
        return float(
            min(self.retry_cap_seconds, self.retry_base_seconds * 2 ** max(attempts - 1, 0))
        )

    def delay(self, attempts: int) -> float:
        return self.nominal_delay(attempts) * random.uniform(1 - JITTER, 1 + JITTER)

    def schedule(self) -> list[float]:
        """The nominal delays between the attempts of one event."""
        return [self.nominal_delay(n) for n in range(1, self.max_attempts)]


@dataclass
class Subscription:
    """What delivery needs to know of a webhook."""

    id: str
    start: int  # the position of its creation: it gets the events after it
    url: str = ""
    event_types: list[str] = field(default_factory=list)
    pipeline_id: str | None = None
    status: str = ACTIVE
    deleted: bool = False

    @property
    def active(self) -> bool:
        return self.status == ACTIVE and not self.deleted

    def update(self, webhook: Webhook) -> None:
        self.url = webhook.url
        self.event_types = list(webhook.event_types)
        self.pipeline_id = webhook.pipeline_id
        self.status = webhook.status
        self.deleted = webhook.deleted

    def wants(self, record: EventRecord, body: dict[str, Any]) -> bool:
        """Whether the event goes to this subscription: an event addressed to a webhook
        (``payload.webhook_id``) only to that one; any other by type and pipeline."""
        addressed = record.payload.get("webhook_id")
        if addressed is not None:
            return str(addressed) == self.id
        if "*" not in self.event_types and record.event_type not in self.event_types:
            return False
        if self.pipeline_id is None:
            return True
        return self.pipeline_id in _pipelines_of(record, body)


def _pipelines_of(record: EventRecord, body: dict[str, Any]) -> set[str]:
    """The pipelines an event concerns: the pipeline itself, a deal's (before and after a
    move), or one its payload names."""
    found: set[str] = set()
    if record.aggregate_type == "Pipeline":
        found.add(str(record.aggregate_id))
    for key in ("pipeline_id", "from_pipeline_id", "to_pipeline_id"):
        value = record.payload.get(key)
        if value is not None:
            found.add(str(value))
    deal = body.get("deal")
    if isinstance(deal, dict) and deal.get("pipeline_id"):
        found.add(str(deal["pipeline_id"]))
    return found


WEBHOOK_TOPICS = [
    get_topic(getattr(Webhook, name))
    for name in (
        E.WEBHOOK_CREATED,
        E.WEBHOOK_CHANGED,
        E.WEBHOOK_PAUSED,
        E.WEBHOOK_RESUMED,
        E.WEBHOOK_DELETED,
    )
]
CREATED_TOPIC = WEBHOOK_TOPICS[0]


class Dispatcher:
    """Delivers the log to every active webhook subscription until stopped."""

    def __init__(
        self,
        application: DealtrailApplication,
        engine: AsyncEngine,
        location: StoreLocation,
        policy: DeliveryPolicy,
        clock: Clock,
        *,
        poll_seconds: float = POLL_SECONDS,
        use_advisory_lock: bool = True,
    ) -> None:
        self.application = application
        self.engine = engine
        self.location = location
        self.policy = policy
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.use_advisory_lock = use_advisory_lock and location.is_postgres
        self.source = EventSource(application)
        self.subscriptions: dict[str, Subscription] = {}
        self.active = False  # holds the lock (or needs none) and delivers
        self._config_position = 0
        self._head = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._bodies: OrderedDict[int, tuple[dict[str, Any], str]] = OrderedDict()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._tick = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_conn: Any = None
        self._client: httpx.AsyncClient | None = None
        self._lag_at = 0.0

    # --- control -------------------------------------------------------------------------

    def poke(self) -> None:
        """Look at the log now (safe from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # --- the main loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the log until :meth:`stop`; survives database outages."""
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.policy.timeout_seconds),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        )
        try:
            while not self._stopping.is_set():
                try:
                    await self._step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # delivery outlives outages and its own failures
                    if is_unavailable(exc):
                        log.warning("webhook delivery: %s; retrying", exc)
                    else:
                        log.exception("webhook delivery failed; retrying", exc_info=exc)
                    await self._stand_down()
                    await self._sleep(LOCK_RETRY_SECONDS)
                    continue
                await self._sleep(self.poll_seconds if self.active else LOCK_RETRY_SECONDS)
        finally:
            await self._stand_down()
            await self._client.aclose()

    async def _step(self) -> None:
        if self.use_advisory_lock and not await self._hold_lock():
            return
        self.active = True
        await self._learn_subscriptions()
        self._head = await asyncio.to_thread(self.application.head_position)
        for sub in self.subscriptions.values():
            task = self._tasks.get(sub.id)
            if sub.active and (task is None or task.done()):
                self._tasks[sub.id] = asyncio.create_task(
                    self._follow(sub.id), name=f"webhook-{sub.id}"
                )
        if time.monotonic() - self._lag_at > LAG_EVERY_SECONDS:
            self._lag_at = time.monotonic()
            await self._measure_lag()
        self._tick.set()
        self._tick = asyncio.Event()

    async def _learn_subscriptions(self) -> None:
        """Read the webhook events after the last one seen and reload what they changed."""
        recorder = self.application.recorder
        changed: set[str] = set()
        while True:
            batch = await asyncio.to_thread(
                recorder.select_notifications,
                self._config_position + 1,
                500,
                topics=WEBHOOK_TOPICS,
            )
            for n in batch:
                webhook_id = str(n.originator_id)
                if n.topic == CREATED_TOPIC:
                    self.subscriptions[webhook_id] = Subscription(webhook_id, n.id)
                changed.add(webhook_id)
                self._config_position = n.id
            if len(batch) < 500:
                break
        for webhook_id in changed:
            sub = self.subscriptions.get(webhook_id)
            if sub is None:
                continue
            webhook: Any = await asyncio.to_thread(
                self.application.repository.get, UUID(webhook_id)
            )
            if isinstance(webhook, Webhook):
                sub.update(webhook)
            if sub.deleted:
                del self.subscriptions[webhook_id]
                metrics.webhook_lag_gone(webhook_id)

    async def _measure_lag(self) -> None:
        cursors = await store.read_cursors(self.engine)
        async with self.engine.connect() as conn:
            for sub in self.subscriptions.values():
                cursor = cursors.get(sub.id)
                position = cursor.position if cursor else sub.start
                behind = await self.source.count_after(conn, position, LAG_LIMIT)
                metrics.webhook_lag(sub.id, behind)

    # --- one subscription -----------------------------------------------------------------

    async def _follow(self, webhook_id: str) -> None:
        """Deliver to one subscription, in log order, while it is active."""
        while not self._stopping.is_set():
            sub = self.subscriptions.get(webhook_id)
            if sub is None or not sub.active or not self.active:
                return
            try:
                progressed = await self._next(sub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one subscription's trouble stays its own
                if is_unavailable(exc):
                    log.warning("webhook %s: %s; retrying", webhook_id, exc)
                else:
                    log.exception("webhook %s: delivery failed; retrying", webhook_id)
                progressed = False
            if not progressed:
                await self._next_tick()

    async def _next(self, sub: Subscription) -> bool:
        """Try the subscription's next event; False when there was nothing to do now."""
        cursor = await store.ensure_cursor(self.engine, sub.id, sub.start)
        if cursor.next_attempt_at is not None and self.clock() < cursor.next_attempt_at:
            return False
        if cursor.position >= self._head:
            return False
        records = await asyncio.to_thread(self.source.read, cursor.position, READ_BATCH)
        for record in records:
            body, text = await self._body(record)
            if sub.wants(record, body):
                await self._deliver(sub, cursor, record, text)
                return True
        if records:
            await store.skip_to(self.engine, cursor, records[-1].position)
            return True
        return False

    async def _body(self, record: EventRecord) -> tuple[dict[str, Any], str]:
        cached = self._bodies.get(record.position)
        if cached is not None:
            self._bodies.move_to_end(record.position)
            return cached
        body = await asyncio.to_thread(envelope, self.application, record)
        made = (body, orjson.dumps(body).decode())
        self._bodies[record.position] = made
        while len(self._bodies) > BODY_CACHE:
            self._bodies.popitem(last=False)
        return made

    async def _deliver(
        self, sub: Subscription, cursor: store.Cursor, record: EventRecord, text: str
    ) -> None:
        attempts = cursor.attempts + 1
        code, latency_ms, error = await self._send(sub, record.position, text)
        now = self.clock()
        if error is None:
            status, next_at = store.DELIVERED, None
        elif attempts < self.policy.max_attempts:
            status = store.RETRYING
            next_at = now + timedelta(seconds=self.policy.delay(attempts))
        else:
            status, next_at = store.FAILED, None
        outcome = store.Outcome(
            record.position,
            record.event_type,
            status,
            attempts,
            code,
            latency_ms,
            error,
            next_at,
            now,
        )
        if not await store.record_outcome(self.engine, cursor, outcome):
            return  # replayed or resumed meanwhile: the cursor says where to go on
        metrics.webhook_delivered(status, (latency_ms or 0) / 1000)
        if status == store.FAILED:
            log.warning(
                "webhook %s: gave up on position %d after %d attempts (%s); pausing it",
                sub.id,
                record.position,
                attempts,
                error,
            )
            await self._pause_failing(sub)

    async def _send(
        self, sub: Subscription, position: int, text: str
    ) -> tuple[int | None, int | None, str | None]:
        """POST one event: (response code, milliseconds, None or what went wrong)."""
        assert self._client is not None
        secret = await store.get_secret(self.engine, sub.id)
        if secret is None:
            return None, None, "the webhook has no signing secret"
        try:
            target = await resolve(sub.url, allow_private=self.policy.allow_private)
        except RefusedTarget as exc:
            return None, None, exc.message
        headers = signed_headers(secret, message_id(position, sub.id), datetime.now(UTC), text)
        headers.update(
            {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "host": target.host_header,
            }
        )
        extensions: dict[str, Any] = {}
        if target.address is not None and sub.url.startswith("https:"):
            extensions["sni_hostname"] = target.host
        started = time.perf_counter()
        try:
            async with self._client.stream(
                "POST",
                target.connect_url(),
                content=text.encode(),
                headers=headers,
                extensions=extensions,
            ) as response:
                kept = await _read_capped(response)
                code = response.status_code
        except httpx.TimeoutException:
            took = _ms(started)
            return None, took, f"no answer within {self.policy.timeout_seconds:g} s"
        except httpx.HTTPError as exc:
            return None, _ms(started), f"{type(exc).__name__}: {exc}"
        took = _ms(started)
        if 200 <= code < 300:
            return code, took, None
        snippet = kept[:200].decode("utf-8", "replace").strip()
        return code, took, f"HTTP {code}" + (f": {snippet}" if snippet else "")

    async def _pause_failing(self, sub: Subscription) -> None:
        sub.status = "paused"
        command = PauseWebhook(actor=DELIVERY_ACTOR, webhook_id=sub.id, reason=FAILING)
        try:
            await asyncio.to_thread(handle, self.application, command)
        except DomainError as exc:  # deleted or paused by hand meanwhile
            log.info("webhook %s: not paused: %s", sub.id, exc.message)

    # --- waiting and the lock -------------------------------------------------------------

    async def _next_tick(self) -> None:
        tick = self._tick
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tick.wait(), timeout=max(self.poll_seconds * 5, 1.0))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _hold_lock(self) -> bool:
        conn = self._lock_conn
        if conn is None or conn.is_closed():
            await self._stand_down()
            conn = await connect_raw(self.location)
            self._lock_conn = conn
            channel = self.source.channel
            if channel:
                await conn.add_listener(channel, lambda *_: self._wake.set())
            self._held = False
        if not getattr(self, "_held", False):
            key = advisory_key(self.location, "webhooks")
            self._held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
            if self._held:
                log.info("webhook delivery: holding the webhooks lock, delivering")
        return bool(self._held)

    async def _stand_down(self) -> None:
        """Stop every subscription's task and let go of the lock."""
        self.active = False
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        conn, self._lock_conn = self._lock_conn, None
        self._held = False
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)


async def _read_capped(response: httpx.Response) -> bytes:
    kept = bytearray()
    async for chunk in response.aiter_raw():
        kept += chunk[: RESPONSE_KEPT_BYTES - len(kept)]
        if len(kept) >= RESPONSE_KEPT_BYTES:
            break
    return bytes(kept)


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
