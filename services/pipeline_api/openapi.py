"""The OpenAPI document: readable operation ids, and the error statuses each operation
really answers, derived from what its route depends on.

Every route of the routers ``main.ROUTERS`` lists (and every route of the app itself)
gets both without saying anything in its decorator:

* its ``operationId`` is the camelCase of its function's name (``create_deal`` becomes
  ``createDeal``), so name route functions as verbs (``get_board``, ``list_deals``);
* its error statuses are the union of what its dependencies declare with :func:`raises`
  (authentication 401, a command's domain refusals, ``If-Match``'s 412, the idempotency
  key's 409 and 422, reading a read model's 503, ...), 422 when it takes any parameter or
  body, and 413, 415 and 422 for command bodies (the body guards in ``limits``). What
  only the route itself raises it declares with ``@raises(...)`` under its decorator.

Each documented error points at the one ``ErrorResponse`` schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from services.pipeline_api.errors import ErrorResponse
from services.pipeline_api.limits import BODY_METHODS

ERROR_DESCRIPTIONS = {
    401: "Missing or unknown bearer token",
    403: "The principal's role does not allow this",
    404: "No such resource",
    409: "The current state refuses the command, or a request with the same Idempotency-Key "
    "is still running",
    412: "If-Match names a stale version",
    413: "Request body over the size limit (DEALTRAIL_MAX_BODY_BYTES)",
    415: "The body is not of the media type the operation takes",
    422: "Invalid input; `details.field` names the field",
    429: "Too many requests: over the token's rate limit (or, for a verification, one "
    "already runs); retry after `Retry-After`",
    503: "The service is starting, the database is unreachable, or a read model has not "
    "reached `min_position` in time (or cannot: its tables need a rebuild)",
}
STATUS_ATTRIBUTE = "error_statuses"
COMMAND_BODY_STATUSES = frozenset({413, 415, 422})  # the body guards of ``limits``

_F = TypeVar("_F", bound=Callable[..., Any])


def raises(*statuses: int) -> Callable[[_F], _F]:
    """Declare the error statuses a dependency or a route function answers with itself."""
    unknown = set(statuses) - set(ERROR_DESCRIPTIONS)
    if unknown:
        raise ValueError(f"no description for error status {sorted(unknown)}")

    def declare(fn: _F) -> _F:
        known: frozenset[int] = getattr(fn, STATUS_ATTRIBUTE, frozenset())
        setattr(fn, STATUS_ATTRIBUTE, known | frozenset(statuses))
        return fn

    return declare


def operation_id(route: APIRoute) -> str:
    """``createDeal`` for the route function ``create_deal``."""
    first, *rest = route.name.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


def _declared(dependant: Dependant) -> set[int]:
    found = set(getattr(dependant.call, STATUS_ATTRIBUTE, ()))
    for sub in dependant.dependencies:
        found |= _declared(sub)
    return found


def _takes_input(dependant: Dependant) -> bool:
    if dependant.path_params or dependant.query_params or dependant.header_params:
        return True
    if dependant.body_params:
        return True
    return any(_takes_input(sub) for sub in dependant.dependencies)


def error_statuses(route: APIRoute) -> set[int]:
    """Every error status the route's operation can answer."""
    statuses = _declared(route.dependant)
    if _takes_input(route.dependant) or (route.openapi_extra or {}).get("requestBody"):
        statuses.add(422)
    if set(route.methods or ()) & set(BODY_METHODS) and route.path.startswith("/v1/"):
        statuses |= COMMAND_BODY_STATUSES
    return statuses


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def describe_errors(routes: Iterable[BaseRoute]) -> None:
    """Document each API route's error statuses (:func:`error_statuses`); a status the
    route describes itself keeps its description."""
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        for status in error_statuses(route):
            if status not in route.responses and str(status) not in route.responses:
                route.responses[status] = _error_response(status)


def install_openapi(app: FastAPI) -> None:
    """Serve the app's document with the ``ErrorResponse`` schema every error refers to."""
    generate = app.openapi

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            error = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(error.pop("$defs", {}))
            schemas["ErrorResponse"] = error
        return app.openapi_schema or generate()

    app.openapi = build  # type: ignore[method-assign]
