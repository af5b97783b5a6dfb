"""Metrics recorded through helpers: webhook deliveries (the hook webhook delivery calls)
and the store breaker's state."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

from libs.application.store import StoreLocation
from libs.observability import metrics
from services.runtime.breaker import StoreBreaker
from tests.scrape import moved, parse, value


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse(generate_latest(REGISTRY).decode())


def test_a_webhook_delivery_is_counted_by_outcome_and_timed() -> None:
    before = scrape()
    metrics.webhook_delivered("delivered", 0.2)
    metrics.webhook_delivered("failed", 5.0)
    after = scrape()
    assert moved(before, after, "dealtrail_webhook_deliveries_total", outcome="delivered") == 1
    assert moved(before, after, "dealtrail_webhook_deliveries_total", outcome="failed") == 1
    assert moved(before, after, "dealtrail_webhook_delivery_seconds_count") == 2
    assert moved(before, after, "dealtrail_webhook_delivery_seconds_sum") == pytest.approx(5.2)


def test_an_unknown_webhook_outcome_is_refused_rather_than_becoming_a_label() -> None:
    with pytest.raises(ValueError, match="delivered, retrying, failed"):
        metrics.webhook_delivered("parked", 1.0)


async def test_the_breaker_gauge_follows_trips_and_recoveries(tmp_path: Path) -> None:
    breaker = StoreBreaker(StoreLocation.parse(f"sqlite:///{tmp_path / 'x.db'}"))
    before = scrape()
    breaker.trip()
    breaker.trip()  # already open: one outage, counted once
    tripped = scrape()
    assert await breaker.reachable()  # the probe succeeds (SQLite is always there)
    closed = scrape()
    assert value(tripped, "dealtrail_store_breaker_open") == 1
    assert moved(before, tripped, "dealtrail_store_breaker_trips_total") == 1
    assert value(closed, "dealtrail_store_breaker_open") == 0
