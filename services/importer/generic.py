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
"""

from __future__ import annotations

from collections.abc import Callable
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
from libs.domain.imports import DealRow
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


def import_deals(
    app: DealtrailApplication,
    table: CsvTable,
    *,
    actor: Actor = IMPORT_ACTOR,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    default_pipeline: str | None = None,
) -> ImportReport:
    """Import the rows of a generic deals CSV (see the module docstring for the columns)."""
    table.require(REQUIRED_COLUMNS)
    if "pipeline" not in table.columns and not default_pipeline:
        raise ImportAborted(f"{table.name}: no pipeline column and no default pipeline given")
    pipelines = _pipelines_by_name(app)
    if default_pipeline and default_pipeline.casefold() not in pipelines:
        raise ImportAborted(f"there is no pipeline named {default_pipeline!r}; define it first")
    importer = DealImporter(
        app, actor=actor, strict=strict, batch_size=batch_size, progress=progress
    )
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
        importer.add(deal_row)
    report = importer.finish()
    report.pipelines.update({name: pipeline.id for name, pipeline in used.items()})
    return report


def import_deals_text(
    app: DealtrailApplication, text: str, *, name: str = "upload.csv", **options: Any
) -> ImportReport:
    """:func:`import_deals` on CSV text (the HTTP route's body)."""
    return import_deals(app, read_csv_text(text, name), **options)
