"""Reading the event log: stored notifications decoded into records, in position order.

An event whose stored state cannot be decoded comes back as an
:class:`UndecodableRecord` (its envelope without a payload), so that every projection
that reads its type parks it instead of stopping (see ``parking``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, Notification
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.app import DealtrailApplication
from libs.application.records import EventRecord, decode, decode_stored, event_type_of, split_topic
from libs.application.store import POSTGRES, StoreLocation


@dataclass(frozen=True, slots=True)
class UndecodableRecord(EventRecord):
    """A stored event whose state could not be decoded (``error`` says why).

    Its envelope (position, aggregate, type) is known; its payload is not. Every
    projection that reads events of its type parks it without trying to apply it.
    """

    error: Exception | None = None


def undecodable(notification: Notification, error: Exception) -> UndecodableRecord:
    return _undecodable(
        notification.id,
        notification.originator_id,
        notification.originator_version,
        notification.topic,
        error,
    )


def _undecodable(
    position: int, originator_id: Any, version: int, topic: str, error: Exception
) -> UndecodableRecord:
    aggregate_type, event_type = split_topic(topic)
    return UndecodableRecord(
        position,
        originator_id if isinstance(originator_id, UUID) else UUID(int=0),
        aggregate_type,
        event_type,
        version,
        None,
        None,
        None,
        {},
        str(originator_id),
        error=error,
    )


class EventSource:
    """Reads and decodes the event store's notification log (blocking calls)."""

    def __init__(self, application: DealtrailApplication) -> None:
        self.application = application

    def read(self, after: int, limit: int, stop: int | None = None) -> list[EventRecord]:
        notifications = self.application.recorder.select_notifications(
            after + 1, limit, stop=stop, inclusive_of_start=True
        )
        records = []
        for notification in notifications:
            try:
                records.append(decode(self.application.mapper, notification))
            except Exception as exc:  # noqa: BLE001 - a poison event, parked where it is read
                records.append(undecodable(notification, exc))
        return records

    def head(self) -> int:
        return self.application.head_position()

    @property
    def location(self) -> StoreLocation | None:
        """Where the store is, when it is PostgreSQL (so that another process can read the
        log directly, see :class:`LogReader`); None otherwise."""
        env = self.application.env
        if "postgres" not in (env.get("PERSISTENCE_MODULE") or ""):
            return None
        return StoreLocation(
            backend=POSTGRES,
            host=env.get("POSTGRES_HOST") or "127.0.0.1",
            port=int(env.get("POSTGRES_PORT") or 5432),
            user=env.get("POSTGRES_USER") or "postgres",
            password=env.get("POSTGRES_PASSWORD") or "",
            dbname=env.get("POSTGRES_DBNAME") or "",
            schema=env.get("POSTGRES_SCHEMA") or "",
        )

    @property
    def events_table(self) -> str:
        name: str = getattr(self.application.recorder, "events_table_name", "stored_events")
        return name

    @property
    def channel(self) -> str | None:
        return getattr(self.application.recorder, "channel_name", None)

    async def count_after(self, conn: AsyncConnection, position: int, limit: int) -> int:
        """How many stored events come after ``position``, counted up to ``limit``.

        Counted, not ``head - position``: PostgreSQL positions can have gaps (an insert
        that is rolled back has used its sequence values). The read side's connection
        reads the store's table directly; the count stops at ``limit`` rows of its index.
        """
        events_table = self.events_table
        column = "notification_id" if conn.dialect.name == "postgresql" else "rowid"
        table = conn.dialect.identifier_preparer.quote(events_table)
        query = text(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {column} > :position "
            f"LIMIT :limit) AS after"
        )
        count = (await conn.execute(query, {"position": position, "limit": limit})).scalar()
        return int(count or 0)


@dataclass
class Batch:
    """Consecutive events of the log as a replay reads them."""

    records: list[EventRecord]  # the events decoded (those of the types asked for)
    last: int = 0  # position of the last event read (0: nothing read)
    count: int = 0  # events read
    event_types: list[str] = field(default_factory=list)  # the type of every event read

    @classmethod
    def of(cls, records: list[EventRecord]) -> Batch:
        """A batch of records decoded in full (every event read is among them)."""
        last = records[-1].position if records else 0
        return cls(records, last, len(records), [r.event_type for r in records])


class LogReader:
    """Reads the log of a PostgreSQL store straight through one asyncpg connection.

    Rows come back as the driver's tuples; only the events of the types ``wanted`` says
    yes to are decoded (each once), the others are only counted, by type. A replay that
    keeps a few read models needs a fraction of the log decoded, and none of the
    notification objects the library's recorder would build.
    """

    def __init__(
        self, conn: Any, events_table: str, mapper: Mapper[Any], wanted: Callable[[str], bool]
    ) -> None:
        self.conn = conn
        self.mapper = mapper
        self.wanted = wanted
        table = '"' + events_table.replace('"', '""') + '"'
        self.query = (
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {table} WHERE notification_id > $1 ORDER BY notification_id LIMIT $2"
        )
        self._wanted: dict[str, bool] = {}

    async def read(self, after: int, limit: int) -> Batch:
        rows = await self.conn.fetch(self.query, after, limit)
        if not rows:
            return Batch([])
        records: list[EventRecord] = []
        types: list[str] = []
        wanted = self._wanted
        for position, originator_id, version, topic, state in rows:
            event_type = event_type_of(topic)
            types.append(event_type)
            want = wanted.get(event_type)
            if want is None:
                want = wanted[event_type] = self.wanted(event_type)
            if not want:
                continue
            try:
                records.append(
                    decode_stored(self.mapper, position, originator_id, version, topic, state)
                )
            except Exception as exc:  # noqa: BLE001 - a poison event, parked where it is read
                records.append(_undecodable(position, originator_id, version, topic, exc))
        return Batch(records, rows[-1][0], len(rows), types)
