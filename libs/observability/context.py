"""The request a log line belongs to: its id, the principal, the route.

The API binds a :class:`RequestContext` when a request arrives and fills in what it
learns (the principal once the token is checked, the route once it is routed); the log
filter (``services/runtime/logs.py``) copies it onto every log record written while the
request runs, and error bodies carry its ``request_id``. It is a mutable object held by
a context variable, so what a dependency fills in is seen by the middleware that bound it
even across the tasks and threads a request runs in.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

REQUEST_ID_MAX_CHARS = 128
"""A client's ``X-Request-ID`` longer than this is replaced by a generated one."""
_REQUEST_ID_RE = re.compile(rf"^[A-Za-z0-9._:/+=@-]{{1,{REQUEST_ID_MAX_CHARS}}}$")


@dataclass
class RequestContext:
    """What is known about the request being served."""

    request_id: str
    method: str = ""
    route: str | None = None
    principal: str | None = None
    role: str | None = None
    trace_id: str | None = None
    # Response headers the API adds to whatever answer the request gets (rate limits).
    headers: dict[str, str] = field(default_factory=dict)

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"request_id": self.request_id}
        if self.principal is not None:
            fields["principal"] = self.principal
        if self.route is not None:
            fields["route"] = self.route
        if self.trace_id is not None:
            fields["trace_id"] = self.trace_id
        return fields


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "dealtrail_request", default=None
)


def request_id_from(header: str | None) -> str:
    """The client's request id when it is safe to log and echo, else a new one.

    Only letters, digits and ``._:/+=@-`` up to :data:`REQUEST_ID_MAX_CHARS`: an id is
    written into log lines and headers verbatim, so nothing that could forge a line.
    """
    if header is not None and _REQUEST_ID_RE.match(header):
        return header
    return uuid.uuid4().hex


def bind(context: RequestContext) -> contextvars.Token[RequestContext | None]:
    return _current.set(context)


def unbind(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)


def current() -> RequestContext | None:
    """The request being served in this context, if any."""
    return _current.get()


def current_request_id() -> str | None:
    context = _current.get()
    return context.request_id if context is not None else None
