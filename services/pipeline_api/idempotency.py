"""``Idempotency-Key`` on commands: a retry gets the first response, nothing more.

Two parts work together. The middleware reads the request body once, fingerprints the
request (method, path, query, ``If-Match``, body) and holds back the response until it is
complete. The route dependency :func:`claim_key`, which runs only once the request has
been routed and authenticated, claims the key (a row in ``api_idempotency_keys``) before
the command runs; the middleware stores the finished response under the claimed key
before a byte of it leaves, so a retry sent the moment the answer arrives is replayed.

A retry with the same key and request replays the stored response; the same key with a
different request is refused (422); a retry while the first is still running gets 409.
A 5xx, 401, 404 or 405 releases the key so that a retry runs again. Keys are scoped to
the bearer token and kept for ``DEALTRAIL_IDEMPOTENCY_TTL_HOURS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.application.failures import is_unavailable
from libs.observability import metrics
from services.pipeline_api.deps import RuntimeDep, bearer_token, current_principal
from services.pipeline_api.errors import error_response
from services.pipeline_api.idempotency_store import MAX_KEY_LENGTH, IdempotencyStore
from services.pipeline_api.limits import BODY_METHODS, read_body, replaying
from services.pipeline_api.openapi import raises

log = logging.getLogger("dealtrail.api")

REPLAYED_HEADERS = ("content-type", "etag", "location")
# Answers that say nothing about the command (it did not run, or may not have): the key
# is released so that a retry runs the command.
RELEASED_STATUSES = frozenset({401, 404, 405})
STATE_KEY = "idempotency"


@dataclass
class _Pending:
    """A keyed request on its way: its fingerprint, and the key once it is claimed."""

    fingerprint: str
    claimed: tuple[str, str] | None = None


class IdempotentAnswer(Exception):
    """Raised by :func:`claim_key` with the answer to send instead of running the route."""

    def __init__(self, response: Response) -> None:
        super().__init__("idempotent answer")
        self.response = response


async def idempotent_answer(_: Request, exc: Exception) -> Response:
    """Exception handler: send the replayed (or refusing) answer."""
    assert isinstance(exc, IdempotentAnswer)
    return exc.response


def _fingerprint(scope: Scope, headers: dict[str, str], body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (scope["method"], scope["path"], scope.get("query_string", b"").decode()):
        digest.update(part.encode() + b"\0")
    digest.update(headers.get("if-match", "").encode() + b"\0")
    digest.update(body)
    return digest.hexdigest()


class IdempotencyMiddleware:
    """Fingerprints keyed commands and stores their answer before it is sent."""

    def __init__(self, app: ASGIApp, store_getter: Any, runtime_getter: Any = None) -> None:
        self.app = app
        self.store_getter = store_getter
        self.runtime_getter = runtime_getter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:  # the first of repeated headers, as routes see them
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        if "idempotency-key" not in headers or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        body = await read_body(receive)
        if body is None:
            return
        pending = _Pending(_fingerprint(scope, headers, body))
        scope.setdefault("state", {})[STATE_KEY] = pending

        held: list[Message] = []
        status = 500

        async def hold_send(message: Message) -> None:
            nonlocal status
            if pending.claimed is None:
                await send(message)  # nothing to store: pass the answer straight through
                return
            held.append(message)
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await self._finish(pending.claimed, status, held)
                for m in held:
                    await send(m)
                held.clear()

        try:
            await self.app(scope, replaying(body, receive), hold_send)
        except BaseException:
            if pending.claimed is not None:
                with contextlib.suppress(Exception):
                    await self.store_getter().release(*pending.claimed)
            raise

    async def _finish(self, claimed: tuple[str, str], status: int, held: list[Message]) -> None:
        """Store the complete answer under the claimed key (or release the key)."""
        store: IdempotencyStore = self.store_getter()
        try:
            if status >= 500 or status in RELEASED_STATUSES:
                await store.release(*claimed)
                return
            resp_headers: dict[str, str] = {}
            body = bytearray()
            for message in held:
                if message["type"] == "http.response.start":
                    for k, v in message.get("headers", []):
                        name = k.decode("latin-1").lower()
                        if name in REPLAYED_HEADERS:
                            resp_headers[name] = v.decode("latin-1")
                else:
                    body.extend(message.get("body", b""))
            await store.complete(*claimed, status, resp_headers, bytes(body))
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # The command ran; its answer still goes out. The claim stays pending and is
            # released as abandoned after ABANDONED_AFTER.
            log.warning("could not record the idempotent answer: %s", exc)
            self._trip()

    def _trip(self) -> None:
        runtime = self.runtime_getter() if self.runtime_getter else None
        if runtime is not None:
            runtime.breaker.trip()


def _refusal(status: int, code: str, message: str, **headers: str) -> IdempotentAnswer:
    metrics.IDEMPOTENCY_REFUSALS.labels(code).inc()
    return IdempotentAnswer(
        error_response(status, code, message, {"field": "Idempotency-Key"}, headers or None)
    )


def _replay(row: dict[str, Any]) -> Response:
    stored_headers = json.loads(row["headers"] or "{}")
    response = Response(content=row["body"] or b"", status_code=row["status"])
    for name, value in stored_headers.items():
        response.headers[name] = value
    response.headers["Idempotent-Replayed"] = "true"
    return response


@raises(409, 422)
async def claim_key(
    request: Request,
    _runtime: RuntimeDep,
    _principal: Annotated[Any, Depends(current_principal)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description=(
                f"1 to {MAX_KEY_LENGTH} characters. Retrying with the same key and request "
                "returns the first response and records nothing new; the same key with "
                "another request is a 422; while the first still runs, a 409."
            ),
        ),
    ] = None,
) -> None:
    """Claim the request's ``Idempotency-Key`` (routed and authenticated requests only)."""
    pending: _Pending | None = request.scope.get("state", {}).get(STATE_KEY)
    if idempotency_key is None or pending is None:
        return
    if not idempotency_key.strip() or len(idempotency_key) > MAX_KEY_LENGTH:
        raise _refusal(
            422,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
        )
    token_scope = hashlib.sha256(bearer_token(authorization).encode()).hexdigest()
    store: IdempotencyStore = request.app.state.idempotency
    existing = await store.claim(token_scope, idempotency_key, pending.fingerprint)
    if existing is None:
        pending.claimed = (token_scope, idempotency_key)
        return
    if existing["fingerprint"] != pending.fingerprint:
        raise _refusal(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        )
    if existing["status"] is None:
        raise _refusal(
            409,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still running; retry shortly",
            **{"Retry-After": "1"},
        )
    metrics.IDEMPOTENCY_REPLAYS.inc()
    raise IdempotentAnswer(_replay(existing))


IdempotencyKey = Depends(claim_key)
"""Route dependency of every command: claims the request's ``Idempotency-Key``."""
