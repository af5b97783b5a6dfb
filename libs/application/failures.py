"""Which database failures are outages and which are the caller's data.

Only a failure to reach or use the database server (refused or broken connections,
shutdowns, exhausted resources) is an outage: the API answers 503 and its breaker trips,
the projection worker waits and retries. A statement the server refuses because of a
value (SQLSTATE class 22, "data exception") is the caller's problem, never an outage;
anything else is a bug. The drivers in use (asyncpg, psycopg, sqlite3) and the layers
around them (SQLAlchemy, eventsourcing) wrap each other's exceptions, so the chain of
causes is searched for the SQLSTATE.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

# SQLSTATE classes that blame the statement or its values, never the server's state:
# cardinality, data, integrity, transaction state, syntax or access rule, WITH CHECK,
# PL/pgSQL, feature not supported. Every other class (connection exception, resources,
# shutdowns, "database not accepting connections", serialization failures, ...) means the
# server cannot serve us right now.
_STATEMENT_CLASSES = ("21", "22", "23", "25", "42", "44", "P0", "0A")
_DATA_CLASS = "22"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE the server gave, wherever it sits in the chain of causes."""
    for current in _chain(exc):
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def is_data_error(exc: BaseException) -> bool:
    """The server refused a value (text with NUL, a number out of range, ...)."""
    code = sqlstate(exc)
    return code is not None and code.startswith(_DATA_CLASS)


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached or used right now (an outage, not a bug)."""
    code = sqlstate(exc)
    if code is not None:
        return not code.startswith(_STATEMENT_CLASSES)
    for current in _chain(exc):
        if getattr(current, "connection_invalidated", False):
            return True
        if isinstance(current, OSError | ConnectionError | TimeoutError):
            return True
        if isinstance(current, sqlite3.OperationalError):
            # locked, busy, cannot open, disk I/O: the file is not usable now
            return True
        name = type(current).__name__
        module = type(current).__module__
        # Without an SQLSTATE: a connection that failed or closed (psycopg, asyncpg,
        # eventsourcing's wrappers of both), or SQLAlchemy's pool timing out.
        if name in ("OperationalError", "InterfaceError") and module.startswith(
            ("psycopg", "eventsourcing", "asyncpg", "sqlalchemy")
        ):
            return True
        if name in ("ConnectionDoesNotExistError", "ConnectionFailureError"):
            return True
        if name == "TimeoutError" and module.startswith("sqlalchemy"):
            return True
    return False


def outcome(exc: BaseException) -> str:
    """How a command ended, in one word (the ``outcome`` label of the command metrics):
    the domain error's kind (``invalid``, ``conflict``, ``stale``, ``not_found``,
    ``forbidden``), ``unavailable`` for an outage, ``error`` for anything else."""
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str):
        return kind
    return "unavailable" if is_unavailable(exc) else "error"


class ReadChanged(Exception):
    """An aggregate a command only read (a deal's pipeline, taken from a process's cache)
    was changed in the store after that copy was made: the command's events were not
    stored, and the command is decided again on a fresh copy."""

    def __init__(self, aggregate_ids: list[str]) -> None:
        super().__init__(f"read aggregates changed: {', '.join(aggregate_ids)}")
        self.aggregate_ids = aggregate_ids
