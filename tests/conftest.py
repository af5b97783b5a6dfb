"""Fixtures shared by every test: one backend fixture runs each test on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from services.pipeline_api.main import create_app
from services.runtime.bootstrap import bootstrap
from services.runtime.settings import Settings
from tests.documented import checking_hook

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_URL)
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"

TOKENS = {
    "admin": "t-admin-0000000000",
    "manager": "t-manager-00000000",
    "rep": "t-rep-rita-0000000",
    "rep2": "t-rep-raj-00000000",
    "auditor": "t-auditor-0000000",
}
PRINCIPALS = {
    "admin": ("ann", "admin"),
    "manager": ("max", "manager"),
    "rep": ("rita", "rep"),
    "rep2": ("raj", "rep"),
    "auditor": ("audrey", "auditor"),
}
API_KEYS = ",".join(f"{TOKENS[k]}:{name}:{role}" for k, (name, role) in PRINCIPALS.items())


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


_pg_problem: str | None = None
_pg_checked = False


def postgres_problem() -> str | None:
    """None when PostgreSQL answers, else why not (checked once per run)."""
    global _pg_checked, _pg_problem
    if not _pg_checked:
        _pg_checked = True
        try:
            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            _pg_problem = f"PostgreSQL at {PG_URL} unreachable: {exc}"
    return _pg_problem


def need_postgres() -> None:
    problem = postgres_problem()
    if problem:
        if REQUIRE_POSTGRES:
            pytest.fail(f"REQUIRE_POSTGRES=1 but {problem}")
        pytest.skip(problem)


@dataclass
class Backend:
    """Where one test's events and read models live."""

    name: str
    url: str
    schema: str = ""

    def settings(self, data_dir: Path, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "DATABASE_URL": self.url,
            "DEALTRAIL_DB_SCHEMA": self.schema,
            "DEALTRAIL_API_KEYS": API_KEYS,
            "DEALTRAIL_DATA_DIR": data_dir,
            "DEALTRAIL_EMBEDDED_WORKER": True,
            "DEALTRAIL_STORE_POOL_SIZE": 4,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    def point_cli_at(self, monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
        """Set the environment so that ``dealtrail`` commands run here use this backend."""
        monkeypatch.setenv("DATABASE_URL", self.url)
        monkeypatch.setenv("DEALTRAIL_DB_SCHEMA", self.schema)
        monkeypatch.setenv("DEALTRAIL_DATA_DIR", str(data_dir))


@contextmanager
def _postgres_backend() -> Iterator[Backend]:
    need_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield Backend("postgres", PG_URL, schema)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each test using this runs once on SQLite and once on PostgreSQL (own schema)."""
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'dealtrail.db'}")
        return
    with _postgres_backend() as backend:
        yield backend


@pytest.fixture
def postgres_backend() -> Iterator[Backend]:
    """PostgreSQL only (own schema), for what SQLite does not have."""
    with _postgres_backend() as backend:
        yield backend


class TestClock:
    """A clock the test moves by hand; starts at a fixed moment."""

    __test__ = False

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> TestClock:
    return TestClock()


@pytest.fixture
def settings(backend: Backend, tmp_path: Path) -> Settings:
    return backend.settings(tmp_path / "data")


@asynccontextmanager
async def client_for(settings: Settings, clock: TestClock) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the real app on ``settings`` (lifespan run, real stores);
    ``client.app`` is the app. An error status the OpenAPI document does not list for the
    operation fails the request (``tests/documented.py``)."""
    app = create_app(settings, wire=lambda s: bootstrap(s, clock=clock))
    hooks = {"response": [checking_hook(app.openapi)]}  # errors must be documented
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dealtrail", event_hooks=hooks
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def api(settings: Settings, clock: TestClock) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the real app (lifespan run, real stores)."""
    async with client_for(settings, clock) as client:
        yield client
