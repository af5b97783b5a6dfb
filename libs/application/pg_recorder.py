"""The PostgreSQL event store's insert, done in one round trip with the same ordering.

The library's recorder keeps the log gap-free by taking the events table's ``EXCLUSIVE``
lock in every insert transaction: BEGIN, LOCK, NOTIFY and INSERT go out in one pipeline,
then the client reads the result and sends COMMIT. The lock is therefore held across a
client round trip, and while the Python process is busy (the API serving other requests)
every other writer queues behind it.

This recorder does the same four steps inside one server-side function called in
autocommit mode: the statement's implicit transaction takes the lock, notifies, inserts
and commits without waiting on the client. Commit order still equals insert order, so a
reader tailing the log never passes over a gap that is filled later. The library ships a
similar function but without the lock; this one is created under its own name next to
the library's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import InterfaceError, OperationalError
from psycopg.sql import SQL, Identifier

FUNCTION_PREFIX = "dealtrail_append_events"


class OrderedInsertRecorder(PostgresApplicationRecorder):
    """Appends events with one call to a function that locks, notifies and inserts."""

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
        self.append_function_name = f"{FUNCTION_PREFIX}_{self.datastore.originator_id_type}"
        function = Identifier(self.append_function_name)
        table = Identifier(self.events_table_name)
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{function}(events {schema}.{event}[]) "
                "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ "
                "BEGIN "
                "SET LOCAL lock_timeout = '{lock_timeout}s'; "
                "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "NOTIFY {channel}; "
                "RETURN QUERY INSERT INTO {schema}.{table} AS t "
                "(originator_id, originator_version, topic, state) "
                "SELECT originator_id, originator_version, topic, state FROM unnest(events) "
                "RETURNING notification_id; "
                "END; $BODY$"
            ).format(
                schema=schema,
                function=function,
                event=Identifier(self.stored_event_type_name),
                table=table,
                channel=Identifier(self.channel_name),
                lock_timeout=self.datastore.lock_timeout,
            )
        )
        self.append_statement = SQL("SELECT * FROM {schema}.{function}((%s))").format(
            schema=schema, function=function
        )

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return []
        rows = [
            self.construct_pg_stored_event(e.originator_id, e.originator_version, e.topic, e.state)
            for e in stored_events
        ]
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            assert conn.autocommit
            curs.execute(self.append_statement, (rows,), prepare=True)
            return [row[self.append_function_name] for row in curs.fetchall()]
