"""Reading the event log: stored notifications decoded into records, in position order.

An event whose stored state cannot be decoded comes back as an
:class:`UndecodableRecord` (its envelope without a payload), so that every projection
that reads its type parks it instead of stopping (see ``parking``).
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from eventsourcing.persistence import Notification
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.app import DealtrailApplication
from libs.application.records import EventRecord, decode, split_topic


@dataclass(frozen=True, slots=True)
class UndecodableRecord(EventRecord):
    """A stored event whose state could not be decoded (``error`` says why).

    Its envelope (position, aggregate, type) is known; its payload is not. Every
    projection that reads events of its type parks it without trying to apply it.
    """

    error: Exception | None = None


def undecodable(notification: Notification, error: Exception) -> UndecodableRecord:
    aggregate_type, event_type = split_topic(notification.topic)
    originator_id = notification.originator_id
    return UndecodableRecord(
        notification.id,
        originator_id if isinstance(originator_id, UUID) else UUID(int=0),
        aggregate_type,
        event_type,
        notification.originator_version,
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
    def channel(self) -> str | None:
        return getattr(self.application.recorder, "channel_name", None)

    async def count_after(self, conn: AsyncConnection, position: int, limit: int) -> int:
        """How many stored events come after ``position``, counted up to ``limit``.

        Counted, not ``head - position``: PostgreSQL positions can have gaps (an insert
        that is rolled back has used its sequence values). The read side's connection
        reads the store's table directly; the count stops at ``limit`` rows of its index.
        """
        events_table: str = getattr(self.application.recorder, "events_table_name", "stored_events")
        column = "notification_id" if conn.dialect.name == "postgresql" else "rowid"
        table = conn.dialect.identifier_preparer.quote(events_table)
        query = text(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {column} > :position "
            f"LIMIT :limit) AS after"
        )
        count = (await conn.execute(query, {"position": position, "limit": limit})).scalar()
        return int(count or 0)
