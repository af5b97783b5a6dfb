"""Pipelines: define them and read their definitions."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from libs.domain.pipeline import default_template
from services.pipeline_api.deps import CurrentPrincipal, IdempotencyKey, PipelineApp
from services.pipeline_api.errors import ERROR_RESPONSES
from services.pipeline_api.schemas import PipelineCreate, PipelinePublic, PipelinesPublic

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PipelinePublic,
    dependencies=[IdempotencyKey],
)
async def create_pipeline(
    body: PipelineCreate, app: PipelineApp, principal: CurrentPrincipal, response: Response
) -> dict[str, Any]:
    """Define a pipeline (admins and managers)."""
    template = default_template()
    stages = (
        [s.model_dump(exclude_none=True) for s in body.stages]
        if body.stages is not None
        else template["stages"]
    )
    reasons = body.lost_reasons if body.lost_reasons is not None else template["lost_reasons"]
    result = await run_in_threadpool(
        lambda: app.define_pipeline(
            actor=principal,
            name=body.name,
            currency=body.currency,
            stages=stages,
            lost_reasons=reasons,
            occurred_at=body.occurred_at,
        )
    )
    response.headers["Location"] = f"/v1/pipelines/{result.id}"
    response.headers["ETag"] = f'"{result.version}"'
    return {**result.state, "position": result.position}


@router.get("", response_model=PipelinesPublic)
async def list_pipelines(app: PipelineApp, principal: CurrentPrincipal) -> dict[str, Any]:
    """All pipelines, oldest first."""

    def load() -> list[dict[str, Any]]:
        return [app.get_pipeline(pid).as_dict() for pid in app.pipeline_ids()]

    return {"data": await run_in_threadpool(load)}


@router.get("/{pipeline_id}", response_model=PipelinePublic)
async def get_pipeline(
    pipeline_id: UUID, app: PipelineApp, principal: CurrentPrincipal, response: Response
) -> dict[str, Any]:
    """One pipeline's current definition."""
    pipeline = await run_in_threadpool(app.get_pipeline, pipeline_id)
    response.headers["ETag"] = f'"{pipeline.version}"'
    return pipeline.as_dict()
