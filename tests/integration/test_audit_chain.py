"""The hash-chained event log: tampering is found and named, exports prove themselves,
restores reproduce the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from libs.application.app import DealtrailApplication
from libs.application.integrity import (
    ChainError,
    CheckpointPolicy,
    Signer,
    chain_of,
    checkpoint_at,
    checkpoint_if_due,
    seal,
    verify_store,
)
from libs.chain_verifier import GENESIS, event_hash
from services.audit.checkpoints import Checkpointer
from services.cli import main as cli
from services.demo.generator import generate
from services.runtime.stores import open_application
from tests.conftest import PG_URL, Backend, TestClock
from tests.integration.test_read_models import close_stores, open_stores, table_rows

ROOT = Path(__file__).resolve().parents[2]
LOCK_WAIT_SECONDS = 60
DEMO_END = datetime(2026, 5, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
KEY = Signer.generate()
OTHER_KEY = Signer.generate()


class Raw:
    """Direct SQL on the events table, as someone with database access could run it."""

    def __init__(self, backend: Backend, app: DealtrailApplication) -> None:
        self.backend = backend
        table = app.recorder.events_table_name
        if backend.name == "sqlite":
            self.table, self.pos = table, "rowid"
        else:
            self.table, self.pos = f'"{backend.schema}"."{table}"', "notification_id"
        self.checkpoints = (
            "event_checkpoints"
            if backend.name == "sqlite"
            else f'"{backend.schema}"."event_checkpoints"'
        )

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self.backend.name == "sqlite":
            path = self.backend.url.split(":///", 1)[1]
            with contextlib.closing(
                sqlite3.connect(path, isolation_level=None, timeout=LOCK_WAIT_SECONDS)
            ) as conn:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def positions(self) -> list[int]:
        return [r[0] for r in self.execute(f"SELECT {self.pos} FROM {self.table} ORDER BY 1")]

    def change_payload(self, position: int) -> None:
        (state,) = self.execute(
            f"SELECT state FROM {self.table} WHERE {self.pos} = %s", (position,)
        )[0]
        edited = bytes(state).replace(b'"actor":"', b'"actor":"x', 1)
        assert edited != bytes(state)
        self.execute(
            f"UPDATE {self.table} SET state = %s WHERE {self.pos} = %s", (edited, position)
        )

    def delete(self, position: int) -> None:
        self.execute(f"DELETE FROM {self.table} WHERE {self.pos} = %s", (position,))

    def swap(self, a: int, b: int) -> None:
        self.execute(f"UPDATE {self.table} SET {self.pos} = -1 WHERE {self.pos} = %s", (a,))
        self.execute(f"UPDATE {self.table} SET {self.pos} = %s WHERE {self.pos} = %s", (a, b))
        self.execute(f"UPDATE {self.table} SET {self.pos} = %s WHERE {self.pos} = -1", (b,))


@pytest.fixture
def app(backend: Backend, tmp_path: Path) -> Iterator[DealtrailApplication]:
    application = open_application(backend.settings(tmp_path / "data"))
    generate(application, deals=40, seed=5, end=DEMO_END)
    yield application
    application.close()


@pytest.fixture
def raw(backend: Backend, app: DealtrailApplication) -> Raw:
    return Raw(backend, app)


def verify(app: DealtrailApplication, **kwargs: Any) -> Any:
    return verify_store(chain_of(app.recorder), **kwargs)


# --- verify on the database ---------------------------------------------------------------


def test_a_clean_log_verifies_and_every_event_is_checked(
    app: DealtrailApplication, raw: Raw
) -> None:
    report = verify(app)
    assert report.ok, report.finding
    assert report.checked == len(raw.positions()) > 200
    assert report.last_position == raw.positions()[-1]


def test_a_changed_payload_is_named_as_changed_at_its_position(
    app: DealtrailApplication, raw: Raw
) -> None:
    target = raw.positions()[57]
    raw.change_payload(target)
    report = verify(app)
    assert not report.ok
    assert (report.finding.position, report.finding.kind) == (target, "changed")
    assert report.checked == 57  # everything before it held


def test_a_deleted_event_is_named_as_missing(app: DealtrailApplication, raw: Raw) -> None:
    target = raw.positions()[80]
    raw.delete(target)
    report = verify(app)
    assert (report.finding.position, report.finding.kind) == (target, "missing")


def test_two_swapped_events_are_named_as_reordered_at_the_first(
    app: DealtrailApplication, raw: Raw
) -> None:
    positions = raw.positions()
    raw.swap(positions[30], positions[45])
    report = verify(app)
    assert (report.finding.position, report.finding.kind) == (positions[30], "reordered")


def test_verify_checks_only_the_range_asked_for(app: DealtrailApplication, raw: Raw) -> None:
    positions = raw.positions()
    raw.change_payload(positions[100])
    before = verify(app, start=positions[10], stop=positions[99])
    assert before.ok and before.checked == 90
    after = verify(app, start=positions[101])
    assert after.ok and after.checked == len(positions) - 101
    within = verify(app, start=positions[90], stop=positions[110])
    assert (within.finding.position, within.finding.kind) == (positions[100], "changed")


def test_a_rolled_back_append_leaves_a_harmless_gap(app: DealtrailApplication, raw: Raw) -> None:
    from eventsourcing.persistence import IntegrityError, StoredEvent

    head = app.head_position()
    taken = raw.execute(
        f"SELECT originator_id, originator_version FROM {raw.table} WHERE {raw.pos} = %s",
        (head,),
    )[0]
    taken_id = uuid.UUID(str(taken[0]))
    fresh = uuid.uuid4()
    with pytest.raises(IntegrityError):
        app.recorder.insert_events(
            [
                StoredEvent(fresh, 1, "tests:Probe.Happened", b"{}"),
                StoredEvent(taken_id, taken[1], "tests:Probe.Happened", b"{}"),
            ]
        )
    (position,) = app.recorder.insert_events([StoredEvent(fresh, 1, "tests:Probe.Happened", b"{}")])
    if raw.backend.name == "postgres":
        assert position == head + 3  # the rolled-back batch spent two positions
    report = verify(app)
    assert report.ok, report.finding
    assert report.last_position == position


def test_removing_the_newest_events_is_caught_by_a_checkpoint(
    app: DealtrailApplication, raw: Raw
) -> None:
    chain = chain_of(app.recorder)
    checkpoint = checkpoint_at(chain, None, app.head_position(), NOW)
    assert checkpoint is not None and checkpoint.signature is None
    positions = raw.positions()
    raw.delete(positions[-1])
    raw.delete(positions[-2])
    report = verify(app)
    assert (report.finding.position, report.finding.kind) == (positions[-1], "missing")


def _rewrite_from(raw: Raw, position: int) -> None:
    """Change an event and recompute every hash after it, as an insider could."""
    raw.change_payload(position)
    rows = raw.execute(
        f"SELECT {raw.pos}, originator_id, originator_version, topic, state, prev_position "
        f"FROM {raw.table} WHERE {raw.pos} >= %s ORDER BY 1",
        (position,),
    )
    (last,) = raw.execute(
        f"SELECT hash FROM {raw.table} WHERE {raw.pos} < %s ORDER BY {raw.pos} DESC LIMIT 1",
        (position,),
    )[0]
    last = bytes(last)
    for pos, oid, version, topic, state, _ in rows:
        last = event_hash(
            last, pos, uuid.UUID(str(oid)).bytes, version, topic.encode(), bytes(state)
        )
        raw.execute(f"UPDATE {raw.table} SET hash = %s WHERE {raw.pos} = %s", (last, pos))


def test_a_rewritten_history_with_recomputed_hashes_is_caught_by_a_checkpoint(
    app: DealtrailApplication, raw: Raw
) -> None:
    positions = raw.positions()
    checkpoint_at(chain_of(app.recorder), Signer.from_text(KEY), positions[150], NOW)
    _rewrite_from(raw, positions[20])
    report = verify(app)
    assert (report.finding.position, report.finding.kind) == (positions[150], "changed")
    assert "checkpoint" in report.finding.message

    # Moving the checkpoint along needs the private key: a re-signed one is refused.
    new_hash = bytes(
        raw.execute(f"SELECT hash FROM {raw.table} WHERE {raw.pos} = %s", (positions[150],))[0][0]
    )
    forged = Signer.from_text(OTHER_KEY).sign(positions[150], new_hash, "2026-06-01T12:00:00+00:00")
    raw.execute(
        f"UPDATE {raw.checkpoints} SET hash = %s, public_key = %s, signature = %s",
        (forged.hash, forged.public_key, forged.signature),
    )
    trusted = [Signer.from_text(KEY).public_key]
    report = verify(app, trusted=trusted)
    assert (report.finding.position, report.finding.kind) == (positions[150], "bad_signature")


def test_verify_on_the_command_line_names_the_break_and_fails(
    app: DealtrailApplication,
    raw: Raw,
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    point_cli_at(backend, tmp_path, monkeypatch)
    assert cli(["audit", "verify", "--quiet"]) == 0
    assert "chain intact" in capsys.readouterr().out
    target = raw.positions()[12]
    raw.delete(target)
    assert cli(["audit", "verify", "--json", "--quiet"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["first_break"]["position"] == target
    assert answer["first_break"]["kind"] == "missing"


# --- seal ---------------------------------------------------------------------------------


def test_seal_chains_a_log_written_before_the_chain_once(
    backend: Backend, tmp_path: Path, app: DealtrailApplication, raw: Raw
) -> None:
    count = len(raw.positions())
    app.close()
    # A database from before: no chain columns at all.
    raw.execute(f"ALTER TABLE {raw.table} DROP COLUMN hash")
    raw.execute(f"ALTER TABLE {raw.table} DROP COLUMN prev_position")
    legacy = open_application(backend.settings(tmp_path / "data"))
    try:
        report = verify(legacy)
        assert (report.finding.position, report.finding.kind) == (raw.positions()[0], "unsealed")
        # Appends before the seal stay unsealed; the seal takes them in order.
        generate(legacy, deals=3, seed=9, end=DEMO_END)
        total = len(raw.positions())
        assert total > count
        chain = chain_of(legacy.recorder)
        assert seal(chain, batch=50) == total
        assert seal(chain) == 0  # idempotent
        assert verify(legacy).ok and verify(legacy).checked == total
        generate(legacy, deals=2, seed=11, end=DEMO_END)  # and the chain goes on
        assert verify(legacy).checked == len(raw.positions())
    finally:
        legacy.close()


def test_seal_refuses_to_paper_over_hashes_removed_in_the_middle(
    app: DealtrailApplication, raw: Raw
) -> None:
    positions = raw.positions()
    raw.execute(f"UPDATE {raw.table} SET hash = NULL WHERE {raw.pos} = %s", (positions[40],))
    assert verify(app).finding.kind in ("unsealed", "changed")
    with pytest.raises(ChainError, match="sealing would hide it"):
        seal(chain_of(app.recorder))


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoints_come_every_n_positions_or_after_the_interval_and_never_twice(
    app: DealtrailApplication,
) -> None:
    chain = chain_of(app.recorder)
    policy = CheckpointPolicy(every=100, interval=timedelta(minutes=5))
    signer = Signer.from_text(KEY)
    first = checkpoint_if_due(chain, signer, policy, NOW)
    assert first is not None and first.position == app.head_position()
    assert checkpoint_if_due(chain, signer, policy, NOW + timedelta(hours=1)) is None  # no news

    generate(app, deals=2, seed=2, end=DEMO_END)  # fewer than 100 new events
    assert app.head_position() - first.position < 100
    assert checkpoint_if_due(chain, signer, policy, NOW + timedelta(minutes=1)) is None
    second = checkpoint_if_due(chain, signer, policy, NOW + timedelta(minutes=6))
    assert second is not None and second.position == app.head_position()

    generate(app, deals=30, seed=3, end=DEMO_END)  # well over 100 new events
    third = checkpoint_if_due(chain, signer, policy, NOW + timedelta(minutes=7))
    assert third is not None and third.position == app.head_position()
    stored = chain.checkpoints(1, app.head_position())
    assert stored == [first, second, third]
    report = verify(app, trusted=[signer.public_key])
    assert report.ok and report.signed == 3


def test_two_checkpoint_writers_on_one_store_write_each_checkpoint_once(
    backend: Backend, tmp_path: Path, app: DealtrailApplication
) -> None:
    """An active and a standby worker (or a restarted one) share the store's decision."""
    other = open_application(backend.settings(tmp_path / "data"))
    try:
        policy = CheckpointPolicy(every=1, interval=timedelta(minutes=5))
        writers = [
            Checkpointer(a, None, policy, clock=lambda: NOW) for a in (app, other) for _ in range(3)
        ]
        results: list[Any] = []
        threads = [threading.Thread(target=lambda w=w: results.append(w.step())) for w in writers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len([r for r in results if r is not None]) == 1
        assert len(chain_of(app.recorder).checkpoints(1, app.head_position())) == 1
    finally:
        other.close()


async def test_the_checkpointer_task_writes_checkpoints_until_stopped(
    app: DealtrailApplication,
) -> None:
    checkpointer = Checkpointer(
        app, None, CheckpointPolicy(1, timedelta(minutes=5)), poll_seconds=0.05
    )
    task = asyncio.create_task(checkpointer.run())
    chain = chain_of(app.recorder)
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        if chain.checkpoints(1, 2**62):
            break
        await asyncio.sleep(0.05)
    checkpointer.stop()
    await asyncio.wait_for(task, 10)
    assert [c.position for c in chain.checkpoints(1, 2**62)] == [app.head_position()]


# --- the concurrent appenders ------------------------------------------------------------------


def test_concurrent_appenders_in_two_applications_keep_one_unbroken_chain(
    backend: Backend, tmp_path: Path, app: DealtrailApplication
) -> None:
    from eventsourcing.persistence import StoredEvent

    other = open_application(backend.settings(tmp_path / "data"))
    before = app.head_position()
    try:

        def write(application: DealtrailApplication) -> None:
            for _ in range(60):
                application.recorder.insert_events(
                    [StoredEvent(uuid.uuid4(), 1, "tests:Probe.Happened", b'{"n":1}')]
                )

        threads = [threading.Thread(target=write, args=(a,)) for a in (app, other, app, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        report = verify(app)
        assert report.ok, report.finding
        assert report.last_position == app.head_position() >= before + 240
    finally:
        other.close()


# --- export, verify-export, restore -----------------------------------------------------------


def point_cli_at(backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", backend.url)
    monkeypatch.setenv("DEALTRAIL_DB_SCHEMA", backend.schema)
    monkeypatch.setenv("DEALTRAIL_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def fresh(backend: Backend, tmp_path: Path) -> Iterator[Backend]:
    """A second, empty store of the same kind."""
    if backend.name == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'restored.db'}")
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield Backend("postgres", backend.url, schema)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def export(path: Path, *extra: str) -> list[dict[str, Any]]:
    assert cli(["export", "events", "--output", str(path), "--quiet", *extra]) == 0
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def read_models(backend: Backend, data_dir: Path, clock: TestClock) -> dict[Any, Any]:
    """Every read-model table's rows, after the worker has caught up."""
    stores = await open_stores(backend, data_dir, clock)
    try:
        await stores.worker.catch_up()
        tables = {}
        for projection in stores.projections.values():
            for key in projection.tables(1):
                tables[projection.name, key] = await table_rows(stores.engine, projection, key)
        return tables
    finally:
        await close_stores(stores)


async def test_export_verify_export_restore_give_identical_read_models_and_a_sound_chain(
    backend: Backend,
    fresh: Backend,
    app: DealtrailApplication,
    tmp_path: Path,
    clock: TestClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    point_cli_at(backend, tmp_path, monkeypatch)
    monkeypatch.setenv("DEALTRAIL_SIGNING_KEY", KEY)
    head = app.head_position()
    checkpoint_at(chain_of(app.recorder), Signer.from_text(KEY), head // 2, NOW)
    target = tmp_path / "events.jsonl"
    lines = export(target)
    checkpoints = [line["checkpoint"] for line in lines if "checkpoint" in line]
    events = [line for line in lines if "checkpoint" not in line]
    assert [e["position"] for e in events] == list(range(1, head + 1))
    # the periodic one in the middle, and the export's own at its end
    assert [c["position"] for c in checkpoints] == [head // 2, head]
    assert lines[-1] == {"checkpoint": checkpoints[-1]}
    assert events[0]["prev_hash"] == GENESIS.hex() and events[0]["prev_position"] == 0
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(events))

    public = Signer.from_text(KEY).public_key_text
    capsys.readouterr()
    assert cli(["audit", "verify-export", str(target), "--public-key", public]) == 0
    assert "every event is covered by a signed checkpoint" in capsys.readouterr().out

    expected = await read_models(backend, tmp_path / "data", clock)

    point_cli_at(fresh, tmp_path, monkeypatch)
    monkeypatch.delenv("DEALTRAIL_SIGNING_KEY")
    restore = ["import", "events", str(target), "--public-key", public, "--quiet"]
    assert await asyncio.to_thread(cli, restore) == 0  # the command runs its own loop
    got = await read_models(fresh, tmp_path / "data", clock)
    assert got == expected
    assert sum(len(rows) for rows in got.values()) > 500

    capsys.readouterr()
    assert cli(["audit", "verify", "--public-key", public, "--quiet"]) == 0
    assert f"chain intact: {head} event(s)" in capsys.readouterr().out
    restored = open_application(fresh.settings(tmp_path / "data"))
    try:
        assert chain_of(restored.recorder).checkpoints(1, head) == chain_of(
            app.recorder
        ).checkpoints(1, head)
        generate(restored, deals=1, seed=77, end=DEMO_END)  # new events chain on
        report = verify(restored)
        assert report.ok and report.checked > head
    finally:
        restored.close()


def test_the_verifier_module_alone_checks_a_file_with_no_database(
    backend: Backend,
    app: DealtrailApplication,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point_cli_at(backend, tmp_path, monkeypatch)
    monkeypatch.setenv("DEALTRAIL_SIGNING_KEY", KEY)
    target = tmp_path / "events.jsonl"
    export(target)
    alone = tmp_path / "auditor"
    alone.mkdir()
    shutil.copy(ROOT / "libs" / "chain_verifier.py", alone / "chain_verifier.py")
    public = Signer.from_text(KEY).public_key_text

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-I", "chain_verifier.py", *args],
            cwd=alone,
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
            timeout=120,
        )

    good = run(str(target), "--public-key", public)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "every event is covered by a signed checkpoint" in good.stdout
    other = run(str(target), "--public-key", Signer.from_text(OTHER_KEY).public_key_text)
    assert other.returncode == 1 and "bad_signature" in other.stdout


def _rewrite_line(path: Path, match: Any, change: Any) -> Path:
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        data = json.loads(line)
        if match(data):
            change(data)
            lines[i] = json.dumps(data)
            break
    else:
        raise AssertionError("no line matched")
    out = path.with_name("tampered-" + path.name)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _forge_signature(data: dict[str, Any]) -> None:
    signature = bytearray(base64.b64decode(data["checkpoint"]["signature"]))
    signature[0] ^= 1
    data["checkpoint"]["signature"] = base64.b64encode(bytes(signature)).decode()


@pytest.mark.parametrize(
    ("name", "match", "change", "kind"),
    [
        ("forged signature", lambda d: "checkpoint" in d, _forge_signature, "bad_signature"),
        (
            "edited payload",
            lambda d: d.get("type") == "DealWon",
            lambda d: d["payload"].update(note="changed"),
            "malformed",
        ),
        (
            "edited state",
            lambda d: d.get("position") == 20,
            lambda d: d.update(
                state=base64.b64encode(
                    base64.b64decode(d["state"]).replace(b"{", b"{ ", 1)
                ).decode()
            ),
            "changed",
        ),
    ],
)
def test_a_tampered_file_is_refused_and_nothing_is_restored(
    backend: Backend,
    fresh: Backend,
    app: DealtrailApplication,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    match: Any,
    change: Any,
    kind: str,
) -> None:
    point_cli_at(backend, tmp_path, monkeypatch)
    monkeypatch.setenv("DEALTRAIL_SIGNING_KEY", KEY)
    target = tmp_path / "events.jsonl"
    export(target)
    tampered = _rewrite_line(target, match, change)
    public = Signer.from_text(KEY).public_key_text
    capsys.readouterr()
    assert cli(["audit", "verify-export", str(tampered), "--public-key", public, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["finding"]["kind"] == kind, name

    point_cli_at(fresh, tmp_path, monkeypatch)
    assert cli(["import", "events", str(tampered), "--quiet"]) == 1
    assert "refused" in capsys.readouterr().err
    restored = open_application(fresh.settings(tmp_path / "data"))
    try:
        assert restored.head_position() == 0  # nothing written
    finally:
        restored.close()


def test_restore_refuses_a_partial_export_and_a_store_that_is_not_empty(
    backend: Backend,
    app: DealtrailApplication,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    point_cli_at(backend, tmp_path, monkeypatch)
    partial, whole = tmp_path / "partial.jsonl", tmp_path / "whole.jsonl"
    export(partial, "--from-position", "10")
    export(whole)
    capsys.readouterr()
    assert cli(["audit", "verify-export", str(partial)]) == 0  # consistent, anchored mid-way
    head = app.head_position()
    assert cli(["import", "events", str(partial), "--quiet"]) == 1
    assert "complete export" in capsys.readouterr().err
    assert cli(["import", "events", str(whole), "--quiet"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert app.head_position() == head


def test_chain_of_names_a_recorder_without_a_chain() -> None:
    class Other:
        pass

    with pytest.raises(ChainError):
        chain_of(Other())  # type: ignore[arg-type]
