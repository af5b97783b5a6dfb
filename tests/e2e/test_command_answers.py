"""A command's answer is rendered once, from the state the domain built, without a second
pass through the route's response model: each answer here must be exactly what that model
would have made of it (same fields, same values, nothing extra), with the route's status,
``ETag`` and, for what a command created, ``Location``."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.routing import Match

from services.pipeline_api.main import ROUTERS
from tests.conftest import TestClock, auth


def _route(method: str, path: str) -> APIRoute:
    for route in (route for router in ROUTERS for route in router.routes):
        if isinstance(route, APIRoute) and method in route.methods:
            match, _ = route.matches({"type": "http", "path": path, "method": method})
            if match == Match.FULL:
                return route
    raise AssertionError(f"no route for {method} {path}")


async def _command(
    api: httpx.AsyncClient, method: str, path: str, body: Any = None, who: str = "admin"
) -> dict[str, Any]:
    r = await api.request(method, path, json=body, headers=auth(who))
    route = _route(method, path)
    assert r.status_code == (route.status_code or 200), r.text
    answer = r.json()
    model = TypeAdapter(route.response_model)
    assert model.dump_python(model.validate_python(answer), mode="json") == answer, path
    assert r.headers["content-type"] == "application/json"
    assert r.headers["ETag"] == f'"{answer.get("deal_version", answer.get("version"))}"'
    if route.status_code == 201 and "/lost-reasons" not in path and "/stages" not in path:
        assert r.headers["Location"].endswith(f"/{answer['id']}"), path
    return dict(answer)


async def test_every_kind_of_command_answer_is_what_its_response_model_makes_of_it(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await _command(api, "POST", "/v1/pipelines", {"name": "New", "currency": "EUR"})
    pid = pipeline["id"]
    stages = [s["id"] for s in pipeline["stages"]]
    await _command(api, "PATCH", f"/v1/pipelines/{pid}", {"name": "New business"})
    await _command(
        api, "POST", f"/v1/pipelines/{pid}/stages", {"name": "Review", "probability": 60}
    )
    await _command(api, "PATCH", f"/v1/pipelines/{pid}/stages/{stages[1]}", {"probability": 35})
    await _command(api, "POST", f"/v1/pipelines/{pid}/lost-reasons", {"reason": "Legal"})
    await _command(api, "DELETE", f"/v1/pipelines/{pid}/lost-reasons/legal")
    await _command(api, "PUT", "/v1/owners/rita", {"team": "Enterprise", "region": "EMEA"})

    body = {"pipeline_id": pid, "title": "ACME", "value": "1250.50", "account": "Acme"}
    deal = await _command(
        api, "POST", "/v1/deals", {**body, "expected_close_date": "2026-09-30"}, "rep"
    )
    path = f"/v1/deals/{deal['id']}"
    await _command(api, "POST", f"{path}/advance", {"stage": stages[1], "note": "met"}, "rep")
    await _command(api, "PATCH", path, {"value": "2000.00", "probability_override": 70}, "rep")
    await _command(api, "POST", f"{path}/snooze", {"until": "2026-07-01T00:00:00Z", "reason": "x"})
    due = {"type": "call", "subject": "Call", "due_at": "2026-06-03T10:00:00+00:00"}
    call = await _command(api, "POST", f"{path}/activities", due, "rep")
    await _command(api, "POST", f"{path}/activities/{call['id']}/complete", {"outcome": "ok"})
    task = await _command(api, "POST", f"{path}/activities", {**due, "type": "task"}, "rep")
    await _command(api, "POST", f"{path}/activities/{task['id']}/cancel", {"reason": "done"})
    await _command(api, "POST", f"{path}/lose", {"reason": "Timing", "note": "later"}, "rep")
    await _command(api, "POST", f"{path}/reopen", {}, "manager")
    won = await _command(api, "POST", f"{path}/win", None, "rep")
    assert won["status"] == "won" and won["value"] == "2000.00"
