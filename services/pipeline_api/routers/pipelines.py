"""Pipelines: define them, change them over time, and read their definitions.

Changes need admin or manager, accept ``If-Match`` on the pipeline's version, and each
becomes an event on the Pipeline aggregate. Definitions are read from the
``current_pipeline`` read model, like every query.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response, status
from fastapi.types import DecoratedCallable

from libs.domain.commands import (
    AddLostReason,
    AddStage,
    ChangePipeline,
    ChangeStage,
    DefinePipeline,
    RemoveStage,
    ReorderStages,
    RetireLostReason,
)
from libs.domain.errors import NotFound
from services.pipeline_api.deps import CurrentPrincipal, ReadModelsDep
from services.pipeline_api.dispatch import SendChange, SendCommand
from services.pipeline_api.idempotency import IdempotencyKey
from services.pipeline_api.openapi import raises
from services.pipeline_api.query_params import MinPosition
from services.pipeline_api.schemas import (
    LostReasonIn,
    PipelineCreate,
    PipelinePatch,
    PipelinePublic,
    PipelinesPublic,
    StageCreate,
    StageOrder,
    StagePatch,
)
from services.projections.current_pipeline import queries as current_pipeline

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


def _change(
    method: str, path: str, **options: Any
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The route of a pipeline change (``If-Match`` and ``Idempotency-Key`` apply)."""
    return router.api_route(
        path,
        methods=[method],
        response_model=PipelinePublic,
        dependencies=[IdempotencyKey],
        **options,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PipelinePublic,
    dependencies=[IdempotencyKey],
)
async def create_pipeline(body: PipelineCreate, send: SendCommand) -> Response:
    """Define a pipeline (admins and managers)."""
    fields = body.model_dump(exclude={"stages"})
    if body.stages is not None:
        fields["stages"] = [s.model_dump(exclude_none=True) for s in body.stages]
    return await send(DefinePipeline, location=router.prefix, **fields)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A ``current_pipeline`` row in the shape of a pipeline's answer."""
    keys = (
        "name",
        "currency",
        "stages",
        "removed_stages",
        "lost_reasons",
        "retired_lost_reasons",
        "allow_skipping_stages",
        "allow_moving_back",
        "stale_after_days",
        "version",
    )
    return {
        "id": row["pipeline_id"],
        **{key: row[key] for key in keys},
        "created_at": row["created_at"].isoformat(),
    }


@router.get("", response_model=PipelinesPublic)
async def list_pipelines(
    principal: CurrentPrincipal, models: ReadModelsDep, min_position: MinPosition = None
) -> dict[str, Any]:
    """All pipelines, oldest first."""
    async with models.open("current_pipeline", min_position) as view:
        rows = await current_pipeline.list_pipelines(view.conn, view.tables)
    return {"data": [_public(row) for row in rows], "position": view.position}


@router.get("/{pipeline_id}", response_model=PipelinePublic)
@raises(404)
async def get_pipeline(
    pipeline_id: UUID,
    principal: CurrentPrincipal,
    models: ReadModelsDep,
    response: Response,
    min_position: MinPosition = None,
) -> dict[str, Any]:
    """One pipeline's current definition."""
    async with models.open("current_pipeline", min_position) as view:
        row = await current_pipeline.get_pipeline(view.conn, view.tables, pipeline_id)
    if row is None:
        raise NotFound(f"pipeline {pipeline_id} does not exist")
    response.headers["ETag"] = f'"{row["version"]}"'
    return {**_public(row), "position": view.position}


def _given(body: Any) -> dict[str, Any]:
    """The fields the request gave (a field left out is not changed), as plain values."""
    fields: dict[str, Any] = body.model_dump(include=body.model_fields_set - {"occurred_at"})
    return fields


@_change("PATCH", "/{pipeline_id}")
async def change_pipeline(pipeline_id: UUID, body: PipelinePatch, send: SendChange) -> Response:
    """Rename the pipeline or change its rules (skipping stages, moving back, staleness, a
    stage's checklist done before leaving it)."""
    fields = _given(body)
    return await send(
        ChangePipeline, pipeline_id=pipeline_id, occurred_at=body.occurred_at, **fields
    )


@_change("POST", "/{pipeline_id}/stages", status_code=status.HTTP_201_CREATED)
async def add_stage(pipeline_id: UUID, body: StageCreate, send: SendChange) -> Response:
    """Add a stage at a position (0 is first; default last)."""
    fields = body.model_dump(exclude={"id"})
    return await send(AddStage, pipeline_id=pipeline_id, stage_id=body.id, **fields)


@_change("PATCH", "/{pipeline_id}/stages/{stage_id}")
async def change_stage(
    pipeline_id: UUID, stage_id: str, body: StagePatch, send: SendChange
) -> Response:
    """Rename a stage, or change its win probability, rotting threshold, requirements or
    checklist (deals that enter it afterwards get the new checklist)."""
    fields = {"occurred_at": body.occurred_at, **_given(body)}
    return await send(ChangeStage, pipeline_id=pipeline_id, stage=stage_id, **fields)


@_change("PUT", "/{pipeline_id}/stage-order")
async def reorder_stages(pipeline_id: UUID, body: StageOrder, send: SendChange) -> Response:
    """Put the stages in a new order (list every current stage id once)."""
    return await send(ReorderStages, pipeline_id=pipeline_id, **body.model_dump())


@_change("POST", "/{pipeline_id}/lost-reasons", status_code=status.HTTP_201_CREATED)
async def add_lost_reason(pipeline_id: UUID, body: LostReasonIn, send: SendChange) -> Response:
    """Add a lost reason (or bring a retired one back)."""
    return await send(AddLostReason, pipeline_id=pipeline_id, **body.model_dump())


@_change("DELETE", "/{pipeline_id}/lost-reasons/{reason}")
async def retire_lost_reason(pipeline_id: UUID, reason: str, send: SendChange) -> Response:
    """Retire a lost reason: no new losses may choose it; past losses keep it."""
    return await send(RetireLostReason, pipeline_id=pipeline_id, reason=reason)


@_change("DELETE", "/{pipeline_id}/stages/{stage_id}")
async def remove_stage(
    pipeline_id: UUID,
    stage_id: str,
    send: SendChange,
    move_open_deals_to: Annotated[
        str | None, Query(description="Stage (id or name) that receives the open deals")
    ] = None,
) -> Response:
    """Remove a stage. With open deals in it, name `move_open_deals_to`; otherwise 409.

    Each moved deal gets a `StageAdvanced` event whose `cause` names this change; the
    stage's history stays in every report, marked as removed.
    """
    return await send(
        RemoveStage, pipeline_id=pipeline_id, stage=stage_id, move_open_deals_to=move_open_deals_to
    )
