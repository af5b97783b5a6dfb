"""Automation rules over HTTP, evaluated in-process on a moved clock: a stuck deal gets a
call task and a notification exactly once, stale and schedule rules fire once per
occurrence, paused rules stay quiet, two evaluators at once fire nothing twice, and the
rules' input and roles are checked."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.application.records import EventRecord, decode_all
from services.automation.evaluator import Evaluator
from services.runtime.bootstrap import Runtime
from tests.conftest import Backend, TestClock, auth, client_for
from tests.e2e.test_deal_lifecycle import create_deal, define_pipeline, head
from tests.e2e.test_webhooks import subscribe
from tests.receiver import Receiver

CALL = {
    "type": "create_activity",
    "activity_type": "call",
    "subject": "Call the customer",
    "due_in_days": 1,
    "assignee": None,
}


@pytest.fixture
async def api(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> AsyncIterator[httpx.AsyncClient]:
    # The background evaluator waits an hour before it first looks; the tests evaluate.
    # A digest names a webhook: one at a local address nothing listens on.
    settings = backend.settings(
        tmp_path / "data",
        DEALTRAIL_AUTOMATION_INTERVAL_SECONDS=3600,
        DEALTRAIL_WEBHOOK_ALLOW_PRIVATE=True,
    )
    async with client_for(settings, clock) as client:
        yield client


def runtime_of(api: httpx.AsyncClient) -> Runtime:
    return api.app.state.runtime  # type: ignore[attr-defined,no-any-return]


async def evaluate(api: httpx.AsyncClient) -> int:
    """Let the read models catch up with the log, then evaluate every rule once."""
    runtime = runtime_of(api)
    assert runtime.worker is not None and runtime.automation is not None
    await runtime.worker.catch_up()
    return await runtime.automation.run_once()


def events(api: httpx.AsyncClient, event_type: str) -> list[EventRecord]:
    app = runtime_of(api).application
    return [
        record
        for batch in app.iter_notifications()
        for record in decode_all(app.mapper, batch)
        if record.event_type == event_type
    ]


async def create_rule(api: httpx.AsyncClient, who: str = "manager", **body: Any) -> httpx.Response:
    return await api.post("/v1/automations", json={"name": "rule", **body}, headers=auth(who))


async def advance(api: httpx.AsyncClient, deal_id: str, stage: str) -> None:
    r = await api.post(f"/v1/deals/{deal_id}/advance", json={"stage": stage}, headers=auth("rep"))
    assert r.status_code == 200, r.text


async def activities_of(api: httpx.AsyncClient, deal_id: str) -> list[dict[str, Any]]:
    r = await api.get(
        f"/v1/deals/{deal_id}/activities",
        params={"min_position": head(api)},
        headers=auth("manager"),
    )
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


async def test_a_deal_stuck_in_negotiation_gets_one_call_task_for_its_owner_and_one_notification(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
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
    assert rule["trigger"] == {"type": "rotting", "stage": "negotiation", "days": 14}
    assert (rule["status"], rule["fired_count"], rule["created_by"]) == ("active", 0, "max")
    assert r.headers["Location"] == f"/v1/automations/{rule['id']}"

    assert await evaluate(api) == 0  # not stuck yet
    clock.advance(days=15)
    assert await evaluate(api) == 2
    assert await evaluate(api) == 0  # each occurrence fires once

    fired = events(api, "AutomationFired")
    assert sorted(e.payload["deal_id"] for e in fired) == sorted(stuck)
    for event in fired:
        assert event.actor == f"automation:{rule['id']}"
        assert event.payload["rule_id"] == uuid.UUID(rule["id"])
        assert [a["type"] for a in event.payload["actions"]] == ["create_activity", "notify"]
        assert all(a["ok"] for a in event.payload["actions"])
        assert event.payload["occurrence"].startswith(f"rotting:{event.payload['deal_id']}:")
        assert event.payload["digest"] is None and event.payload["webhook_id"] is None
    for deal_id in stuck:
        [call] = await activities_of(api, deal_id)
        assert (call["type"], call["subject"], call["assignee"]) == (
            "call",
            "Call the customer",
            "rita",
        )
    assert await activities_of(api, elsewhere) == []

    r = await api.get(
        f"/v1/automations/{rule['id']}/firings",
        params={"min_position": head(api)},
        headers=auth("rep"),
    )
    assert r.status_code == 200, r.text
    firings = r.json()["items"]
    assert sorted(f["deal_id"] for f in firings) == sorted(stuck)
    r = await api.get(f"/v1/automations/{rule['id']}", headers=auth("auditor"))
    assert (r.json()["fired_count"], r.headers["ETag"]) == (2, '"1"')


async def test_a_stale_rule_fires_once_until_the_deal_has_new_activity(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api, stale_after_days=3)
    deal_id = (await create_deal(api, pipeline["id"])).json()["id"]
    r = await create_rule(
        api, pipeline_id=pipeline["id"], trigger={"type": "stale"}, actions=[{"type": "notify"}]
    )
    assert r.status_code == 201, r.text

    clock.advance(days=4)
    assert await evaluate(api) == 1
    clock.advance(days=1)
    assert await evaluate(api) == 0  # still stale, same occurrence
    r = await api.patch(
        f"/v1/deals/{deal_id}", json={"title": "ACME renewal 2"}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    assert await evaluate(api) == 0  # fresh again
    clock.advance(days=4)
    assert await evaluate(api) == 1  # stale again: a new occurrence
    assert len(events(api, "AutomationFired")) == 2


async def test_a_paused_rule_does_not_fire_and_a_resumed_one_does(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api, stale_after_days=3)
    await create_deal(api, pipeline["id"])
    rule = (
        await create_rule(
            api, pipeline_id=pipeline["id"], trigger={"type": "stale"}, actions=[{"type": "notify"}]
        )
    ).json()
    r = await api.post(
        f"/v1/automations/{rule['id']}/pause", headers={**auth("manager"), "If-Match": '"1"'}
    )
    assert (r.status_code, r.json()["status"], r.headers["ETag"]) == (200, "paused", '"2"')
    clock.advance(days=4)
    assert await evaluate(api) == 0
    r = await api.post(f"/v1/automations/{rule['id']}/resume", headers=auth("manager"))
    assert r.json()["status"] == "active"
    assert await evaluate(api) == 1
    r = await api.delete(f"/v1/automations/{rule['id']}", headers=auth("admin"))
    assert r.status_code == 204
    r = await api.get(
        f"/v1/automations/{rule['id']}", params={"min_position": head(api)}, headers=auth("rep")
    )
    assert r.status_code == 404


async def test_a_schedule_fires_once_per_occurrence_in_its_time_zone(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    await create_deal(api, pipeline["id"])
    webhook_id = (await subscribe(api, Receiver().url))["id"]
    r = await create_rule(
        api,
        pipeline_id=pipeline["id"],
        trigger={"type": "schedule", "cron": "0 8 * * MON", "timezone": "Europe/Berlin"},
        actions=[{"type": "digest", "report": "funnel", "params": {}, "webhook_id": webhook_id}],
    )
    assert r.status_code == 201, r.text
    # the clock starts on Monday 2026-06-01 12:00Z, after that day's 08:00 in Berlin
    assert await evaluate(api) == 0
    clock.now = datetime(2026, 6, 8, 7, 0, tzinfo=UTC)
    assert await evaluate(api) == 1
    assert await evaluate(api) == 0
    clock.now = datetime(2026, 6, 15, 7, 0, tzinfo=UTC)
    assert await evaluate(api) == 1

    fired = events(api, "AutomationFired")
    # 08:00 in Berlin in summer is 06:00 UTC
    assert [e.payload["occurrence"] for e in fired] == [
        "2026-06-08T06:00:00+00:00",
        "2026-06-15T06:00:00+00:00",
    ]
    for event in fired:
        assert event.payload["deal_id"] is None
        assert event.payload["webhook_id"] == webhook_id
        assert event.payload["digest"]["report"] == "funnel"
        assert event.payload["actions"] == [
            {"type": "digest", "ok": True, "report": "funnel", "webhook_id": webhook_id}
        ]


async def test_two_evaluators_at_once_fire_each_occurrence_once(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api, stale_after_days=3)
    deals = [(await create_deal(api, pipeline["id"])).json()["id"] for _ in range(6)]
    r = await create_rule(
        api, pipeline_id=pipeline["id"], trigger={"type": "stale"}, actions=[CALL]
    )
    assert r.status_code == 201, r.text
    clock.advance(days=4)
    runtime = runtime_of(api)
    assert runtime.worker is not None
    await runtime.worker.catch_up()
    evaluators = [
        Evaluator(
            application=runtime.application,
            engine=runtime.engine,
            models=runtime.primary_reads,
            location=runtime.settings.store,
            clock=clock,
            use_advisory_lock=False,
        )
        for _ in range(2)
    ]
    counts = await asyncio.gather(*(e.run_once() for e in evaluators))
    assert sum(counts) == len(deals)
    fired = events(api, "AutomationFired")
    assert sorted(e.payload["deal_id"] for e in fired) == sorted(deals)
    for deal_id in deals:
        assert len(await activities_of(api, deal_id)) == 1


async def test_a_failing_action_is_recorded_in_the_firing_and_not_retried(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    deal_id = (await create_deal(api, pipeline["id"])).json()["id"]
    r = await create_rule(
        api,
        pipeline_id=pipeline["id"],
        trigger={"type": "won"},
        actions=[{"type": "reassign", "owner": "raj"}, {"type": "notify"}],
    )
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/deals/{deal_id}/win", json={}, headers=auth("rep"))
    assert r.status_code == 200, r.text
    assert await evaluate(api) == 1
    assert await evaluate(api) == 0
    [fired] = events(api, "AutomationFired")
    reassign, notify = fired.payload["actions"]
    assert (reassign["ok"], reassign["error"]) == (False, "deal_closed")
    assert notify == {"type": "notify", "ok": True}


async def test_rules_fire_only_for_events_after_they_were_made(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    before = (await create_deal(api, pipeline["id"])).json()["id"]
    await advance(api, before, "Quote sent")
    r = await create_rule(
        api,
        pipeline_id=pipeline["id"],
        trigger={"type": "enters_stage", "stage": "quote-sent"},
        actions=[{"type": "notify"}],
    )
    assert r.status_code == 201, r.text
    after = (await create_deal(api, pipeline["id"])).json()["id"]
    await advance(api, after, "Quote sent")
    assert await evaluate(api) == 1
    [fired] = events(api, "AutomationFired")
    assert fired.payload["deal_id"] == after


@pytest.mark.parametrize(
    ("trigger", "actions", "field"),
    [
        ({"type": "schedule", "cron": "61 * * * *", "timezone": "UTC"}, None, "trigger.cron"),
        (
            {"type": "schedule", "cron": "0 8 * * MON", "timezone": "Mars/Olympus"},
            None,
            "trigger.timezone",
        ),
        ({"type": "enters_stage", "stage": "Nowhere"}, [{"type": "notify"}], "trigger.stage"),
        ({"type": "rotting", "days": 0}, [{"type": "notify"}], "trigger.days"),
        ({"type": "stale"}, [{"type": "notify"}], "trigger.type"),  # no stale_after_days
        ({"type": "won"}, [], "actions"),
        ({"type": "won"}, [{"type": "notify"}] * 11, "actions"),
        ({"type": "won"}, [{"type": "digest", "report": "funnel"}], "actions[0].type"),
        (
            {"type": "schedule", "cron": "0 8 * * MON", "timezone": "UTC"},
            [{"type": "digest", "report": "nonsense", "webhook_id": str(uuid.uuid4())}],
            "actions[0].report",
        ),
        (
            {"type": "schedule", "cron": "0 8 * * MON", "timezone": "UTC"},
            [{"type": "digest", "report": "funnel", "webhook_id": str(uuid.uuid4())}],
            "actions[0].webhook_id",
        ),
        (
            {"type": "won"},
            [{"type": "create_activity", "activity_type": "fax", "subject": "x"}],
            "actions[0].activity_type",
        ),
    ],
)
async def test_bad_rules_are_a_422_naming_the_field_and_nothing_is_stored(
    api: httpx.AsyncClient,
    trigger: dict[str, Any],
    actions: list[dict[str, Any]] | None,
    field: str,
) -> None:
    pipeline = await define_pipeline(api)
    before = head(api)
    if actions is None:
        actions = [{"type": "digest", "report": "funnel", "webhook_id": str(uuid.uuid4())}]
    r = await create_rule(api, pipeline_id=pipeline["id"], trigger=trigger, actions=actions)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["field"] == field, r.text
    assert head(api) == before


async def test_admins_and_managers_write_rules_and_everyone_reads_them(
    api: httpx.AsyncClient,
) -> None:
    pipeline = await define_pipeline(api)
    body = {
        "pipeline_id": pipeline["id"],
        "trigger": {"type": "lost"},
        "actions": [{"type": "notify"}],
    }
    for who in ("rep", "auditor"):
        r = await create_rule(api, who, **body)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    rule = (await create_rule(api, "admin", **body)).json()
    r = await api.patch(
        f"/v1/automations/{rule['id']}", json={"name": "renamed"}, headers=auth("rep")
    )
    assert r.status_code == 403
    r = await api.patch(
        f"/v1/automations/{rule['id']}",
        json={"name": "renamed"},
        headers={**auth("manager"), "If-Match": '"7"'},
    )
    assert r.status_code == 412
    r = await api.patch(
        f"/v1/automations/{rule['id']}",
        json={"name": "renamed"},
        headers={**auth("manager"), "Idempotency-Key": "rename-1"},
    )
    assert (r.status_code, r.json()["name"], r.json()["version"]) == (200, "renamed", 2)
    again = await api.patch(
        f"/v1/automations/{rule['id']}",
        json={"name": "renamed"},
        headers={**auth("manager"), "Idempotency-Key": "rename-1"},
    )
    assert again.json() == r.json()
    for who in ("rep", "auditor"):
        r = await api.get(
            "/v1/automations",
            params={"pipeline_id": pipeline["id"], "min_position": head(api)},
            headers=auth(who),
        )
        assert r.status_code == 200
        assert [(i["id"], i["name"]) for i in r.json()["items"]] == [(rule["id"], "renamed")]


async def test_rules_are_listed_a_page_at_a_time(api: httpx.AsyncClient) -> None:
    pipeline = await define_pipeline(api)
    made = []
    for n in range(3):
        r = await create_rule(
            api,
            name=f"r{n}",
            pipeline_id=pipeline["id"],
            trigger={"type": "won"},
            actions=[{"type": "notify"}],
        )
        made.append(r.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "min_position": head(api)}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/v1/automations", params=params, headers=auth("rep"))).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made


def test_a_schedule_keeps_its_local_hour_across_the_change_of_time() -> None:
    from libs.domain.automation import schedule_occurrences

    trigger = {"cron": "0 8 * * *", "timezone": "Europe/Berlin"}
    found = schedule_occurrences(
        trigger, datetime(2026, 10, 24, tzinfo=UTC), datetime(2026, 10, 26, 8, tzinfo=UTC)
    )
    # summer time ends in the night to Sunday 25 October: 08:00 is 06:00 UTC, then 07:00
    assert found == [
        datetime(2026, 10, 24, 6, 0, tzinfo=UTC),
        datetime(2026, 10, 25, 7, 0, tzinfo=UTC),
        datetime(2026, 10, 26, 7, 0, tzinfo=UTC),
    ]
