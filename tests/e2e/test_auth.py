"""Who may do what over HTTP, and who is stamped on the events."""

from __future__ import annotations

from typing import Any

import httpx

from libs.application.records import EventRecord, decode_all
from tests.conftest import auth


def head(api: httpx.AsyncClient) -> int:
    return int(api.app.state.runtime.application.head_position())  # type: ignore[attr-defined]


def events_of(api: httpx.AsyncClient, aggregate_id: str) -> list[EventRecord]:
    app = api.app.state.runtime.application  # type: ignore[attr-defined]
    return [
        record
        for batch in app.iter_notifications()
        for record in decode_all(app.mapper, batch)
        if str(record.aggregate_id) == aggregate_id
    ]


async def get_deal(api: httpx.AsyncClient, deal_id: str, who: str = "rep") -> dict[str, Any]:
    """The deal's state once the read side has caught up with the newest event."""
    r = await api.get(f"/v1/deals/{deal_id}", params={"min_position": head(api)}, headers=auth(who))
    assert r.status_code == 200, r.text
    return dict(r.json())


def assert_forbidden(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "forbidden"
    assert set(error) == {"code", "message", "details"}
    return dict(error)


async def define_pipeline(api: httpx.AsyncClient) -> str:
    r = await api.post(
        "/v1/pipelines", json={"name": "New business", "currency": "EUR"}, headers=auth("admin")
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def create_deal(api: httpx.AsyncClient, pipeline_id: str, who: str = "rep") -> str:
    r = await api.post(
        "/v1/deals",
        json={"pipeline_id": pipeline_id, "title": "ACME renewal", "value": "100"},
        headers=auth(who),
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


# Each command on an existing deal: (method, path suffix, body); reopen needs a closed deal.
OPEN_DEAL_COMMANDS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "advance", {"stage": "Quote sent"}),
    ("POST", "win", None),
    ("POST", "lose", {"reason": "Price", "note": "n"}),
    ("PATCH", "", {"title": "Renamed", "value": "250"}),
]
CLOSED_DEAL_COMMANDS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "reopen", None),
    ("POST", "reopen", {"stage": "Negotiation"}),
]


async def open_and_closed_deal(api: httpx.AsyncClient) -> tuple[str, str]:
    """Two deals of rita's: one open, one won."""
    pipeline_id = await define_pipeline(api)
    open_id, closed_id = await create_deal(api, pipeline_id), await create_deal(api, pipeline_id)
    r = await api.post(f"/v1/deals/{closed_id}/win", headers=auth("rep"))
    assert r.status_code == 200, r.text
    return open_id, closed_id


async def assert_every_deal_command_is_forbidden(api: httpx.AsyncClient, who: str) -> None:
    """``who`` gets 403 for every command on rita's deals, and nothing changes."""
    open_id, closed_id = await open_and_closed_deal(api)
    states = [await get_deal(api, d) for d in (open_id, closed_id)]
    before = head(api)

    for deal_id, commands in ((open_id, OPEN_DEAL_COMMANDS), (closed_id, CLOSED_DEAL_COMMANDS)):
        for method, action, body in commands:
            url = f"/v1/deals/{deal_id}/{action}".rstrip("/")
            r = await api.request(method, url, json=body, headers=auth(who))
            assert r.status_code == 403, (action, r.text)
            assert_forbidden(r)
            assert head(api) == before, action

    for deal_id, state in zip((open_id, closed_id), states, strict=True):
        got = await get_deal(api, deal_id)
        assert (got["version"], got["status"], got["stage"], got["title"], got["value"]) == (
            state["version"],
            state["status"],
            state["stage"],
            state["title"],
            state["value"],
        )


async def test_an_auditor_can_run_no_command_and_nothing_is_written(
    api: httpx.AsyncClient,
) -> None:
    await assert_every_deal_command_is_forbidden(api, "auditor")
    pipeline_id = await define_pipeline(api)
    before = head(api)

    for body in (
        {"pipeline_id": pipeline_id, "title": "Audit", "value": "1"},
        {"pipeline_id": pipeline_id, "title": "Audit", "value": "1", "owner": "rita"},
    ):
        assert_forbidden(await api.post("/v1/deals", json=body, headers=auth("auditor")))
    assert_forbidden(
        await api.post(
            "/v1/pipelines", json={"name": "A", "currency": "EUR"}, headers=auth("auditor")
        )
    )
    assert head(api) == before


async def test_an_auditor_can_read_deals_and_pipelines(api: httpx.AsyncClient) -> None:
    pipeline_id = await define_pipeline(api)
    deal_id = await create_deal(api, pipeline_id)

    deal = await api.get(
        f"/v1/deals/{deal_id}", params={"min_position": head(api)}, headers=auth("auditor")
    )
    at = {"min_position": head(api)}
    pipeline = await api.get(f"/v1/pipelines/{pipeline_id}", params=at, headers=auth("auditor"))
    pipelines = await api.get("/v1/pipelines", params=at, headers=auth("auditor"))

    assert deal.status_code == 200, deal.text
    assert deal.json()["id"] == deal_id
    assert pipeline.status_code == 200, pipeline.text
    assert pipeline.json()["id"] == pipeline_id
    assert pipelines.status_code == 200, pipelines.text
    assert [p["id"] for p in pipelines.json()["data"]] == [pipeline_id]


async def test_only_managers_and_admins_open_deals_for_another_owner(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    before = head(api)

    r = await api.post(
        "/v1/deals",
        json={"pipeline_id": pipeline_id, "title": "For raj", "value": "1", "owner": "raj"},
        headers=auth("rep"),
    )

    error = assert_forbidden(r)
    assert error["details"]["owner"] == "raj"
    assert head(api) == before
    r = await api.post(
        "/v1/deals",
        json={"pipeline_id": pipeline_id, "title": "Mine", "value": "1", "owner": "rita"},
        headers=auth("rep"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["owner"] == "rita"
    for who in ("manager", "admin"):
        r = await api.post(
            "/v1/deals",
            json={"pipeline_id": pipeline_id, "title": f"By {who}", "value": "1", "owner": "raj"},
            headers=auth(who),
        )
        assert r.status_code == 201, (who, r.text)
        assert r.json()["owner"] == "raj"


async def test_a_rep_cannot_change_another_reps_deal(api: httpx.AsyncClient) -> None:
    await assert_every_deal_command_is_forbidden(api, "rep2")
    deal_id = await create_deal(api, await define_pipeline(api))

    r = await api.post(
        f"/v1/deals/{deal_id}/advance", json={"stage": "Quote sent"}, headers=auth("rep2")
    )
    assert assert_forbidden(r)["details"]["owner"] == "rita"

    # once handed over, the deal is the new owner's to change and no longer rita's
    r = await api.patch(f"/v1/deals/{deal_id}", json={"owner": "raj"}, headers=auth("manager"))
    assert r.status_code == 200, r.text
    refused = await api.post(
        f"/v1/deals/{deal_id}/advance", json={"stage": "Quote sent"}, headers=auth("rep")
    )
    allowed = await api.post(
        f"/v1/deals/{deal_id}/advance", json={"stage": "Quote sent"}, headers=auth("rep2")
    )
    assert assert_forbidden(refused)["details"]["owner"] == "raj"
    assert allowed.status_code == 200, allowed.text


async def test_managers_and_admins_may_change_any_reps_deal(api: httpx.AsyncClient) -> None:
    pipeline_id = await define_pipeline(api)

    for who in ("manager", "admin"):
        deal_id = await create_deal(api, pipeline_id)
        positions = []
        for method, action, body in [
            ("POST", "advance", {"stage": "Quote sent"}),
            ("POST", "lose", {"reason": "Price"}),
            ("POST", "reopen", None),
            ("PATCH", "", {"title": "Renamed", "owner": "raj"}),
            ("POST", "win", None),
        ]:
            url = f"/v1/deals/{deal_id}/{action}".rstrip("/")
            r = await api.request(method, url, json=body, headers=auth(who))
            assert r.status_code == 200, (who, action, r.text)
            positions.append(r.json()["position"])

        assert positions == sorted(set(positions))
        assert positions[-1] == head(api)
        deal = await get_deal(api, deal_id, "rep2")
        assert (deal["status"], deal["owner"], deal["title"]) == ("won", "raj", "Renamed")


async def test_only_admins_and_managers_define_pipelines(api: httpx.AsyncClient) -> None:
    for who, status in [
        ("rep", 403),
        ("rep2", 403),
        ("auditor", 403),
        ("admin", 201),
        ("manager", 201),
    ]:
        before = head(api)
        r = await api.post(
            "/v1/pipelines", json={"name": f"By {who}", "currency": "GBP"}, headers=auth(who)
        )
        assert r.status_code == status, (who, r.text)
        if status == 403:
            assert_forbidden(r)
            assert head(api) == before, who
        else:
            assert head(api) == r.json()["position"] == before + 1, who

    listed = await api.get("/v1/pipelines", params={"min_position": head(api)}, headers=auth("rep"))
    assert sorted(p["name"] for p in listed.json()["data"]) == ["By admin", "By manager"]


async def test_the_actor_stamped_on_every_event_is_the_principal(
    api: httpx.AsyncClient,
) -> None:
    r = await api.post(
        "/v1/pipelines", json={"name": "New business", "currency": "EUR"}, headers=auth("manager")
    )
    pipeline_id = r.json()["id"]
    deal_id = await create_deal(api, pipeline_id, who="rep")
    for method, action, body, who in [
        ("POST", "advance", {"stage": "Quote sent"}, "rep"),
        ("POST", "advance", {"stage": "Negotiation"}, "manager"),
        ("POST", "lose", {"reason": "Timing"}, "admin"),
        ("POST", "reopen", None, "rep"),
        ("PATCH", "", {"value": "200", "owner": "raj"}, "admin"),
        ("POST", "win", None, "rep2"),
    ]:
        url = f"/v1/deals/{deal_id}/{action}".rstrip("/")
        r = await api.request(method, url, json=body, headers=auth(who))
        assert r.status_code == 200, (action, who, r.text)
    managed = await api.post(
        "/v1/deals",
        json={"pipeline_id": pipeline_id, "title": "For rita", "value": "1", "owner": "rita"},
        headers=auth("manager"),
    )

    assert [(e.event_type, e.actor) for e in events_of(api, pipeline_id)] == [
        ("PipelineDefined", "max")
    ]
    assert [(e.event_type, e.actor) for e in events_of(api, deal_id)] == [
        ("DealCreated", "rita"),
        ("StageAdvanced", "rita"),
        ("StageAdvanced", "max"),
        ("DealLost", "ann"),
        ("DealReopened", "rita"),
        ("DealUpdated", "ann"),
        ("OwnerChanged", "ann"),
        ("DealWon", "raj"),
    ]
    [created] = events_of(api, managed.json()["id"])
    assert (created.actor, created.payload["owner"]) == ("max", "rita")
