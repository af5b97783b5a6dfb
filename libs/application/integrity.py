"""The event store's hash chain: chained appends on SQLite, reading, sealing, checkpoints.

The chain and its checks are defined once, in ``libs/chain_verifier.py``; this module
stores and reads them. Each event's ``prev_position`` and ``hash`` are two extra columns
of the library's events table, written by the same statement as the event itself: on
PostgreSQL by the append function (``pg_recorder``), on SQLite by
:class:`ChainedSQLiteRecorder` inside the insert transaction. Checkpoints live in their
own table, ``event_checkpoints``, next to the events.
"""

from __future__ import annotations

import base64
import binascii
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, Notification, StoredEvent
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteTransaction,
)

from libs.application.failures import ReadChanged
from libs.application.pg_recorder import CHECKPOINTS_TABLE, OrderedInsertRecorder
from libs.chain_verifier import (
    BAD_SIGNATURE,
    GENESIS,
    UNSEALED,
    ChainWalk,
    Checkpoint,
    Finding,
    Link,
    checkpoint_message,
    event_hash,
    signature_problem,
)

VERIFY_BATCH = 10_000  # events read per query by verify and seal
SEAL_BATCH = 5_000  # events sealed per transaction (appends wait for each)


class ChainError(RuntimeError):
    """The chain cannot be sealed, restored or extended as asked."""


# --- SQLite: the chained append ------------------------------------------------------------


class _ImmediateTransaction(SQLiteTransaction):
    """``BEGIN IMMEDIATE``: take the write lock before reading the newest hash, so no
    other process can append between that read and this insert."""

    def __enter__(self) -> SQLiteCursor:
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        return cursor


@contextmanager
def _write_transaction(datastore: SQLiteDatastore) -> Iterator[SQLiteCursor]:
    conn: SQLiteConnection
    with (
        datastore.get_connection(commit=True) as conn,
        _ImmediateTransaction(conn, commit=True) as c,
    ):
        yield c


class ChainedSQLiteRecorder(SQLiteApplicationRecorder):
    """The library's SQLite recorder, extending the hash chain in each insert transaction
    (and checking the versions of what the command read, as ``pg_recorder`` does)."""

    checks_read_versions = True  # insert_events(..., read=...) is honoured

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name)
        table = self.events_table_name
        self.insert_events_statement = (
            f"INSERT INTO {table} (rowid, originator_id, originator_version, topic, state, "
            "prev_position, hash) VALUES (?,?,?,?,?,?,?)"
        )
        # The first event of a batch goes in first, to take the write lock; its link is
        # filled in once the event before it has been read.
        self.claim_statement = (
            f"INSERT INTO {table} (rowid, originator_id, originator_version, topic, state) "
            f"SELECT coalesce(max(rowid), 0) + 1, ?, ?, ?, ? FROM {table}"
        )
        self.select_head_statement = f"SELECT rowid, hash FROM {table} ORDER BY rowid DESC LIMIT 2"
        self.fill_statement = f"UPDATE {table} SET prev_position = ?, hash = ? WHERE rowid = ?"
        self.read_version_statement = (
            f"SELECT 1 FROM {table} WHERE originator_id = ? AND originator_version > ? LIMIT 1"
        )

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS_TABLE} (position INTEGER PRIMARY KEY, "
            "hash BLOB NOT NULL, created_at TEXT NOT NULL, public_key BLOB, signature BLOB)",
        ]

    def _create_table(self, c: SQLiteCursor) -> None:
        super()._create_table(c)
        c.execute(f"PRAGMA table_info({self.events_table_name})")
        if "hash" not in {row["name"] for row in c.fetchall()}:
            # A log written before the chain: the columns now, the hashes by the seal.
            c.execute(f"ALTER TABLE {self.events_table_name} ADD COLUMN prev_position INTEGER")
            c.execute(f"ALTER TABLE {self.events_table_name} ADD COLUMN hash BLOB")

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # The library's own transaction (a deferred BEGIN), whose first statement is a
        # write, as in the library: SQLite takes the write lock there, waiting for it
        # like any other writer, and what is read after it cannot change under us.
        with self.datastore.transaction(commit=True) as c:
            return self._insert_events(c, stored_events, **kwargs)

    def _insert_events(
        self,
        c: SQLiteCursor,
        stored_events: Sequence[StoredEvent],
        *,
        read: Mapping[UUID, int] | None = None,
        **_: Any,
    ) -> Sequence[int] | None:
        if not stored_events:
            return []
        first = stored_events[0]
        c.execute(self.claim_statement, self._columns(first))
        # Under the write lock: the aggregates the command read are still at the versions
        # it read (see pg_recorder); else nothing is stored.
        for aggregate_id, version in (read or {}).items():
            c.execute(self.read_version_statement, (_uuid(aggregate_id).hex, version))
            if c.fetchone() is not None:
                raise ReadChanged([str(aggregate_id)])
        c.execute(self.select_head_statement)
        rows = c.fetchall()
        if len(rows) == 2:
            position, last = rows[1][0], rows[1][1]
        else:
            position, last = 0, GENESIS
        values = []
        for s in stored_events:
            new = position + 1
            aggregate_id = _uuid(s.originator_id)
            if last is not None:  # an unsealed log stays unsealed until the seal reaches it
                last = event_hash(
                    last, new, aggregate_id.bytes, s.originator_version, s.topic.encode(), s.state
                )
            values.append((new, *self._columns(s), position, last))
            position = new
        c.execute(self.fill_statement, (values[0][5], values[0][6], values[0][0]))
        c.executemany(self.insert_events_statement, values[1:])
        return [row[0] for row in values]

    @staticmethod
    def _columns(s: StoredEvent) -> tuple[str, int, str, bytes]:
        return (_uuid(s.originator_id).hex, s.originator_version, s.topic, s.state)


def _notification(pos: int, oid: UUID, version: int, topic: str, state: bytes) -> Notification:
    return Notification(
        id=pos, originator_id=oid, originator_version=version, topic=topic, state=state
    )


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


# --- reading and writing the chain, per backend -----------------------------------------------


@dataclass(frozen=True)
class StoredRow:
    """One stored event with its link: what the export writes."""

    notification: Notification
    prev_position: int | None
    hash: bytes | None


Decide = Callable[[tuple[int, bytes], Checkpoint | None], Checkpoint | None]


class ChainStore(ABC):
    """The chain's columns and the checkpoints of one event store."""

    @abstractmethod
    def links(self, start: int, stop: int, limit: int) -> list[Link]:
        """Events from ``start`` to ``stop`` (inclusive) as chain links, at most ``limit``."""

    @abstractmethod
    def rows(self, start: int, stop: int, limit: int) -> list[StoredRow]:
        """The same events as stored rows."""

    @abstractmethod
    def link_before(self, position: int) -> tuple[int, bytes | None] | None:
        """(position, hash) of the newest event below ``position``."""

    @abstractmethod
    def checkpoints(self, start: int, stop: int) -> list[Checkpoint]:
        """Checkpoints from ``start`` to ``stop``, oldest first."""

    @abstractmethod
    def add_checkpoint(self, decide: Decide, at: int | None = None) -> Checkpoint | None:
        """Under the checkpoints' lock: give ``decide`` the newest event at or below ``at``
        (default the newest) and the latest checkpoint; store what it returns."""

    @abstractmethod
    def first_unsealed(self) -> int | None:
        """The first position without a hash."""

    @abstractmethod
    def seal_batch(self, after: tuple[int, bytes], limit: int) -> list[tuple[int, int, bytes]]:
        """Under the append lock: chain up to ``limit`` events after ``after``; return
        their (position, prev_position, hash), empty when nothing is left."""

    @abstractmethod
    def restore(self, batches: Iterable[list[Link]], checkpoints: Sequence[Checkpoint]) -> int:
        """Write exported events (positions and hashes as given) into an empty store,
        all in one transaction; return how many."""

    def head(self) -> tuple[int, bytes | None] | None:
        return self.link_before(2**62)


def chain_of(recorder: ApplicationRecorder) -> ChainStore:
    """The chain store for the application's recorder."""
    if isinstance(recorder, OrderedInsertRecorder):
        return PostgresChain(recorder)
    if isinstance(recorder, ChainedSQLiteRecorder):
        return SQLiteChain(recorder)
    raise ChainError(f"{type(recorder).__name__} keeps no hash chain")


def _seal_links(
    after: tuple[int, bytes], rows: Sequence[tuple[int, bytes, int, bytes, bytes, bytes | None]]
) -> list[tuple[int, int, bytes]]:
    """(position, prev_position, hash) for unsealed rows (position, id, version, topic,
    state, hash) following ``after``."""
    position, last = after
    out = []
    for pos, aggregate_id, version, topic, state, stored in rows:
        if stored is not None:
            raise ChainError(
                f"position {pos} has a hash but follows an event without one: the log was "
                "changed; sealing would hide it (run dealtrail audit verify)"
            )
        last = event_hash(last, pos, aggregate_id, version, topic, state)
        out.append((pos, position, last))
        position = pos
    return out


def _checkpoint_row(row: Sequence[Any]) -> Checkpoint:
    position, hash_, created_at, public_key, signature = row
    return Checkpoint(
        position,
        bytes(hash_),
        created_at,
        bytes(public_key) if public_key is not None else None,
        bytes(signature) if signature is not None else None,
    )


class SQLiteChain(ChainStore):
    def __init__(self, recorder: ChainedSQLiteRecorder) -> None:
        self.recorder = recorder
        self.datastore = recorder.datastore
        self.table = recorder.events_table_name
        self._columns = (
            "rowid, originator_id, originator_version, topic, state, prev_position, hash"
        )

    def _select(self, start: int, stop: int, limit: int) -> list[Any]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT {self._columns} FROM {self.table} WHERE rowid >= ? AND rowid <= ? "
                "ORDER BY rowid LIMIT ?",
                (start, stop, limit),
            )
            return list(c.fetchall())

    def links(self, start: int, stop: int, limit: int) -> list[Link]:
        topics: dict[str, bytes] = {}
        out: list[Link] = []
        fromhex = bytes.fromhex
        for pos, oid, version, topic, state, prev, hash_ in self._select(start, stop, limit):
            encoded = topics.get(topic)
            if encoded is None or type(state) is not bytes or type(version) is not int:
                # SQLite keeps any type in any column: whatever an edit left is still
                # checked (and fails to match), never a crash.
                out.append(_coerced(pos, oid, version, topic, state, prev, hash_))
                if type(topic) is str:
                    topics[topic] = topic.encode()
                continue
            out.append((pos, fromhex(oid), version, encoded, state, prev, hash_))
        return out

    def rows(self, start: int, stop: int, limit: int) -> list[StoredRow]:
        return [
            StoredRow(_notification(pos, UUID(oid), version, topic, state), prev, hash_)
            for pos, oid, version, topic, state, prev, hash_ in self._select(start, stop, limit)
        ]

    def link_before(self, position: int) -> tuple[int, bytes | None] | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT rowid, hash FROM {self.table} WHERE rowid < ? ORDER BY rowid DESC LIMIT 1",
                (position,),
            )
            row = c.fetchone()
        return (row[0], row[1]) if row else None

    def checkpoints(self, start: int, stop: int) -> list[Checkpoint]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT position, hash, created_at, public_key, signature FROM "
                f"{CHECKPOINTS_TABLE} WHERE position >= ? AND position <= ? ORDER BY position",
                (start, stop),
            )
            return [_checkpoint_row(r) for r in c.fetchall()]

    def add_checkpoint(self, decide: Decide, at: int | None = None) -> Checkpoint | None:
        with _write_transaction(self.datastore) as c:
            c.execute(
                f"SELECT rowid, hash FROM {self.table} WHERE rowid <= ? "
                "ORDER BY rowid DESC LIMIT 1",
                (at if at is not None else 2**62,),
            )
            head = c.fetchone()
            if head is None or head[1] is None:
                return None
            c.execute(
                "SELECT position, hash, created_at, public_key, signature FROM "
                f"{CHECKPOINTS_TABLE} ORDER BY position DESC LIMIT 1"
            )
            latest = c.fetchone()
            checkpoint = decide((head[0], head[1]), _checkpoint_row(latest) if latest else None)
            if checkpoint is not None:
                c.execute(
                    f"INSERT OR IGNORE INTO {CHECKPOINTS_TABLE} VALUES (?,?,?,?,?)",
                    _checkpoint_values(checkpoint),
                )
            return checkpoint

    def first_unsealed(self) -> int | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT min(rowid) FROM {self.table} WHERE hash IS NULL")
            row = c.fetchone()
        return row[0] if row else None

    def seal_batch(self, after: tuple[int, bytes], limit: int) -> list[tuple[int, int, bytes]]:
        with _write_transaction(self.datastore) as c:
            _check_anchor(self._anchor_hash(c, after[0]), after)
            c.execute(
                f"SELECT rowid, originator_id, originator_version, topic, state, hash "
                f"FROM {self.table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (after[0], limit),
            )
            rows = [
                (pos, bytes.fromhex(oid), version, topic.encode(), state, hash_)
                for pos, oid, version, topic, state, hash_ in c.fetchall()
            ]
            sealed = _seal_links(after, rows)
            c.executemany(
                f"UPDATE {self.table} SET prev_position = ?, hash = ? WHERE rowid = ?",
                [(prev, hash_, pos) for pos, prev, hash_ in sealed],
            )
        return sealed

    def _anchor_hash(self, c: SQLiteCursor, position: int) -> bytes | None:
        if position == 0:
            return GENESIS
        c.execute(f"SELECT hash FROM {self.table} WHERE rowid = ?", (position,))
        row = c.fetchone()
        return row[0] if row else None

    def restore(self, batches: Iterable[list[Link]], checkpoints: Sequence[Checkpoint]) -> int:
        count = 0
        with _write_transaction(self.datastore) as c:
            c.execute(f"SELECT 1 FROM {self.table} LIMIT 1")
            if c.fetchone():
                raise ChainError("the event store is not empty: restore needs an empty store")
            for batch in batches:
                c.executemany(
                    self.recorder.insert_events_statement,
                    [
                        (pos, aggregate_id.hex(), version, topic.decode(), state, prev, hash_)
                        for pos, aggregate_id, version, topic, state, prev, hash_ in batch
                    ],
                )
                count += len(batch)
            c.executemany(
                f"INSERT INTO {CHECKPOINTS_TABLE} VALUES (?,?,?,?,?)",
                [_checkpoint_values(cp) for cp in checkpoints],
            )
        return count


def _coerced(
    pos: int, oid: Any, version: Any, topic: Any, state: Any, prev: Any, hash_: Any
) -> Link:
    def as_bytes(value: Any) -> bytes:
        if isinstance(value, bytes):
            return value
        return b"" if value is None else str(value).encode()

    try:
        aggregate_id = bytes.fromhex(oid)
    except (TypeError, ValueError):
        aggregate_id = as_bytes(oid)
    number = version if type(version) is int and abs(version) < 2**63 else -1
    stored = hash_ if isinstance(hash_, bytes) or hash_ is None else as_bytes(hash_)
    return (pos, aggregate_id, number, as_bytes(topic), as_bytes(state), prev, stored)


def _checkpoint_values(cp: Checkpoint) -> tuple[int, bytes, str, bytes | None, bytes | None]:
    return (cp.position, cp.hash, cp.created_at, cp.public_key, cp.signature)


def _check_anchor(found: bytes | None, after: tuple[int, bytes]) -> None:
    if found != after[1]:
        raise ChainError(f"the event at position {after[0]} changed while sealing; run it again")


class PostgresChain(ChainStore):
    def __init__(self, recorder: OrderedInsertRecorder) -> None:
        self.recorder = recorder
        self.datastore = recorder.datastore
        schema = recorder.datastore.schema.replace('"', '""')
        self.table = f'"{schema}"."{recorder.events_table_name}"'
        self.checkpoints_table = f'"{schema}"."{CHECKPOINTS_TABLE}"'
        self.sequence = f'"{schema}"."{recorder.events_table_name}_notification_id_seq"'

    @contextmanager
    def _cursor(self, *, transaction: bool = False) -> Iterator[Any]:
        from psycopg.rows import tuple_row

        with self.datastore.get_connection() as conn:
            if transaction:
                with conn.transaction(), conn.cursor(row_factory=tuple_row, binary=True) as cur:
                    yield cur
            else:
                with conn.cursor(row_factory=tuple_row, binary=True) as cur:
                    yield cur

    def links(self, start: int, stop: int, limit: int) -> list[Link]:
        with self._cursor() as cur:
            cur.execute(
                "SELECT notification_id, uuid_send(originator_id), originator_version, "
                "coalesce(convert_to(topic, 'UTF8'), ''), coalesce(state, ''), prev_position, hash "
                f"FROM {self.table} WHERE notification_id BETWEEN %s AND %s "
                "ORDER BY notification_id LIMIT %s",
                (start, stop, limit),
            )
            rows: list[Link] = cur.fetchall()
        return rows

    def rows(self, start: int, stop: int, limit: int) -> list[StoredRow]:
        with self._cursor() as cur:
            cur.execute(
                "SELECT notification_id, originator_id, originator_version, topic, state, "
                f"prev_position, hash FROM {self.table} WHERE notification_id BETWEEN %s AND %s "
                "ORDER BY notification_id LIMIT %s",
                (start, stop, limit),
            )
            return [
                StoredRow(_notification(pos, oid, version, topic, state), prev, hash_)
                for pos, oid, version, topic, state, prev, hash_ in cur.fetchall()
            ]

    def link_before(self, position: int) -> tuple[int, bytes | None] | None:
        with self._cursor() as cur:
            cur.execute(
                f"SELECT notification_id, hash FROM {self.table} WHERE notification_id < %s "
                "ORDER BY notification_id DESC LIMIT 1",
                (position,),
            )
            row = cur.fetchone()
        return (row[0], row[1]) if row else None

    def checkpoints(self, start: int, stop: int) -> list[Checkpoint]:
        with self._cursor() as cur:
            cur.execute(
                "SELECT position, hash, created_at, public_key, signature FROM "
                f"{self.checkpoints_table} WHERE position BETWEEN %s AND %s ORDER BY position",
                (start, stop),
            )
            return [_checkpoint_row(r) for r in cur.fetchall()]

    def add_checkpoint(self, decide: Decide, at: int | None = None) -> Checkpoint | None:
        with self._cursor(transaction=True) as cur:
            # Self-conflicting: two writers (an active and a standby worker) take turns.
            cur.execute(f"LOCK TABLE {self.checkpoints_table} IN SHARE ROW EXCLUSIVE MODE")
            cur.execute(
                f"SELECT notification_id, hash FROM {self.table} WHERE notification_id <= %s "
                "ORDER BY notification_id DESC LIMIT 1",
                (at if at is not None else 2**62,),
            )
            head = cur.fetchone()
            if head is None or head[1] is None:
                return None
            cur.execute(
                "SELECT position, hash, created_at, public_key, signature FROM "
                f"{self.checkpoints_table} ORDER BY position DESC LIMIT 1"
            )
            latest = cur.fetchone()
            checkpoint = decide((head[0], head[1]), _checkpoint_row(latest) if latest else None)
            if checkpoint is not None:
                cur.execute(
                    f"INSERT INTO {self.checkpoints_table} VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (position) DO NOTHING",
                    _checkpoint_values(checkpoint),
                )
            return checkpoint

    def first_unsealed(self) -> int | None:
        with self._cursor() as cur:
            cur.execute(f"SELECT min(notification_id) FROM {self.table} WHERE hash IS NULL")
            row = cur.fetchone()
        return row[0] if row else None

    def seal_batch(self, after: tuple[int, bytes], limit: int) -> list[tuple[int, int, bytes]]:
        with self._cursor(transaction=True) as cur:
            cur.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")
            if after[0] == 0:
                found: bytes | None = GENESIS
            else:
                cur.execute(
                    f"SELECT hash FROM {self.table} WHERE notification_id = %s", (after[0],)
                )
                row = cur.fetchone()
                found = row[0] if row else None
            _check_anchor(found, after)
            cur.execute(
                "SELECT notification_id, uuid_send(originator_id), originator_version, "
                f"convert_to(topic, 'UTF8'), state, hash FROM {self.table} "
                "WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
                (after[0], limit),
            )
            sealed = _seal_links(after, cur.fetchall())
            if sealed:
                cur.execute(
                    f"UPDATE {self.table} AS t SET prev_position = v.prev, hash = v.hash "
                    "FROM unnest(%s::bigint[], %s::bigint[], %s::bytea[]) AS v(pos, prev, hash) "
                    "WHERE t.notification_id = v.pos",
                    (
                        [s[0] for s in sealed],
                        [s[1] for s in sealed],
                        [s[2] for s in sealed],
                    ),
                )
        return sealed

    def restore(self, batches: Iterable[list[Link]], checkpoints: Sequence[Checkpoint]) -> int:
        count = 0
        with self._cursor(transaction=True) as cur:
            cur.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")
            cur.execute(f"SELECT 1 FROM {self.table} LIMIT 1")
            if cur.fetchone():
                raise ChainError("the event store is not empty: restore needs an empty store")
            columns = (
                "notification_id, originator_id, originator_version, topic, state, "
                "prev_position, hash"
            )
            with cur.copy(f"COPY {self.table} ({columns}) FROM STDIN") as copy:
                for batch in batches:
                    for pos, aggregate_id, version, topic, state, prev, hash_ in batch:
                        copy.write_row(
                            (
                                pos,
                                UUID(bytes=aggregate_id),
                                version,
                                topic.decode(),
                                state,
                                prev,
                                hash_,
                            )
                        )
                    count += len(batch)
            cur.execute(
                f"SELECT setval('{self.sequence}', greatest(1, (SELECT max(notification_id) "
                f"FROM {self.table})), (SELECT count(*) > 0 FROM {self.table}))"
            )
            if checkpoints:
                cur.executemany(
                    f"INSERT INTO {self.checkpoints_table} VALUES (%s, %s, %s, %s, %s)",
                    [_checkpoint_values(cp) for cp in checkpoints],
                )
        return count


# --- signing and checkpoints ---------------------------------------------------------------


class Signer:
    """Signs checkpoints with an Ed25519 private key."""

    def __init__(self, private_key: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def from_text(cls, text: str) -> Signer:
        """``DEALTRAIL_SIGNING_KEY``: base64 of the 32-byte private key, or PKCS#8 PEM."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        text = text.strip()
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("the PEM key is not an Ed25519 private key")
            return cls(key)
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError("not base64 (or PEM)") from None
        if len(raw) != 32:
            raise ValueError("an Ed25519 private key is 32 bytes (44 characters of base64)")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @staticmethod
    def generate() -> str:
        """A new private key as ``DEALTRAIL_SIGNING_KEY`` takes it."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(raw).decode()

    @property
    def public_key_text(self) -> str:
        return base64.b64encode(self.public_key).decode()

    @property
    def public_key_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        pem: bytes = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode()

    def sign(self, position: int, hash_: bytes, created_at: str) -> Checkpoint:
        signature = self._key.sign(checkpoint_message(position, hash_, created_at))
        return Checkpoint(position, hash_, created_at, self.public_key, signature)


def make_checkpoint(signer: Signer | None, link: tuple[int, bytes], now: datetime) -> Checkpoint:
    created_at = now.astimezone(UTC).isoformat(timespec="microseconds")
    if signer is None:
        return Checkpoint(link[0], link[1], created_at)
    return signer.sign(link[0], link[1], created_at)


@dataclass(frozen=True)
class CheckpointPolicy:
    """When a checkpoint is due: ``every`` positions or ``interval`` after the last one."""

    every: int
    interval: timedelta

    def due(self, head: tuple[int, bytes], latest: Checkpoint | None, now: datetime) -> bool:
        if latest is None:
            return True
        if head[0] <= latest.position:
            return False
        if head[0] - latest.position >= self.every:
            return True
        return now - datetime.fromisoformat(latest.created_at) >= self.interval


def checkpoint_if_due(
    chain: ChainStore, signer: Signer | None, policy: CheckpointPolicy, now: datetime
) -> Checkpoint | None:
    """Write a checkpoint at the newest event when the policy says it is time."""

    def decide(head: tuple[int, bytes], latest: Checkpoint | None) -> Checkpoint | None:
        return make_checkpoint(signer, head, now) if policy.due(head, latest, now) else None

    return chain.add_checkpoint(decide)


def checkpoint_at(
    chain: ChainStore, signer: Signer | None, position: int, now: datetime
) -> Checkpoint | None:
    """A checkpoint at the newest event at or below ``position``, unless it has one."""

    def decide(head: tuple[int, bytes], latest: Checkpoint | None) -> Checkpoint | None:
        existing = chain.checkpoints(head[0], head[0])
        return None if existing else make_checkpoint(signer, head, now)

    return chain.add_checkpoint(decide, at=position)


# --- verifying and sealing the store --------------------------------------------------------


@dataclass
class VerifyReport:
    """What ``dealtrail audit verify`` and ``GET /v1/audit/verify`` answer."""

    from_position: int
    to_position: int
    checked: int = 0
    last_position: int | None = None
    checkpoints: int = 0
    signed: int = 0
    trusted_keys: int = 0
    finding: Finding | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.finding is None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "from_position": self.from_position,
            "to_position": self.to_position,
            "checked": self.checked,
            "last_position": self.last_position,
            "checkpoints": self.checkpoints,
            "signed_checkpoints": self.signed,
            "signatures_checked_against": "trusted key"
            if self.trusted_keys
            else "the key each checkpoint names",
            "first_break": self.finding.as_json() if self.finding else None,
            "notes": self.notes,
        }


def verify_store(
    chain: ChainStore,
    *,
    start: int = 1,
    stop: int | None = None,
    trusted: Sequence[bytes] = (),
    progress: Callable[[int], None] | None = None,
    batch: int = VERIFY_BATCH,
) -> VerifyReport:
    """Recompute the chain from ``start`` to ``stop`` and check the checkpoints in range."""
    start = max(1, start)
    # Checkpoints beyond the newest event are looked for too: they name events that
    # were removed from the end.
    last = stop if stop is not None else 2**62
    if stop is None:
        head = chain.head()
        stop = head[0] if head else 0
    report = VerifyReport(start, stop, trusted_keys=len(trusted))
    anchor = chain.link_before(start) or (0, GENESIS)
    if anchor[1] is None:
        report.finding = _unsealed(anchor[0])
        return report
    checkpoints = chain.checkpoints(start, last)
    report.checkpoints = len(checkpoints)
    for checkpoint in checkpoints:
        problem = signature_problem(checkpoint, trusted)
        if problem is not None:
            report.finding = Finding(
                checkpoint.position,
                BAD_SIGNATURE,
                f"the checkpoint at {checkpoint.position} {problem}",
            )
            return report
        report.signed += checkpoint.signature is not None
    walk = ChainWalk(anchor[0], anchor[1], checkpoints)
    # The next batch is read while this one is hashed (the driver waits without the GIL).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-read") as reader:
        pending = reader.submit(chain.links, start, stop, batch)
        while True:
            links = pending.result()
            if not links:
                break
            if links[-1][0] < stop:
                pending = reader.submit(chain.links, links[-1][0] + 1, stop, batch)
            else:
                pending = reader.submit(list)
            ok = walk.feed(links)
            if progress is not None:
                progress(len(links))
            if not ok:
                pending.cancel()
                break
    walk.finish(last)
    report.checked = walk.count
    report.last_position = walk.position if walk.count else None
    report.finding = walk.finding
    if report.finding is not None and report.finding.kind == UNSEALED:
        report.finding = _unsealed(report.finding.position)
    if not checkpoints:
        report.notes.append("no checkpoint in this range")
    elif not report.signed:
        report.notes.append("no checkpoint in this range is signed")
    return report


def _unsealed(position: int) -> Finding:
    return Finding(
        position,
        UNSEALED,
        f"position {position} and later have no hash: a log written before the chain "
        "(run dealtrail audit seal once), or hashes were removed",
    )


def seal(
    chain: ChainStore,
    *,
    progress: Callable[[int], None] | None = None,
    batch: int = SEAL_BATCH,
) -> int:
    """Chain every event that has no hash yet, oldest first; return how many."""
    first = chain.first_unsealed()
    if first is None:
        return 0
    before = chain.link_before(first) or (0, GENESIS)
    if before[1] is None:
        raise ChainError(f"position {before[0]} has no hash but was not found unsealed")
    after: tuple[int, bytes] = (before[0], before[1])
    count = 0
    while True:
        sealed = chain.seal_batch(after, batch)
        if not sealed:
            return count
        count += len(sealed)
        if progress is not None:
            progress(len(sealed))
        after = (sealed[-1][0], sealed[-1][2])
