"""``dealtrail relay nats|status``: publish the event log to NATS JetStream, and say how far
the relay has come."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from typing import Any

from libs.application.failures import is_unavailable
from services.cli.arguments import SubCommands, positive_int
from services.feeds.nats_relay import RELAY_BATCH, NatsRelay, relay_status, stream_state
from services.runtime import metrics
from services.runtime.bootstrap import relay_for
from services.runtime.settings import Settings
from services.runtime.stores import Stores, open_stores

log = logging.getLogger("dealtrail.feeds.nats")

NATS_CHECK_SECONDS = 5.0  # `relay status` gives up on NATS after this long
OPEN_RETRY_SECONDS = 2.0  # `relay nats` tries the database this often until it answers


async def _opened(
    stack: contextlib.AsyncExitStack, settings: Settings, stopping: asyncio.Event
) -> Stores | None:
    """The stores, once the database answers (None when stopped before): a relay started
    while the database is down waits for it rather than exiting."""
    while not stopping.is_set():
        try:
            return await stack.enter_async_context(open_stores(settings))
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            log.warning("nats relay: the database is unreachable (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), OPEN_RETRY_SECONDS)
    return None


async def _run(settings: Settings, batch_size: int, metrics_port: int) -> int:
    stopping = asyncio.Event()
    relay: NatsRelay | None = None

    def stop() -> None:
        stopping.set()
        if relay is not None:
            relay.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop)
    async with contextlib.AsyncExitStack() as stack:
        stores = await _opened(stack, settings, stopping)
        if stores is None:
            return 0
        relay = relay_for(settings, stores.engine, stores.source)
        relay.batch_size = batch_size
        if stopping.is_set():
            relay.stop()
        endpoint = None
        host = settings.worker_metrics_host
        if metrics_port:

            async def scrape() -> bytes:
                return await metrics.render(stores.engine, stores.source)

            try:
                endpoint = await metrics.start_endpoint(scrape, host, metrics_port, relay.ready)
            except OSError as exc:
                print(
                    f"dealtrail: cannot serve metrics on {host}:{metrics_port}: {exc}",
                    file=sys.stderr,
                )
                return 2
        print(
            f"nats relay from {settings.store.describe()} to stream {settings.nats_stream} "
            f"(subjects {relay.subjects})"
            + (f"; metrics on http://{host}:{metrics_port}/metrics" if endpoint else ""),
            flush=True,
        )
        try:
            await relay.run()
        finally:
            if endpoint is not None:
                await endpoint.stop()
    return 0


async def _status(settings: Settings) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    async with open_stores(settings) as stores:
        stored = await relay_status(stores.engine, stores.source, settings.nats_stream)
    try:
        nats = await asyncio.wait_for(
            stream_state(settings.nats_url, settings.nats_stream), NATS_CHECK_SECONDS
        )
    except Exception as exc:  # noqa: BLE001 - any failure to reach NATS is reported, not raised
        return stored, None, f"{type(exc).__name__}: {exc}".rstrip(": ")
    return stored, nats, None


def _cmd_nats(args: argparse.Namespace, settings: Settings) -> int:
    port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    return asyncio.run(_run(settings, args.batch_size, port))


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    stored, nats, problem = asyncio.run(_status(settings))
    if args.json:
        print(json.dumps({"relay": stored, "nats": nats, "nats_error": problem}, indent=2))
        return 1 if problem else 0
    behind = f"{stored['behind']}" if stored["behind_exact"] else f"{stored['behind']}+"
    print(
        f"{'stream':<18} {'position':>10} {'head':>10} {'behind':>8} {'published':>10} "
        f"{'parked':>7}  updated"
    )
    print(
        f"{stored['stream']:<18} {stored['position']:>10} {stored['head']:>10} {behind:>8} "
        f"{stored['published']:>10} {stored['parked']:>7}  {stored['updated_at'] or '-'}"
    )
    if problem:
        print(f"NATS at {settings.nats_url.rsplit('@', 1)[-1]}: unreachable ({problem})")
        return 1
    assert nats is not None
    if not nats["exists"]:
        print(f"NATS: stream {settings.nats_stream} does not exist yet (the relay creates it)")
        return 0
    print(
        f"NATS: stream {settings.nats_stream} holds {nats['messages']} messages "
        f"(sequences {nats['first_seq']} to {nats['last_seq']}), the newest at position "
        f"{nats['last_position'] if nats['last_position'] is not None else '-'}"
    )
    return 0


def register(commands: SubCommands) -> None:
    """Add ``relay`` and its sub-commands to the ``dealtrail`` parser."""
    parser = commands.add_parser("relay", help="publish the event log to NATS JetStream")
    sub = parser.add_subparsers(dest="relay_command", required=True)

    run = sub.add_parser(
        "nats",
        help="publish every event to the NATS JetStream stream (DEALTRAIL_NATS_URL, "
        "DEALTRAIL_NATS_STREAM) from the relay's stored position, until SIGTERM",
    )
    run.add_argument("--batch-size", type=positive_int, default=RELAY_BATCH)
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics, /health/live and /health/ready on this port "
        "(default DEALTRAIL_WORKER_METRICS_PORT; 0: none)",
    )
    run.set_defaults(handler=_cmd_nats)

    status = sub.add_parser(
        "status",
        help="the relay's position, the log's head, events behind, published and parked, "
        "and what the stream holds; exits 1 when NATS cannot be reached",
    )
    status.add_argument("--json", action="store_true", help="print it as JSON")
    status.set_defaults(handler=_cmd_status)
