"""Fail fast while the database is down, instead of waiting out the store's retries.

The event store's PostgreSQL recorder retries a failing connection ten times, which keeps
a request waiting for tens of seconds during an outage. After the first failure the
breaker trips; while tripped, requests first wait for a probe of the database (one
quick connection attempt) and get 503 at once if it fails. Requests arriving while a
probe runs share its answer, so a busy service is not flooded with new connections
exactly when it is short of them. The first successful probe closes the breaker: the
service recovers by itself.
"""

from __future__ import annotations

import asyncio
import time

from libs.application.store import StoreLocation
from libs.observability import metrics

PROBE_TIMEOUT_SECONDS = 1


class StoreBreaker:
    """Remembers a recent outage and probes before letting requests reach the store."""

    def __init__(self, location: StoreLocation) -> None:
        self.location = location
        self.tripped_at: float | None = None
        self._probing: asyncio.Future[bool] | None = None
        self.probes = 0  # probes run so far (shown by tests and diagnostics)

    @property
    def tripped(self) -> bool:
        return self.tripped_at is not None

    def trip(self) -> None:
        if self.tripped_at is None:
            self.tripped_at = time.monotonic()
            metrics.breaker_state(True, tripped_now=True)

    def _probe(self) -> bool:
        self.probes += 1
        if not self.location.is_postgres:
            return True
        import psycopg

        params = self.location.psycopg_params()
        try:
            with psycopg.connect(**params, connect_timeout=PROBE_TIMEOUT_SECONDS) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _probe_done(self, _: asyncio.Future[bool]) -> None:
        self._probing = None

    async def reachable(self) -> bool:
        """True unless tripped and the probe fails (a success closes the breaker)."""
        if self.tripped_at is None:
            return True
        probe = self._probing
        if probe is None:
            probe = self._probing = asyncio.ensure_future(asyncio.to_thread(self._probe))
            probe.add_done_callback(self._probe_done)
        ok = await asyncio.shield(probe)
        if ok and self.tripped_at is not None:
            self.tripped_at = None
            metrics.breaker_state(False)
        return ok
