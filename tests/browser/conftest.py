"""Browser tests of the dashboard: Playwright drives Debian's Chromium against a started
``dealtrail demo run`` with generated history (one service for the whole run, SQLite).

Each test works in a browser context of its own; tests that change deals make a pipeline
of their own first, so they never depend on each other. Screenshots of every view land in
``test-artifacts/browser/`` (not committed).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from bench.browser import DemoService, demo_service, launch
from tests.conftest import API_KEYS, TOKENS

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()
DEMO_DEALS = 2000  # as `make demo`
WAIT_MS = 30_000  # Playwright waits for conditions up to this long (a busy 2-core machine)

expect.set_options(timeout=WAIT_MS)


# Package scope: both end with the last browser test. While Playwright's synchronous API
# is started it keeps an event loop running, which the asyncio tests elsewhere cannot share.
@pytest.fixture(scope="package")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoService]:
    workdir = tmp_path_factory.mktemp("dashboard")
    with demo_service(
        workdir, deals=DEMO_DEALS, api_keys=API_KEYS, admin_token=TOKENS["admin"]
    ) as started:
        yield started


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@dataclass
class Session:
    """One browser tab on the dashboard, and the API beside it for checking."""

    page: Page
    service: DemoService
    errors: list[str] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)

    def api(self, who: str = "admin") -> httpx.Client:
        return self.service.client(TOKENS[who])

    def open(self, address: str = "#/board") -> None:
        self.page.goto(f"{self.service.base_url}/{address}")

    def sign_in(self, who: str, address: str = "#/board") -> None:
        """Sign in through the form, then wait until the view has loaded."""
        self.open(address)
        self.page.get_by_label("API token").fill(TOKENS[who])
        self.page.get_by_role("button", name="Sign in").click()
        self.ready()

    def board_with_deals(
        self, who: str, *titles: str, **rules: Any
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A pipeline of the test's own with a manager's deals titled so, its board open
        as ``who``."""
        with self.api("manager") as api:
            pipeline = new_pipeline(api, **rules)
            deals = [new_deal(api, pipeline["id"], title) for title in titles]
        self.sign_in(who, f"#/board?pipeline={pipeline['id']}")
        return pipeline, deals

    def ready(self) -> None:
        expect(self.page.locator(".view[data-ready=true]")).to_be_visible()

    def navigating(self, action: Callable[[], object]) -> None:
        """Do what opens a view again (a filter, a form), and wait for the new view."""
        self.page.evaluate("() => document.querySelector('.view').dataset.old = 'true'")
        action()
        expect(self.page.locator(".view[data-ready=true]:not([data-old])")).to_be_visible()

    def go(self, address: str) -> None:
        """Open another view the way a link does (no reload), and wait for it."""
        self.page.evaluate("address => { window.location.hash = address; }", address)
        self.ready()

    def change_behind_its_back(self, deal: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Pause live updates (the page keeps showing what it shows), then change the deal
        through the API as an admin: the page's next command names an older version."""
        live = self.page.get_by_role("button", name="Live updates")
        live.click()
        expect(live).to_have_attribute("aria-pressed", "false")
        with self.api("admin") as api:
            changed = api.patch(f"/v1/deals/{deal['id']}", json=fields)
            assert changed.status_code == 200, changed.text
            return dict(changed.json())

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path

    def axe_problems(self) -> list[dict[str, Any]]:
        """axe-core's serious and critical violations on the page as it is now."""
        if not self.page.evaluate("() => Boolean(window.axe)"):
            self.page.evaluate(AXE + "\n;undefined")
        violations = self.page.evaluate(
            """async () => (await axe.run(document, { resultTypes: ['violations'] }))
                .violations.map(v => ({ id: v.id, impact: v.impact, help: v.help,
                  nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ')) }))"""
        )
        return [v for v in violations if v["impact"] in ("serious", "critical")]

    def assert_accessible(self) -> None:
        problems = self.axe_problems()
        assert problems == [], json.dumps(problems, indent=2)

    def alert(self) -> Any:
        return self.page.locator("#alerts .alert p").last

    def column(self, stage: str) -> Any:
        return self.page.locator(f'.column[data-stage-id="{stage}"]')

    def card(self, deal_id: str) -> Any:
        return self.page.locator(f'.card[data-deal-id="{deal_id}"]')


@pytest.fixture
def session(browser: Browser, service: DemoService) -> Iterator[Session]:
    context = browser.new_context(
        viewport={"width": 1400, "height": 900},
        locale="en-US",
        timezone_id="UTC",
        accept_downloads=True,
    )
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    tab = Session(page, service)
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    page.on("request", lambda r: tab.posts.append(r.url) if r.method != "GET" else None)
    try:
        yield tab
    finally:
        context.close()
    assert tab.errors == [], f"the page threw: {tab.errors}"


# --- data the tests make through the API ------------------------------------------------


def demo_pipeline(client: httpx.Client, name: str = "New business") -> dict[str, Any]:
    pipelines = client.get("/v1/pipelines").json()["data"]
    return next(p for p in pipelines if p["name"] == name)


def new_pipeline(client: httpx.Client, **rules: Any) -> dict[str, Any]:
    """A pipeline of the test's own (default B2B stages), defined 60 days ago."""
    body = {
        "name": f"Browser {uuid.uuid4().hex[:8]}",
        "currency": "EUR",
        "occurred_at": (datetime.now(UTC) - timedelta(days=60)).isoformat(),
        **rules,
    }
    r = client.post("/v1/pipelines", json=body)
    assert r.status_code == 201, r.text
    pipeline = dict(r.json())
    # Pipelines are listed from a read model: wait until it has this one, so that the
    # page, which starts from the list, finds it.
    listed = read(client, "/v1/pipelines", pipeline["position"])["data"]
    assert pipeline["id"] in {p["id"] for p in listed}
    return pipeline


def new_deal(client: httpx.Client, pipeline_id: str, title: str, **fields: Any) -> dict[str, Any]:
    r = client.post(
        "/v1/deals", json={"pipeline_id": pipeline_id, "title": title, "value": "1000", **fields}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def read(client: httpx.Client, path: str, position: int | None = None, **params: Any) -> Any:
    """A query answered at (at least) ``position``."""
    if position is not None:
        params["min_position"] = position
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def head(service: DemoService) -> int:
    return int(httpx.get(service.base_url + "/health", timeout=10).json()["position"])
