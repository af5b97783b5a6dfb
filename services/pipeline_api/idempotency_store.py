"""Where ``Idempotency-Key`` answers are kept: claimed, completed, replayed, released.

See :mod:`services.pipeline_api.idempotency` for how requests use it.
"""

from __future__ import annotations

import asyncio
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
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.observability import metrics

log = logging.getLogger("dealtrail.api")

MAX_KEY_LENGTH = 200
# A claim older than this whose response never arrived is treated as abandoned (the
# process died mid-request), so a retry may run the command again.
ABANDONED_AFTER = timedelta(seconds=60)
PURGE_EVERY_SECONDS = 600.0  # how often each API process deletes expired keys

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


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class IdempotencyStore:
    """Claims, completes and replays idempotency keys in the read-side database."""

    def __init__(self, engine: AsyncEngine, ttl: timedelta) -> None:
        self.engine = engine
        self.ttl = ttl
        # The claim and the answer are one statement each, atomic on their own: sent
        # without BEGIN and COMMIT around them, one round trip each instead of three.
        self.single = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def create_tables(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        await self.purge_expired()

    async def purge_expired(self) -> int:
        """Delete the keys older than the TTL; how many went."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < _now() - self.ttl)
            )
        purged = int(result.rowcount or 0)
        metrics.IDEMPOTENCY_PURGED.inc(purged)
        return purged

    async def purge_every(self, seconds: float) -> None:
        """Purge expired keys every ``seconds`` until cancelled; an outage only skips a
        round (logged)."""
        while True:
            await asyncio.sleep(seconds)
            try:
                purged = await self.purge_expired()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("could not purge expired idempotency keys: %r", exc)
                continue
            if purged:
                log.info("purged %d expired idempotency keys", purged)

    async def claim(self, scope: str, key: str, fingerprint: str) -> dict[str, Any] | None:
        """Claim the key; return None when claimed, else the existing row."""
        for _ in range(3):
            try:
                async with self.single.connect() as conn:
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
        async with self.single.connect() as conn:
            await conn.execute(
                update(idempotency_keys)
                .where(idempotency_keys.c.scope == scope, idempotency_keys.c.key == key)
                .values(status=status, headers=json.dumps(headers), body=body)
            )

    async def release(self, scope: str, key: str) -> None:
        async with self.single.connect() as conn:
            await conn.execute(
                delete(idempotency_keys).where(
                    idempotency_keys.c.scope == scope, idempotency_keys.c.key == key
                )
            )
