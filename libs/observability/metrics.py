"""Every metric the service records, in one place (Prometheus, via prometheus-client).

These are the *process* metrics: each process counts what it does itself. What the
database knows (each projection's position, events and seconds behind, parked events)
is read when ``/metrics`` is scraped instead (``services/runtime/metrics.py``), so it is
the same whichever process answers.

With several API processes (``dealtrail serve --workers N``) prometheus-client's
multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR``, set by ``serve``): each process
writes its values to files in that directory and a scrape of any process adds them up.
Counters and histograms are summed; the breaker gauge shows the highest value among the
living processes (``livemax``: any process with an open breaker shows 1).

Names follow Prometheus' conventions: ``dealtrail_`` first, ``_total`` for counters,
``_seconds`` for durations. Labels take only bounded values: route templates (never
raw paths), command class names, projection names, fixed outcome words.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``_created`` series beside each counter: noise for us

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- HTTP -------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "dealtrail_http_requests_total",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "dealtrail_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
RATE_LIMITED = Counter(
    "dealtrail_rate_limited_total",
    "Requests refused with 429 because their token was over its rate limit, by role",
    ["role"],
)

# --- commands and the event store -------------------------------------------------------

COMMANDS = Counter(
    "dealtrail_commands_total",
    "Commands run, by command type and outcome "
    "(ok, invalid, conflict, stale, not_found, forbidden, unavailable, error)",
    ["command", "outcome"],
)
COMMAND_DURATION = Histogram(
    "dealtrail_command_duration_seconds",
    "Time to decide and store a command, policies included",
    ["command"],
    buckets=LATENCY_BUCKETS,
)
APPEND_DURATION = Histogram(
    "dealtrail_event_store_append_seconds",
    "Time of one append of a command's events to the event store (one transaction)",
    buckets=FAST_BUCKETS,
)
EVENTS_APPENDED = Counter("dealtrail_events_appended_total", "Events appended to the event store")

# --- projections (work done by this process's worker) ------------------------------------

PROJECTION_BATCH = Histogram(
    "dealtrail_projection_batch_seconds",
    "Time to apply one batch of events to a projection and move its position",
    ["projection"],
    buckets=BATCH_BUCKETS,
)
PROJECTION_EVENTS = Counter(
    "dealtrail_projection_events_total",
    "Events a projection worker of this process moved a projection past",
    ["projection"],
)
PROJECTION_PARKED = Counter(
    "dealtrail_projection_parked_total",
    "Events a projection worker of this process parked (could not apply)",
    ["projection"],
)

# --- the API's parts ------------------------------------------------------------------------

QUERY_CACHE = Counter(
    "dealtrail_query_cache_requests_total",
    "Board and report requests answered from the cache (hit) or computed (miss)",
    ["result"],
)
IDEMPOTENCY_REPLAYS = Counter(
    "dealtrail_idempotency_replays_total",
    "Commands answered with the stored answer of an earlier request with the same Idempotency-Key",
)
IDEMPOTENCY_REFUSALS = Counter(
    "dealtrail_idempotency_refusals_total",
    "Requests refused because of their Idempotency-Key (reused for another request, "
    "or still in use)",
    ["reason"],
)
BREAKER_OPEN = Gauge(
    "dealtrail_store_breaker_open",
    "1 while the store breaker is open (the database was found unreachable), else 0",
    multiprocess_mode="livemax",
)
BREAKER_TRIPS = Counter(
    "dealtrail_store_breaker_trips_total", "Times the store breaker opened (outages noticed)"
)
IDEMPOTENCY_PURGED = Counter(
    "dealtrail_idempotency_keys_purged_total", "Expired Idempotency-Key records deleted"
)

# --- webhook delivery ------------------------------------------------------------------------
# One sample per attempt to deliver an event to a subscriber. ``outcome`` is the
# delivery's status after the attempt: ``delivered``, ``retrying`` (it failed and will be
# tried again) or ``failed`` (the last attempt failed; the subscription is paused).

WEBHOOK_DELIVERIES = Counter(
    "dealtrail_webhook_deliveries_total",
    "Attempts to deliver an event to a webhook subscriber, by outcome",
    ["outcome"],
)
WEBHOOK_DELIVERY_DURATION = Histogram(
    "dealtrail_webhook_delivery_seconds",
    "Time of one delivery attempt to a webhook subscriber (request sent to answer read)",
    buckets=LATENCY_BUCKETS,
)
WEBHOOK_EVENTS_BEHIND = Gauge(
    "dealtrail_webhook_events_behind",
    "Events after a webhook subscription's position (counted up to 100,000), by webhook id",
    ["webhook"],
    multiprocess_mode="livemax",
)
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed")


def webhook_delivered(outcome: str, seconds: float) -> None:
    """Record one webhook delivery attempt."""
    if outcome not in WEBHOOK_OUTCOMES:
        raise ValueError(f"webhook outcome must be one of {', '.join(WEBHOOK_OUTCOMES)}")
    WEBHOOK_DELIVERIES.labels(outcome).inc()
    WEBHOOK_DELIVERY_DURATION.observe(seconds)


def webhook_lag(webhook_id: str, events_behind: int) -> None:
    WEBHOOK_EVENTS_BEHIND.labels(webhook_id).set(events_behind)


def webhook_lag_gone(webhook_id: str) -> None:
    """A deleted subscription's series goes away."""
    with contextlib.suppress(KeyError):
        WEBHOOK_EVENTS_BEHIND.remove(webhook_id)


# --- the change feed ---------------------------------------------------------------------------
# The NATS relay (``services/feeds/nats_relay.py``) and the server-sent event stream
# (``services/feeds/stream.py``). The relay's gauges carry the stream it publishes to.

NATS_RELAY_POSITION = Gauge(
    "dealtrail_nats_relay_position",
    "Last position the NATS relay of this process published and stored",
    ["stream"],
    multiprocess_mode="livemax",
)
NATS_RELAY_BEHIND = Gauge(
    "dealtrail_nats_relay_events_behind",
    "Events after the NATS relay's position (counted up to 100,000)",
    ["stream"],
    multiprocess_mode="livemax",
)
NATS_RELAY_CONNECTED = Gauge(
    "dealtrail_nats_relay_connected",
    "1 while the NATS relay of this process is connected to NATS, else 0",
    ["stream"],
    multiprocess_mode="livemax",
)
NATS_RELAY_ACTIVE = Gauge(
    "dealtrail_nats_relay_active",
    "1 where this process relays the log to NATS, 0 while it stands by for the lock",
    ["stream"],
    multiprocess_mode="livemax",
)
NATS_RELAY_PUBLISHED = Counter(
    "dealtrail_nats_relay_published_total",
    "Events the NATS relay published, by what the server answered "
    "(stored, or duplicate: dropped by the stream's duplicate window)",
    ["stream", "result"],
)
NATS_RELAY_ERRORS = Counter(
    "dealtrail_nats_relay_errors_total",
    "Failed attempts of the NATS relay to connect, set up its stream or publish",
    ["stream"],
)
NATS_RELAY_PARKED = Counter(
    "dealtrail_nats_relay_parked_total",
    "Events the NATS relay could not publish (undecodable) and parked",
    ["stream"],
)
SSE_STREAMS_OPEN = Gauge(
    "dealtrail_sse_streams_open",
    "Server-sent event streams of GET /v1/events/stream open now",
    multiprocess_mode="livesum",
)
SSE_EVENTS_SENT = Counter(
    "dealtrail_sse_events_sent_total", "Events sent on server-sent event streams"
)
SSE_REFUSED = Counter(
    "dealtrail_sse_streams_refused_total",
    "Server-sent event streams refused because the process had its maximum open",
)

# --- automation -------------------------------------------------------------------------------
# One sample per occurrence the evaluator tried to fire, by rule id (at most `MAX_RULES` rules,
# see the README's "Limits") and outcome: ``ok``, ``action_failed`` (recorded, an action
# refused), ``already_fired`` (an earlier run or another evaluator recorded it) and
# ``skipped`` (the rule no longer fires, or the deal is no longer in that occurrence).

AUTOMATION_FIRINGS = Counter(
    "dealtrail_automation_firings_total",
    "Occurrences of automation rules the evaluator fired, by rule and outcome",
    ["rule", "outcome"],
)
AUTOMATION_OUTCOMES = ("ok", "action_failed", "already_fired", "skipped")


def automation_fired(rule: str, outcome: str) -> None:
    """Record one occurrence of a rule handled by the evaluator."""
    if outcome == "fired":
        outcome = "ok"
    if outcome not in AUTOMATION_OUTCOMES:
        raise ValueError(f"automation outcome must be one of {', '.join(AUTOMATION_OUTCOMES)}")
    AUTOMATION_FIRINGS.labels(rule, outcome).inc()


# --- helpers used by the parts that record ---------------------------------------------------


def command_done(command: str, outcome: str, seconds: float) -> None:
    COMMANDS.labels(command, outcome).inc()
    COMMAND_DURATION.labels(command).observe(seconds)


@contextmanager
def timed_append() -> Iterator[list[int]]:
    """Times one append; the caller puts the number of events stored into the list."""
    stored: list[int] = []
    started = time.perf_counter()
    try:
        yield stored
    finally:
        APPEND_DURATION.observe(time.perf_counter() - started)
        if stored:
            EVENTS_APPENDED.inc(sum(stored))


def projection_batch(projection: str, seconds: float, events: int, parked: int) -> None:
    PROJECTION_BATCH.labels(projection).observe(seconds)
    if events:
        PROJECTION_EVENTS.labels(projection).inc(events)
    if parked:
        PROJECTION_PARKED.labels(projection).inc(parked)


def query_cache(hit: bool) -> None:
    QUERY_CACHE.labels("hit" if hit else "miss").inc()


def breaker_state(open_: bool, *, tripped_now: bool = False) -> None:
    BREAKER_OPEN.set(1 if open_ else 0)
    if tripped_now:
        BREAKER_TRIPS.inc()
