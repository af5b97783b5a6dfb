"""Webhooks over HTTP with a real receiver: subscriptions and their rules, signed delivery
at least once and in order through refusals, time-outs and errors, back-off on the moved
clock, independence of subscriptions, pausing and resuming, replay, the address guard."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runtime.logs import Redactor
from services.runtime.settings import Settings
from tests.conftest import Backend, TestClock, auth, client_for
from tests.e2e.test_deal_lifecycle import create_deal, define_pipeline, head
from tests.receiver import Receiver, until

BASE = 10.0  # seconds before the first retry


@pytest.fixture
def settings(backend: Backend, tmp_path: Path) -> Settings:
    return backend.settings(
        tmp_path / "data",
        DEALTRAIL_WEBHOOK_ALLOW_PRIVATE=True,
        DEALTRAIL_WEBHOOK_TIMEOUT_SECONDS=1,
        DEALTRAIL_WEBHOOK_RETRY_BASE_SECONDS=BASE,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


async def subscribe(
    api: httpx.AsyncClient, url: str, event_types: list[str] | None = None, **body: Any
) -> dict[str, Any]:
    r = await api.post(
        "/v1/webhooks",
        json={"url": url, "event_types": event_types or ["*"], **body},
        headers=auth("admin"),
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def deliveries(api: httpx.AsyncClient, webhook_id: str) -> list[dict[str, Any]]:
    r = await api.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=auth("admin"))
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


async def some_history(api: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
    """A pipeline and a deal that advances and is won: several events of both kinds."""
    pipeline = await define_pipeline(api)
    deal = (await create_deal(api, pipeline["id"])).json()
    r = await api.post(
        f"/v1/deals/{deal['id']}/advance", json={"stage": "quote-sent"}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    r = await api.post(f"/v1/deals/{deal['id']}/win", json={}, headers=auth("rep"))
    assert r.status_code == 200, r.text
    return pipeline, deal["id"]


def positions_after(api: httpx.AsyncClient, start: int) -> list[int]:
    app = api.app.state.runtime.application  # type: ignore[attr-defined]
    return [n.id for batch in app.iter_notifications(start + 1) for n in batch]


async def test_an_admin_manages_webhooks_and_nobody_else_sees_them(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hook = await subscribe(
        api, "https://hooks.example.com/in", ["DealWon", "DealLost"], description="billing"
    )
    secret = hook["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24
    assert (hook["status"], hook["event_types"], hook["version"]) == (
        "active",
        ["DealWon", "DealLost"],
        1,
    )

    r = await api.get(f"/v1/webhooks/{hook['id']}", headers=auth("admin"))
    assert r.status_code == 200 and "secret" not in r.json()
    assert r.json()["description"] == "billing" and r.headers["ETag"] == '"1"'
    second = await subscribe(api, "https://hooks.example.com/all")
    r = await api.get("/v1/webhooks", params={"limit": 1}, headers=auth("admin"))
    assert [w["id"] for w in r.json()["data"]] == [hook["id"]]
    r = await api.get(
        "/v1/webhooks", params={"cursor": r.json()["next_cursor"]}, headers=auth("admin")
    )
    assert [w["id"] for w in r.json()["data"]] == [second["id"]]
    assert r.json()["next_cursor"] is None

    r = await api.patch(
        f"/v1/webhooks/{hook['id']}",
        json={"event_types": ["*"]},
        headers={**auth("admin"), "If-Match": '"1"'},
    )
    assert r.status_code == 200, r.text
    assert r.json()["event_types"] == ["*"] and r.json()["version"] == 2
    r = await api.patch(
        f"/v1/webhooks/{hook['id']}",
        json={"description": "x"},
        headers={**auth("admin"), "If-Match": '"1"'},
    )
    assert r.status_code == 412

    r = await api.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers=auth("admin"))
    assert r.status_code == 200, r.text
    rotated = r.json()["secret"]
    assert rotated.startswith("whsec_") and rotated != secret

    for who in ("manager", "rep", "auditor"):
        assert (await api.get("/v1/webhooks", headers=auth(who))).status_code == 403
        assert (await api.get(f"/v1/webhooks/{hook['id']}", headers=auth(who))).status_code == 403
        r = await api.post(
            "/v1/webhooks",
            json={"url": "https://hooks.example.com/x", "event_types": ["*"]},
            headers=auth(who),
        )
        assert r.status_code == 403
        r = await api.delete(f"/v1/webhooks/{hook['id']}", headers=auth(who))
        assert r.status_code == 403

    # the secrets are in no event, no export and no log line
    r = await api.get("/v1/audit/export", headers=auth("admin"))
    assert r.status_code == 200
    assert "WebhookSecretRotated" in r.text and "WebhookCreated" in r.text
    logged = "\n".join(Redactor()(caplog.handler.format(x)) for x in caplog.records)
    for value in (secret, rotated, second["secret"]):
        assert value not in r.text
        assert value[6:] not in logged  # (SQLite's driver logs parameters at DEBUG level)

    r = await api.delete(f"/v1/webhooks/{hook['id']}", headers=auth("admin"))
    assert r.status_code == 204
    assert (await api.get(f"/v1/webhooks/{hook['id']}", headers=auth("admin"))).status_code == 404
    r = await api.get("/v1/webhooks", headers=auth("admin"))
    assert [w["id"] for w in r.json()["data"]] == [second["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "url"),
        ({"url": "https://user:pw@hooks.example.com/x"}, "url"),
        ({"url": "https://hooks.example.com/" + "x" * 2000}, "url"),
        ({"url": "not a url"}, "url"),
        ({"event_types": ["DealWon", "NoSuchEvent"]}, "event_types"),
        ({"event_types": []}, "event_types"),
        ({"event_types": ["*", "DealWon"]}, "event_types"),
        ({"event_types": ["DealWon"] * 65}, "event_types"),
        ({"pipeline_id": "nope"}, "pipeline_id"),
    ],
)
async def test_a_bad_subscription_is_refused_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    full = {"url": "https://hooks.example.com/x", "event_types": ["*"], **body}
    r = await api.post("/v1/webhooks", json=full, headers=auth("admin"))
    assert r.status_code == 422, r.text
    assert field in str(r.json()["error"]["details"].get("field")), r.text
    r = await api.get("/v1/webhooks", headers=auth("admin"))
    assert r.json()["data"] == []


async def test_every_event_reaches_a_receiver_that_refuses_times_out_fails_then_recovers(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    down = Receiver()  # nothing listens on its port yet: connections are refused
    hook = await subscribe(api, down.url)
    start = hook["position"]
    await some_history(api)
    expected = positions_after(api, start)
    assert len(expected) >= 4
    first = expected[0]

    async def first_delivery() -> dict[str, Any] | None:
        return next((d for d in await deliveries(api, hook["id"]) if d["position"] == first), None)

    async def attempted(n: int) -> dict[str, Any] | None:
        d = await first_delivery()
        return d if d and d["attempts"] >= n else None

    # 1: refused; the next attempt is due BASE seconds later on the service clock (±20 %)
    d = await until(lambda: attempted(1), what="a first attempt")
    assert (d["status"], d["response_code"]) == ("retrying", None)
    assert d["last_error"] and d["next_attempt_at"]
    wait = (datetime.fromisoformat(d["next_attempt_at"]) - clock.now).total_seconds()
    assert 0.8 * BASE <= wait <= 1.2 * BASE
    # 2: no answer in time
    await down.start()
    down.mode = "hang"
    clock.advance(seconds=1.2 * BASE + 1)
    d = await until(lambda: attempted(2), what="a second attempt")
    assert d["status"] == "retrying" and "no answer" in d["last_error"]
    wait = (datetime.fromisoformat(d["next_attempt_at"]) - clock.now).total_seconds()
    assert 0.8 * 2 * BASE <= wait <= 1.2 * 2 * BASE
    # 3: an error status
    down.mode = "fail"
    clock.advance(seconds=1.2 * 2 * BASE + 1)
    d = await until(lambda: attempted(3), what="a third attempt")
    assert (d["status"], d["response_code"]) == ("retrying", 500)
    assert "HTTP 500" in d["last_error"] and "broken" in d["last_error"]
    # 4: it answers again, and everything arrives, in order, once each, signed
    down.mode = "ok"
    clock.advance(seconds=1.2 * 4 * BASE + 1)
    await until(lambda: len(down.ok()) >= len(expected), what="every event delivered")
    got = down.ok(hook["secret"])
    assert [r.event["position"] for r in got] == expected
    d = await first_delivery()
    assert d is not None and (d["status"], d["attempts"], d["response_code"]) == (
        "delivered",
        4,
        200,
    )
    assert d["latency_ms"] is not None and d["last_error"] is None
    tries = [r for r in down.requests if r.event["position"] == first]
    assert {r.headers["webhook-id"] for r in tries} == {got[0].headers["webhook-id"]}
    bodies = {r.event["type"]: r.event for r in got}
    assert bodies["DealWon"]["deal"]["status"] == "won"
    assert bodies["DealCreated"]["deal"]["status"] == "open"
    assert "deal" not in bodies["PipelineDefined"]
    assert set(bodies["DealWon"]) >= {
        "position",
        "aggregate_id",
        "aggregate_type",
        "type",
        "version",
        "actor",
        "occurred_at",
        "recorded_at",
        "payload",
    }
    await down.stop()


async def test_event_types_and_pipeline_choose_what_a_subscription_gets(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    other = await define_pipeline(api, name="Other")
    won = await subscribe(api, receiver.url, ["DealWon"])
    catch_all = Receiver()
    await catch_all.start()
    try:
        pipelined = await subscribe(api, catch_all.url, ["*"], pipeline_id=other["id"])
        _, deal_id = await some_history(api)
        other_deal = (await create_deal(api, other["id"])).json()
        await until(lambda: receiver.ok(won["secret"]), what="the won deal")
        await until(
            lambda: any(r.event["aggregate_id"] == other_deal["id"] for r in catch_all.ok()),
            what="the other pipeline's deal",
        )
        assert [r.event["type"] for r in receiver.ok()] == ["DealWon"]
        assert receiver.ok()[0].event["aggregate_id"] == deal_id
        assert {r.event["aggregate_id"] for r in catch_all.ok(pipelined["secret"])} == {
            other_deal["id"]
        }
    finally:
        await catch_all.stop()


async def test_a_dead_endpoint_does_not_hold_up_a_healthy_one(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    settings = backend.settings(
        tmp_path / "data",
        DEALTRAIL_WEBHOOK_ALLOW_PRIVATE=True,
        DEALTRAIL_WEBHOOK_TIMEOUT_SECONDS=60,
    )
    dead, healthy = Receiver(), Receiver()
    await dead.start()
    await healthy.start()
    dead.mode = "hang"
    try:
        async with client_for(settings, clock) as api:
            stuck = await subscribe(api, dead.url)
            fine = await subscribe(api, healthy.url)
            await some_history(api)
            expected = positions_after(api, fine["position"])
            await until(lambda: len(healthy.ok()) == len(expected), what="the healthy one")
            assert [r.event["position"] for r in healthy.ok(fine["secret"])] == expected
            # the dead one still holds its first request, unanswered
            assert len(dead.requests) == 1
            assert dead.requests[0].event["position"] == stuck["position"] + 1
    finally:
        await dead.stop()
        await healthy.stop()


async def test_a_subscription_pauses_after_its_last_attempt_and_resumes_where_it_stopped(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    settings = backend.settings(
        tmp_path / "data",
        DEALTRAIL_WEBHOOK_ALLOW_PRIVATE=True,
        DEALTRAIL_WEBHOOK_MAX_ATTEMPTS=2,
        DEALTRAIL_WEBHOOK_RETRY_BASE_SECONDS=1,
    )
    receiver = await Receiver().start()
    receiver.mode = "fail"
    try:
        async with client_for(settings, clock) as api:
            hook = await subscribe(api, receiver.url)
            pipeline = await define_pipeline(api)
            await until(lambda: len(receiver.requests) >= 1, what="a first attempt")
            clock.advance(seconds=5)

            async def paused() -> bool:
                r = await api.get(f"/v1/webhooks/{hook['id']}", headers=auth("admin"))
                return bool(r.json()["status"] == "paused")

            await until(paused, what="the pause")
            r = await api.get(f"/v1/webhooks/{hook['id']}", headers=auth("admin"))
            assert r.json()["paused_reason"] == "failing"
            (d,) = await deliveries(api, hook["id"])
            assert (d["status"], d["attempts"], d["position"]) == (
                "failed",
                2,
                pipeline["position"],
            )
            assert len(receiver.requests) == 2

            receiver.mode = "ok"
            r = await api.post(f"/v1/webhooks/{hook['id']}/resume", headers=auth("admin"))
            assert r.status_code == 200 and r.json()["status"] == "active"
            await until(lambda: receiver.ok(), what="the delivery after resuming")
            assert receiver.ok(hook["secret"])[0].event["position"] == pipeline["position"]
            types = [r.event["type"] for r in receiver.ok()]
            assert types[0] == "PipelineDefined"
            r = await api.post(f"/v1/webhooks/{hook['id']}/resume", headers=auth("admin"))
            assert r.status_code == 409
    finally:
        await receiver.stop()


async def test_replay_sends_the_history_again_from_a_position(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await subscribe(api, receiver.url)
    await some_history(api)
    expected = positions_after(api, hook["position"])
    await until(lambda: len(receiver.ok()) == len(expected), what="the first pass")

    r = await api.post(
        f"/v1/webhooks/{hook['id']}/replay",
        params={"from_position": expected[1]},
        headers=auth("admin"),
    )
    assert r.status_code == 202, r.text
    assert r.json()["head"] == head(api)
    again = expected[1:]
    await until(lambda: len(receiver.ok()) == len(expected) + len(again), what="the replay")
    replayed = receiver.ok(hook["secret"])[len(expected) :]
    assert [x.event["position"] for x in replayed] == again
    first_ids = {x.event["position"]: x.headers["webhook-id"] for x in receiver.ok()[:4]}
    assert all(first_ids[x.event["position"]] == x.headers["webhook-id"] for x in replayed[:3])

    # from before the subscription existed: history it never had
    r = await api.post(
        f"/v1/webhooks/{hook['id']}/replay", params={"from_position": 1}, headers=auth("admin")
    )
    assert r.status_code == 202
    await until(
        lambda: any(x.event["type"] == "WebhookCreated" for x in receiver.ok()),
        what="older history",
    )
    r = await api.post(
        f"/v1/webhooks/{hook['id']}/replay",
        params={"from_position": head(api) + 5},
        headers=auth("admin"),
    )
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "from_position"


async def test_the_address_guard_refuses_private_targets_at_registration_and_delivery(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    receiver = await Receiver().start()
    allowed = backend.settings(tmp_path / "data", DEALTRAIL_WEBHOOK_ALLOW_PRIVATE=True)
    guarded = backend.settings(tmp_path / "data", DEALTRAIL_WEBHOOK_ALLOW_PRIVATE=False)
    try:
        async with client_for(guarded, clock) as api:
            for url in (
                "http://127.0.0.1:9/x",
                "http://localhost/x",
                "http://10.1.2.3/x",
                "http://169.254.169.254/latest",
                "http://[::1]/x",
                "http://[::ffff:192.168.0.1]/x",
                "http://0.0.0.0/x",
                "http://224.0.0.1/x",
            ):
                r = await api.post(
                    "/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=auth("admin")
                )
                assert r.status_code == 422, (url, r.text)
                assert r.json()["error"]["details"]["field"] == "url"
            assert (await api.get("/v1/webhooks", headers=auth("admin"))).json()["data"] == []
        async with client_for(allowed, clock) as api:
            hook = await subscribe(api, receiver.url)
        # the same subscription, delivered by a service that allows only public addresses
        async with client_for(guarded, clock) as api:
            await define_pipeline(api)

            async def refused() -> list[dict[str, Any]]:
                return [d for d in await deliveries(api, hook["id"]) if d["last_error"]]

            (d,) = await until(refused, what="a refused delivery")
            assert d["status"] == "retrying" and "loopback" in d["last_error"]
            assert receiver.requests == []
    finally:
        await receiver.stop()
