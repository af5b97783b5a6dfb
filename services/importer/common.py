"""What both importers share: reading CSV with line numbers, and dates."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TextIO

from libs.application.importing import (
    ImportAborted,
)
from libs.domain.errors import InvalidInput
from libs.domain.times import to_utc

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
