"""The PostgreSQL event store appends in one server-side call, keeps the log gap-free,
and chains every event to the one stored before it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from libs.application.app import DealtrailApplication
from libs.application.integrity import chain_of, verify_store
from libs.application.pg_recorder import OrderedInsertRecorder
from libs.application.store import StoreLocation
from tests.conftest import PG_URL, need_postgres

WRITERS = 6
EVENTS_PER_WRITER = 150


@pytest.fixture
def app() -> Iterator[DealtrailApplication]:
    need_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    env = StoreLocation.parse(PG_URL, schema).eventsourcing_env(pool_size=WRITERS + 2)
    application = DealtrailApplication(env=env)
    yield application
    application.close()
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _event(originator: uuid.UUID, version: int = 1) -> StoredEvent:
    return StoredEvent(originator, version, "tests:Probe.Happened", b"{}")


def test_the_application_uses_the_one_call_recorder(app: DealtrailApplication) -> None:
    assert isinstance(app.recorder, OrderedInsertRecorder)


def test_appending_returns_the_positions_given_and_rejects_a_taken_version(
    app: DealtrailApplication,
) -> None:
    recorder = app.recorder
    first, second = uuid.uuid4(), uuid.uuid4()
    ids = recorder.insert_events([_event(first, 1), _event(first, 2)])
    assert ids is not None and len(ids) == 2 and ids[1] == ids[0] + 1
    stored = recorder.select_notifications(1, 10)
    assert [(n.id, n.originator_id, n.originator_version) for n in stored] == [
        (ids[0], first, 1),
        (ids[1], first, 2),
    ]
    # A batch whose second event takes a used version is refused as a whole.
    with pytest.raises(IntegrityError):
        recorder.insert_events([_event(second, 1), _event(first, 2)])
    assert [n.id for n in recorder.select_notifications(1, 10)] == ids
    assert recorder.select_events(second) == []


def test_an_append_waits_for_the_tables_exclusive_lock(app: DealtrailApplication) -> None:
    """The function takes the lock that orders commits; seen as a waiting lock in pg_locks."""
    recorder = app.recorder
    assert isinstance(recorder, OrderedInsertRecorder)
    schema, table = recorder.datastore.schema, recorder.events_table_name
    done = threading.Event()
    with psycopg.connect(PG_URL) as holder:
        holder.execute(f'LOCK TABLE "{schema}"."{table}" IN EXCLUSIVE MODE')

        def append() -> None:
            recorder.insert_events([_event(uuid.uuid4())])
            done.set()

        thread = threading.Thread(target=append, daemon=True)
        thread.start()
        waiting = False
        deadline = time.monotonic() + 10
        with psycopg.connect(PG_URL, autocommit=True) as observer:
            while not waiting and time.monotonic() < deadline:
                row = observer.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s AND l.mode = 'ExclusiveLock' "
                    "AND NOT l.granted",
                    (schema, table),
                ).fetchone()
                waiting = bool(row and row[0])
                time.sleep(0.02)
        assert waiting, "the append did not ask for the EXCLUSIVE lock"
        assert not done.is_set()
        holder.rollback()
    thread.join(10)
    assert done.is_set()
    assert recorder.max_notification_id() == 1


def test_a_reader_tailing_concurrent_writers_never_passes_over_a_position(
    app: DealtrailApplication,
) -> None:
    """Positions become visible in order: what a tailing reader saw is the whole log."""
    recorder = app.recorder
    stop = threading.Event()
    seen: list[int] = []

    def tail() -> None:
        last = 0
        while True:
            finished = stop.is_set()
            batch = recorder.select_notifications(last + 1, 50)
            seen.extend(n.id for n in batch)
            if batch:
                last = batch[-1].id
            elif finished:
                return

    def write() -> None:
        for _ in range(EVENTS_PER_WRITER):
            recorder.insert_events([_event(uuid.uuid4())])

    reader = threading.Thread(target=tail)
    writers = [threading.Thread(target=write) for _ in range(WRITERS)]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join(30)
    everything = [n.id for n in recorder.select_notifications(1, WRITERS * EVENTS_PER_WRITER + 1)]
    assert len(everything) == WRITERS * EVENTS_PER_WRITER
    assert seen == everything
    # ...and the hash chain is one unbroken line through all of them.
    report = verify_store(chain_of(recorder))
    assert report.ok, report.finding
    assert report.checked == len(everything)


def test_concurrent_appends_with_rolled_back_batches_keep_one_unbroken_chain(
    app: DealtrailApplication,
) -> None:
    """Refused batches spend positions (gaps); every stored event still links to the one
    stored before it, whichever writer committed it."""
    recorder = app.recorder
    taken = uuid.uuid4()
    recorder.insert_events([_event(taken)])
    refused = []

    def write(n: int) -> None:
        for i in range(EVENTS_PER_WRITER // 3):
            batch = [_event(uuid.uuid4()), _event(uuid.uuid4())]
            if (i + n) % 4 == 0:
                batch.append(_event(taken))  # version 1 is taken: the whole batch rolls back
            try:
                recorder.insert_events(batch)
            except IntegrityError:
                refused.append(n)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stored = [n.id for n in recorder.select_notifications(1, 10_000)]
    assert refused and stored[-1] > len(stored)  # there are gaps
    report = verify_store(chain_of(recorder))
    assert report.ok, report.finding
    assert report.checked == len(stored)
