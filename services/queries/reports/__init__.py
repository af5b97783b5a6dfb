"""Sales reports computed from the read models (never by scanning the event store).

Every report takes the same :class:`ReportParams` and returns a :class:`Report`: a few
summary figures plus ``rows``, a flat table that is also the report's CSV.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from libs.domain.values import format_money
from services.projections.read_models import ReadModels
from services.projections.stage_durations.queries import percentile


@dataclass(frozen=True)
class ReportParams:
    """What every report accepts; reports ignore what does not apply to them."""

    pipeline_id: UUID | None = None
    start: datetime | None = None
    end: datetime | None = None
    owner: str | None = None
    team: str | None = None
    min_position: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pipeline_id": str(self.pipeline_id) if self.pipeline_id else None,
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
            "owner": self.owner,
            "team": self.team,
        }


@dataclass
class Report:
    """A report's answer: summary figures and a flat table of rows."""

    name: str
    params: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    position: int = 0
    notes: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "report": self.name,
            "params": self.params,
            "summary": jsonable(self.summary),
            "rows": jsonable(self.rows),
            "notes": self.notes,
            "position": self.position,
        }

    def as_csv(self) -> str:
        columns: list[str] = []
        for row in self.rows:
            for key in row:
                if key not in columns:
                    columns.append(key)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[csv_cell(c) for c in columns], lineterminator="\n")
        writer.writeheader()
        for row in jsonable(self.rows):
            writer.writerow({csv_cell(k): csv_cell(v) for k, v in row.items()})
        return out.getvalue()


# Cells a spreadsheet would read as a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell that no spreadsheet runs: text starting like a formula gets a
    leading ``'``. Numbers (including negative ones written as text) stay numbers."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return format_money(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 6)
    return value


def ratio(part: int | Decimal, whole: int | Decimal) -> float | None:
    return float(part) / float(whole) if whole else None


def day_stats(days: list[float]) -> dict[str, Any]:
    """Count, mean, median and 90th percentile (linear interpolation) of day counts."""
    values = sorted(days)
    return {
        "count": len(values),
        "mean_days": statistics.fmean(values) if values else None,
        "median_days": percentile(values, 0.5),
        "p90_days": percentile(values, 0.9),
    }


@dataclass(frozen=True)
class ReportContext:
    """What a report needs: the read models and the service clock."""

    models: ReadModels
    clock: Callable[[], datetime]


ReportFn = Callable[[ReportContext, ReportParams], Awaitable[Report]]
