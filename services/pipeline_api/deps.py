"""Request dependencies: the runtime, the application, the read models, the query cache,
the current principal, If-Match."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPBearer

from libs.application.app import DealtrailApplication
from libs.domain.actors import Actor
from libs.observability import context
from services.pipeline_api.errors import ApiError
from services.pipeline_api.openapi import raises
from services.pipeline_api.query_cache import QueryCache
from services.pipeline_api.rate_limits import RateLimiter
from services.projections.read_models import ReadModels
from services.runtime.bootstrap import Runtime

_ETAG_RE = re.compile(r'^\s*(?:W/)?"?(\d{1,12})"?\s*$')


@raises(503)
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "the service is starting; retry shortly", code="starting")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@raises(503)
async def reachable_runtime(runtime: RuntimeDep) -> Runtime:
    """The runtime, after checking the database is back if it was recently down."""
    if not await runtime.breaker.reachable():
        raise ApiError(
            503,
            "the database is unreachable; retry shortly",
            code="database_unavailable",
            headers={"Retry-After": "2"},
        )
    return runtime


ReachableRuntime = Annotated[Runtime, Depends(reachable_runtime)]


async def get_application(runtime: ReachableRuntime) -> DealtrailApplication:
    return runtime.application


ApplicationDep = Annotated[DealtrailApplication, Depends(get_application)]


@raises(503)
async def get_read_models(runtime: ReachableRuntime) -> ReadModels:
    models: ReadModels | None = getattr(runtime, "read_models", None)
    if models is None:
        raise ApiError(503, "read models are not available", code="starting")
    return models


ReadModelsDep = Annotated[ReadModels, Depends(get_read_models)]


async def get_query_cache(request: Request, _runtime: RuntimeDep) -> QueryCache:
    """The API's cache of finished board and report answers (see ``query_cache``)."""
    cache: QueryCache = request.app.state.query_cache
    return cache


QueryCacheDep = Annotated[QueryCache, Depends(get_query_cache)]


class BearerToken(HTTPBearer):
    """The ``Authorization`` header as sent (:func:`current_principal` reads it), declared
    in the OpenAPI document as the HTTP bearer scheme, so that /docs can send a token."""

    def __init__(self) -> None:
        super().__init__(
            auto_error=False,
            scheme_name="bearerAuth",
            description="An API key of DEALTRAIL_API_KEYS: `Authorization: Bearer <token>`",
        )

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        return request.headers.get("Authorization")


@raises(401, 429)
async def current_principal(
    request: Request,
    runtime: RuntimeDep,
    authorization: Annotated[str | None, Depends(BearerToken())] = None,
) -> Actor:
    """The actor behind the bearer token; counts the request against the token's rate
    limit (429 when over it)."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if not authorization:
        raise ApiError(401, "missing Authorization: Bearer <token> header", headers=challenge)
    token = bearer_token(authorization)
    if not token:
        raise ApiError(401, "Authorization must be 'Bearer <token>'", headers=challenge)
    actor = runtime.keyring.actor_for(token)
    if actor is None:
        raise ApiError(401, "unknown API token", headers=challenge)
    seen = context.current()
    if seen is not None:
        seen.principal, seen.role = actor.name, actor.role.value
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        headers = await limiter.check(token, actor.role)
        if seen is not None:
            seen.headers.update(headers)
    return actor


def bearer_token(authorization: str | None) -> str:
    """The token of ``Authorization: Bearer <token>`` ("" when there is none)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


CurrentPrincipal = Annotated[Actor, Depends(current_principal)]


@raises(422)
async def expected_version(
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            description="Run the command only if the resource is at this version (its ETag).",
        ),
    ] = None,
) -> int | None:
    if if_match is None or if_match.strip() == "*":
        return None
    match = _ETAG_RE.match(if_match)
    if not match:
        raise ApiError(
            422,
            'If-Match must be a version number, e.g. "3"',
            code="invalid_if_match",
            details={"field": "If-Match"},
        )
    return int(match.group(1))


ExpectedVersion = Annotated[int | None, Depends(expected_version)]
