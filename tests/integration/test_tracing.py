"""Tracing (optional): with an exporter, a request is a trace of a server span, the
command's span with the log positions of its events, and the read side's statements."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.observability import tracing
from services.runtime.tracing import setup_tracing, shutdown_tracing
from tests.conftest import Backend, TestClock, auth, client_for


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    shutdown_tracing()
    assert not tracing.enabled()


async def test_a_command_is_a_span_carrying_its_positions_inside_the_requests_trace(
    backend: Backend,
    tmp_path: Path,
    clock: TestClock,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = backend.settings(tmp_path / "data", DEALTRAIL_OTEL_ENDPOINT="http://127.0.0.1:4318")
    assert setup_tracing(settings, exporter=spans) is not None
    caplog.set_level(logging.INFO, logger="dealtrail.access")
    async with client_for(settings, clock) as api:
        made = await api.post(
            "/v1/pipelines", json={"name": "Sales", "currency": "EUR"}, headers=auth("admin")
        )
        assert made.status_code == 201
        body = {"pipeline_id": made.json()["id"], "title": "A", "value": "1"}
        created = await api.post("/v1/deals", json=body, headers=auth("rep"))
        assert created.status_code == 201
        listed = await api.get(f"/v1/deals?min_position={created.json()['position']}",
                               headers=auth("rep"))  # fmt: skip
        assert listed.status_code == 200
        assert (await api.get("/health/live")).status_code == 200

    finished = spans.get_finished_spans()
    commands = {s.name: s for s in finished if s.name.startswith("command ")}
    assert set(commands) == {"command DefinePipeline", "command CreateDeal"}
    deal_span = commands["command CreateDeal"]
    assert deal_span.attributes is not None
    assert deal_span.attributes["dealtrail.command"] == "CreateDeal"
    assert list(deal_span.attributes["dealtrail.event_positions"]) == [created.json()["position"]]
    assert deal_span.attributes["dealtrail.position"] == created.json()["position"]

    # the command runs inside the request's trace, under its server span
    by_id = {s.context.span_id: s for s in finished}
    parent = by_id[deal_span.parent.span_id] if deal_span.parent else None
    while parent is not None and parent.parent is not None and parent.parent.span_id in by_id:
        parent = by_id[parent.parent.span_id]
    assert parent is not None
    assert parent.attributes is not None
    assert parent.attributes.get("http.route") == "/v1/deals"
    assert parent.context.trace_id == deal_span.context.trace_id
    # and the request's access line names the trace
    (line,) = [
        r for r in caplog.records
        if r.name == "dealtrail.access" and r.getMessage().startswith("POST /v1/deals ")
    ]  # fmt: skip
    assert line.trace_id == f"{deal_span.context.trace_id:032x}"  # type: ignore[attr-defined]

    # the read side's statements are spans too (SQLAlchemy; asyncpg on PostgreSQL)
    scopes = {s.instrumentation_scope.name for s in finished if s.instrumentation_scope}
    assert "opentelemetry.instrumentation.sqlalchemy" in scopes
    if backend.name == "postgres":
        assert "opentelemetry.instrumentation.asyncpg" in scopes
    # probes are left out
    assert not [s for s in finished if (s.attributes or {}).get("http.route") == "/health/live"]


async def test_a_failed_command_is_recorded_on_its_span(
    backend: Backend, tmp_path: Path, clock: TestClock, spans: InMemorySpanExporter
) -> None:
    settings = backend.settings(tmp_path / "data", DEALTRAIL_OTEL_ENDPOINT="http://127.0.0.1:4318")
    setup_tracing(settings, exporter=spans)
    async with client_for(settings, clock) as api:
        body = {"pipeline_id": "00000000-0000-0000-0000-000000000000", "title": "A", "value": "1"}
        refused = await api.post("/v1/deals", json=body, headers=auth("rep"))
        assert refused.status_code == 404
    (span,) = [s for s in spans.get_finished_spans() if s.name == "command CreateDeal"]
    assert span.status.status_code.name == "ERROR"
    assert [e.name for e in span.events] == ["exception"]
    assert span.attributes is not None and span.attributes["dealtrail.events"] == 0


def test_tracing_stays_off_without_an_endpoint(backend: Backend, tmp_path: Path) -> None:
    assert setup_tracing(backend.settings(tmp_path / "data")) is None
    assert not tracing.enabled()
    with tracing.command_span("Anything") as span:
        span.stored([1, 2])  # a no-op
    assert tracing.current_trace_id() is None
