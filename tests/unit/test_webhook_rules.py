"""Webhook rules without a database: the subscription's checks, who may manage it, the
address guard's ranges, which events a subscription gets, the retry schedule."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from libs.application.records import EventRecord
from libs.domain.actors import Actor, Role
from libs.domain.errors import Forbidden, InvalidInput, NotFound, RuleViolation
from libs.domain.webhook import Webhook, check_event_types, check_url
from services.feeds.webhooks.delivery import DeliveryPolicy, Subscription
from services.feeds.webhooks.guard import RefusedTarget, forbidden_reason, resolve
from services.feeds.webhooks.signing import message_id, new_secret, signed_headers
from services.runtime.logs import Redactor

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
STAMP: dict[str, Any] = {"actor": "ann", "occurred_at": NOW, "now": NOW}


def webhook(**fields: Any) -> Webhook:
    return Webhook.create(
        **{"url": "https://hooks.example.com/x", "event_types": ["*"], **fields, **STAMP}
    )


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/",
        "https://",
        "https://a:b@hooks.example.com/",
        "https://hooks.example.com/#top",
        "https://hooks.example.com:0/",
        "https://hooks.example.com:99999/",
        "https://hooks example.com/",
        "https://" + "a" * 2000 + ".com/",
        "https://bad_host!.com/",
    ],
)
def test_a_url_that_is_not_a_plain_web_address_is_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_url(url)
    assert caught.value.field == "url"


def test_event_types_are_known_names_or_everything() -> None:
    assert check_event_types(["DealWon", "DealLost"]) == ["DealWon", "DealLost"]
    assert check_event_types(["*"]) == ["*"]
    for bad in ([], ["DealWon", "DealWon"], ["dealwon"], ["*", "DealWon"], "DealWon", [1]):
        with pytest.raises(InvalidInput) as caught:
            check_event_types(bad)
        assert caught.value.field == "event_types"


def test_a_webhook_pauses_resumes_and_is_gone_once_deleted() -> None:
    hook = webhook()
    with pytest.raises(RuleViolation):
        hook.resume(**STAMP)
    hook.pause("failing", **STAMP)
    assert (hook.status, hook.paused_reason) == ("paused", "failing")
    with pytest.raises(RuleViolation):
        hook.pause("manual", **STAMP)
    with pytest.raises(InvalidInput):
        webhook().pause("bored", **STAMP)
    hook.resume(**STAMP)
    assert hook.status == "active" and hook.paused_reason is None
    with pytest.raises(InvalidInput):  # nothing to change
        hook.change(url="https://hooks.example.com/x", **STAMP)
    hook.change(event_types=["DealWon"], description="wins", **STAMP)
    assert hook.event_types == ["DealWon"] and hook.description == "wins"
    hook.delete(**STAMP)
    for act in (lambda: hook.rotate_secret(**STAMP), lambda: hook.resume(**STAMP)):
        with pytest.raises(NotFound):
            act()
    events = [type(e).__name__ for e in hook.collect_events()]
    assert events == [
        "WebhookCreated",
        "WebhookPaused",
        "WebhookResumed",
        "WebhookChanged",
        "WebhookDeleted",
    ]


def test_only_admins_manage_webhooks() -> None:
    Actor("ann", Role.ADMIN).check_may_manage_webhooks()
    for role in (Role.MANAGER, Role.REP, Role.AUDITOR):
        with pytest.raises(Forbidden):
            Actor("x", role).check_may_manage_webhooks()


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "not public"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),
        ("2002:a00:1::", "private"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_the_guard_knows_which_addresses_are_public(address: str, reason: str | None) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


async def test_the_guard_refuses_a_private_literal_and_delivers_to_the_checked_address() -> None:
    with pytest.raises(RefusedTarget) as caught:
        await resolve("http://[::ffff:127.0.0.1]:8080/x", allow_private=False)
    assert caught.value.field == "url"
    target = await resolve("https://93.184.216.34:8443/in?a=1", allow_private=False)
    assert target.connect_url() == "https://93.184.216.34:8443/in?a=1"
    target = await resolve("https://[2606:4700::1]/in", allow_private=False)
    assert target.connect_url() == "https://[2606:4700::1]:443/in"
    allowed = await resolve("http://localhost:9/x", allow_private=True)
    assert allowed.connect_url() == "http://localhost:9/x"


def record(event_type: str, payload: dict[str, Any], aggregate_type: str = "Deal") -> EventRecord:
    return EventRecord(7, uuid4(), aggregate_type, event_type, 1, "ann", NOW, NOW, payload)


def test_an_event_addressed_to_a_webhook_goes_to_that_one_only() -> None:
    mine = Subscription("a", 1, event_types=["DealWon"])
    other = Subscription("b", 1, event_types=["*"])
    fired = record("AutomationFired", {"webhook_id": "a", "digest": {}}, "AutomationFiring")
    assert mine.wants(fired, {}) and not other.wants(fired, {})
    plain = record("AutomationFired", {"webhook_id": None})
    assert other.wants(plain, {}) and not mine.wants(plain, {})


def test_a_pipeline_subscription_gets_the_pipeline_and_its_deals_only() -> None:
    p = str(uuid4())
    sub = Subscription("a", 1, event_types=["*"], pipeline_id=p)
    assert sub.wants(record("DealWon", {}), {"deal": {"pipeline_id": p}})
    assert not sub.wants(record("DealWon", {}), {"deal": {"pipeline_id": str(uuid4())}})
    moved_out = record("DealMoved", {"from_pipeline_id": p, "to_pipeline_id": str(uuid4())})
    assert sub.wants(moved_out, {"deal": {"pipeline_id": str(uuid4())}})
    assert not sub.wants(record("TeamAssigned", {}, "Owner"), {})


def test_retries_back_off_exponentially_up_to_the_cap_for_about_a_day() -> None:
    policy = DeliveryPolicy()
    schedule = policy.schedule()
    assert schedule[:4] == [10, 20, 40, 80] and max(schedule) == 3 * 3600
    assert len(schedule) == policy.max_attempts - 1
    assert 22 * 3600 <= sum(schedule) <= 26 * 3600
    for attempts in range(1, 20):
        nominal = policy.nominal_delay(attempts)
        assert 0.8 * nominal <= policy.delay(attempts) <= 1.2 * nominal


def test_a_signature_verifies_with_the_reference_package_and_the_secret_never_logs() -> None:
    from standardwebhooks.webhooks import Webhook as Verifier

    secret = new_secret()
    body = '{"position":7}'
    headers = signed_headers(secret, message_id(7, str(uuid4())), datetime.now(UTC), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Verifier(secret).verify(body, headers) == {"position": 7}
    line = Redactor()(f"INSERT ... ('{secret}', '2026-06-01')")
    assert secret[6:] not in line and "whsec_[redacted]" in line
