"""Activities and stage checklists over HTTP: plan, reschedule, complete, cancel, list;
a rep's day and a manager's deals with no next step; the checklist rule and its waiver."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from tests.conftest import TestClock, auth
from tests.e2e.test_deal_lifecycle import create_deal, define_pipeline, head


def iso(moment: Any) -> str:
    return str(moment.isoformat())


async def plan(
    api: httpx.AsyncClient, deal_id: str, who: str = "rep", **body: Any
) -> httpx.Response:
    body = {"type": "call", "subject": "Discovery call", **body}
    return await api.post(f"/v1/deals/{deal_id}/activities", json=body, headers=auth(who))


async def read(api: httpx.AsyncClient, path: str, who: str = "rep", **params: Any) -> Any:
    """GET ``path`` once the read models have caught up with the newest event."""
    r = await api.get(path, params={"min_position": head(api), **params}, headers=auth(who))
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_rep_plans_reschedules_completes_and_cancels_activities_on_their_deal(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    deal = (await create_deal(api, pipeline["id"])).json()
    due = clock.now + timedelta(days=2)

    r = await plan(api, deal["id"], due_at=iso(due), duration_minutes=30, note="ask about budget")

    assert r.status_code == 201, r.text
    call = r.json()
    assert r.headers["Location"] == f"/v1/deals/{deal['id']}/activities/{call['id']}"
    assert r.headers["ETag"] == '"2"' and call["deal_version"] == 2
    assert call["position"] == head(api)
    assert (call["type"], call["subject"], call["assignee"]) == ("call", "Discovery call", "rita")
    assert (call["status"], call["overdue"], call["checklist"]) == ("open", False, None)
    assert call["due_at"] == iso(due) and call["duration_minutes"] == 30

    r = await api.patch(
        f"/v1/deals/{deal['id']}/activities/{call['id']}",
        json={"due_at": iso(due + timedelta(days=1)), "subject": "Budget call"},
        headers={**auth("rep"), "If-Match": '"2"'},
    )
    assert r.status_code == 200, r.text
    assert r.json()["due_at"] == iso(due + timedelta(days=1))
    assert r.json()["subject"] == "Budget call" and r.json()["deal_version"] == 3

    task = (await plan(api, deal["id"], type="task", subject="Send deck", due_at=iso(due))).json()
    deal_now = await read(api, f"/v1/deals/{deal['id']}")
    assert deal_now["open_activities"] == 2 and deal_now["overdue_activities"] == 0
    assert deal_now["next_activity"]["id"] == task["id"]  # the soonest due
    assert deal_now["next_activity"]["overdue"] is False
    assert deal_now["last_completed_activity"] is None

    r = await api.post(
        f"/v1/deals/{deal['id']}/activities/{call['id']}/complete",
        json={"outcome": "wants a quote"},
        headers=auth("rep"),
    )
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["outcome"]) == ("done", "wants a quote")
    assert r.json()["completed_at"] == iso(clock.now)
    r = await api.post(
        f"/v1/deals/{deal['id']}/activities/{task['id']}/cancel",
        json={"reason": "sent by email already"},
        headers=auth("rep"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"

    # a finished activity cannot be changed, completed or cancelled again
    for action in ("complete", "cancel"):
        r = await api.post(
            f"/v1/deals/{deal['id']}/activities/{call['id']}/{action}", headers=auth("rep")
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "activity_not_open"
    r = await api.patch(
        f"/v1/deals/{deal['id']}/activities/{task['id']}",
        json={"subject": "x"},
        headers=auth("rep"),
    )
    assert r.status_code == 409, r.text

    deal_now = await read(api, f"/v1/deals/{deal['id']}")
    assert deal_now["open_activities"] == 0 and deal_now["next_activity"] is None
    assert deal_now["last_completed_activity"]["id"] == call["id"]
    listed = await read(api, f"/v1/deals/{deal['id']}/activities")
    assert [a["id"] for a in listed["data"]] == [task["id"], call["id"]]  # by due time
    assert [a["status"] for a in listed["data"]] == ["cancelled", "done"]
    one = await read(api, f"/v1/deals/{deal['id']}/activities/{call['id']}")
    assert one["outcome"] == "wants a quote" and one["cancel_reason"] is None
    history = await read(api, f"/v1/deals/{deal['id']}/history")
    assert [e["event_type"] for e in history["data"]][1:] == [
        "ActivityScheduled",
        "ActivityUpdated",
        "ActivityScheduled",
        "ActivityCompleted",
        "ActivityCancelled",
    ]
    assert history["data"][2]["changes"][f"activities[{call['id']}].subject"] == {
        "before": "Discovery call",
        "after": "Budget call",
    }


async def test_only_the_deals_owner_among_reps_acts_on_its_activities_and_auditors_only_read(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    mine = (await create_deal(api, pipeline["id"])).json()
    theirs = (await create_deal(api, pipeline["id"], who="rep2")).json()
    due = iso(clock.now + timedelta(days=1))

    r = await plan(api, theirs["id"], due_at=due)
    assert r.status_code == 403, r.text
    r = await plan(api, mine["id"], due_at=due, assignee="raj")
    assert r.status_code == 403 and r.json()["error"]["details"]["assignee"] == "raj"
    r = await plan(api, mine["id"], who="auditor", due_at=due)
    assert r.status_code == 403, r.text

    r = await plan(api, theirs["id"], who="manager", due_at=due, assignee="rita")
    assert r.status_code == 201, r.text
    handed = r.json()
    assert handed["assignee"] == "rita"
    # rita is the assignee, but the deal is raj's: she may not complete it
    r = await api.post(
        f"/v1/deals/{theirs['id']}/activities/{handed['id']}/complete", headers=auth("rep")
    )
    assert r.status_code == 403, r.text
    r = await api.post(
        f"/v1/deals/{theirs['id']}/activities/{handed['id']}/complete", headers=auth("rep2")
    )
    assert r.status_code == 200, r.text
    r = await api.patch(
        f"/v1/deals/{mine['id']}/activities/{handed['id']}",
        json={"subject": "x"},
        headers=auth("rep"),
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "activity_not_found"

    listed = await read(api, "/v1/activities", who="auditor", deal_id=theirs["id"])
    assert [a["id"] for a in listed["data"]] == [handed["id"]]


async def test_activity_commands_honour_if_match_and_idempotency_keys(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    deal = (await create_deal(api, pipeline["id"])).json()
    body = {"type": "meeting", "subject": "Demo", "due_at": iso(clock.now + timedelta(hours=3))}

    stale = {**auth("rep"), "If-Match": '"7"'}
    r = await api.post(f"/v1/deals/{deal['id']}/activities", json=body, headers=stale)
    assert r.status_code == 412, r.text

    keyed = {**auth("rep"), "Idempotency-Key": "plan-demo-1"}
    first = await api.post(f"/v1/deals/{deal['id']}/activities", json=body, headers=keyed)
    again = await api.post(f"/v1/deals/{deal['id']}/activities", json=body, headers=keyed)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json()
    listed = await read(api, f"/v1/deals/{deal['id']}/activities")
    assert len(listed["data"]) == 1


async def test_bad_activity_input_is_a_422_naming_the_field_and_nothing_is_stored(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    deal = (await create_deal(api, pipeline["id"])).json()
    before = head(api)
    far = iso(clock.now + timedelta(days=3700))
    cases = [
        ({"due_at": far}, "due_at", "time_out_of_range"),
        ({"due_at": "2026-06-02"}, "due_at", None),
        ({"due_at": iso(clock.now), "type": "lunch"}, "type", None),
        ({"due_at": iso(clock.now), "subject": "a\x00b"}, "subject", None),
        ({"due_at": iso(clock.now), "subject": "x" * 201}, "subject", None),
        ({"due_at": iso(clock.now), "duration_minutes": 0}, "duration_minutes", None),
        ({"due_at": iso(clock.now), "duration_minutes": 10**9}, "duration_minutes", None),
        ({"due_at": iso(clock.now), "assignee": " "}, "assignee", None),
        ({"due_at": iso(clock.now), "color": "red"}, "color", None),
    ]
    for body, field, code in cases:
        r = await plan(api, deal["id"], **body)
        assert r.status_code == 422, (body, r.text)
        error = r.json()["error"]
        assert error["details"]["field"] == field, (body, error)
        if code:
            assert error["code"] == code
    r = await api.patch(
        f"/v1/deals/{deal['id']}/activities/not-a-uuid", json={}, headers=auth("rep")
    )
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "activity_id"
    r = await api.get("/v1/activities", params={"status": "late"}, headers=auth("rep"))
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "status"
    r = await api.get("/v1/activities", params={"cursor": "nope"}, headers=auth("rep"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"
    assert head(api) == before


async def test_a_rep_lists_the_activities_due_today_or_overdue_soonest_first(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    first = (await create_deal(api, pipeline["id"])).json()
    second = (await create_deal(api, pipeline["id"], title="Globex")).json()
    other = (await create_deal(api, pipeline["id"], who="rep2", title="Initech")).json()
    now = clock.now  # 12:00 UTC
    tomorrow = now.replace(hour=0) + timedelta(days=1)
    planned = {
        "overdue call": (first, "call", now - timedelta(days=2)),
        "overdue task": (second, "task", now - timedelta(hours=1)),
        "today": (first, "meeting", now + timedelta(hours=5)),
        "next week": (second, "email", now + timedelta(days=7)),
    }
    ids = {}
    for subject, (deal, kind, due) in planned.items():
        r = await plan(api, deal["id"], type=kind, subject=subject, due_at=iso(due))
        assert r.status_code == 201, r.text
        ids[subject] = r.json()["id"]
    r = await plan(api, other["id"], who="rep2", subject="raj's", due_at=iso(now - timedelta(1)))
    assert r.status_code == 201
    done = ids["overdue call"]
    await api.post(f"/v1/deals/{first['id']}/activities/{done}/complete", headers=auth("rep"))

    mine_today = await read(
        api, "/v1/activities", assignee="rita", status="open", due_before=iso(tomorrow)
    )
    assert [a["subject"] for a in mine_today["data"]] == ["overdue task", "today"]
    assert [a["overdue"] for a in mine_today["data"]] == [True, False]
    overdue = await read(api, "/v1/activities", status="overdue")
    assert sorted(a["subject"] for a in overdue["data"]) == ["overdue task", "raj's"]
    assert {a["assignee"] for a in overdue["data"]} == {"rita", "raj"}
    emails = await read(api, "/v1/activities", type="email", due_after=iso(now))
    assert [a["subject"] for a in emails["data"]] == ["next week"]

    # pages follow one another in (due time, id) order, and end
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await read(api, "/v1/activities", **params)
        seen += [a["subject"] for a in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["overdue call", "raj's", "overdue task", "today", "next week"]

    # time passes: the meeting of today becomes overdue, with nothing recorded
    clock.advance(hours=6)
    overdue = await read(api, "/v1/activities", assignee="rita", status="overdue")
    assert [a["subject"] for a in overdue["data"]] == ["overdue task", "today"]


async def test_a_manager_lists_the_open_deals_with_no_next_step(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    planned = (await create_deal(api, pipeline["id"], title="Planned")).json()
    idle = (await create_deal(api, pipeline["id"], title="Idle")).json()
    finished = (await create_deal(api, pipeline["id"], title="Finished")).json()
    won = (await create_deal(api, pipeline["id"], title="Won")).json()
    await plan(api, planned["id"], due_at=iso(clock.now + timedelta(days=1)))
    call = (await plan(api, finished["id"], due_at=iso(clock.now))).json()
    await api.post(
        f"/v1/deals/{finished['id']}/activities/{call['id']}/complete", headers=auth("rep")
    )
    await api.post(f"/v1/deals/{won['id']}/win", headers=auth("rep"))

    nothing = await read(api, "/v1/deals", who="manager", has_next_activity="false")
    assert sorted(d["title"] for d in nothing["data"]) == ["Finished", "Idle"]
    assert all(d["status"] == "open" and d["open_activities"] == 0 for d in nothing["data"])
    something = await read(
        api, "/v1/deals", who="manager", has_next_activity="true", pipeline_id=pipeline["id"]
    )
    assert [d["title"] for d in something["data"]] == ["Planned"]
    r = await api.get(
        "/v1/deals", params={"has_next_activity": "false", "status": "won"}, headers=auth("rep")
    )
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "has_next_activity"
    assert idle["id"] in {d["id"] for d in nothing["data"]}


async def test_board_cards_carry_the_next_activity_and_whether_it_is_overdue(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    deal = (await create_deal(api, pipeline["id"])).json()
    await create_deal(api, pipeline["id"], title="Nothing planned")
    call = (await plan(api, deal["id"], due_at=iso(clock.now + timedelta(hours=1)))).json()

    board = await read(api, f"/v1/pipelines/{pipeline['id']}/board")
    cards = {c["title"]: c for c in board["stages"][0]["deals"]}
    assert cards["ACME renewal"]["next_activity"]["id"] == call["id"]
    assert cards["ACME renewal"]["next_activity"]["overdue"] is False
    assert cards["Nothing planned"]["next_activity"] is None

    clock.advance(hours=2)  # past the due time, and past the cache's clock allowance
    board = await read(api, f"/v1/pipelines/{pipeline['id']}/board")
    cards = {c["title"]: c for c in board["stages"][0]["deals"]}
    assert cards["ACME renewal"]["next_activity"]["overdue"] is True
    assert cards["ACME renewal"]["overdue_activities"] == 1


async def test_a_deal_as_of_a_moment_shows_its_activities_as_they_were_then(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api, occurred_at="2026-01-01T00:00:00Z")
    deal = (await create_deal(api, pipeline["id"], occurred_at="2026-03-01T09:00:00Z")).json()
    call = (
        await plan(
            api,
            deal["id"],
            due_at="2026-03-05T10:00:00Z",
            occurred_at="2026-03-02T09:00:00Z",
        )
    ).json()
    r = await api.post(
        f"/v1/deals/{deal['id']}/activities/{call['id']}/complete",
        json={"outcome": "good call", "occurred_at": "2026-03-06T09:00:00Z"},
        headers=auth("rep"),
    )
    assert r.status_code == 200, r.text

    async def as_of(moment: str) -> Any:
        return await read(api, f"/v1/deals/{deal['id']}", as_of=moment)

    assert (await as_of("2026-03-01T12:00:00Z"))["activities"] == []
    planned = (await as_of("2026-03-04T00:00:00Z"))["activities"]
    assert [(a["id"], a["status"], a["overdue"]) for a in planned] == [(call["id"], "open", False)]
    late = (await as_of("2026-03-05T12:00:00Z"))["activities"]
    assert [(a["status"], a["overdue"]) for a in late] == [("open", True)]
    done = (await as_of("2026-03-07T00:00:00Z"))["activities"]
    assert [(a["status"], a["outcome"], a["overdue"]) for a in done] == [
        ("done", "good call", False)
    ]


CHECKLIST = [
    {"title": "Qualify budget", "type": "call", "due_in_days": 2},
    {"title": "Send the deck", "type": "email"},
]


async def checklist_pipeline(api: httpx.AsyncClient) -> dict[str, Any]:
    return await define_pipeline(
        api,
        stages=[
            {"name": "Lead", "probability": 10, "checklist": CHECKLIST},
            {"name": "Offer", "probability": 50},
        ],
        require_checklist_before_leaving=True,
    )


async def test_a_stage_checklist_blocks_leaving_until_done_or_waived_and_losing_is_allowed(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await checklist_pipeline(api)
    assert pipeline["require_checklist_before_leaving"] is True
    assert pipeline["stages"][0]["checklist_version"] == 1
    deal = (await create_deal(api, pipeline["id"])).json()
    assert deal["open_activities"] == 2
    items = (await read(api, f"/v1/deals/{deal['id']}/activities"))["data"]
    assert sorted(a["subject"] for a in items) == ["Qualify budget", "Send the deck"]
    by_title = {a["subject"]: a for a in items}
    assert by_title["Qualify budget"]["due_at"] == iso(clock.now + timedelta(days=2))
    assert by_title["Send the deck"]["due_at"] is None
    assert by_title["Qualify budget"]["checklist"] == {
        "pipeline_id": pipeline["id"],
        "stage_id": "lead",
        "version": 1,
    }

    for path, body in (("advance", {"stage": "Offer"}), ("win", {})):
        r = await api.post(f"/v1/deals/{deal['id']}/{path}", json=body, headers=auth("rep"))
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "checklist_incomplete"
        assert sorted(i["title"] for i in error["details"]["open_items"]) == [
            "Qualify budget",
            "Send the deck",
        ]
        assert "Qualify budget" in error["message"]

    qualify = by_title["Qualify budget"]["id"]
    await api.post(f"/v1/deals/{deal['id']}/activities/{qualify}/complete", headers=auth("rep"))
    r = await api.post(
        f"/v1/deals/{deal['id']}/advance", json={"stage": "Offer"}, headers=auth("rep")
    )
    assert r.status_code == 409
    assert [i["title"] for i in r.json()["error"]["details"]["open_items"]] == ["Send the deck"]

    r = await api.post(
        f"/v1/deals/{deal['id']}/checklist/waive", json={"reason": "sent"}, headers=auth("rep")
    )
    assert r.status_code == 403, r.text
    r = await api.post(
        f"/v1/deals/{deal['id']}/checklist/waive",
        json={"reason": "the buyer has the deck already"},
        headers=auth("manager"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["waived"] == [by_title["Send the deck"]["id"]]
    assert r.json()["open_activities"] == 0
    r = await api.post(
        f"/v1/deals/{deal['id']}/checklist/waive", json={"reason": "again"}, headers=auth("admin")
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_open_checklist_items"

    r = await api.post(
        f"/v1/deals/{deal['id']}/advance", json={"stage": "Offer"}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    waived = await read(api, f"/v1/deals/{deal['id']}/activities/{by_title['Send the deck']['id']}")
    assert (waived["status"], waived["waived"]) == ("cancelled", True)
    assert waived["cancel_reason"] == "the buyer has the deck already"

    # losing is always allowed, open checklist items or not
    other = (await create_deal(api, pipeline["id"], title="Globex")).json()
    r = await api.post(
        f"/v1/deals/{other['id']}/lose", json={"reason": "Price"}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text


async def test_a_changed_checklist_applies_to_deals_entering_afterwards_and_history_shows_which(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await checklist_pipeline(api)
    early = (await create_deal(api, pipeline["id"], title="Early")).json()
    r = await api.patch(
        f"/v1/pipelines/{pipeline['id']}/stages/lead",
        json={"checklist": [{"title": "Book a demo", "type": "meeting", "due_in_days": 1}]},
        headers=auth("manager"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["stages"][0]["checklist_version"] == 2
    late = (await create_deal(api, pipeline["id"], title="Late")).json()

    early_items = (await read(api, f"/v1/deals/{early['id']}/activities"))["data"]
    late_items = (await read(api, f"/v1/deals/{late['id']}/activities"))["data"]
    assert sorted(a["subject"] for a in early_items) == ["Qualify budget", "Send the deck"]
    assert {a["checklist"]["version"] for a in early_items} == {1}
    assert [(a["subject"], a["checklist"]["version"]) for a in late_items] == [("Book a demo", 2)]

    history = await read(api, f"/v1/deals/{late['id']}/history")
    applied = [e for e in history["data"] if e["event_type"] == "ChecklistApplied"]
    assert applied[0]["changes"]["checklist"]["after"] == {
        "stage_id": "lead",
        "stage": "Lead",
        "version": 2,
    }

    # with the rule switched off, a deal leaves with its items open
    r = await api.patch(
        f"/v1/pipelines/{pipeline['id']}",
        json={"require_checklist_before_leaving": False},
        headers=auth("manager"),
    )
    assert r.status_code == 200 and r.json()["require_checklist_before_leaving"] is False
    r = await api.post(
        f"/v1/deals/{early['id']}/advance", json={"stage": "Offer"}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    assert r.json()["open_activities"] == 2
