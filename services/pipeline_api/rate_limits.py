"""Rate limits per bearer token, by the token's role (the ``limits`` package).

Each authenticated request counts against its token's limits (``DEALTRAIL_RATE_LIMITS``,
per role; a moving window per limit). Every answer to an authenticated request carries
``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds until the
window frees a request) for its tightest limit, and ``RateLimit-Policy``; a request over
a limit gets 429 ``rate_limited`` with ``Retry-After`` and runs nothing. Tokens are
counted under a hash, never under their own text.

The counts live in ``DEALTRAIL_RATE_LIMIT_STORAGE``: ``memory://`` (the default) counts
in each process, so with N API processes or replicas a token may make up to N times its
limit; a shared storage (``redis://host:6379`` with the ``redis`` package installed)
counts across all of them.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from libs.domain.actors import Role
from libs.observability import metrics
from services.pipeline_api.errors import ApiError


@dataclass(frozen=True)
class Window:
    """Where one token stands against one of its limits."""

    item: RateLimitItem
    remaining: int
    reset_seconds: int

    @property
    def policy(self) -> str:
        return f"{self.item.amount};w={self.item.get_expiry()}"


def _async_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else f"async+{uri}"


class RateLimiter:
    """Counts requests per token and refuses those over the token's role's limits."""

    def __init__(self, rules: dict[Role, tuple[RateLimitItem, ...]], storage_uri: str) -> None:
        self.rules = rules
        storage = storage_from_string(_async_uri(storage_uri))
        assert isinstance(storage, Storage)
        self._limiter = MovingWindowRateLimiter(storage)

    async def check(self, token: str, role: Role) -> dict[str, str]:
        """Count one request of ``token``; the headers to answer with. Raises 429 when
        the token is over one of its limits."""
        items = self.rules.get(role, ())
        if not items:
            return {}
        key = hashlib.sha256(token.encode()).hexdigest()[:32]
        windows: list[Window] = []
        refused: Window | None = None
        for item in items:
            allowed = await self._limiter.hit(item, "token", key)
            stats = await self._limiter.get_window_stats(item, "token", key)
            window = Window(
                item, stats.remaining, max(0, math.ceil(stats.reset_time - time.time()))
            )
            windows.append(window)
            if not allowed and refused is None:
                refused = window
        tightest = refused or min(windows, key=lambda w: (w.remaining, -w.reset_seconds))
        headers = {
            "RateLimit-Limit": str(tightest.item.amount),
            "RateLimit-Remaining": str(tightest.remaining),
            "RateLimit-Reset": str(tightest.reset_seconds),
            "RateLimit-Policy": ", ".join(w.policy for w in windows),
        }
        if refused is not None:
            metrics.RATE_LIMITED.labels(role.value).inc()
            retry = max(1, refused.reset_seconds)
            raise ApiError(
                429,
                f"too many requests with this token: at most {refused.item.amount} per "
                f"{_per(refused.item)}; retry in {retry} s",
                code="rate_limited",
                details={"limit": str(refused.item), "retry_after_seconds": retry},
                headers={**headers, "Retry-After": str(retry)},
            )
        return headers


def _per(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"
