"""The event log as JSON Lines: one event a line, in log (position) order, with its link.

Each event line is ``EventRecord.as_json_dict()`` (``position``, ``aggregate_id``,
``aggregate_type``, ``type``, ``version``, ``actor``, ``occurred_at``, ``recorded_at``,
``payload``) plus what the hash chain needs (``topic``, ``state`` in base64,
``prev_position``, ``prev_hash``, ``hash``). Each checkpoint in the range follows the
event at its position as ``{"checkpoint": {...}}``. ``libs/chain_verifier.py`` reads
this format; the CLI command and ``GET /v1/audit/export`` write the same lines.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from libs.application.app import DealtrailApplication, utc_now
from libs.application.integrity import Signer, StoredRow, chain_of, checkpoint_at
from libs.application.records import decode
from libs.chain_verifier import GENESIS, Checkpoint

BATCH_SIZE = 1000


def export_bounds(
    app: DealtrailApplication, from_position: int = 1, to_position: int | None = None
) -> tuple[int, int]:
    """(first, last) positions to export; the last defaults to the head right now.

    Pinning the end when the export starts keeps it finite and consistent while new
    events keep arriving; a ``to_position`` beyond the head means the head.
    """
    start = max(1, from_position)
    head = app.head_position()
    stop = head if to_position is None else min(to_position, head)
    return start, stop


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"


class EventExport:
    """Reads the log from ``start`` to ``stop`` and turns it into lines, one batch a call.

    With a ``signer``, the newest event of the range gets a signed checkpoint first
    (unless it has one), so the whole file is covered by a signature.
    """

    def __init__(
        self,
        app: DealtrailApplication,
        start: int,
        stop: int,
        *,
        signer: Signer | None = None,
        batch_size: int = BATCH_SIZE,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.app = app
        self.chain = chain_of(app.recorder)
        self.next_position = start
        self.stop = stop
        self.batch_size = batch_size
        if signer is not None and start <= stop:
            checkpoint_at(self.chain, signer, stop, now())
        self.checkpoints: dict[int, Checkpoint] = {
            c.position: c for c in self.chain.checkpoints(start, stop)
        }
        before = self.chain.link_before(start)
        self.prev_hash = before[1] if before else GENESIS

    def next_lines(self) -> tuple[str, int] | None:
        """The next batch as text and how many events it holds; None at the end."""
        if self.next_position > self.stop:
            return None
        rows = self.chain.rows(self.next_position, self.stop, self.batch_size)
        if not rows:
            self.next_position = self.stop + 1
            return None
        self.next_position = rows[-1].notification.id + 1
        return "".join(self._lines(row) for row in rows), len(rows)

    def _lines(self, row: StoredRow) -> str:
        n = row.notification
        line = decode(self.app.mapper, n, as_stored=True).as_json_dict()
        line["topic"] = n.topic
        line["state"] = base64.b64encode(n.state).decode()
        line["prev_position"] = row.prev_position
        line["prev_hash"] = _hex(self.prev_hash if row.prev_position is not None else None)
        line["hash"] = _hex(row.hash)
        self.prev_hash = row.hash
        text = _dumps(line)
        checkpoint = self.checkpoints.get(n.id)
        if checkpoint is not None:
            text += _dumps({"checkpoint": checkpoint.as_json()})
        return text


def write_events(
    app: DealtrailApplication,
    out: TextIO,
    *,
    from_position: int = 1,
    to_position: int | None = None,
    signer: Signer | None = None,
    progress: Callable[[int], None] | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Write the events as JSON Lines to ``out``; return how many were written."""
    start, stop = export_bounds(app, from_position, to_position)
    export = EventExport(app, start, stop, signer=signer, batch_size=batch_size)
    written = 0
    while (chunk := export.next_lines()) is not None:
        text, count = chunk
        out.write(text)
        written += count
        if progress is not None:
            progress(count)
    out.flush()
    return written


def export_to_path(path: Path, write: Callable[[TextIO], int]) -> int:
    """Write into ``path`` through a temporary file, so a broken export leaves no file."""
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            count = write(out)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count
