"""``POST /v1/imports``: deals from a generic CSV body, through the domain (admins only).

The body is the CSV of ``dealtrail import deals`` (see services/importer/generic.py).
Bodies are capped by ``DEALTRAIL_MAX_BODY_BYTES`` (64 KiB by default, a few hundred
rows); larger imports go through the command line.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from libs.application.importing import ImportAborted
from libs.domain.errors import Forbidden
from services.importer.generic import COLUMNS, import_deals_text
from services.pipeline_api.deps import ApplicationDep, CurrentPrincipal
from services.pipeline_api.errors import ApiError
from services.pipeline_api.idempotency import IdempotencyKey
from services.pipeline_api.limits import CSV_TYPES
from services.pipeline_api.openapi import raises

router = APIRouter(prefix="/v1/imports", tags=["imports"])

UPLOAD_NAME = "upload.csv"
CSV_EXAMPLE = (
    "external_id,title,pipeline,stage,status,value,owner,created_at,closed_at,lost_reason\n"
    "crm-1001,ACME renewal,New business,Quote sent,open,12000.00,rita,2026-03-02,,\n"
    "crm-1002,Globex pilot,New business,,lost,4500.00,raj,2026-02-10,2026-04-01,Price\n"
)


class RejectedRow(BaseModel):
    """A row that was not imported: its line (the header is line 1) and why."""

    file: str
    line: int
    reason: str


class ImportReportPublic(BaseModel):
    """What the import did."""

    rows: int
    imported: int
    created: int
    changed: int
    unchanged: int
    rejected: list[RejectedRow]
    events: int
    written: bool
    pipelines: dict[str, str]


@router.post(
    "",
    response_model=ImportReportPublic,
    dependencies=[IdempotencyKey],
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "CSV with a header line; columns: " + ",".join(COLUMNS),
            "content": {
                "text/csv": {
                    "schema": {"type": "string", "format": "binary"},
                    "example": CSV_EXAMPLE,
                }
            },
        }
    },
)
@raises(403, 415)
async def import_deals(
    request: Request,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    strict: Annotated[bool, Query(description="Import nothing (422) if any row is bad")] = False,
    pipeline: Annotated[
        str | None, Query(max_length=100, description="Pipeline of rows that name none")
    ] = None,
) -> dict[str, Any]:
    """Import deals from the CSV body; bad rows are reported with line and reason.

    Idempotent: rows already imported unchanged append nothing; a changed row appends
    only the difference. Events are recorded with the caller as actor.
    """
    if not principal.is_admin:
        raise Forbidden("only admins may import deals")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in CSV_TYPES:
        raise ApiError(
            415,
            "the body must be CSV (Content-Type: text/csv)",
            details={"content_type": content_type or None},
        )
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(
            422, "the CSV must be UTF-8 text", code="invalid_csv", details={"field": "body"}
        ) from None
    try:
        report = await run_in_threadpool(
            import_deals_text,
            application,
            text,
            name=UPLOAD_NAME,
            actor=principal,
            strict=strict,
            default_pipeline=pipeline,
        )
    except ImportAborted as exc:
        raise ApiError(422, str(exc), code="invalid_csv", details={"field": "body"}) from None
    result = report.as_dict()
    if not report.written:
        raise ApiError(
            422,
            f"{len(report.rejected)} row(s) rejected; with strict=true nothing was imported",
            code="rows_rejected",
            details=result,
        )
    return result
