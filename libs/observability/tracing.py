"""Spans of the service's own work (a span per command), when tracing is on.

Tracing is optional: nothing here imports OpenTelemetry. ``services/runtime/tracing.py``
sets it up when ``DEALTRAIL_OTEL_ENDPOINT`` is set and installs a tracer here; until then
every span is a no-op that costs a function call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

_tracer: Any = None


def install(tracer: Any) -> None:
    """Send spans to ``tracer`` (an OpenTelemetry ``Tracer``) from now on."""
    global _tracer
    _tracer = tracer


def uninstall() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


class CommandSpan:
    """The span of one command; records what the command stored."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def stored(self, positions: Sequence[int]) -> None:
        """The log positions of the events the command stored (policies included)."""
        if self._span is None:
            return
        self._span.set_attribute("dealtrail.events", len(positions))
        if positions:
            self._span.set_attribute("dealtrail.event_positions", list(positions))
            self._span.set_attribute("dealtrail.position", max(positions))


_NO_SPAN = CommandSpan()


@contextmanager
def command_span(command: str) -> Iterator[CommandSpan]:
    """A span around running one command (the current span's child); a failure is
    recorded on it and raised again."""
    if _tracer is None:
        yield _NO_SPAN
        return
    with _tracer.start_as_current_span(
        f"command {command}", attributes={"dealtrail.command": command}
    ) as span:
        yield CommandSpan(span)


def current_trace_id() -> str | None:
    """The id of the trace being recorded in this context (32 hex digits), if any."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
