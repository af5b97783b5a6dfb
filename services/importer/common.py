"""What both importers share: reading CSV with line numbers, dates, reporting, the CLI run."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TextIO

from eventsourcing.persistence import PersistenceError

from libs.application.app import DealtrailApplication
from libs.application.importing import (
    DEFAULT_BATCH_SIZE,
    IMPORT_ACTOR,
    ImportAborted,
    ImportReport,
)
from libs.domain.actors import Actor, Role
from libs.domain.errors import InvalidInput
from libs.domain.times import to_utc
from services.progress import Progress
from services.runtime.settings import Settings
from services.runtime.stores import open_application

# Exit codes of the import commands.
EXIT_OK, EXIT_REJECTED, EXIT_ABORTED = 0, 1, 2
# Key under which a row longer than the header notes how many fields it has too many.
EXTRA_FIELDS = "\0extra"


class RowProblem(ValueError):
    """A row the reader cannot turn into a deal; the message is the reason."""


@dataclass(frozen=True)
class CsvTable:
    """A CSV file read whole: its name, columns and rows with their line numbers."""

    name: str
    columns: tuple[str, ...]
    rows: list[tuple[int, dict[str, str]]]

    def require(self, columns: Iterable[str]) -> None:
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise ImportAborted(
                f"{self.name}: missing column(s) {', '.join(missing)} "
                f"(found: {', '.join(self.columns) or 'none'})"
            )


def read_csv_text(text: str, name: str) -> CsvTable:
    """Parse CSV text; each row keeps the line it starts on (the header is line 1)."""
    stream = io.StringIO(text.removeprefix("\ufeff"), newline="")
    return _read(stream, name)


def read_csv_file(path: Path, name: str | None = None) -> CsvTable:
    """Read a UTF-8 CSV file (a byte-order mark is allowed)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            return _read(stream, name or path.name)
    except FileNotFoundError:
        raise ImportAborted(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ImportAborted(f"{path}: not UTF-8 text ({exc.reason})") from None


def _read(stream: TextIO, name: str) -> CsvTable:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportAborted(f"{name}: the file is empty (a header line is needed)") from None
    except csv.Error as exc:
        raise ImportAborted(f"{name}:1: {exc}") from None
    columns = tuple(c.strip().lower() for c in header)
    rows: list[tuple[int, dict[str, str]]] = []
    start = reader.line_num + 1
    try:
        for values in reader:
            if any(v.strip() for v in values):
                row = {
                    c: (values[i].strip() if i < len(values) else "") for i, c in enumerate(columns)
                }
                if len(values) > len(columns):
                    row[EXTRA_FIELDS] = str(len(values) - len(columns))
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ImportAborted(f"{name}:{reader.line_num}: {exc}") from None
    return CsvTable(name=name, columns=columns, rows=rows)


def check_row_shape(row: dict[str, str]) -> None:
    if EXTRA_FIELDS in row:
        raise RowProblem(f"the row has {row[EXTRA_FIELDS]} field(s) more than the header")


def parse_time(text: str, field: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 date-time (UTC if no zone given)."""
    value = text.strip()
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(0), tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RowProblem(
            f"{field} {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 date-time"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return to_utc(parsed, field)
    except InvalidInput as exc:
        raise RowProblem(exc.message) from None


def print_report(report: ImportReport, *, out: TextIO, err: TextIO) -> None:
    """Rejected rows (file:line: reason) on ``err``, the summary on ``out``."""
    for error in sorted(report.rejected, key=lambda e: (e.file, e.line)):
        print(f"rejected {error}", file=err)
    if not report.written:
        print(
            f"strict: {len(report.rejected)} bad row(s); nothing was imported",
            file=out,
        )
        return
    print(
        f"imported {report.imported} deal(s) ({report.created} new, {report.changed} changed), "
        f"{report.unchanged} unchanged, {len(report.rejected)} rejected; "
        f"{report.events} event(s) appended",
        file=out,
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strict",
        action="store_true",
        help="write nothing at all if any row is bad (default: import the good rows)",
    )
    parser.add_argument(
        "--actor",
        default=IMPORT_ACTOR.name,
        help=f"name recorded as the actor of every event (default: {IMPORT_ACTOR.name})",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"deals stored per transaction (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def actor_from(args: argparse.Namespace) -> Actor:
    return Actor(name=str(args.actor), role=Role.ADMIN)


ImportRun = Callable[[DealtrailApplication, Callable[[int], None]], ImportReport]


def run_cli_import(
    settings: Settings,
    *,
    label: str,
    total: int | None,
    run: ImportRun,
    quiet: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Open the store, run one import with a progress display, print its report."""
    out = out or sys.stdout
    err = err or sys.stderr
    app = open_application(settings)
    try:
        with Progress(total, label=label, unit="rows", stream=err, enabled=not quiet) as bar:
            report = run(app, bar.update)
    except ImportAborted as exc:
        print(f"dealtrail import: {exc}", file=err)
        return EXIT_ABORTED
    except PersistenceError as exc:
        print(
            f"dealtrail import: database error: {exc}\n"
            "Deals stored before the error are complete (never half-written); "
            "run the import again to add the rest.",
            file=err,
        )
        return EXIT_ABORTED
    finally:
        app.close()
    print_report(report, out=out, err=err)
    return EXIT_OK if not report.rejected else EXIT_REJECTED
