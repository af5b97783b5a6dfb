"""``DEALTRAIL_READ_DATABASE_URL``: queries read a replica, commands and the worker the primary.

No second PostgreSQL server runs here, so the replica is a stand-in: a second schema of
the same server, named by the read URL's ``?schema=``, which the test keeps in step by
copying the primary's read-model tables and ``projection_state`` in one snapshot
whenever it chooses (as a streaming replica applies the primary's changes, later).
What this proves: queries (and their ``min_position`` waits) use the read URL and only
it, on read-only connections; commands, their look-ups at the log's head and the worker
use the primary; a query waits for the replica's own projection positions. It does not
exercise PostgreSQL's replication itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from services.projections.catalog import all_projections
from tests.conftest import PG_URL, Backend, TestClock, auth, client_for
from tests.integration.test_projection_schema import new_deal

ADMIN = auth("admin")


@pytest.fixture
def replica(postgres_backend: Backend) -> Iterator[str]:
    schema = f"{postgres_backend.schema}_replica"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def replicate(primary: str, replica: str) -> None:
    """Make the replica's read side what the primary's is now (one consistent snapshot)."""
    with psycopg.connect(PG_URL) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        generations = dict(
            conn.execute(f'SELECT name, generation FROM "{primary}".projection_state').fetchall()
        )
        tables = ["projection_state", "projection_parked"] + [
            name
            for projection in all_projections()
            for name in projection.table_names(generations[projection.name])
        ]
        for table in tables:
            conn.execute(f'DROP TABLE IF EXISTS "{replica}"."{table}"')
            conn.execute(
                f'CREATE TABLE "{replica}"."{table}" (LIKE "{primary}"."{table}" INCLUDING ALL)'
            )
            conn.execute(f'INSERT INTO "{replica}"."{table}" SELECT * FROM "{primary}"."{table}"')
        conn.commit()


async def primary_at(runtime: object, position: int) -> None:
    """Wait until every projection on the primary has reached ``position``."""
    models = runtime.primary_reads  # type: ignore[attr-defined]
    deadline = asyncio.get_running_loop().time() + 30
    while min(pos for _, pos in (await models.states()).values()) < position:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_queries_read_the_replica_and_wait_for_its_positions(
    postgres_backend: Backend, replica: str, tmp_path: Path, clock: TestClock
) -> None:
    backend = postgres_backend
    read_url = f"{PG_URL}?schema={replica}"
    settings = backend.settings(
        tmp_path / "data", DEALTRAIL_READ_DATABASE_URL=read_url, DEALTRAIL_READ_WAIT_SECONDS=3
    )
    async with client_for(settings, clock) as api:
        runtime = api.app.state.runtime  # type: ignore[attr-defined]
        assert runtime.read_models.engine is not runtime.engine
        async with runtime.read_models.engine.connect() as conn:
            assert (await conn.execute(text("SHOW default_transaction_read_only"))).scalar() == "on"
            assert (await conn.execute(text("SELECT current_schema()"))).scalar() == replica
        await asyncio.to_thread(replicate, backend.schema, replica)

        pipeline_id, deal_id, created_at = await new_deal(api)
        await primary_at(runtime, created_at)

        # the primary has it; the replica, not copied since, does not
        r = await api.get(f"/v1/deals/{deal_id}", headers=ADMIN)
        assert r.status_code == 404, r.text
        r = await api.get("/v1/pipelines", headers=ADMIN)
        assert r.json()["data"] == []

        # a read that asks for the command's position waits for the replica to get there
        waiting = asyncio.create_task(
            api.get(f"/v1/deals/{deal_id}", params={"min_position": created_at}, headers=ADMIN)
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()  # nothing but the copy below can bring the replica there
        await asyncio.to_thread(replicate, backend.schema, replica)
        r = await waiting
        assert r.status_code == 200, r.text
        assert r.json()["stage"]["id"] == "deal-created"

        # commands still go to the primary, and so do their look-ups at the log's head: the
        # stage removal finds the open deal there although the replica is not told of it
        r = await api.post(
            f"/v1/deals/{deal_id}/advance", json={"stage": "quote-sent"}, headers=ADMIN
        )
        assert r.status_code == 200, r.text
        r = await api.delete(
            f"/v1/pipelines/{pipeline_id}/stages/quote-sent",
            params={"move_open_deals_to": "negotiation"},
            headers=ADMIN,
        )
        assert r.status_code == 200, r.text
        moved_at = r.json()["position"]
        await primary_at(runtime, moved_at)
        r = await api.get(f"/v1/deals/{deal_id}", headers=ADMIN)
        assert r.json()["stage"]["id"] == "deal-created"  # the replica's (old) answer
        r = await api.get(f"/v1/pipelines/{pipeline_id}/board", headers=ADMIN)
        assert [s["id"] for s in r.json()["stages"]][:3] == [
            "deal-created",
            "demo-or-meeting",
            "quote-sent",
        ]
        r = await api.get(f"/v1/deals/{deal_id}", params={"min_position": moved_at}, headers=ADMIN)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "projection_behind"

        await asyncio.to_thread(replicate, backend.schema, replica)
        for path in (f"/v1/deals/{deal_id}", f"/v1/pipelines/{pipeline_id}/board"):
            r = await api.get(path, params={"min_position": moved_at}, headers=ADMIN)
            assert r.status_code == 200, r.text
        r = await api.get(f"/v1/deals/{deal_id}", params={"min_position": moved_at}, headers=ADMIN)
        assert r.json()["stage"]["id"] == "negotiation"


def test_a_read_url_needs_postgresql_on_both_sides(tmp_path: Path) -> None:
    from pydantic import ValidationError

    sqlite = Backend("sqlite", f"sqlite:///{tmp_path / 'd.db'}")
    with pytest.raises(ValidationError, match="SQLite has no replicas"):
        sqlite.settings(tmp_path, DEALTRAIL_READ_DATABASE_URL=f"{PG_URL}?schema=x")
    with pytest.raises(ValidationError, match="DEALTRAIL_READ_DATABASE_URL: DATABASE_URL must"):
        Backend("postgres", PG_URL).settings(tmp_path, DEALTRAIL_READ_DATABASE_URL="mysql://x/y")
    settings = Backend("postgres", PG_URL, "main").settings(
        tmp_path, DEALTRAIL_READ_DATABASE_URL="postgresql://reader@replica:5433/test"
    )
    assert (settings.read_store.host, settings.read_store.port) == ("replica", 5433)
    assert settings.read_store.schema == "main"  # the primary's schema unless it names one
