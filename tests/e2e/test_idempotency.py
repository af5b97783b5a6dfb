"""Idempotency-Key: a retry gets the first answer and records nothing new."""

from __future__ import annotations

from typing import Any

import httpx

from services.runtime.settings import Settings
from tests.conftest import TestClock, auth, client_for


def head(api: httpx.AsyncClient) -> int:
    return int(api.app.state.runtime.application.head_position())  # type: ignore[attr-defined]


def keyed(who: str, key: str, **extra: str) -> dict[str, str]:
    return {**auth(who), "Idempotency-Key": key, **extra}


def assert_replay_of(replay: httpx.Response, first: httpx.Response) -> None:
    """``replay`` is ``first`` again, byte for byte, and says that it is a replay."""
    assert "idempotent-replayed" not in first.headers
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.status_code == first.status_code
    assert replay.content == first.content
    for name in ("ETag", "Location", "Content-Type"):
        assert replay.headers.get(name) == first.headers.get(name), name


async def define_pipeline(api: httpx.AsyncClient) -> str:
    r = await api.post(
        "/v1/pipelines", json={"name": "New business", "currency": "EUR"}, headers=auth("admin")
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def deal_body(pipeline_id: str, **extra: Any) -> dict[str, Any]:
    return {"pipeline_id": pipeline_id, "title": "ACME renewal", "value": "100.10", **extra}


async def test_a_retried_create_returns_the_first_answer_and_records_nothing(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    first = await api.post(
        "/v1/deals", json=deal_body(pipeline_id), headers=keyed("rep", "create-1")
    )
    assert first.status_code == 201, first.text
    after_first = head(api)

    for _ in range(2):
        replay = await api.post(
            "/v1/deals", json=deal_body(pipeline_id), headers=keyed("rep", "create-1")
        )
        assert_replay_of(replay, first)
    assert head(api) == after_first
    assert first.headers["Location"] == f"/v1/deals/{first.json()['id']}"

    other = await api.post(
        "/v1/deals", json=deal_body(pipeline_id), headers=keyed("rep", "create-2")
    )
    assert other.status_code == 201, other.text
    assert other.json()["id"] != first.json()["id"]
    assert head(api) == after_first + 1


async def test_retried_commands_on_a_deal_are_replayed_without_new_events(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    created = await api.post("/v1/deals", json=deal_body(pipeline_id), headers=auth("rep"))
    deal_id = created.json()["id"]

    for i, (method, action, body, extra) in enumerate(
        [
            ("POST", "advance", {"stage": "Quote sent"}, {"If-Match": '"1"'}),
            ("PATCH", "", {"title": "Renamed"}, {}),
            ("POST", "lose", {"reason": "Price", "note": "n"}, {}),
            ("POST", "reopen", None, {}),
            ("POST", "win", None, {}),
        ]
    ):
        url = f"/v1/deals/{deal_id}/{action}".rstrip("/")
        headers = keyed("rep", f"cmd-{i}", **extra)
        first = await api.request(method, url, json=body, headers=headers)
        assert first.status_code == 200, (action, first.text)
        assert first.json()["version"] == i + 2
        after_first = head(api)

        replay = await api.request(method, url, json=body, headers=headers)

        assert_replay_of(replay, first)
        assert head(api) == after_first, action


async def test_the_same_key_with_another_body_or_an_over_long_key_is_422_naming_the_key(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    first = await api.post("/v1/deals", json=deal_body(pipeline_id), headers=keyed("rep", "k-body"))
    assert first.status_code == 201, first.text
    deal_id = first.json()["id"]
    before = head(api)

    variants = [
        ("POST", "/v1/deals", deal_body(pipeline_id, value="100.11"), {}),
        ("POST", "/v1/deals", deal_body(pipeline_id, title="Other"), {}),
        ("POST", f"/v1/deals/{deal_id}/advance", {"stage": "Quote sent"}, {}),
        ("POST", "/v1/deals", deal_body(pipeline_id), {"If-Match": '"1"'}),
    ]
    for method, url, body, extra in variants:
        r = await api.request(method, url, json=body, headers=keyed("rep", "k-body", **extra))
        assert r.status_code == 422, (url, body, r.text)
        error = r.json()["error"]
        assert error["code"] == "idempotency_key_reused"
        assert error["details"]["field"] == "Idempotency-Key"
        assert "idempotent-replayed" not in r.headers
    r = await api.post("/v1/deals", json=deal_body(pipeline_id), headers=keyed("rep", "k" * 201))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["field"] == "Idempotency-Key"
    assert head(api) == before
    r = await api.post("/v1/deals", json=deal_body(pipeline_id), headers=keyed("rep", "k" * 200))
    assert r.status_code == 201, r.text


async def test_different_principals_may_use_the_same_key_independently(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    before = head(api)

    rita = await api.post(
        "/v1/deals", json=deal_body(pipeline_id), headers=keyed("rep", "shared-key")
    )
    raj = await api.post(
        "/v1/deals", json=deal_body(pipeline_id), headers=keyed("rep2", "shared-key")
    )

    assert rita.status_code == raj.status_code == 201, (rita.text, raj.text)
    assert "idempotent-replayed" not in raj.headers
    assert (rita.json()["owner"], raj.json()["owner"]) == ("rita", "raj")
    assert rita.json()["id"] != raj.json()["id"]
    assert head(api) == before + 2
    again = await api.post(
        "/v1/deals", json=deal_body(pipeline_id), headers=keyed("rep2", "shared-key")
    )
    assert_replay_of(again, raj)


async def test_an_error_answer_is_replayed_too_but_a_401_is_not(api: httpx.AsyncClient) -> None:
    pipeline_id = await define_pipeline(api)
    created = await api.post("/v1/deals", json=deal_body(pipeline_id), headers=auth("rep"))
    deal_id = created.json()["id"]
    assert (await api.post(f"/v1/deals/{deal_id}/win", headers=auth("rep"))).status_code == 200
    first = await api.post(f"/v1/deals/{deal_id}/win", headers=keyed("rep", "win-again"))
    assert first.status_code == 409, first.text
    assert first.json()["error"]["code"] == "already_won"
    reopened = await api.post(f"/v1/deals/{deal_id}/reopen", headers=auth("rep"))
    assert reopened.status_code == 200, reopened.text
    before = head(api)

    replay = await api.post(f"/v1/deals/{deal_id}/win", headers=keyed("rep", "win-again"))

    # the deal could be won now, but the key stands for the first attempt's answer
    assert_replay_of(replay, first)
    assert head(api) == before
    won = await api.post(f"/v1/deals/{deal_id}/win", headers=keyed("rep", "win-fresh"))
    assert won.status_code == 200, won.text

    # a 401 is never stored, so it is never replayed either
    unknown = {"Authorization": "Bearer t-not-a-known-token", "Idempotency-Key": "k-401"}
    for _ in range(2):
        refused = await api.post(f"/v1/deals/{deal_id}/reopen", headers=unknown)
        assert refused.status_code == 401
        assert "idempotent-replayed" not in refused.headers


async def test_keys_survive_an_app_restart(settings: Settings, clock: TestClock) -> None:
    async with client_for(settings, clock) as api:
        r = await api.post(
            "/v1/pipelines", json={"name": "New business", "currency": "EUR"}, headers=auth("admin")
        )
        body = deal_body(r.json()["id"])
        first = await api.post("/v1/deals", json=body, headers=keyed("rep", "survivor"))
        assert first.status_code == 201, first.text
        head_before = head(api)

    async with client_for(settings, clock) as api:
        assert head(api) == head_before
        replay = await api.post("/v1/deals", json=body, headers=keyed("rep", "survivor"))
        assert_replay_of(replay, first)
        assert head(api) == head_before
        reused = await api.post(
            "/v1/deals", json={**body, "title": "Other"}, headers=keyed("rep", "survivor")
        )
        assert reused.status_code == 422, reused.text
        assert head(api) == head_before
