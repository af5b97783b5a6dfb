"""The one place that turns failures into the JSON error shape and an HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from eventsourcing.persistence import InterfaceError as StoreInterfaceError
from eventsourcing.persistence import OperationalError as StoreOperationalError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from libs.application.failures import is_data_error, is_unavailable
from libs.domain.errors import DomainError
from libs.observability import context
from services.projections.read_models import ReadModelUnavailable
from services.queries.errors import QueryError

log = logging.getLogger("dealtrail.api")

STATUS_BY_KIND = {
    "invalid": 422,
    "conflict": 409,
    "stale": 412,
    "not_found": 404,
    "forbidden": 403,
}
CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    428: "precondition_required",
    503: "service_unavailable",
}


class ErrorBody(BaseModel):
    """The error object: a stable code, a human message, and details such as the field
    (and always ``request_id``, the id of the request in the service's logs)."""

    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx response has this shape."""

    error: ErrorBody


class ApiError(Exception):
    """An error raised by the HTTP layer itself (auth, headers, pagination)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODE_BY_STATUS.get(status, "error")
        self.message = message
        self.details = details or {}
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The one error shape; ``details.request_id`` names the request (as its log lines
    and its ``X-Request-ID`` header do)."""
    details = dict(details or {})
    request_id = context.current_request_id()
    if request_id is not None:
        details.setdefault("request_id", request_id)
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or ".".join(str(p) for p in loc)


def _validation_details(exc: RequestValidationError) -> tuple[str, dict[str, Any]]:
    problems = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        problems.append(
            {
                "field": _field_name(loc),
                "in": str(loc[0]) if loc else "body",
                "message": err.get("msg", "invalid"),
            }
        )
    first = problems[0] if problems else {"field": "body", "message": "invalid"}
    message = f"{first['field']}: {first['message']}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more)"
    return message, {"field": first["field"], "problems": problems}


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at the request's path."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(api: FastAPI) -> None:
    """Register the handlers that give every failure the one JSON error shape."""

    @api.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return error_response(STATUS_BY_KIND.get(exc.kind, 409), exc.code, exc.message, exc.details)

    @api.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @api.exception_handler(QueryError)
    async def query_error(_: Request, exc: QueryError) -> JSONResponse:
        details = {"field": exc.field} if exc.field else {}
        return error_response(exc.status, exc.code, exc.message, details)

    @api.exception_handler(ReadModelUnavailable)
    async def read_model_unavailable(_: Request, exc: ReadModelUnavailable) -> JSONResponse:
        return error_response(503, exc.code, exc.message, exc.details, {"Retry-After": "1"})

    @api.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _validation_details(exc)
        return error_response(422, "invalid_input", message, details)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODE_BY_STATUS.get(exc.status_code, "error")
        headers = dict(exc.headers or {})
        message = str(exc.detail)
        if exc.status_code == 405:
            # Starlette names the methods of the first route whose path matched; several
            # routes (commands and queries) share a path.
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; use {' or '.join(allowed)}"
        return error_response(exc.status_code, code, message, headers=headers)

    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        if is_data_error(exc):
            # Input validation should have caught it; still the caller's data, not an outage.
            log.warning("database refused a value: %s", exc)
            return error_response(
                422,
                "invalid_input",
                "a value in the request cannot be stored or compared by the database",
            )
        if not is_unavailable(exc):
            return await unexpected(request, exc)
        log.warning("database unavailable: %s", exc)
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is not None:
            runtime.breaker.trip()
        return error_response(
            503,
            "database_unavailable",
            "the database is unreachable; retry shortly",
            headers={"Retry-After": "2"},
        )

    for exc_type in (StoreOperationalError, StoreInterfaceError, DBAPIError, OSError):
        api.add_exception_handler(exc_type, store_unavailable)

    @api.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal_error", "unexpected error; it has been logged")
