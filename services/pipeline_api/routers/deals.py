"""Deals: open them, move them through stages, win, lose, reopen, update."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from libs.application.app import CommandResult
from services.pipeline_api.deps import (
    ApplicationDep,
    CurrentPrincipal,
    ExpectedVersion,
)
from services.pipeline_api.errors import ERROR_RESPONSES
from services.pipeline_api.idempotency import IdempotencyKey
from services.pipeline_api.schemas import (
    DealAdvance,
    DealCommandResponse,
    DealCreate,
    DealLose,
    DealMove,
    DealPatch,
    DealReopen,
    DealSnooze,
    DealWin,
)

router = APIRouter(prefix="/v1/deals", tags=["deals"], responses=ERROR_RESPONSES)


async def _run(command: Callable[[], CommandResult], response: Response) -> dict[str, Any]:
    """Run a blocking command off the event loop and shape its answer."""
    result = await run_in_threadpool(command)
    response.headers["ETag"] = f'"{result.version}"'
    if result.created:
        response.headers["Location"] = f"/v1/deals/{result.id}"
    return {**result.state, "position": result.position}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DealCommandResponse,
    dependencies=[IdempotencyKey],
)
async def create_deal(
    body: DealCreate, application: ApplicationDep, principal: CurrentPrincipal, response: Response
) -> dict[str, Any]:
    """Open a deal; reps may only open deals they own."""
    return await _run(
        lambda: application.create_deal(
            actor=principal,
            pipeline_id=body.pipeline_id,
            title=body.title,
            value=body.value,
            owner=body.owner,
            stage=body.stage,
            expected_close_date=body.expected_close_date,
            external_id=body.external_id,
            account=body.account,
            product=body.product,
            note=body.note,
            occurred_at=body.occurred_at,
        ),
        response,
    )


@router.post(
    "/{deal_id}/advance", response_model=DealCommandResponse, dependencies=[IdempotencyKey]
)
async def advance_deal(
    deal_id: UUID,
    body: DealAdvance,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Move the deal to another stage of its pipeline (backwards is allowed)."""
    return await _run(
        lambda: application.advance_deal(
            deal_id,
            actor=principal,
            stage=body.stage,
            note=body.note,
            occurred_at=body.occurred_at,
            expected_version=version,
        ),
        response,
    )


@router.post("/{deal_id}/win", response_model=DealCommandResponse, dependencies=[IdempotencyKey])
async def win_deal(
    deal_id: UUID,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
    body: DealWin | None = None,
) -> dict[str, Any]:
    """Close the deal as won."""
    occurred_at = body.occurred_at if body else None
    return await _run(
        lambda: application.win_deal(
            deal_id, actor=principal, occurred_at=occurred_at, expected_version=version
        ),
        response,
    )


@router.post("/{deal_id}/lose", response_model=DealCommandResponse, dependencies=[IdempotencyKey])
async def lose_deal(
    deal_id: UUID,
    body: DealLose,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Close the deal as lost, with one of the pipeline's reasons and an optional note."""
    return await _run(
        lambda: application.lose_deal(
            deal_id,
            actor=principal,
            reason=body.reason,
            note=body.note,
            occurred_at=body.occurred_at,
            expected_version=version,
        ),
        response,
    )


@router.post("/{deal_id}/reopen", response_model=DealCommandResponse, dependencies=[IdempotencyKey])
async def reopen_deal(
    deal_id: UUID,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
    body: DealReopen | None = None,
) -> dict[str, Any]:
    """Reopen a won or lost deal, in the stage it closed in or a named one."""
    stage = body.stage if body else None
    note = body.note if body else None
    occurred_at = body.occurred_at if body else None
    return await _run(
        lambda: application.reopen_deal(
            deal_id,
            actor=principal,
            stage=stage,
            note=note,
            occurred_at=occurred_at,
            expected_version=version,
        ),
        response,
    )


@router.patch("/{deal_id}", response_model=DealCommandResponse, dependencies=[IdempotencyKey])
async def update_deal(
    deal_id: UUID,
    body: DealPatch,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Change title, value, expected close date or owner; unchanged fields record nothing."""
    return await _run(
        lambda: application.update_deal(
            deal_id,
            actor=principal,
            fields=body.changed_fields(),
            occurred_at=body.occurred_at,
            expected_version=version,
        ),
        response,
    )


@router.post("/{deal_id}/move", response_model=DealCommandResponse, dependencies=[IdempotencyKey])
async def move_deal(
    deal_id: UUID,
    body: DealMove,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Move the deal into another pipeline (one event); its earlier history stays with it."""
    return await _run(
        lambda: application.move_deal(
            deal_id,
            actor=principal,
            pipeline_id=body.pipeline_id,
            stage=body.stage,
            note=body.note,
            occurred_at=body.occurred_at,
            expected_version=version,
        ),
        response,
    )


@router.post("/{deal_id}/snooze", response_model=DealCommandResponse, dependencies=[IdempotencyKey])
async def snooze_deal(
    deal_id: UUID,
    body: DealSnooze,
    application: ApplicationDep,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> dict[str, Any]:
    """Keep the deal off the stale list until `until` (recorded as an event with the reason)."""
    return await _run(
        lambda: application.snooze_deal(
            deal_id,
            actor=principal,
            until=body.until,
            reason=body.reason,
            occurred_at=body.occurred_at,
            expected_version=version,
        ),
        response,
    )
