"""Expired ``Idempotency-Key`` records are deleted while the service runs, not only when it
starts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, select

from services.pipeline_api.idempotency_store import IdempotencyStore, idempotency_keys
from services.runtime.stores import open_stores
from tests.conftest import Backend, TestClock, client_for


async def keys_left(store: IdempotencyStore) -> set[str]:
    async with store.engine.connect() as conn:
        return set((await conn.execute(select(idempotency_keys.c.key))).scalars())


async def test_expired_keys_are_purged_periodically_and_fresh_ones_kept(
    backend: Backend, tmp_path: Path
) -> None:
    async with open_stores(backend.settings(tmp_path / "data")) as stores:
        store = IdempotencyStore(stores.engine, timedelta(hours=1))
        await store.create_tables()
        purger = asyncio.create_task(store.purge_every(0.05))
        try:
            await store.claim("scope", "fresh", "f" * 64)
            async with stores.engine.begin() as conn:
                await conn.execute(
                    insert(idempotency_keys).values(
                        scope="scope",
                        key="expired",
                        fingerprint="e" * 64,
                        status=201,
                        created_at=datetime.now(UTC) - timedelta(hours=2),
                    )
                )
            deadline = asyncio.get_running_loop().time() + 30
            while "expired" in await keys_left(store):
                assert asyncio.get_running_loop().time() < deadline, "never purged"
                await asyncio.sleep(0.05)
            assert await keys_left(store) == {"fresh"}
        finally:
            purger.cancel()
            await asyncio.gather(purger, return_exceptions=True)


async def test_the_api_runs_the_purge_while_it_serves(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    async with client_for(backend.settings(tmp_path / "data"), clock):
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert "idempotency-purge" in names
    assert "idempotency-purge" not in {task.get_name() for task in asyncio.all_tasks()}
