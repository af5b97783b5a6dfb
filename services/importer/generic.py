"""``dealtrail import deals FILE.csv``: deals from a plain CSV file, one deal a row.

A header line names the columns; their order does not matter and unknown columns are
ignored. Needed: external_id, title, value, owner, created_at, and pipeline (unless
--pipeline names the pipeline of rows without one).

  external_id   the deal's id in the source system (unique per pipeline)
  title         deal title
  pipeline      name of an existing pipeline (case does not matter)
  stage         stage name or id; empty: the pipeline's first stage
  status        open (default), won or lost
  value         decimal amount in the pipeline's currency, e.g. 12000.50
  owner         owner's name
  created_at    YYYY-MM-DD (midnight UTC) or ISO 8601 date-time (UTC if no zone)
  closed_at     same format; needed for won and lost rows, empty for open ones
  lost_reason   one of the pipeline's lost reasons; needed for lost rows only
  lost_note     optional free text for a lost deal
  account       optional customer account
  product       optional product

An optional second file (--activities) holds the deals' activities, one a row, keyed by
the deal's external id. Needed: deal_external_id, type, subject, due_at.

  deal_external_id  external_id of a deal in the deals file
  pipeline          the deal's pipeline, when the same external id is in several
  external_id       the activity's id in the source system; without it, its type,
                    subject and due time identify it
  type              call, meeting, email, task or deadline
  subject           what it is about
  due_at            when it is due (same formats as created_at)
  duration_minutes  optional, 1 to 1440
  assignee          optional; default the deal's owner
  note              optional free text
  status            open (default), done or cancelled
  created_at        when it was planned; default when the deal was created
  completed_at      when it was done or cancelled; default when it was due
  outcome           optional: what came of it, or why it was cancelled

Importing the same files again adds nothing; a changed activity row reschedules, edits,
completes or cancels the stored activity (a done or cancelled one cannot change).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from libs.application.app import DealtrailApplication
from libs.application.importing import (
    DEFAULT_BATCH_SIZE,
    IMPORT_ACTOR,
    DealImporter,
    ImportAborted,
    ImportReport,
)
from libs.domain.actors import Actor
from libs.domain.deal import LOST, OPEN, WON
from libs.domain.imports import ACTIVITY_STATUSES, ActivityRow, DealRow
from libs.domain.pipeline import Pipeline
from services.importer.common import (
    CsvTable,
    RowProblem,
    check_row_shape,
    parse_time,
    read_csv_text,
)

COLUMNS = (
    "external_id",
    "title",
    "pipeline",
    "stage",
    "status",
    "value",
    "owner",
    "created_at",
    "closed_at",
    "lost_reason",
)
OPTIONAL_COLUMNS = ("lost_note", "account", "product")
REQUIRED_COLUMNS = ("external_id", "title", "value", "owner", "created_at")
ACTIVITY_COLUMNS = (
    "deal_external_id",
    "pipeline",
    "external_id",
    "type",
    "subject",
    "due_at",
    "duration_minutes",
    "assignee",
    "note",
    "status",
    "created_at",
    "completed_at",
    "outcome",
)
REQUIRED_ACTIVITY_COLUMNS = ("deal_external_id", "type", "subject", "due_at")


def _pipelines_by_name(app: DealtrailApplication) -> dict[str, Pipeline]:
    """Every pipeline by its name folded to lower case; the oldest wins a tie."""
    found: dict[str, Pipeline] = {}
    for pipeline_id in app.pipeline_ids():
        pipeline = app.get_pipeline(pipeline_id)
        found.setdefault(pipeline.name.casefold(), pipeline)
    return found


def _deal_row(
    name: str,
    line: int,
    row: dict[str, str],
    *,
    pipelines: dict[str, Pipeline],
    default_pipeline: str | None,
) -> DealRow:
    check_row_shape(row)

    def get(column: str) -> str:
        return row.get(column, "")

    external_id = get("external_id")
    if not external_id:
        raise RowProblem("external_id is empty")
    pipeline_name = get("pipeline") or default_pipeline or ""
    if not pipeline_name:
        raise RowProblem("pipeline is empty")
    pipeline = pipelines.get(pipeline_name.casefold())
    if pipeline is None:
        raise RowProblem(f"there is no pipeline named {pipeline_name!r}; define it first")
    status = (get("status") or OPEN).casefold()
    if status not in (OPEN, WON, LOST):
        raise RowProblem(f"status {get('status')!r} is not open, won or lost")
    if not get("created_at"):
        raise RowProblem("created_at is empty")
    created_at = parse_time(get("created_at"), "created_at")
    closed_at = None
    if status == OPEN:
        if get("closed_at"):
            raise RowProblem("closed_at is set but status is open")
    else:
        if not get("closed_at"):
            raise RowProblem(f"closed_at is empty but status is {status}")
        closed_at = parse_time(get("closed_at"), "closed_at")
        if closed_at < created_at:
            raise RowProblem(f"closed_at {get('closed_at')} is before created_at")
    lost_reason = get("lost_reason") or None
    if status == LOST and lost_reason is None:
        raise RowProblem("lost_reason is empty but status is lost")
    if status != LOST and (lost_reason or get("lost_note")):
        raise RowProblem(f"lost_reason or lost_note is set but status is {status}")
    return DealRow(
        file=name,
        line=line,
        pipeline=pipeline,
        external_id=external_id,
        title=get("title"),
        value=get("value"),
        owner=get("owner"),
        created_at=created_at,
        stage=get("stage") or None,
        status=status,
        closed_at=closed_at,
        lost_reason=lost_reason,
        lost_note=get("lost_note") or None,
        account=get("account") or None,
        product=get("product") or None,
    )


def _activity_row(name: str, line: int, row: dict[str, str]) -> ActivityRow:
    check_row_shape(row)

    def get(column: str) -> str:
        return row.get(column, "")

    for column in REQUIRED_ACTIVITY_COLUMNS:
        if not get(column):
            raise RowProblem(f"{column} is empty")
    status = (get("status") or "open").casefold()
    if status not in ACTIVITY_STATUSES:
        raise RowProblem(f"status {get('status')!r} is not {', '.join(ACTIVITY_STATUSES)}")
    duration = None
    if get("duration_minutes"):
        try:
            duration = int(get("duration_minutes"))
        except ValueError:
            raise RowProblem("duration_minutes is not a whole number") from None
    due_at = parse_time(get("due_at"), "due_at")
    completed_at = None
    if get("completed_at"):
        if status == "open":
            raise RowProblem("completed_at is set but status is open")
        completed_at = parse_time(get("completed_at"), "completed_at")
    created_at = parse_time(get("created_at"), "created_at") if get("created_at") else None
    key = get("external_id")
    if not key:
        content = f"{get('type').casefold()}\n{get('subject')}\n{due_at.isoformat()}"
        key = "row-" + hashlib.sha256(content.encode()).hexdigest()[:32]
    return ActivityRow(
        file=name,
        line=line,
        key=key,
        type=get("type"),
        subject=get("subject"),
        due_at=due_at,
        status=status,
        duration_minutes=duration,
        assignee=get("assignee") or None,
        note=get("note") or None,
        created_at=created_at,
        completed_at=completed_at,
        outcome=get("outcome") or None,
    )


ActivityKey = tuple[str, str]  # (pipeline name folded, or "" for any; deal external id)


class _Activities:
    """The activities file's rows by deal, handed to the deal rows they belong to."""

    def __init__(self, table: CsvTable | None, importer: DealImporter) -> None:
        self.importer = importer
        self.by_deal: dict[ActivityKey, list[ActivityRow]] = defaultdict(list)
        self.keys: dict[tuple[ActivityKey, str], int] = {}
        if table is None:
            return
        table.require(REQUIRED_ACTIVITY_COLUMNS)
        for line, row in table.rows:
            try:
                activity = _activity_row(table.name, line, row)
            except RowProblem as exc:
                importer.reject(table.name, line, str(exc), counts=False)
                continue
            deal = ((row.get("pipeline") or "").casefold(), row["deal_external_id"])
            first = self.keys.setdefault((deal, activity.key), line)
            if first != line:
                importer.reject(
                    table.name,
                    line,
                    f"the activity appears twice for deal {deal[1]!r} (first on line {first})",
                    counts=False,
                )
                continue
            self.by_deal[deal].append(activity)

    def of(self, row: DealRow) -> DealRow:
        """``row`` with its activities (which then leave the unclaimed ones)."""
        found = [
            *self.by_deal.pop((row.pipeline.name.casefold(), row.external_id), []),
            *self.by_deal.pop(("", row.external_id), []),
        ]
        return replace(row, activities=tuple(found)) if found else row

    def reject_unclaimed(self) -> None:
        for (pipeline, external_id), rows in self.by_deal.items():
            where = f" in pipeline {pipeline!r}" if pipeline else ""
            for activity in rows:
                self.importer.reject(
                    activity.file,
                    activity.line,
                    f"no deal row with external id {external_id!r}{where} was read from the "
                    "deals file",
                    counts=False,
                )


def import_deals(
    app: DealtrailApplication,
    table: CsvTable,
    *,
    actor: Actor = IMPORT_ACTOR,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    default_pipeline: str | None = None,
    activities: CsvTable | None = None,
) -> ImportReport:
    """Import the rows of a generic deals CSV and, optionally, their activities (see the
    module docstring for the columns)."""
    table.require(REQUIRED_COLUMNS)
    if "pipeline" not in table.columns and not default_pipeline:
        raise ImportAborted(f"{table.name}: no pipeline column and no default pipeline given")
    pipelines = _pipelines_by_name(app)
    if default_pipeline and default_pipeline.casefold() not in pipelines:
        raise ImportAborted(f"there is no pipeline named {default_pipeline!r}; define it first")
    importer = DealImporter(
        app, actor=actor, strict=strict, batch_size=batch_size, progress=progress
    )
    planned = _Activities(activities, importer)
    used: dict[str, Pipeline] = {}
    for line, row in table.rows:
        try:
            deal_row = _deal_row(
                table.name, line, row, pipelines=pipelines, default_pipeline=default_pipeline
            )
        except RowProblem as exc:
            importer.reject(table.name, line, str(exc))
            continue
        used.setdefault(deal_row.pipeline.name, deal_row.pipeline)
        importer.add(planned.of(deal_row))
    planned.reject_unclaimed()
    report = importer.finish()
    report.pipelines.update({name: pipeline.id for name, pipeline in used.items()})
    return report


def import_deals_text(
    app: DealtrailApplication, text: str, *, name: str = "upload.csv", **options: Any
) -> ImportReport:
    """:func:`import_deals` on CSV text (the HTTP route's body)."""
    return import_deals(app, read_csv_text(text, name), **options)
