"""Pipelines: define them, change them over time, and read their definitions.

Changes need admin or manager, accept ``If-Match`` on the pipeline's version, and each
becomes an event on the Pipeline aggregate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response, status
from starlette.concurrency import run_in_threadpool

from libs.application.app import CommandResult
from libs.domain.pipeline import Pipeline, default_template
from libs.domain.values import UNSET
from services.pipeline_api.deps import (
    ApplicationDep,
    CurrentPrincipal,
    ExpectedVersion,
    ReadModelsDep,
)
from services.pipeline_api.errors import ERROR_RESPONSES
from services.pipeline_api.idempotency import IdempotencyKey
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
from services.projections import current_pipeline
from services.projections.current_pipeline import DealFilter

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PipelinePublic,
    dependencies=[IdempotencyKey],
)
async def create_pipeline(
    body: PipelineCreate,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    response: Response,
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
        lambda: application.define_pipeline(
            actor=principal,
            name=body.name,
            currency=body.currency,
            stages=stages,
            lost_reasons=reasons,
            occurred_at=body.occurred_at,
            allow_skipping_stages=body.allow_skipping_stages,
            allow_moving_back=body.allow_moving_back,
            stale_after_days=body.stale_after_days,
        )
    )
    response.headers["Location"] = f"/v1/pipelines/{result.id}"
    response.headers["ETag"] = f'"{result.version}"'
    return {**result.state, "position": result.position}


@router.get("", response_model=PipelinesPublic)
async def list_pipelines(
    application: ApplicationDep, principal: CurrentPrincipal
) -> dict[str, Any]:
    """All pipelines, oldest first."""

    def load() -> list[dict[str, Any]]:
        return [application.get_pipeline(pid).as_dict() for pid in application.pipeline_ids()]

    return {"data": await run_in_threadpool(load)}


@router.get("/{pipeline_id}", response_model=PipelinePublic)
async def get_pipeline(
    pipeline_id: UUID, application: ApplicationDep, principal: CurrentPrincipal, response: Response
) -> dict[str, Any]:
    """One pipeline's current definition."""
    pipeline = await run_in_threadpool(application.get_pipeline, pipeline_id)
    response.headers["ETag"] = f'"{pipeline.version}"'
    return pipeline.as_dict()


PipelineChange = Callable[[Pipeline, datetime, datetime], None]


async def _change(
    application: ApplicationDep,
    pipeline_id: UUID,
    principal: CurrentPrincipal,
    version: int | None,
    occurred_at: datetime | None,
    change: PipelineChange,
    response: Response,
) -> dict[str, Any]:
    result: CommandResult = await run_in_threadpool(
        lambda: application.change_pipeline(
            pipeline_id,
            actor=principal,
            expected_version=version,
            occurred_at=occurred_at,
            change=change,
        )
    )
    response.headers["ETag"] = f'"{result.version}"'
    return {**result.state, "position": result.position}


def _given(model: Any, name: str) -> Any:
    return getattr(model, name) if name in model.model_fields_set else UNSET


@router.patch("/{pipeline_id}", response_model=PipelinePublic, dependencies=[IdempotencyKey])
async def change_pipeline(
    pipeline_id: UUID,
    body: PipelinePatch,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Rename the pipeline or change its rules (skipping stages, moving back, staleness)."""

    def change(p: Pipeline, when: datetime, now: datetime) -> None:
        rules = {
            k: _given(body, k)
            for k in ("allow_skipping_stages", "allow_moving_back", "stale_after_days")
        }
        if "name" in body.model_fields_set:
            p.rename(body.name, actor=principal.name, occurred_at=when, now=now)
        if any(v is not UNSET for v in rules.values()) or "name" not in body.model_fields_set:
            p.change_rules(**rules, actor=principal.name, occurred_at=when, now=now)

    return await _change(
        application, pipeline_id, principal, version, body.occurred_at, change, response
    )


@router.post(
    "/{pipeline_id}/stages",
    status_code=status.HTTP_201_CREATED,
    response_model=PipelinePublic,
    dependencies=[IdempotencyKey],
)
async def add_stage(
    pipeline_id: UUID,
    body: StageCreate,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Add a stage at a position (0 is first; default last)."""

    def change(p: Pipeline, when: datetime, now: datetime) -> None:
        p.add_stage(
            name=body.name,
            probability=body.probability,
            rotting_days=body.rotting_days,
            requires=body.requires,
            index=body.position,
            stage_id=body.id,
            actor=principal.name,
            occurred_at=when,
            now=now,
        )

    return await _change(
        application, pipeline_id, principal, version, body.occurred_at, change, response
    )


@router.patch(
    "/{pipeline_id}/stages/{stage_id}",
    response_model=PipelinePublic,
    dependencies=[IdempotencyKey],
)
async def change_stage(
    pipeline_id: UUID,
    stage_id: str,
    body: StagePatch,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Rename a stage, or change its win probability, rotting threshold or requirements."""

    def change(p: Pipeline, when: datetime, now: datetime) -> None:
        fields = {k: _given(body, k) for k in ("probability", "rotting_days", "requires")}
        if "name" in body.model_fields_set:
            p.rename_stage(
                stage_id, name=body.name, actor=principal.name, occurred_at=when, now=now
            )
        if any(v is not UNSET for v in fields.values()) or "name" not in body.model_fields_set:
            p.update_stage(stage_id, **fields, actor=principal.name, occurred_at=when, now=now)

    return await _change(
        application, pipeline_id, principal, version, body.occurred_at, change, response
    )


@router.put(
    "/{pipeline_id}/stage-order", response_model=PipelinePublic, dependencies=[IdempotencyKey]
)
async def reorder_stages(
    pipeline_id: UUID,
    body: StageOrder,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Put the stages in a new order (list every current stage id once)."""

    def change(p: Pipeline, when: datetime, now: datetime) -> None:
        p.reorder_stages(body.stage_order, actor=principal.name, occurred_at=when, now=now)

    return await _change(
        application, pipeline_id, principal, version, body.occurred_at, change, response
    )


@router.post(
    "/{pipeline_id}/lost-reasons",
    status_code=status.HTTP_201_CREATED,
    response_model=PipelinePublic,
    dependencies=[IdempotencyKey],
)
async def add_lost_reason(
    pipeline_id: UUID,
    body: LostReasonIn,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Add a lost reason (or bring a retired one back)."""

    def change(p: Pipeline, when: datetime, now: datetime) -> None:
        p.add_lost_reason(body.reason, actor=principal.name, occurred_at=when, now=now)

    return await _change(
        application, pipeline_id, principal, version, body.occurred_at, change, response
    )


@router.delete(
    "/{pipeline_id}/lost-reasons/{reason}",
    response_model=PipelinePublic,
    dependencies=[IdempotencyKey],
)
async def retire_lost_reason(
    pipeline_id: UUID,
    reason: str,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Retire a lost reason: no new losses may choose it; past losses keep it."""

    def change(p: Pipeline, when: datetime, now: datetime) -> None:
        p.retire_lost_reason(reason, actor=principal.name, occurred_at=when, now=now)

    return await _change(application, pipeline_id, principal, version, None, change, response)


SWEEP_ROUNDS = 3


@router.delete(
    "/{pipeline_id}/stages/{stage_id}",
    response_model=PipelinePublic,
    dependencies=[IdempotencyKey],
)
async def remove_stage(
    pipeline_id: UUID,
    stage_id: str,
    application: ApplicationDep,
    models: ReadModelsDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
    move_open_deals_to: Annotated[
        str | None, Query(description="Stage (id or name) that receives the open deals")
    ] = None,
) -> dict[str, Any]:
    """Remove a stage. With open deals in it, name `move_open_deals_to`; otherwise 409.

    Each moved deal gets a `StageAdvanced` event whose `cause` names this change; the
    stage's history stays in every report, marked as removed.
    """
    principal.check_may_manage_pipelines()
    pipeline = await run_in_threadpool(application.get_pipeline, pipeline_id)
    target = pipeline.stage(stage_id)

    async def open_deals_in_stage(at_least: int) -> list[str]:
        filters = DealFilter(pipeline_id=pipeline_id, stage=target.id, status="open")
        ids: list[str] = []
        async with models.open("current_pipeline", at_least) as view:
            after = None
            while True:
                rows = await current_pipeline.list_deals(
                    view.conn, view.tables, filters, after, 500
                )
                ids += [r["deal_id"] for r in rows]
                if len(rows) < 500:
                    return ids
                after = (rows[-1]["created_at"], rows[-1]["deal_id"])

    head = await run_in_threadpool(application.head_position)
    candidates = await open_deals_in_stage(head)
    result: CommandResult = await run_in_threadpool(
        lambda: application.remove_stage(
            pipeline_id,
            target.id,
            actor=principal,
            open_deal_ids=candidates,
            move_open_deals_to=move_open_deals_to,
            expected_version=version,
        )
    )
    destination = result.state.get("moved_to")
    position = result.position
    # A deal may have entered the stage while it was being removed; move those too.
    for _ in range(SWEEP_ROUNDS):
        if destination is None:
            break
        await asyncio.sleep(0)
        stranded = await open_deals_in_stage(await run_in_threadpool(application.head_position))
        if not stranded:
            break
        await run_in_threadpool(
            lambda ids=stranded: application.move_stranded_deals(  # type: ignore[misc]
                pipeline_id, target.id, str(destination), ids, actor=principal
            )
        )
        position = await run_in_threadpool(application.head_position)
    response.headers["ETag"] = f'"{result.version}"'
    state = {k: v for k, v in result.state.items() if k != "moved_to"}
    return {**state, "position": position}
