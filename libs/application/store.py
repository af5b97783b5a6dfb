"""Turn a ``DATABASE_URL`` into the event store's settings and the read side's URL."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

SQLITE, POSTGRES = "sqlite", "postgresql"


class BadDatabaseUrl(ValueError):
    """``DATABASE_URL`` is neither ``sqlite:///path`` nor ``postgresql://...``."""


@dataclass(frozen=True)
class StoreLocation:
    """Where events and read models live, in the terms each library wants."""

    backend: str
    sqlite_path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = field(default="", repr=False)  # never in a repr, a log or a traceback
    dbname: str = ""
    schema: str = ""

    @classmethod
    def parse(cls, url: str, schema: str = "") -> StoreLocation:
        parts = urlsplit(url)
        scheme = parts.scheme.split("+", 1)[0]
        if scheme == "sqlite":
            # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them
            raw = url.split(":///", 1)[1] if ":///" in url else ""
            raw = raw.split("?", 1)[0]
            if not raw:
                raise BadDatabaseUrl("DATABASE_URL sqlite:/// needs a file path")
            return cls(backend=SQLITE, sqlite_path=Path(unquote(raw)))
        if scheme in ("postgresql", "postgres"):
            query = parse_qs(parts.query)
            dbname = unquote(parts.path.lstrip("/"))
            if not dbname:
                raise BadDatabaseUrl("DATABASE_URL postgresql://... needs a database name")
            return cls(
                backend=POSTGRES,
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 5432,
                user=unquote(parts.username or "postgres"),
                password=unquote(parts.password or ""),
                dbname=dbname,
                schema=schema or query.get("schema", [""])[0],
            )
        raise BadDatabaseUrl(
            f"DATABASE_URL must start with sqlite:/// or postgresql://, got {scheme or url!r}"
        )

    @property
    def is_postgres(self) -> bool:
        return self.backend == POSTGRES

    def eventsourcing_env(self, *, pool_size: int = 5) -> dict[str, str]:
        """Settings for the eventsourcing library's recorders."""
        if self.backend == SQLITE:
            assert self.sqlite_path is not None
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.sqlite_path),
                "SQLITE_LOCK_TIMEOUT": "10",
                "CREATE_TABLE": "y",
                # Extends the hash chain in each insert transaction (see integrity).
                "APPLICATION_RECORDER_TOPIC": "libs.application.integrity:ChainedSQLiteRecorder",
            }
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": self.dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": str(pool_size),
            # Also how long a command waits for a free pooled connection.
            "POSTGRES_CONNECT_TIMEOUT": "2",
            # No ping before each use: a connection broken by an outage fails once and
            # the recorder retries on a fresh one, which saves a round trip per query.
            "POSTGRES_PRE_PING": "n",
            "CREATE_TABLE": "y",
            # Lock, notify, chain and insert in one server-side call (see pg_recorder).
            "APPLICATION_RECORDER_TOPIC": "libs.application.pg_recorder:OrderedInsertRecorder",
        }
        if self.schema:
            env["POSTGRES_SCHEMA"] = self.schema
        return env

    def psycopg_params(self) -> dict[str, Any]:
        """Keyword arguments of ``psycopg.connect`` for this PostgreSQL database."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password or None,
            "dbname": self.dbname,
        }

    def sqlalchemy_url(self) -> str:
        """URL of the async read side: aiosqlite or asyncpg on the same database."""
        if self.backend == SQLITE:
            return f"sqlite+aiosqlite:///{self.sqlite_path}"
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql+asyncpg://{auth}@{self.host}:{self.port}/{self.dbname}"

    def describe(self) -> str:
        """The location without its password, for logs and status output."""
        if self.backend == SQLITE:
            return f"sqlite:///{self.sqlite_path}"
        schema = f" (schema {self.schema})" if self.schema else ""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}{schema}"
