"""Every request, seen from outside: its id, its log line, its metrics.

:class:`ObservedRequests` wraps the whole application, error handling included, so that
even an unexpected failure's 500 carries the request's id. For each HTTP request it

- takes ``X-Request-ID`` from the client when it is safe to echo (letters, digits and
  ``._:/+=@-``, at most 128 characters), or makes one, and returns it in the same header;
  error bodies carry it as ``error.details.request_id`` (``errors.error_response``);
- binds the request context that log lines written meanwhile carry (``request_id``,
  ``principal`` once the token is checked, ``route``);
- writes one access line (logger ``dealtrail.access``): method, route template, status,
  duration in milliseconds, principal (health probes and scrapes at DEBUG level);
- counts and times the request by method, route template and status (``metrics``);
- adds the headers the request context collected (the rate limit's) to the answer.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.observability import context, metrics, tracing

log = logging.getLogger("dealtrail.access")

REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED = "unmatched"  # the route label of a request no route matched (a 404)
QUIET_PATHS = ("/health", "/metrics")  # logged at DEBUG when they succeed


def route_template(scope: Scope) -> str | None:
    """The matched route's path template (``/v1/deals/{deal_id}``), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class ObservedRequests:
    """The outermost layer of the API: request ids, access log, HTTP metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        current = context.RequestContext(
            request_id=context.request_id_from(incoming), method=scope["method"]
        )
        token = context.bind(current)
        status = 500
        answered = False
        started = time.perf_counter()

        async def observed_send(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = True
                current.trace_id = tracing.current_trace_id()  # the server span's, if any
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = current.request_id
                for name, value in current.headers.items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            # Starlette's error layer answered (500) and raises again for the server to
            # log it; the handler (errors.unexpected) has logged it with this request's
            # context already, so once answered it ends here.
            if not answered:
                raise
        finally:
            seconds = time.perf_counter() - started
            current.route = route_template(scope)
            self._observe(current, scope, status, seconds)
            context.unbind(token)

    def _observe(
        self, current: context.RequestContext, scope: Scope, status: int, seconds: float
    ) -> None:
        route = current.route or UNMATCHED
        labels = (current.method, route, str(status))
        metrics.HTTP_REQUESTS.labels(*labels).inc()
        metrics.HTTP_DURATION.labels(*labels).observe(seconds)
        quiet = status < 400 and scope["path"].startswith(QUIET_PATHS)
        level = logging.DEBUG if quiet else (logging.ERROR if status >= 500 else logging.INFO)
        if not log.isEnabledFor(level):
            return
        duration_ms = round(seconds * 1000, 1)
        log.log(
            level,
            "%s %s %d %.1fms",
            current.method,
            route,
            status,
            duration_ms,
            extra={
                **current.log_fields(),
                "route": route,
                "method": current.method,
                "status": status,
                "duration_ms": duration_ms,
            },
        )
