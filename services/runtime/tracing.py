"""OpenTelemetry tracing, when ``DEALTRAIL_OTEL_ENDPOINT`` is set (optional).

The packages are the ``otel`` extra (``pip install 'dealtrail[otel]'``) and are imported
only when tracing is on. One tracer provider per process exports spans over OTLP/HTTP to
``{DEALTRAIL_OTEL_ENDPOINT}/v1/traces`` as service ``DEALTRAIL_OTEL_SERVICE_NAME``.
Instrumented: FastAPI (a server span per request, probes and scrapes left out),
SQLAlchemy (each read-side statement; :func:`instrument_engine`), asyncpg (each
statement the read side's driver sends) and each command (``libs/observability/tracing``:
a span with the command type and the log positions of the events it stored).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.observability import tracing
from services.runtime.settings import Settings

log = logging.getLogger("dealtrail.tracing")

EXCLUDED_URLS = "/health,/metrics"  # requests that get no span

_provider: Any = None


def setup_tracing(settings: Settings, exporter: Any = None) -> Any:
    """This process's tracer provider: made on the first call when tracing is on (or an
    ``exporter`` is given: tests pass an in-memory one), None when it is off."""
    global _provider
    if _provider is not None:
        return _provider
    if settings.otel_endpoint is None and exporter is None:
        return None
    try:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "DEALTRAIL_OTEL_ENDPOINT is set but OpenTelemetry is not installed: "
            f"pip install 'dealtrail[otel]' ({exc})"
        ) from None
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name})
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=f"{settings.otel_endpoint}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    tracing.install(provider.get_tracer("dealtrail"))
    _provider = provider
    log.info("tracing on: spans go to %s", settings.otel_endpoint or type(exporter).__name__)
    return provider


def instrument_app(app: Any, provider: Any) -> None:
    """A server span per request of the FastAPI ``app``."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS)


def instrument_engine(engine: AsyncEngine) -> None:
    """A span per statement of the read side's engine, when tracing is on."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        return  # one engine per service process; its own is instrumented already
    # The instrumentation names SQLAlchemy below 2.1 as what it supports; it works with
    # 2.1 (it listens to the engine's events), which the tracing test checks.
    instrumentor.instrument(
        engine=engine.sync_engine, tracer_provider=_provider, skip_dep_check=True
    )


def shutdown_tracing() -> None:
    """Flush and stop this process's tracing (and turn the instrumentation off)."""
    global _provider
    provider, _provider = _provider, None
    if provider is None:
        return
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    tracing.uninstall()
    AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    SQLAlchemyInstrumentor().uninstrument()
    provider.shutdown()
