"""The PostgreSQL event store's insert: one round trip, the same ordering, the hash chain.

The library's recorder keeps commit order equal to position order (no position is filled
in after a later one is visible; positions themselves can skip values) by taking the
events table's ``EXCLUSIVE`` lock in every insert transaction: BEGIN, LOCK, NOTIFY and
INSERT go out in one pipeline, then the client reads the result and sends COMMIT. The
lock is therefore held across a client round trip, and while the Python process is busy
(the API serving other requests) every other writer queues behind it.

This recorder does the same four steps inside one server-side function called in
autocommit mode: the statement's implicit transaction takes the lock, notifies, inserts
and commits without waiting on the client. Commit order still equals insert order, so a
reader tailing the log never passes over a gap that is filled later. The library ships a
similar function but without the lock; this one is created under its own name next to
the library's tables.

Under that same lock the function also extends the hash chain (``libs/chain_verifier.py``
defines it): it reads the newest stored event's position and hash, and gives each new
event its position, ``prev_position`` and ``hash = sha256(prev_hash || canonical
bytes)``, so concurrent appends form one unbroken line. While the newest event has no
hash (a log written before the chain, not yet sealed by ``dealtrail audit seal``) new
events get none either; the seal fills them in order.

Still under that lock, the function checks the aggregates the command only read (a
deal's pipeline, which each API process keeps in a cache): when one of them has a
version newer than the one the command decided on, nothing is stored and the call fails
with ``READ_CHANGED`` (raised here as :class:`ReadChanged`), so a pipeline changed by
another process is never decided on from an old copy. The check is one index probe per
read aggregate in the statement that appends, so it costs no round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import Error, InterfaceError, OperationalError
from psycopg.sql import SQL, Identifier, Literal

from libs.application.failures import ReadChanged

FUNCTION_PREFIX = "dealtrail_append_events"
# Appends with the versions of the aggregates the command read (see the module's doc).
CHECKED_FUNCTION_PREFIX = "dealtrail_append_checked"
READ_CHANGED = "DTR01"  # the SQLSTATE of a refused append: a read aggregate changed
CHECKPOINTS_TABLE = "event_checkpoints"


class OrderedInsertRecorder(PostgresApplicationRecorder):
    """Appends events with one call to a function that locks, checks what the command
    read, notifies, chains and inserts."""

    checks_read_versions = True  # insert_events(..., read=...) is honoured

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        if self.datastore.originator_id_type != "uuid":
            raise ValueError("the hash chain needs UUID aggregate ids")
        schema = Identifier(self.datastore.schema)
        # The same name as before the chain: processes still running older code call it
        # by name, so replacing its body makes their appends chain too.
        self.append_function_name = f"{FUNCTION_PREFIX}_{self.datastore.originator_id_type}"
        function = Identifier(self.append_function_name)
        table = Identifier(self.events_table_name)
        sequence = Literal(
            f'"{self.datastore.schema}"."{self.events_table_name}_notification_id_seq"'
        )
        names = {
            "schema": schema,
            "table": table,
            "checkpoints": Identifier(CHECKPOINTS_TABLE),
            "table_name": Literal(self.events_table_name),
            "schema_name": Literal(self.datastore.schema),
        }
        # Databases written before the chain get its columns; checked first so that a
        # start-up does not queue for the table's ACCESS EXCLUSIVE lock every time.
        self.sql_create_statements.append(
            SQL(
                "DO $DO$ BEGIN "
                "IF NOT EXISTS (SELECT 1 FROM information_schema.columns "
                "WHERE table_schema = {schema_name} AND table_name = {table_name} "
                "AND column_name = 'hash') THEN "
                "ALTER TABLE {schema}.{table} ADD COLUMN IF NOT EXISTS prev_position bigint, "
                "ADD COLUMN IF NOT EXISTS hash bytea; "
                "END IF; END $DO$"
            ).format(**names)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{checkpoints} ("
                "position bigint PRIMARY KEY, hash bytea NOT NULL, created_at text NOT NULL, "
                "public_key bytea, signature bytea)"
            ).format(**names)
        )
        self.checked_function_name = (
            f"{CHECKED_FUNCTION_PREFIX}_{self.datastore.originator_id_type}"
        )
        checked = Identifier(self.checked_function_name)
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{checked}(events {schema}.{event}[], "
                "read_ids uuid[], read_versions bigint[]) "
                "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ "
                "DECLARE "
                "e {schema}.{event}; "
                "p bigint; "
                "topic bytea; "
                "last_position bigint; "
                "last_hash bytea; "
                "BEGIN "
                "SET LOCAL lock_timeout = '{lock_timeout}s'; "
                "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "FOR i IN 1 .. coalesce(array_length(read_ids, 1), 0) LOOP "
                "IF EXISTS (SELECT 1 FROM {schema}.{table} r WHERE r.originator_id = read_ids[i] "
                "AND r.originator_version > read_versions[i]) THEN "
                "RAISE EXCEPTION USING ERRCODE = '{read_changed}', "
                "MESSAGE = 'read aggregate changed: ' || read_ids[i]; "
                "END IF; "
                "END LOOP; "
                "NOTIFY {channel}; "
                "SELECT s.notification_id, s.hash INTO last_position, last_hash "
                "FROM {schema}.{table} s ORDER BY s.notification_id DESC LIMIT 1; "
                "IF NOT FOUND THEN "
                "last_position := 0; last_hash := '\\x{genesis}'::bytea; "
                "END IF; "
                "FOREACH e IN ARRAY events LOOP "
                "p := nextval({sequence}::regclass); "
                "IF last_hash IS NOT NULL THEN "
                "topic := convert_to(e.topic, 'UTF8'); "
                "last_hash := sha256(last_hash || int8send(p) || uuid_send(e.originator_id) "
                "|| int8send(e.originator_version) || int4send(length(topic)) || topic "
                "|| int4send(length(e.state)) || e.state); "
                "END IF; "
                "INSERT INTO {schema}.{table} (notification_id, originator_id, "
                "originator_version, topic, state, prev_position, hash) "
                "VALUES (p, e.originator_id, e.originator_version, e.topic, e.state, "
                "last_position, last_hash); "
                "last_position := p; "
                "RETURN NEXT p; "
                "END LOOP; "
                "END; $BODY$"
            ).format(
                checked=checked,
                read_changed=SQL(READ_CHANGED),
                event=Identifier(self.stored_event_type_name),
                channel=Identifier(self.channel_name),
                lock_timeout=self.datastore.lock_timeout,
                sequence=sequence,
                genesis=SQL("00" * 32),
                **names,
            )
        )
        # The name appends had before the check: processes still running older code call
        # it, so it stays, as the checked append with nothing read.
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{function}(events {schema}.{event}[]) "
                "RETURNS SETOF bigint LANGUAGE sql AS $BODY$ "
                "SELECT * FROM {schema}.{checked}(events, '{{}}'::uuid[], '{{}}'::bigint[]) "
                "$BODY$"
            ).format(
                schema=schema,
                function=function,
                checked=checked,
                event=Identifier(self.stored_event_type_name),
            )
        )
        self.append_statement = SQL("SELECT * FROM {schema}.{checked}(%s, %s, %s)").format(
            schema=schema, checked=checked
        )

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        read: Mapping[UUID, int] | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        """Append the events; ``read``: aggregate id -> the version the command read
        (:class:`ReadChanged` when one is newer in the store; nothing is stored)."""
        if not stored_events:
            return []
        rows = [
            self.construct_pg_stored_event(e.originator_id, e.originator_version, e.topic, e.state)
            for e in stored_events
        ]
        read = read or {}
        params = (rows, list(read), list(read.values()))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            assert conn.autocommit
            try:
                curs.execute(self.append_statement, params, prepare=True)
            except Error as exc:
                if exc.sqlstate == READ_CHANGED:
                    raise ReadChanged([str(i) for i in read]) from None
                raise
            return [row[self.checked_function_name] for row in curs.fetchall()]
