"""Every error status over HTTP, each with the one JSON error shape and nothing written."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from tests.conftest import auth

MAX_BODY = 64 * 1024


def head(api: httpx.AsyncClient) -> int:
    return int(api.app.state.runtime.application.head_position())  # type: ignore[attr-defined]


def assert_error(
    r: httpx.Response,
    status: int,
    code: str | None = None,
    field: str | None = None,
    *,
    label: str = "",
) -> dict[str, Any]:
    """The response is ``status`` with exactly {"error": {"code", "message", "details"}}."""
    assert r.status_code == status, (label, r.text)
    assert r.headers["content-type"].startswith("application/json"), label
    body = r.json()
    assert set(body) == {"error"}, (label, body)
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, (label, error)
    assert isinstance(error["code"], str) and error["code"], label
    assert isinstance(error["message"], str) and error["message"], label
    assert isinstance(error["details"], dict), label
    if code is not None:
        assert error["code"] == code, (label, error)
    if field is not None:
        assert error["details"].get("field") == field, (label, error)
    return dict(error)


async def define_pipeline(api: httpx.AsyncClient) -> str:
    r = await api.post(
        "/v1/pipelines", json={"name": "New business", "currency": "EUR"}, headers=auth("admin")
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def create_deal(api: httpx.AsyncClient, pipeline_id: str, **body: Any) -> str:
    body = {"pipeline_id": pipeline_id, "title": "ACME renewal", "value": "100", **body}
    r = await api.post("/v1/deals", json=body, headers=auth("rep"))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture
async def deal(api: httpx.AsyncClient) -> tuple[str, str]:
    """(pipeline id, deal id) of an open deal of rita's in the first stage."""
    pipeline_id = await define_pipeline(api)
    return pipeline_id, await create_deal(api, pipeline_id)


# --- 401 -------------------------------------------------------------------------------


UNAUTHENTICATED = {
    "no header": {},
    "basic scheme": {"Authorization": "Basic dC1hZG1pbi0wMDAwMDAwMDAwOng="},
    "no scheme": {"Authorization": "t-admin-0000000000"},
    "empty token": {"Authorization": "Bearer "},
    "unknown token": {"Authorization": "Bearer t-not-a-known-token"},
    "token of another case": {"Authorization": "Bearer T-ADMIN-0000000000"},
}


async def test_a_request_without_a_known_bearer_token_is_401_and_writes_nothing(
    api: httpx.AsyncClient, deal: tuple[str, str]
) -> None:
    pipeline_id, deal_id = deal
    before = head(api)

    for case, headers in UNAUTHENTICATED.items():
        answers = [
            await api.get(f"/v1/deals/{deal_id}", headers=headers),
            await api.get("/v1/pipelines", headers=headers),
            await api.post(f"/v1/deals/{deal_id}/win", headers=headers),
            await api.post(
                "/v1/deals",
                json={"pipeline_id": pipeline_id, "title": "x", "value": "1"},
                headers=headers,
            ),
            await api.post("/v1/pipelines", json={"name": "P", "currency": "EUR"}, headers=headers),
        ]
        for r in answers:
            assert_error(r, 401, "unauthorized", label=f"{case}: {r.request.method} {r.url}")
            assert r.headers["WWW-Authenticate"] == "Bearer"
    assert head(api) == before


# --- 404 -------------------------------------------------------------------------------


async def test_an_unknown_id_is_404_and_a_malformed_one_422_naming_the_path_parameter(
    api: httpx.AsyncClient, deal: tuple[str, str]
) -> None:
    _, deal_id = deal
    missing = uuid.uuid4()
    before = head(api)

    not_found = [
        await api.get(f"/v1/deals/{missing}", headers=auth("rep")),
        await api.post(
            f"/v1/deals/{missing}/advance", json={"stage": "Quote sent"}, headers=auth("admin")
        ),
        await api.post(f"/v1/deals/{missing}/win", headers=auth("admin")),
        await api.post(
            f"/v1/deals/{missing}/lose", json={"reason": "Price"}, headers=auth("admin")
        ),
        await api.post(f"/v1/deals/{missing}/reopen", headers=auth("admin")),
        await api.patch(f"/v1/deals/{missing}", json={"title": "x"}, headers=auth("admin")),
        await api.get(f"/v1/pipelines/{missing}", headers=auth("rep")),
        await api.get(f"/v1/pipelines/{deal_id}", headers=auth("rep")),
        await api.post(
            "/v1/deals",
            json={"pipeline_id": str(missing), "title": "x", "value": "1"},
            headers=auth("rep"),
        ),
        await api.get("/v1/nowhere", headers=auth("admin")),
    ]
    for r in not_found:
        assert_error(r, 404, "not_found", label=f"{r.request.method} {r.url}")

    # the app validates path ids before looking anything up: 422 naming the parameter
    for method, path, field in [
        ("GET", "/v1/deals/not-a-uuid", "deal_id"),
        ("POST", "/v1/deals/not-a-uuid/win", "deal_id"),
        ("PATCH", "/v1/deals/42", "deal_id"),
        ("GET", "/v1/pipelines/12345", "pipeline_id"),
    ]:
        r = await api.request(method, path, json={}, headers=auth("admin"))
        error = assert_error(r, 422, "invalid_input", field, label=f"{method} {path}")
        assert error["details"]["problems"][0]["in"] == "path"
    assert head(api) == before


# --- 409 -------------------------------------------------------------------------------


async def test_each_command_the_deals_state_refuses_is_409_with_its_code_and_writes_nothing(
    api: httpx.AsyncClient, deal: tuple[str, str]
) -> None:
    pipeline_id, open_id = deal
    lost_id, won_id = await create_deal(api, pipeline_id), await create_deal(api, pipeline_id)
    external_id = await create_deal(api, pipeline_id, external_id="crm-7")
    for deal_id, action, body in [(lost_id, "lose", {"reason": "Price"}), (won_id, "win", None)]:
        r = await api.post(f"/v1/deals/{deal_id}/{action}", json=body, headers=auth("rep"))
        assert r.status_code == 200, r.text
    before = head(api)

    cases: list[tuple[str, str, dict[str, Any] | None, str, str | None]] = [
        (f"{lost_id}/advance", "POST", {"stage": "Quote sent"}, "deal_closed", None),
        (f"{lost_id}/win", "POST", None, "deal_closed", None),
        (lost_id, "PATCH", {"title": "New"}, "deal_closed", None),
        (f"{lost_id}/lose", "POST", {"reason": "Price"}, "already_lost", None),
        (f"{won_id}/win", "POST", None, "already_won", None),
        (f"{won_id}/lose", "POST", {"reason": "Price"}, "deal_closed", None),
        (f"{open_id}/advance", "POST", {"stage": "deal-created"}, "already_in_stage", "stage"),
        (f"{open_id}/advance", "POST", {"stage": "DEAL CREATED"}, "already_in_stage", "stage"),
        (f"{open_id}/reopen", "POST", None, "deal_not_closed", None),
    ]
    for path, method, body, code, field in cases:
        r = await api.request(method, f"/v1/deals/{path}", json=body, headers=auth("rep"))
        assert_error(r, 409, code, field, label=f"{method} {path.split('/')[-1]} {body}")

    r = await api.post(
        "/v1/deals",
        json={"pipeline_id": pipeline_id, "title": "Other", "value": "5", "external_id": "crm-7"},
        headers=auth("manager"),
    )
    error = assert_error(r, 409, "duplicate_external_id", "external_id")
    assert error["details"]["deal_id"] == external_id
    assert head(api) == before
    other_pipeline = await define_pipeline(api)
    assert await create_deal(api, other_pipeline, external_id="crm-7") != external_id


# --- 412 -------------------------------------------------------------------------------


async def test_a_stale_if_match_is_412_and_writes_nothing(
    api: httpx.AsyncClient, deal: tuple[str, str]
) -> None:
    _, deal_id = deal
    stages = ["Quote sent", "Negotiation", "Demo or meeting"]

    for version, spell in enumerate(['"{}"', "{}", 'W/"{}"'], start=1):
        before = head(api)
        r = await api.post(
            f"/v1/deals/{deal_id}/advance",
            json={"stage": stages[version - 1]},
            headers={**auth("rep"), "If-Match": spell.format(version - 1)},
        )
        error = assert_error(r, 412, "stale_version", label=spell)
        assert error["details"]["current_version"] == version
        assert head(api) == before

        r = await api.post(
            f"/v1/deals/{deal_id}/advance",
            json={"stage": stages[version - 1]},
            headers={**auth("rep"), "If-Match": spell.format(version)},
        )
        assert r.status_code == 200, (spell, r.text)
        assert r.json()["version"] == version + 1


# --- 413 -------------------------------------------------------------------------------


def _deal_body(pipeline_id: str, size: int) -> bytes:
    """A JSON deal body of exactly ``size`` bytes (the padding is an over-long title)."""
    head_part = f'{{"pipeline_id": "{pipeline_id}", "value": "1", "title": "'.encode()
    return head_part + b"a" * (size - len(head_part) - 2) + b'"}'


async def test_a_body_over_64_kib_is_413_with_or_without_content_length(
    api: httpx.AsyncClient, deal: tuple[str, str]
) -> None:
    pipeline_id, _ = deal
    json_type = {"Content-Type": "application/json"}
    before = head(api)

    for extra in ({}, {"Idempotency-Key": "big-1"}):
        headers = {**auth("rep"), **json_type, **extra}
        body = _deal_body(pipeline_id, MAX_BODY + 1)
        r = await api.post("/v1/deals", content=body, headers=headers)
        assert r.request.headers["content-length"] == str(MAX_BODY + 1)
        error = assert_error(r, 413, "payload_too_large", label=f"content-length {extra}")
        assert error["details"]["limit_bytes"] == MAX_BODY

        for size, status in [(MAX_BODY + 100, 413), (MAX_BODY, 422)]:
            body = _deal_body(pipeline_id, size)

            async def stream(body: bytes = body) -> AsyncIterator[bytes]:
                for i in range(0, len(body), 8192):
                    yield body[i : i + 8192]

            r = await api.post("/v1/deals", content=stream(), headers=headers)
            assert "content-length" not in r.request.headers
            assert r.request.headers["transfer-encoding"] == "chunked"
            # at the limit the body is read and judged on its content (the title's length)
            assert_error(r, status, label=f"streamed {size} bytes {extra}")
    assert head(api) == before


# --- 422 -------------------------------------------------------------------------------

FUTURE = "2026-06-01T12:00:01Z"  # one second after the test clock
BEFORE_CREATION = "2026-06-01T11:59:59Z"


INVALID_COMMANDS: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("POST", "advance", {"stage": "Nowhere"}, "stage", "unknown_stage"),
    ("POST", "reopen", {"stage": "Nowhere"}, "stage", "unknown_stage"),
    ("POST", "lose", {"reason": "Bad vibes"}, "reason", "unknown_lost_reason"),
    ("PATCH", "", {"value": "-0.01"}, "value", "negative_value"),
    ("PATCH", "", {"value": True}, "value", "invalid_input"),
    ("PATCH", "", {"value": "12.34567"}, "value", "invalid_input"),
    ("PATCH", "", {"title": "ACME renewal"}, "body", "nothing_to_change"),
    ("PATCH", "", {"colour": "red"}, "colour", "invalid_input"),
    ("POST", "advance", {}, "stage", "invalid_input"),
    ("POST", "advance", {"stage": 3}, "stage", "invalid_input"),
    (
        "POST",
        "advance",
        {"stage": "Quote sent", "occurred_at": FUTURE},
        "occurred_at",
        "occurred_in_future",
    ),
    (
        "POST",
        "win",
        {"occurred_at": BEFORE_CREATION},
        "occurred_at",
        "occurred_before_previous_event",
    ),
    (
        "POST",
        "lose",
        {"reason": "Price", "occurred_at": "2026-06-01T11:00:00"},
        "occurred_at",
        "invalid_input",
    ),
    ("POST", "lose", {"reason": "Price", "note": "n" * 2001}, "note", "invalid_input"),
]


async def test_an_invalid_command_is_422_naming_the_field_and_writes_nothing(
    api: httpx.AsyncClient, deal: tuple[str, str]
) -> None:
    pipeline_id, open_id = deal
    won_id = await create_deal(api, pipeline_id)
    r = await api.post(f"/v1/deals/{won_id}/win", headers=auth("rep"))
    assert r.status_code == 200, r.text
    before = head(api)

    for method, action, body, field, code in INVALID_COMMANDS:
        deal_id = won_id if action == "reopen" else open_id
        url = f"/v1/deals/{deal_id}/{action}".rstrip("/")
        r = await api.request(method, url, json=body, headers=auth("rep"))
        assert_error(r, 422, code, field, label=f"{method} {action} {body}")
    r = await api.post(
        f"/v1/deals/{open_id}/advance",
        content=b'{"stage": ',
        headers={**auth("rep"), "Content-Type": "application/json"},
    )
    assert_error(r, 422, label="malformed JSON")
    for if_match in ["abc", '"v1"', '"-1"', '"1", "2"', '"1234567890123"']:
        r = await api.post(
            f"/v1/deals/{open_id}/advance",
            json={"stage": "Quote sent"},
            headers={**auth("rep"), "If-Match": if_match},
        )
        assert_error(r, 422, "invalid_if_match", "If-Match", label=if_match)
    assert head(api) == before


INVALID_NEW_DEALS: list[tuple[dict[str, Any], str, str]] = [
    ({"title": None}, "title", "invalid_input"),
    ({"title": "   "}, "title", "invalid_input"),
    ({"title": "t" * 201}, "title", "invalid_input"),
    ({"value": "-5"}, "value", "negative_value"),
    ({"value": True}, "value", "invalid_input"),
    ({"value": "1000000000000000.01"}, "value", "invalid_input"),
    ({"value": "lots"}, "value", "invalid_input"),
    ({"stage": "Nowhere"}, "stage", "unknown_stage"),
    ({"occurred_at": FUTURE}, "occurred_at", "occurred_in_future"),
    ({"occurred_at": "2026-05-01T10:00:00"}, "occurred_at", "invalid_input"),
    ({"expected_close_date": "soon"}, "expected_close_date", "invalid_input"),
    ({"pipeline_id": "p-1"}, "pipeline_id", "invalid_input"),
    ({"extra": 1}, "extra", "invalid_input"),
]


INVALID_PIPELINES: list[tuple[dict[str, Any], str]] = [
    ({"name": "P", "currency": "EURO"}, "currency"),
    ({"name": "P", "currency": "EUR", "stages": []}, "stages"),
    (
        {"name": "P", "currency": "EUR", "stages": [{"name": "A", "probability": 101}]},
        "stages[0].probability",
    ),
    (
        {
            "name": "P",
            "currency": "EUR",
            "stages": [{"name": "A", "probability": 1}, {"name": "a", "probability": 2}],
        },
        "stages[1].name",
    ),
    ({"name": "P", "currency": "EUR", "lost_reasons": ["x", "X"]}, "lost_reasons[1]"),
    ({"currency": "EUR"}, "name"),
]


async def test_an_invalid_new_deal_or_pipeline_is_422_naming_the_field_and_writes_nothing(
    api: httpx.AsyncClient, deal: tuple[str, str]
) -> None:
    pipeline_id, _ = deal
    before = head(api)

    for change, field, code in INVALID_NEW_DEALS:
        body: dict[str, Any] = {"pipeline_id": pipeline_id, "title": "New", "value": "1"}
        body = {k: v for k, v in {**body, **change}.items() if v is not None}
        r = await api.post("/v1/deals", json=body, headers=auth("rep"))
        assert_error(r, 422, code, field, label=str(change))
    for definition, field in INVALID_PIPELINES:
        r = await api.post("/v1/pipelines", json=definition, headers=auth("manager"))
        assert_error(r, 422, field=field, label=str(definition))
    assert head(api) == before


# --- the API description and health ----------------------------------------------------


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """The app's API routes, also inside included routers (newer FastAPI nests them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)


async def test_openapi_lists_every_route_and_documents_the_error_responses(
    api: httpx.AsyncClient,
) -> None:
    r = await api.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    paths = doc["paths"]

    documented = {(path, method.upper()) for path, ops in paths.items() for method in ops}
    expected = {
        ("/health", "GET"),
        ("/v1/pipelines", "POST"),
        ("/v1/pipelines", "GET"),
        ("/v1/pipelines/{pipeline_id}", "GET"),
        ("/v1/deals", "POST"),
        ("/v1/deals/{deal_id}", "GET"),
        ("/v1/deals/{deal_id}", "PATCH"),
        ("/v1/deals/{deal_id}/advance", "POST"),
        ("/v1/deals/{deal_id}/win", "POST"),
        ("/v1/deals/{deal_id}/lose", "POST"),
        ("/v1/deals/{deal_id}/reopen", "POST"),
    }
    served = {
        (route.path, method)
        for route in api_routes(api.app.routes)  # type: ignore[attr-defined]
        if route.include_in_schema
        for method in route.methods
    }
    assert expected <= served
    assert documented == served

    error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
    creations = {
        ("/v1/pipelines", "post"),
        ("/v1/deals", "post"),
        ("/v1/owners/{owner}", "put"),
        ("/v1/automations", "post"),
        ("/v1/webhooks", "post"),
    }
    # moves a delivery position, not an aggregate: no version to match, nothing to conflict
    resets = {("/v1/webhooks/{webhook_id}/replay", "post")}
    for path, ops in paths.items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            # every /v1 operation authenticates (and counts against the token's rate limit)
            wanted = {"401", "429", "503"}
            if (path, method) in resets:
                wanted |= {"403", "404", "413", "415", "422"}
            elif method in ("post", "patch", "put", "delete"):
                wanted |= {"403", "409", "413", "415", "422"}
                if (path, method) not in creations and path != "/v1/imports":
                    wanted |= {"404", "412"}
            missing = wanted - set(op["responses"])
            assert not missing, (method, path, missing)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    content = response["content"]["application/json"]
                    assert content["schema"] == error_schema, (method, path, status)
    # each operation lists what it can answer, not one list for all
    errors = {
        op["operationId"]: {s for s in op["responses"] if s >= "400"}
        for ops in paths.values()
        for op in ops.values()
    }
    assert errors["listPipelines"] == {"401", "422", "429", "503"}
    assert errors["getPublicKey"] == {"401", "404", "429", "503"}
    assert "412" not in errors["createDeal"] and "412" in errors["advanceDeal"]
    assert "429" in errors["verifyAuditLog"] and "403" in errors["listAuditEvents"]
    assert errors["getHealth"] == {"503"}
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorResponse"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert set(schemas["ErrorBody"]["properties"]) == {"code", "message", "details"}


async def test_health_answers_200_without_auth(api: httpx.AsyncClient) -> None:
    before = head(api)

    r = await api.get("/health")

    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["position"] == before
