"""``Idempotency-Key`` on POST and PATCH: a retry gets the first response, nothing more.

The first request with a key claims it (a row in ``api_idempotency_keys``) before the
command runs; its response is stored when it finishes. A retry with the same key and
body replays that response; the same key with a different body is refused (422); a
retry while the first is still running gets 409. A 5xx releases the key so a retry can
run the command again. Keys are scoped to the bearer token and kept for
``DEALTRAIL_IDEMPOTENCY_TTL_HOURS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.pipeline_api.errors import error_response

log = logging.getLogger("dealtrail.api")

MAX_KEY_LENGTH = 200
# IntegrityError is handled where it is expected (a key claimed twice).
UNAVAILABLE = (DBAPIError, OSError)
# A claim older than this whose response never arrived is treated as abandoned (the
# process died mid-request), so a retry may run the command again.
ABANDONED_AFTER = timedelta(seconds=60)

metadata = MetaData()
idempotency_keys = Table(
    "api_idempotency_keys",
    metadata,
    Column("scope", String(64), primary_key=True),
    Column("key", String(MAX_KEY_LENGTH), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("status", Integer, nullable=True),
    Column("headers", Text, nullable=True),
    Column("body", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

REPLAYED_HEADERS = ("content-type", "etag", "location")


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class IdempotencyStore:
    """Claims, completes and replays idempotency keys in the read-side database."""

    def __init__(self, engine: AsyncEngine, ttl: timedelta) -> None:
        self.engine = engine
        self.ttl = ttl

    async def create_tables(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < _now() - self.ttl)
            )

    async def claim(self, scope: str, key: str, fingerprint: str) -> dict[str, Any] | None:
        """Claim the key; return None when claimed, else the existing row."""
        for _ in range(3):
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(
                        insert(idempotency_keys).values(
                            scope=scope, key=key, fingerprint=fingerprint, created_at=_now()
                        )
                    )
                return None
            except IntegrityError:
                pass
            async with self.engine.begin() as conn:
                row = (
                    (
                        await conn.execute(
                            select(idempotency_keys).where(
                                idempotency_keys.c.scope == scope, idempotency_keys.c.key == key
                            )
                        )
                    )
                    .mappings()
                    .first()
                )
                if row is None:
                    continue
                age = _now() - _aware(row["created_at"])
                expired = age > self.ttl or (row["status"] is None and age > ABANDONED_AFTER)
                if not expired:
                    return dict(row)
                await conn.execute(
                    delete(idempotency_keys).where(
                        idempotency_keys.c.scope == scope, idempotency_keys.c.key == key
                    )
                )
        return None

    async def complete(
        self, scope: str, key: str, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(idempotency_keys)
                .where(idempotency_keys.c.scope == scope, idempotency_keys.c.key == key)
                .values(status=status, headers=json.dumps(headers), body=body)
            )

    async def release(self, scope: str, key: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(idempotency_keys).where(
                    idempotency_keys.c.scope == scope, idempotency_keys.c.key == key
                )
            )


class IdempotencyMiddleware:
    """ASGI middleware applying :class:`IdempotencyStore` to POST and PATCH under /v1."""

    def __init__(self, app: ASGIApp, store_getter: Any, services_getter: Any = None) -> None:
        self.app = app
        self.store_getter = store_getter
        self.services_getter = services_getter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PATCH", "PUT", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("idempotency-key")
        if key is None or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if not key.strip() or len(key) > MAX_KEY_LENGTH:
            response = error_response(
                422,
                "invalid_idempotency_key",
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
                {"field": "Idempotency-Key"},
            )
            await response(scope, receive, send)
            return

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break

        # Scope keys by the token alone ("Bearer" and "bearer" name the same caller).
        auth = headers.get("authorization", "").strip().partition(" ")[2].strip()
        token_scope = hashlib.sha256(auth.encode()).hexdigest()
        digest = hashlib.sha256()
        for part in (scope["method"], scope["path"], scope.get("query_string", b"").decode()):
            digest.update(part.encode() + b"\0")
        digest.update(headers.get("if-match", "").encode() + b"\0")
        digest.update(bytes(body))
        fingerprint = digest.hexdigest()

        store: IdempotencyStore = self.store_getter()
        try:
            existing = await store.claim(token_scope, key, fingerprint)
        except UNAVAILABLE as exc:
            log.warning("idempotency store unavailable: %s", exc)
            self._trip()
            response = error_response(
                503,
                "database_unavailable",
                "the database is unreachable; retry shortly",
                headers={"Retry-After": "2"},
            )
            await response(scope, receive, send)
            return
        if existing is not None:
            await self._answer_existing(existing, fingerprint, scope, receive, send)
            return

        sent_body = False

        async def replay_receive() -> Message:
            nonlocal sent_body
            if sent_body:
                return await receive()
            sent_body = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        status = 500
        resp_headers: dict[str, str] = {}
        resp_body = bytearray()

        async def capture_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message.get("headers", []):
                    name = k.decode("latin-1").lower()
                    if name in REPLAYED_HEADERS:
                        resp_headers[name] = v.decode("latin-1")
            elif message["type"] == "http.response.body":
                resp_body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_receive, capture_send)
        except BaseException:
            with contextlib.suppress(*UNAVAILABLE):
                await store.release(token_scope, key)
            raise
        try:
            if status >= 500 or status == 401:
                await store.release(token_scope, key)
            else:
                await store.complete(token_scope, key, status, resp_headers, bytes(resp_body))
        except UNAVAILABLE as exc:
            # The answer has gone out; the claim stays pending and is released as
            # abandoned after ABANDONED_AFTER.
            log.warning("could not record the idempotent answer: %s", exc)

    def _trip(self) -> None:
        services = self.services_getter() if self.services_getter else None
        if services is not None:
            services.breaker.trip()

    async def _answer_existing(
        self,
        row: dict[str, Any],
        fingerprint: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if row["fingerprint"] != fingerprint:
            response = error_response(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
                {"field": "Idempotency-Key"},
            )
            await response(scope, receive, send)
            return
        if row["status"] is None:
            response = error_response(
                409,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still running; retry shortly",
                {"field": "Idempotency-Key"},
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        stored_headers = json.loads(row["headers"] or "{}")
        raw_headers = [(k.encode(), v.encode()) for k, v in stored_headers.items()]
        raw_headers.append((b"idempotent-replayed", b"true"))
        raw_headers.append((b"content-length", str(len(row["body"] or b"")).encode()))
        await send({"type": "http.response.start", "status": row["status"], "headers": raw_headers})
        await send({"type": "http.response.body", "body": row["body"] or b""})
