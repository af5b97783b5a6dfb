"""The database goes away and comes back: the API answers 503 meanwhile and recovers alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from services.pipeline_api.main import create_app
from services.runtime.bootstrap import bootstrap
from tests.conftest import API_KEYS, PG_URL, TestClock, auth, need_postgres


@pytest.fixture
def outage_db() -> Iterator[str]:
    """A database of its own, so that refusing its connections harms no other test."""
    need_postgres()
    name = f"dt_outage_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def set_outage(url: str, down: bool) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if down else "true"}')
        if down:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


async def test_commands_and_queries_get_503_while_the_database_is_down_and_work_again_after(
    outage_db: str, tmp_path: Path
) -> None:
    from services.runtime.settings import Settings

    settings = Settings(
        DATABASE_URL=outage_db,  # type: ignore[call-arg]
        DEALTRAIL_API_KEYS=API_KEYS,
        DEALTRAIL_DATA_DIR=tmp_path,
        DEALTRAIL_READ_WAIT_SECONDS=1,
    )
    clock = TestClock()
    app = create_app(settings, wire=lambda s: bootstrap(s, clock=clock))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dealtrail") as api:
            made = await api.post(
                "/v1/pipelines", json={"name": "Sales", "currency": "EUR"}, headers=auth("admin")
            )
            assert made.status_code == 201
            pipeline_id = made.json()["id"]

            await asyncio.to_thread(set_outage, outage_db, True)
            try:
                health = await api.get("/health")
                assert health.status_code == 503
                assert health.json()["error"]["code"] == "database_unavailable"

                refused = await api.post(
                    "/v1/deals",
                    json={"pipeline_id": pipeline_id, "title": "A", "value": "10"},
                    headers=auth("admin"),
                )
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "database_unavailable"
                assert refused.headers["Retry-After"]

                idempotent = await api.post(
                    "/v1/deals",
                    json={"pipeline_id": pipeline_id, "title": "A", "value": "10"},
                    headers={**auth("admin"), "Idempotency-Key": "outage-1"},
                )
                assert idempotent.status_code == 503, idempotent.text

                board = await api.get(f"/v1/pipelines/{pipeline_id}/board", headers=auth("admin"))
                assert board.status_code == 503, board.text
            finally:
                await asyncio.to_thread(set_outage, outage_db, False)

            # Recovery needs no restart: pools reconnect, the worker carries on.
            created = None
            for _ in range(50):
                created = await api.post(
                    "/v1/deals",
                    json={"pipeline_id": pipeline_id, "title": "A", "value": "10"},
                    headers={**auth("admin"), "Idempotency-Key": "outage-1"},
                )
                if created.status_code == 201:
                    break
                await asyncio.sleep(0.2)
            assert created is not None and created.status_code == 201, created.text
            position = created.json()["position"]
            deal = await api.get(
                f"/v1/deals/{created.json()['id']}",
                params={"min_position": position},
                headers=auth("admin"),
            )
            assert deal.status_code == 200, deal.text
            assert deal.json()["title"] == "A"
            assert (await api.get("/health")).status_code == 200


async def test_requests_arriving_during_a_probe_share_it(outage_db: str) -> None:
    """While tripped, concurrent requests wait for one probe instead of each opening one."""
    from libs.application.store import StoreLocation
    from services.runtime.breaker import StoreBreaker

    breaker = StoreBreaker(StoreLocation.parse(outage_db))
    breaker.trip()
    set_outage(outage_db, down=True)
    assert await asyncio.gather(*(breaker.reachable() for _ in range(20))) == [False] * 20
    assert breaker.probes == 1 and breaker.tripped
    set_outage(outage_db, down=False)
    assert await asyncio.gather(*(breaker.reachable() for _ in range(20))) == [True] * 20
    assert breaker.probes == 2 and not breaker.tripped
    assert await breaker.reachable() and breaker.probes == 2  # closed: no probe at all
