"""Automation rules and webhooks together, over HTTP with a real receiver: a rule on deals
stuck in Negotiation notifies a webhook once per stuck deal, signed; a schedule's digest
goes to the one webhook it names and to no other; a digest must name a webhook that
exists; rules are bounded in number."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runtime.settings import Settings
from tests.conftest import Backend, TestClock, auth, client_for
from tests.e2e.test_automations import CALL, activities_of, advance, create_rule, evaluate
from tests.e2e.test_deal_lifecycle import create_deal, define_pipeline, head
from tests.e2e.test_webhooks import subscribe
from tests.receiver import Receiver, until

SCHEDULE = {"type": "schedule", "cron": "0 8 * * MON", "timezone": "Europe/Berlin"}


def digest_to(webhook_id: str) -> dict[str, Any]:
    return {"type": "digest", "report": "funnel", "params": {}, "webhook_id": webhook_id}


@pytest.fixture
def settings(backend: Backend, tmp_path: Path) -> Settings:
    # The background evaluator waits an hour before it first looks; the tests evaluate.
    return backend.settings(
        tmp_path / "data",
        DEALTRAIL_WEBHOOK_ALLOW_PRIVATE=True,
        DEALTRAIL_AUTOMATION_INTERVAL_SECONDS=3600,
    )


@pytest.fixture
async def api(settings: Settings, clock: TestClock) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings, clock) as client:
        yield client


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[Receiver, Receiver]]:
    a, b = Receiver(), Receiver()
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


def fired(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """The AutomationFired events the receiver was sent, each signature verified."""
    return [r.event for r in receiver.ok(secret) if r.event["type"] == "AutomationFired"]


async def test_each_deal_stuck_in_negotiation_notifies_the_webhook_once_signed(
    api: httpx.AsyncClient, clock: TestClock, receivers: tuple[Receiver, Receiver]
) -> None:
    receiver, _ = receivers
    hook = await subscribe(api, receiver.url, ["AutomationFired"])
    pipeline = await define_pipeline(api)
    stuck = [(await create_deal(api, pipeline["id"])).json()["id"] for _ in range(2)]
    for deal_id in stuck:
        await advance(api, deal_id, "Negotiation")
    elsewhere = (await create_deal(api, pipeline["id"])).json()["id"]
    r = await create_rule(
        api,
        name="Negotiation stuck two weeks",
        pipeline_id=pipeline["id"],
        trigger={"type": "rotting", "stage": "Negotiation", "days": 14},
        actions=[CALL, {"type": "notify"}],
    )
    assert r.status_code == 201, r.text
    rule = r.json()
    # a second rule whose one firing marks the end of what the webhook is sent below
    r = await create_rule(
        api,
        name="Won",
        pipeline_id=pipeline["id"],
        trigger={"type": "won"},
        actions=[{"type": "notify"}],
    )
    assert r.status_code == 201, r.text
    marker = r.json()

    assert await evaluate(api) == 0  # not stuck yet
    clock.advance(days=15)
    assert await evaluate(api) == 2
    await until(lambda: len(fired(receiver, hook["secret"])) >= 2, what="two notifications")
    assert await evaluate(api) == 0  # a second evaluation adds none
    r = await api.post(f"/v1/deals/{elsewhere}/win", json={}, headers=auth("rep"))
    assert r.status_code == 200, r.text
    assert await evaluate(api) == 1
    # delivery is in log order: once the marker is in, everything before it is too
    await until(
        lambda: any(
            e["payload"]["rule_id"] == marker["id"] for e in fired(receiver, hook["secret"])
        ),
        what="the marker",
    )

    got = fired(receiver, hook["secret"])
    assert [e["payload"]["rule_id"] for e in got] == [rule["id"], rule["id"], marker["id"]]
    rotting = got[:2]
    assert sorted(e["payload"]["deal_id"] for e in rotting) == sorted(stuck)
    for event in rotting:
        payload = event["payload"]
        assert event["actor"] == f"automation:{rule['id']}"
        assert event["aggregate_type"] == "AutomationFiring"
        assert payload["rule_name"] == "Negotiation stuck two weeks"
        assert payload["trigger"] == {"type": "rotting", "stage": "negotiation", "days": 14}
        assert "Negotiation" in payload["reason"] and "14 days" in payload["reason"]
        assert [(a["type"], a["ok"]) for a in payload["actions"]] == [
            ("create_activity", True),
            ("notify", True),
        ]
        assert payload["webhook_id"] is None and payload["digest"] is None
    # every request is a different message, delivered once
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == len(receiver.requests)
    assert len(receiver.requests) == 3
    for deal_id in stuck:
        [call] = await activities_of(api, deal_id)
        assert (call["type"], call["assignee"]) == ("call", "rita")


async def test_a_digest_goes_to_the_webhook_it_names_and_no_other(
    api: httpx.AsyncClient, clock: TestClock, receivers: tuple[Receiver, Receiver]
) -> None:
    to_a, to_b = receivers
    # A is subscribed to something else entirely: the digest is addressed to it
    a = await subscribe(api, to_a.url, ["DealWon"])
    b = await subscribe(api, to_b.url, ["*"])
    pipeline = await define_pipeline(api)
    await create_deal(api, pipeline["id"])
    r = await create_rule(
        api, pipeline_id=pipeline["id"], trigger=SCHEDULE, actions=[digest_to(a["id"])]
    )
    assert r.status_code == 201, r.text
    rule = r.json()
    clock.now = datetime(2026, 6, 8, 7, 0, tzinfo=UTC)  # after Monday 08:00 in Berlin
    assert await evaluate(api) == 1
    assert await evaluate(api) == 0

    [digest] = await until(lambda: fired(to_a, a["secret"]), what="the digest at A")
    payload = digest["payload"]
    assert (payload["rule_id"], payload["deal_id"], payload["webhook_id"]) == (
        rule["id"],
        None,
        a["id"],
    )
    assert payload["digest"]["report"] == "funnel"
    assert payload["occurrence"] == "2026-06-08T06:00:00+00:00"
    assert payload["actions"] == [
        {"type": "digest", "ok": True, "report": "funnel", "webhook_id": a["id"]}
    ]
    assert [r.event["type"] for r in to_a.ok()] == ["AutomationFired"]

    # B gets every event in log order; once it has one stored after the digest, it was
    # passed over the digest
    after = (await create_deal(api, pipeline["id"])).json()["id"]
    await until(
        lambda: any(r.event["aggregate_id"] == after for r in to_b.ok()), what="B's later event"
    )
    seen = [r.event for r in to_b.ok(b["secret"])]
    assert "AutomationFired" not in {e["type"] for e in seen}
    assert "AutomationCreated" in {e["type"] for e in seen}


async def test_a_digest_names_a_webhook_that_exists(
    api: httpx.AsyncClient, receivers: tuple[Receiver, Receiver]
) -> None:
    receiver, _ = receivers
    pipeline = await define_pipeline(api)
    kept = await subscribe(api, receiver.url)
    gone = await subscribe(api, receiver.url)
    r = await api.delete(f"/v1/webhooks/{gone['id']}", headers=auth("admin"))
    assert r.status_code == 204
    never = "0b7c1f9e-8d5a-4c1e-9a3b-2f6d4e8a1c00"
    for webhook_id in (gone["id"], never):
        r = await create_rule(
            api,
            pipeline_id=pipeline["id"],
            trigger=SCHEDULE,
            actions=[digest_to(kept["id"]), digest_to(webhook_id)],
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]["field"] == "actions[1].webhook_id"
    r = await create_rule(
        api, pipeline_id=pipeline["id"], trigger=SCHEDULE, actions=[digest_to(kept["id"])]
    )
    assert r.status_code == 201, r.text
    rule = r.json()
    r = await api.patch(
        f"/v1/automations/{rule['id']}",
        json={"actions": [digest_to(gone["id"])]},
        headers=auth("manager"),
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["field"] == "actions[0].webhook_id"
    r = await api.get(
        f"/v1/automations/{rule['id']}", params={"min_position": head(api)}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["actions"] == [digest_to(kept["id"])]


async def test_rules_are_bounded_in_number(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("libs.application.handlers.MAX_RULES", 3)
    pipeline = await define_pipeline(api)
    body = {
        "pipeline_id": pipeline["id"],
        "trigger": {"type": "won"},
        "actions": [{"type": "notify"}],
    }
    made = []
    for _ in range(3):
        r = await create_rule(api, **body)
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
    r = await create_rule(api, **body)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["details"]["limit"] == 3
    assert "delete one" in r.json()["error"]["message"]
    r = await api.delete(f"/v1/automations/{made[0]}", headers=auth("manager"))
    assert r.status_code == 204
    r = await create_rule(api, **body)
    assert r.status_code == 201, r.text
