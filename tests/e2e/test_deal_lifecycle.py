"""A deal's whole life over HTTP: pipelines, creation, stages, outcomes, updates, reads."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from libs.application.records import EventRecord, decode_all
from libs.domain.pipeline import DEFAULT_LOST_REASONS, DEFAULT_STAGES
from tests.conftest import TestClock, auth

DEFAULT_STAGE_IDS = ["deal-created", "demo-or-meeting", "quote-sent", "negotiation"]


def head(api: httpx.AsyncClient) -> int:
    return int(api.app.state.runtime.application.head_position())  # type: ignore[attr-defined]


def deal_events(api: httpx.AsyncClient, deal_id: str) -> list[EventRecord]:
    app = api.app.state.runtime.application  # type: ignore[attr-defined]
    return [
        record
        for batch in app.iter_notifications()
        for record in decode_all(app.mapper, batch)
        if str(record.aggregate_id) == deal_id
    ]


async def define_pipeline(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body = {"name": "New business", "currency": "EUR", **body}
    r = await api.post("/v1/pipelines", json=body, headers=auth("admin"))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def create_deal(
    api: httpx.AsyncClient, pipeline_id: str, who: str = "rep", **body: Any
) -> httpx.Response:
    body = {"pipeline_id": pipeline_id, "title": "ACME renewal", "value": "12000.00", **body}
    r = await api.post("/v1/deals", json=body, headers=auth(who))
    assert r.status_code == 201, r.text
    return r


async def get_deal(api: httpx.AsyncClient, deal_id: str, who: str = "rep") -> httpx.Response:
    """GET the deal once the read side has caught up with the newest event."""
    r = await api.get(f"/v1/deals/{deal_id}", params={"min_position": head(api)}, headers=auth(who))
    assert r.status_code == 200, r.text
    return r


def assert_same_state(got: dict[str, Any], answer: dict[str, Any]) -> None:
    """A GET shows every field of a command's answer with the same value."""
    expected = {k: v for k, v in answer.items() if k != "position"}
    assert {k: got.get(k) for k in expected} == expected


def assert_command_answer(r: httpx.Response, api: httpx.AsyncClient, version: int) -> None:
    """A command's answer: 200, the new version in body and ETag, position at the head."""
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == version
    assert r.headers["ETag"] == f'"{version}"'
    assert body["position"] == head(api)


async def test_a_pipeline_gets_the_default_b2b_template_unless_it_names_its_own_stages(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    r = await api.post(
        "/v1/pipelines", json={"name": "New business", "currency": "eur"}, headers=auth("admin")
    )

    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["Location"] == f"/v1/pipelines/{body['id']}"
    assert r.headers["ETag"] == '"1"'
    assert body["version"] == 1
    assert body["position"] == head(api)
    assert body["currency"] == "EUR"
    assert [s["name"] for s in body["stages"]] == [name for name, _ in DEFAULT_STAGES]
    assert [s["probability"] for s in body["stages"]] == [p for _, p in DEFAULT_STAGES]
    assert [s["id"] for s in body["stages"]] == DEFAULT_STAGE_IDS
    assert body["lost_reasons"] == list(DEFAULT_LOST_REASONS)

    got = await api.get(
        r.headers["Location"], params={"min_position": body["position"]}, headers=auth("rep")
    )
    assert got.status_code == 200
    assert got.headers["ETag"] == '"1"'
    assert got.json() == body  # the read model is where the command left it

    clock.advance(minutes=1)  # defined later: listed after the first
    pipeline = await define_pipeline(
        api,
        name="Renewals",
        currency="USD",
        stages=[
            {"name": "Lead", "probability": 5, "rotting_days": 14},
            {"name": "Proposal", "probability": 60},
            {"name": "Contract out", "probability": 90, "id": "contract"},
        ],
        lost_reasons=["Too expensive", "Ghosted"],
    )

    keys = ("id", "name", "probability", "rotting_days")
    assert [{k: s[k] for k in keys} for s in pipeline["stages"]] == [
        {"id": "lead", "name": "Lead", "probability": 5, "rotting_days": 14},
        {"id": "proposal", "name": "Proposal", "probability": 60, "rotting_days": None},
        {"id": "contract", "name": "Contract out", "probability": 90, "rotting_days": None},
    ]
    assert pipeline["lost_reasons"] == ["Too expensive", "Ghosted"]

    deal = (await create_deal(api, pipeline["id"], stage="proposal")).json()
    assert deal["stage"] == {"id": "proposal", "name": "Proposal"}
    assert deal["currency"] == "USD"
    r = await api.post(
        f"/v1/deals/{deal['id']}/advance", json={"stage": "contract"}, headers=auth("rep")
    )
    assert r.json()["stage"] == {"id": "contract", "name": "Contract out"}
    r = await api.post(
        f"/v1/deals/{deal['id']}/lose", json={"reason": "ghosted"}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    assert r.json()["lost_reason"] == "Ghosted"
    listed = await api.get("/v1/pipelines", params={"min_position": head(api)}, headers=auth("rep"))
    assert [p["id"] for p in listed.json()["data"]] == [body["id"], pipeline["id"]]
    assert listed.json()["position"] == head(api)


async def test_creating_a_deal_answers_201_with_location_etag_version_and_position(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    before = head(api)

    r = await create_deal(api, pipeline["id"], expected_close_date="2026-09-30")

    body = r.json()
    assert r.headers["Location"] == f"/v1/deals/{body['id']}"
    assert r.headers["ETag"] == '"1"'
    assert body["version"] == 1
    assert body["position"] == head(api) == before + 1
    assert body["pipeline_id"] == pipeline["id"]
    assert body["owner"] == "rita"
    assert body["stage"] == {"id": "deal-created", "name": "Deal created"}
    assert body["status"] == "open"
    assert body["currency"] == "EUR"
    assert body["expected_close_date"] == "2026-09-30"
    assert body["created_at"] == clock.now.isoformat()
    assert body["closed_at"] is None

    got = await get_deal(api, body["id"])
    assert r.headers["Location"] == got.request.url.path
    assert got.headers["ETag"] == '"1"'
    assert_same_state(got.json(), body)


async def test_a_deal_moves_forward_and_backward_through_stages(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    deal_id = (await create_deal(api, pipeline["id"])).json()["id"]

    clock.advance(days=2)
    r = await api.post(
        f"/v1/deals/{deal_id}/advance", json={"stage": "Quote sent"}, headers=auth("rep")
    )
    assert_command_answer(r, api, version=2)
    assert r.json()["stage"] == {"id": "quote-sent", "name": "Quote sent"}
    assert r.json()["entered_current_stage_at"] == clock.now.isoformat()

    clock.advance(days=1)
    r = await api.post(
        f"/v1/deals/{deal_id}/advance",
        json={"stage": "demo-or-meeting"},
        headers={**auth("rep"), "If-Match": '"2"'},
    )
    assert_command_answer(r, api, version=3)
    assert r.json()["stage"] == {"id": "demo-or-meeting", "name": "Demo or meeting"}
    assert r.json()["entered_current_stage_at"] == clock.now.isoformat()

    moves = [e.payload for e in deal_events(api, deal_id) if e.event_type == "StageAdvanced"]
    assert [(m["from_stage_id"], m["to_stage_id"], m["direction"]) for m in moves] == [
        ("deal-created", "quote-sent", "forward"),
        ("quote-sent", "demo-or-meeting", "backward"),
    ]


async def test_a_closed_deal_reopens_where_it_closed_or_in_a_named_stage(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    deal_id = (await create_deal(api, pipeline["id"], stage="Negotiation")).json()["id"]

    clock.advance(days=3)
    r = await api.post(
        f"/v1/deals/{deal_id}/lose",
        json={"reason": "price", "note": "went with a cheaper offer"},
        headers=auth("rep"),
    )
    assert_command_answer(r, api, version=2)
    lost = r.json()
    assert lost["status"] == "lost"
    assert lost["lost_reason"] == "Price"
    assert lost["lost_note"] == "went with a cheaper offer"
    assert lost["closed_at"] == clock.now.isoformat()
    assert lost["stage"]["id"] == "negotiation"

    clock.advance(days=1)
    r = await api.post(f"/v1/deals/{deal_id}/reopen", headers=auth("rep"))
    assert_command_answer(r, api, version=3)
    reopened = r.json()
    assert reopened["status"] == "open"
    assert reopened["stage"] == {"id": "negotiation", "name": "Negotiation"}
    assert reopened["lost_reason"] is None
    assert reopened["lost_note"] is None
    assert reopened["closed_at"] is None
    assert reopened["entered_current_stage_at"] == clock.now.isoformat()

    deal_id = (await create_deal(api, pipeline["id"], stage="quote-sent")).json()["id"]

    clock.advance(hours=5)
    r = await api.post(f"/v1/deals/{deal_id}/win", headers=auth("rep"))
    assert_command_answer(r, api, version=2)
    assert r.json()["status"] == "won"
    assert r.json()["closed_at"] == clock.now.isoformat()
    assert r.json()["stage"]["id"] == "quote-sent"

    r = await api.post(
        f"/v1/deals/{deal_id}/reopen", json={"stage": "Negotiation"}, headers=auth("rep")
    )
    assert_command_answer(r, api, version=3)
    assert r.json()["status"] == "open"
    assert r.json()["stage"] == {"id": "negotiation", "name": "Negotiation"}

    events = deal_events(api, deal_id)
    assert [e.event_type for e in events] == ["DealCreated", "DealWon", "DealReopened"]
    assert events[1].payload["stage_id"] == "quote-sent"
    assert events[2].payload["previous_status"] == "won"


async def test_a_patch_records_only_changed_fields_and_an_owner_change_as_its_own_event(
    api: httpx.AsyncClient,
) -> None:
    pipeline = await define_pipeline(api)
    deal_id = (await create_deal(api, pipeline["id"], title="Old title")).json()["id"]

    r = await api.patch(
        f"/v1/deals/{deal_id}",
        json={"title": "Old title", "value": "15000.50", "expected_close_date": "2026-12-31"},
        headers=auth("rep"),
    )

    assert_command_answer(r, api, version=2)
    assert r.json()["value"] == "15000.50"
    assert r.json()["expected_close_date"] == "2026-12-31"
    assert r.json()["title"] == "Old title"
    updates = [e for e in deal_events(api, deal_id) if e.event_type == "DealUpdated"]
    assert len(updates) == 1
    changes, previous = updates[0].payload["changes"], updates[0].payload["previous"]
    assert set(changes) == {"value", "expected_close_date"}
    assert Decimal(changes["value"]) == Decimal("15000.50")
    assert str(changes["expected_close_date"]) == "2026-12-31"
    assert Decimal(previous["value"]) == Decimal("12000.00")
    assert previous["expected_close_date"] is None

    deal_id = (await create_deal(api, pipeline["id"])).json()["id"]
    before = head(api)

    r = await api.patch(
        f"/v1/deals/{deal_id}",
        json={"title": "Handed over", "owner": "raj"},
        headers=auth("manager"),
    )

    assert_command_answer(r, api, version=3)
    assert r.json()["position"] == before + 2
    assert r.json()["owner"] == "raj"
    events = deal_events(api, deal_id)
    assert [e.event_type for e in events] == ["DealCreated", "DealUpdated", "OwnerChanged"]
    assert events[1].payload["changes"] == {"title": "Handed over"}
    assert (events[2].payload["from_owner"], events[2].payload["to_owner"]) == ("rita", "raj")
    got = (await get_deal(api, deal_id, "rep2")).json()
    assert (got["owner"], got["title"], got["version"]) == ("raj", "Handed over", 3)


async def test_a_full_lifecycle_is_reflected_by_get_and_positions_strictly_increase(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api)
    positions = [pipeline["position"]]
    r = await create_deal(api, pipeline["id"], external_id="crm-42")
    deal_id = r.json()["id"]
    positions.append(r.json()["position"])

    steps: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "advance", {"stage": "Demo or meeting"}),
        ("POST", "advance", {"stage": "Quote sent"}),
        ("POST", "advance", {"stage": "Deal created"}),
        ("POST", "lose", {"reason": "Timing", "note": "next quarter"}),
        ("POST", "reopen", None),
        ("PATCH", "", {"value": "13000.25", "owner": "raj"}),
        ("POST", "advance", {"stage": "Negotiation"}),
        ("POST", "win", None),
    ]
    for method, action, body in steps:
        clock.advance(hours=1)
        url = f"/v1/deals/{deal_id}/{action}".rstrip("/")
        r = await api.request(method, url, json=body, headers=auth("manager"))
        assert r.status_code == 200, (action, r.text)
        assert r.json()["position"] == head(api)
        positions.append(r.json()["position"])

    assert positions == sorted(set(positions)), positions
    got = await get_deal(api, deal_id, "auditor")
    deal = got.json()
    events = deal_events(api, deal_id)
    assert deal["version"] == len(events) == 10
    assert got.headers["ETag"] == '"10"'
    assert deal["status"] == "won"
    assert deal["stage"] == {"id": "negotiation", "name": "Negotiation"}
    assert deal["owner"] == "raj"
    assert deal["value"] == "13000.25"
    assert deal["external_id"] == "crm-42"
    assert deal["lost_reason"] is None
    assert deal["closed_at"] == clock.now.isoformat()
    assert deal["last_activity_at"] == clock.now.isoformat()
    assert [e.position for e in events][-1] == positions[-1]


async def test_a_backdated_occurred_at_is_accepted_and_returned(
    api: httpx.AsyncClient,
) -> None:
    pipeline = await define_pipeline(api, occurred_at="2026-01-01T00:00:00Z")
    created = await create_deal(api, pipeline["id"], occurred_at="2026-05-01T09:30:00+02:00")
    deal_id = created.json()["id"]
    assert created.json()["created_at"] == "2026-05-01T07:30:00+00:00"

    r = await api.post(
        f"/v1/deals/{deal_id}/advance",
        json={"stage": "Quote sent", "occurred_at": "2026-05-10T08:00:00Z"},
        headers=auth("rep"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["entered_current_stage_at"] == "2026-05-10T08:00:00+00:00"
    r = await api.post(
        f"/v1/deals/{deal_id}/win",
        json={"occurred_at": "2026-05-20T16:45:00Z"},
        headers=auth("rep"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["closed_at"] == "2026-05-20T16:45:00+00:00"

    got = (await get_deal(api, deal_id)).json()
    assert got["created_at"] == "2026-05-01T07:30:00+00:00"
    assert got["entered_current_stage_at"] == "2026-05-10T08:00:00+00:00"
    assert got["closed_at"] == got["last_activity_at"] == "2026-05-20T16:45:00+00:00"
    assert [e.occurred_at for e in deal_events(api, deal_id)] == [
        datetime(2026, 5, 1, 7, 30, tzinfo=UTC),
        datetime(2026, 5, 10, 8, 0, tzinfo=UTC),
        datetime(2026, 5, 20, 16, 45, tzinfo=UTC),
    ]


VALUES = ["12000.00", "0.1", "0", "999999999999999.9999", "1000000000000000", "0.0001", "7.5000"]


def assert_exact_decimal_string(shown: Any, sent: str) -> None:
    """The amount comes back as a plain decimal string with exactly the value sent."""
    assert isinstance(shown, str), shown
    assert "e" not in shown.lower(), shown
    assert Decimal(shown) == Decimal(sent), (shown, sent)


async def test_a_value_is_kept_exact_as_a_decimal_string(api: httpx.AsyncClient) -> None:
    pipeline = await define_pipeline(api)
    deal_id = (await create_deal(api, pipeline["id"], value="1.23")).json()["id"]

    created = {}
    for value in VALUES:
        r = await create_deal(api, pipeline["id"], value=value)
        assert_exact_decimal_string(r.json()["value"], value)
        created[value] = r.json()["id"]
        r = await api.patch(f"/v1/deals/{deal_id}", json={"value": value}, headers=auth("rep"))
        assert r.status_code == 200, r.text
        assert_exact_decimal_string(r.json()["value"], value)

    assert_exact_decimal_string((await get_deal(api, deal_id)).json()["value"], VALUES[-1])
    for value, created_id in created.items():
        assert_exact_decimal_string((await get_deal(api, created_id)).json()["value"], value)
    changes = [e.payload["changes"]["value"] for e in deal_events(api, deal_id)[1:]]
    assert [Decimal(v) for v in changes] == [Decimal(v) for v in VALUES]
