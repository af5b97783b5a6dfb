"""Projection schema versions: old tables are never written, a rebuild replaces them, and
positions are 64-bit.

A database written before schema versions existed is recreated from a current one by
taking away what this release added (the ``schema_version`` column; on PostgreSQL the
64-bit position columns), then opened by this release.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import select

from services.cli import main as cli
from services.projections.base import projection_state
from services.projections.catalog import all_projections
from services.projections.rebuild import drop_old_generations, rebuild
from services.projections.source import EventSource
from services.projections.sql import Position
from services.runtime.settings import Settings
from tests.conftest import PG_URL, Backend, TestClock, auth, client_for

ADMIN = auth("admin")


@contextmanager
def raw_sql(backend: Backend, settings: Settings) -> Iterator[Any]:
    """A plain DB-API connection on the backend's database (autocommit)."""
    if backend.name == "sqlite":
        path = settings.store.sqlite_path
        assert path is not None
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()
        return
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{backend.schema}"')
        yield conn


def position_columns(generation: int) -> list[tuple[str, str]]:
    """(table, column) of every position column of every projection at ``generation``."""
    return [
        (table.name, column.name)
        for projection in all_projections()
        for table in projection.tables(generation).values()
        for column in table.columns
        if column.type is Position
    ]


def column_type(conn: Any, table: str, column: str) -> str:
    row = conn.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = %s AND column_name = %s",
        (table, column),
    ).fetchone()
    return str(row[0])


def as_previous_release(backend: Backend, settings: Settings) -> None:
    """Take away what this release added to the tables, as they were before versions."""
    with raw_sql(backend, settings) as conn:
        conn.execute("ALTER TABLE projection_state DROP COLUMN schema_version")
        if backend.name == "postgres":
            conn.execute(
                "ALTER TABLE projection_state ALTER COLUMN position TYPE integer, "
                "ALTER COLUMN skipped TYPE integer"
            )
            conn.execute("ALTER TABLE projection_parked ALTER COLUMN position TYPE integer")
            for table, column in position_columns(1):
                conn.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE integer')


async def new_deal(api: httpx.AsyncClient, pipeline_id: str | None = None) -> tuple[str, str, int]:
    """A deal (in a new pipeline unless one is named): pipeline id, deal id, position."""
    if pipeline_id is None:
        r = await api.post("/v1/pipelines", json={"name": "P", "currency": "EUR"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        pipeline_id = r.json()["id"]
    r = await api.post(
        "/v1/deals", json={"pipeline_id": pipeline_id, "title": "D", "value": "10"}, headers=ADMIN
    )
    assert r.status_code == 201, r.text
    return pipeline_id, r.json()["id"], r.json()["position"]


async def start_history(api: httpx.AsyncClient) -> tuple[str, str, int]:
    """:func:`new_deal`, once the read models show it."""
    pipeline_id, deal_id, position = await new_deal(api)
    r = await api.get(f"/v1/deals/{deal_id}", params={"min_position": position}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return pipeline_id, deal_id, position


async def test_tables_of_an_older_schema_are_refused_until_a_rebuild_replaces_them(
    backend: Backend,
    tmp_path: Path,
    clock: TestClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = backend.settings(tmp_path / "data", DEALTRAIL_READ_WAIT_SECONDS=30)
    async with client_for(settings, clock) as api:
        _, deal_id, _ = await start_history(api)
    as_previous_release(backend, settings)

    caplog.set_level(logging.INFO, logger="dealtrail.projections")
    async with client_for(settings, clock) as api:
        runtime = api.app.state.runtime  # type: ignore[attr-defined]
        async with runtime.engine.connect() as conn:
            versions = dict(
                (
                    await conn.execute(
                        select(projection_state.c.name, projection_state.c.schema_version)
                    )
                ).all()
            )
        # the state tables are migrated at start-up; the tables they point at are version 1
        assert versions == {p.name: 1 for p in all_projections()}
        if backend.name == "postgres":
            with raw_sql(backend, settings) as conn:
                assert column_type(conn, "projection_state", "position") == "bigint"
                assert column_type(conn, "projection_parked", "position") == "bigint"

        r = await api.post(f"/v1/deals/{deal_id}/win", headers=ADMIN)
        assert r.status_code == 200, r.text
        won_at = r.json()["position"]
        # the worker does not write version-1 tables of a projection now at version 2 (one
        # still at version 1 runs on), and says what to run
        outdated = [p for p in all_projections() if p.schema_version > 1]
        deadline = asyncio.get_running_loop().time() + 30
        while len(runtime.worker.refused) < len(outdated):
            assert asyncio.get_running_loop().time() < deadline, runtime.worker.refused
            await asyncio.sleep(0.05)
        for p in outdated:
            advice = f"run `dealtrail projections rebuild {p.name}`"
            assert advice in runtime.worker.refused[p.name]
            assert advice in caplog.text  # logged
        # queries read version-1 tables where the projection says they can (the audit
        # trail's differ in integer widths only)...
        history = f"/v1/deals/{deal_id}/history"
        r = await api.get(history, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["position"] < won_at
        # ...but a read that waits for what they will never reach is told why
        r = await api.get(history, params={"min_position": won_at}, headers=ADMIN)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "projection_outdated"
        assert "dealtrail projections rebuild audit_history" in r.json()["error"]["message"]
        # and tables its queries cannot read (the deals' need version 2's columns) are not
        r = await api.get(f"/v1/deals/{deal_id}", headers=ADMIN)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "projection_outdated"
        assert "dealtrail projections rebuild current_pipeline" in r.json()["error"]["message"]

        backend.point_cli_at(monkeypatch, tmp_path / "data")
        capsys.readouterr()
        assert await asyncio.to_thread(cli, ["projections", "status"]) == 1
        assert "dealtrail projections rebuild analytics" in capsys.readouterr().out

        source = EventSource(runtime.application)
        await rebuild(runtime.engine, source, all_projections())
        await drop_old_generations(runtime.engine, all_projections(), grace_seconds=0)
        r = await api.get(f"/v1/deals/{deal_id}", params={"min_position": won_at}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "won"
        async with runtime.engine.connect() as conn:
            rows = (await conn.execute(select(projection_state))).mappings().all()
        assert {(r["name"], r["generation"], r["schema_version"]) for r in rows} == {
            (p.name, 2, p.schema_version) for p in all_projections()
        }
        # and the worker writes the new tables again
        r = await api.post(f"/v1/deals/{deal_id}/reopen", headers=ADMIN)
        assert r.status_code == 200, r.text
        reopened_at = r.json()["position"]
        for path in (f"/v1/deals/{deal_id}", f"/v1/deals/{deal_id}/history", "/v1/audit"):
            r = await api.get(path, params={"min_position": reopened_at}, headers=ADMIN)
            assert r.status_code == 200, (path, r.text)
        assert runtime.worker.refused == {}  # running them all again
    if backend.name == "postgres":
        with raw_sql(backend, settings) as conn:
            assert {column_type(conn, t, c) for t, c in position_columns(2)} == {"bigint"}
    assert await asyncio.to_thread(cli, ["projections", "status"]) == 0


async def test_tables_a_newer_release_built_are_neither_written_nor_read(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    settings = backend.settings(tmp_path / "data", DEALTRAIL_READ_WAIT_SECONDS=30)
    async with client_for(settings, clock) as api:
        pipeline_id, deal_id, _ = await start_history(api)
        runtime = api.app.state.runtime  # type: ignore[attr-defined]
        newer = all_projections()[0].schema_version + 1
        async with runtime.engine.begin() as conn:
            await conn.execute(
                projection_state.update()
                .where(projection_state.c.name == "current_pipeline")
                .values(schema_version=newer)
            )
        r = await api.get(f"/v1/deals/{deal_id}", headers=ADMIN)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "projection_outdated"
        assert f"schema version {newer}, newer than this release's" in error["message"]
        r = await api.post(f"/v1/deals/{deal_id}/win", headers=ADMIN)
        assert r.status_code == 200, r.text
        won_at = r.json()["position"]
        # the other projections carry on
        r = await api.get(
            f"/v1/deals/{deal_id}/history", params={"min_position": won_at}, headers=ADMIN
        )
        assert r.status_code == 200, r.text
        async with runtime.engine.connect() as conn:
            position = (
                await conn.execute(
                    select(projection_state.c.position).where(
                        projection_state.c.name == "current_pipeline"
                    )
                )
            ).scalar_one()
        assert position < won_at
        r = await api.get(f"/v1/pipelines/{pipeline_id}/board", headers=ADMIN)
        assert r.status_code == 503, r.text


async def test_positions_beyond_32_bits_are_projected_and_queried(
    postgres_backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    """PostgreSQL only: SQLite's positions are 64-bit integers in every release."""
    backend = postgres_backend
    settings = backend.settings(tmp_path / "data")
    far = 3_000_000_000
    async with client_for(settings, clock) as api:
        pipeline_id, _, _ = await start_history(api)
        with raw_sql(backend, settings) as conn:
            conn.execute(
                f'ALTER SEQUENCE "{backend.schema}".dealtrail_events_notification_id_seq '
                f"RESTART WITH {far}"
            )
        _, deal_id, created_at = await new_deal(api, pipeline_id)
        assert created_at >= far
        r = await api.post(f"/v1/deals/{deal_id}/lose", json={"reason": "Price"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        lost_at = r.json()["position"]
        answers = [
            f"/v1/deals/{deal_id}",
            f"/v1/deals/{deal_id}/history",
            f"/v1/pipelines/{pipeline_id}/board",
            f"/v1/reports/stage-durations?pipeline_id={pipeline_id}",
            f"/v1/reports/lost-reasons?pipeline_id={pipeline_id}",
            "/v1/audit",
        ]
        for path in answers:
            r = await api.get(
                f"{path}{'&' if '?' in path else '?'}min_position={lost_at}", headers=ADMIN
            )
            assert r.status_code == 200, (path, r.text)
        r = await api.get("/v1/audit", params={"limit": 1}, headers=ADMIN)
        r = await api.get("/v1/audit", params={"cursor": r.json()["next_cursor"]}, headers=ADMIN)
        assert [e["position"] for e in r.json()["data"]][-2:] == [created_at, lost_at]
        runtime = api.app.state.runtime  # type: ignore[attr-defined]
        await rebuild(runtime.engine, EventSource(runtime.application), all_projections())
        r = await api.get(f"/v1/deals/{deal_id}/history", headers=ADMIN)
        assert [e["position"] for e in r.json()["data"]] == [created_at, lost_at]
