"""The OpenAPI document: the bearer scheme, readable operation ids, request examples."""

from __future__ import annotations

import re
from typing import Any

import httpx

from services.pipeline_api import schemas
from tests.conftest import auth
from tests.documented import undocumented


async def document(api: httpx.AsyncClient) -> dict[str, Any]:
    r = await api.get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]


async def test_every_v1_operation_asks_for_the_bearer_token_and_docs_can_send_one(
    api: httpx.AsyncClient,
) -> None:
    doc = await document(api)
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key of DEALTRAIL_API_KEYS: `Authorization: Bearer <token>`",
    }
    for method, path, op in operations(doc):
        expected = [{"bearerAuth": []}] if path.startswith("/v1/") else None
        assert op.get("security") == expected, (method, path)
        names = [p["name"].lower() for p in op.get("parameters", [])]
        assert "authorization" not in names, (method, path)  # the scheme carries it
    page = await api.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    # the token the scheme describes is the one the service takes
    assert (await api.get("/v1/pipelines", headers=auth("auditor"))).status_code == 200


async def test_operation_ids_are_unique_camel_case_names_of_what_they_do(
    api: httpx.AsyncClient,
) -> None:
    ids = [op["operationId"] for _, _, op in operations(await document(api))]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", i) for i in ids), ids
    assert {"createDeal", "advanceDeal", "getBoard", "listDeals", "getDealHistory"} <= set(ids)
    assert {"getWinRateReport", "removeStage", "setOwnerTeam", "getHealth"} <= set(ids)


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The body's model schema (also of an optional body: ``anyOf`` it and null)."""
    ref = schema.get("$ref") or next(s["$ref"] for s in schema["anyOf"] if "$ref" in s)
    name = ref.rsplit("/", 1)[-1]
    resolved: dict[str, Any] = doc["components"]["schemas"][name]
    return name, resolved


async def test_every_request_body_has_examples_the_service_accepts(api: httpx.AsyncClient) -> None:
    doc = await document(api)
    bodies = 0
    for method, path, op in operations(doc):
        body = op.get("requestBody")
        if body is None:
            continue
        bodies += 1
        for media, content in body["content"].items():
            if media == "application/json":
                name, schema = _resolve(doc, content["schema"])
                examples = schema.get("examples")
                assert examples, (method, path, name)
                model = getattr(schemas, name)
                for example in examples:
                    model.model_validate(example)  # a valid body of this operation
            else:
                assert content.get("example"), (method, path, media)
    assert bodies >= 16


async def test_the_csv_example_imports_as_it_reads(api: httpx.AsyncClient) -> None:
    doc = await document(api)
    example = doc["paths"]["/v1/imports"]["post"]["requestBody"]["content"]["text/csv"]["example"]
    r = await api.post(
        "/v1/pipelines", json={"name": "New business", "currency": "EUR"}, headers=auth("admin")
    )
    assert r.status_code == 201, r.text
    r = await api.post(
        "/v1/imports",
        content=example.encode(),
        headers={**auth("admin"), "Content-Type": "text/csv"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["imported"], r.json()["rejected"]) == (2, [])


async def test_an_error_status_an_operation_does_not_list_is_caught(api: httpx.AsyncClient) -> None:
    """What every request of the end-to-end tests goes through (``tests/documented.py``)."""
    doc = await document(api)
    assert undocumented(doc, "GET", "/v1/pipelines", 401) is None
    problem = undocumented(doc, "GET", "/v1/pipelines", 404)
    assert problem is not None and "listPipelines" in problem
    assert undocumented(doc, "POST", "/v1/deals/x/advance", 412) is None
    assert "createDeal" in (undocumented(doc, "POST", "/v1/deals", 412) or "")
    assert undocumented(doc, "GET", "/v1/audit/export", 403) is None  # not /v1/audit/{x}
    assert undocumented(doc, "GET", "/v1/nowhere", 404) is None  # no operation: the framework's
