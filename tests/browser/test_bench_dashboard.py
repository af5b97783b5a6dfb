"""The dashboard benchmark's measuring code runs (its figures are not judged here)."""

from __future__ import annotations

from playwright.sync_api import Browser

from bench.browser import DemoService
from bench.dashboard import TARGET_FIRST_LOAD_BYTES, measure
from tests.conftest import TOKENS


def test_the_dashboard_benchmark_measures_a_cold_load(
    browser: Browser, service: DemoService
) -> None:
    figures = measure(browser, service, runs=1, token=TOKENS["admin"])
    run = figures["runs"][0]
    assert run["cards"] > 0
    assert run["requests"] > 5
    assert run["interactive_ms"] > 0 and run["board_api_ms"] > 0
    assert 0 < figures["first_load_bytes"] < TARGET_FIRST_LOAD_BYTES
    assert figures["open_deals_on_board"] > 0
