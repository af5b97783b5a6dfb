"""Request ids: every answer names its request in ``X-Request-ID``, every error body in
``details.request_id``, and the log lines written for it carry the same id."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.runtime.logs import ContextFilter
from tests.conftest import Backend, TestClock, auth, client_for

ACCESS = "dealtrail.access"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Captured records with the request context, as the service's own handler adds it."""
    context_filter = ContextFilter()
    caplog.handler.addFilter(context_filter)
    caplog.set_level(logging.INFO)
    yield caplog
    caplog.handler.removeFilter(context_filter)


def error_id(r: httpx.Response) -> str:
    """The request id of an error answer, checked to be the one its header names."""
    request_id = r.json()["error"]["details"]["request_id"]
    assert request_id == r.headers["X-Request-ID"], r.text
    return str(request_id)


def access_line(logs: pytest.LogCaptureFixture, request_id: str) -> logging.LogRecord:
    found = [
        r for r in logs.records if r.name == ACCESS and getattr(r, "request_id", "") == request_id
    ]
    assert len(found) == 1, [r.getMessage() for r in logs.records if r.name == ACCESS]
    return found[0]


async def test_every_kind_of_error_carries_the_request_id_of_its_header_and_log_line(
    backend: Backend, tmp_path: Path, clock: TestClock, logs: pytest.LogCaptureFixture
) -> None:
    settings = backend.settings(
        tmp_path / "data", DEALTRAIL_READ_WAIT_SECONDS=0.2, DEALTRAIL_MAX_BODY_BYTES=2048
    )
    async with client_for(settings, clock) as api:
        made = await api.post(
            "/v1/pipelines", json={"name": "Sales", "currency": "EUR"}, headers=auth("admin")
        )
        pipeline = made.json()["id"]
        deal = await api.post(
            "/v1/deals", json={"pipeline_id": pipeline, "title": "A", "value": "1"},
            headers=auth("rep"),
        )  # fmt: skip
        deal_path = f"/v1/deals/{deal.json()['id']}"
        await api.post(f"{deal_path}/win", headers=auth("rep"))
        unknown = "/v1/deals/00000000-0000-0000-0000-000000000000"
        keyed = {**auth("rep"), "Idempotency-Key": "k"}
        errors = {
            401: await api.get("/v1/deals", headers={"Authorization": "Bearer nope-nope"}),
            403: await api.post("/v1/pipelines", json={"name": "X", "currency": "EUR"},
                                headers=auth("rep")),
            404: await api.get(unknown, headers=auth("rep")),
            405: await api.delete("/v1/deals", headers=auth("rep")),
            409: await api.post(f"{deal_path}/win", headers=auth("rep")),
            412: await api.post(f"{deal_path}/reopen", headers={**auth("rep"), "If-Match": '"9"'}),
            413: await api.post("/v1/deals", content=b"{" + b" " * 4096 + b"}",
                                headers={**auth("rep"), "Content-Type": "application/json"}),
            415: await api.post("/v1/deals", content=b"x", headers={
                **auth("rep"), "Content-Type": "text/plain"}),
            422: await api.post("/v1/deals", json={"pipeline_id": pipeline}, headers=auth("rep")),
            503: await api.get(f"{deal_path}?min_position=999999", headers=auth("rep")),
        }  # fmt: skip
        first = await api.post(f"{deal_path}/reopen", json={"note": "a"}, headers=keyed)
        assert first.status_code == 200, first.text
        reused = await api.post(f"{deal_path}/reopen", json={"note": "b"}, headers=keyed)
    for status, r in {**errors, 4220: reused}.items():
        assert r.status_code == (422 if status == 4220 else status), (status, r.text)
        request_id = error_id(r)
        line = access_line(logs, request_id)
        assert line.status == r.status_code  # type: ignore[attr-defined]
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    ids = [error_id(r) for r in errors.values()]
    assert len(set(ids)) == len(ids)  # each request has its own


async def test_a_client_request_id_is_used_when_safe_and_replaced_when_not(
    api: httpx.AsyncClient, logs: pytest.LogCaptureFixture
) -> None:
    given = await api.get("/v1/deals", headers={**auth("rep"), "X-Request-ID": "trace-abc.123"})
    assert given.status_code == 200
    assert given.headers["X-Request-ID"] == "trace-abc.123"
    line = access_line(logs, "trace-abc.123")
    assert line.principal == "rita"  # type: ignore[attr-defined]
    assert line.route == "/v1/deals"  # type: ignore[attr-defined]
    assert line.method == "GET"  # type: ignore[attr-defined]
    assert line.duration_ms >= 0  # type: ignore[attr-defined]

    forged = "x\r\nlevel=ERROR fake line"
    refused = await api.get(
        "/v1/deals/nope", headers={**auth("rep"), "X-Request-ID": forged.replace("\r\n", " ")}
    )
    assert refused.status_code == 422
    assert refused.headers["X-Request-ID"] != forged.replace("\r\n", " ")
    error_id(refused)
    generated = await api.get("/health/live")
    assert len(generated.headers["X-Request-ID"]) == 32


async def test_an_unexpected_failure_is_a_500_naming_the_request_logged_with_its_id(
    api: httpx.AsyncClient, logs: pytest.LogCaptureFixture
) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug")

    api.app.add_api_route("/v1/broken", broken)  # type: ignore[attr-defined]
    r = await api.get("/v1/broken", headers={"X-Request-ID": "bug-1"})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    assert error_id(r) == "bug-1"
    failure = [rec for rec in logs.records if rec.exc_info and rec.levelno == logging.ERROR]
    assert [getattr(rec, "request_id", None) for rec in failure] == ["bug-1"]
    assert access_line(logs, "bug-1").status == 500  # type: ignore[attr-defined]
