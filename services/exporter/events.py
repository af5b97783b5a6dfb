"""The event log as JSON Lines: one event a line, in log (position) order.

Each line is ``EventRecord.as_json_dict()``: ``position``, ``aggregate_id``,
``aggregate_type``, ``type``, ``version``, ``actor``, ``occurred_at``, ``recorded_at``
and ``payload``. The CLI command and ``GET /v1/audit/export`` write the same lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from libs.application.app import DealtrailApplication
from libs.application.records import EventRecord, decode

BATCH_SIZE = 1000


def export_bounds(
    app: DealtrailApplication, from_position: int = 1, to_position: int | None = None
) -> tuple[int, int]:
    """(first, last) positions to export; the last defaults to the head right now.

    Pinning the end when the export starts keeps it finite and consistent while new
    events keep arriving.
    """
    start = max(1, from_position)
    head = app.head_position()
    stop = head if to_position is None else min(to_position, head)
    return start, stop


def read_batch(
    app: DealtrailApplication, start: int, stop: int, limit: int = BATCH_SIZE
) -> list[EventRecord]:
    """Up to ``limit`` decoded events from ``start`` to ``stop`` (both inclusive)."""
    if start > stop:
        return []
    notifications = app.recorder.select_notifications(start, limit, stop=stop)
    return [decode(app.mapper, n) for n in notifications]


def record_batches(
    app: DealtrailApplication, start: int, stop: int, batch_size: int = BATCH_SIZE
) -> Iterator[list[EventRecord]]:
    """Batches of decoded events from ``start`` to ``stop``, in position order."""
    while start <= stop:
        batch = read_batch(app, start, stop, batch_size)
        if not batch:
            return
        yield batch
        start = batch[-1].position + 1


def json_line(record: EventRecord) -> str:
    return json.dumps(record.as_json_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"


def lines_of(batch: list[EventRecord]) -> str:
    return "".join(json_line(r) for r in batch)


def write_events(
    app: DealtrailApplication,
    out: TextIO,
    *,
    from_position: int = 1,
    to_position: int | None = None,
    progress: Callable[[int], None] | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Write the events as JSON Lines to ``out``; return how many were written."""
    start, stop = export_bounds(app, from_position, to_position)
    written = 0
    for batch in record_batches(app, start, stop, batch_size):
        out.write(lines_of(batch))
        written += len(batch)
        if progress is not None:
            progress(len(batch))
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
