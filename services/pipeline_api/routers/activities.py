"""A deal's activities: plan, reschedule or reassign, complete, cancel; and waiving the
open checklist items of the deal's stage. Each is a command on the deal (``If-Match``
names the deal's version)."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response, status

from libs.domain.commands import (
    CancelActivity,
    CompleteActivity,
    ScheduleActivity,
    UpdateActivity,
    WaiveChecklist,
)
from services.pipeline_api.dispatch import SendChange
from services.pipeline_api.idempotency import IdempotencyKey
from services.pipeline_api.schemas import (
    ActivityCancel,
    ActivityCommandResponse,
    ActivityComplete,
    ActivityCreate,
    ActivityPatch,
    ChecklistWaive,
    ChecklistWaived,
)

router = APIRouter(prefix="/v1/deals", tags=["activities"])
ACTIVITY = "/{deal_id}/activities/{activity_id}"


@router.post(
    "/{deal_id}/activities",
    status_code=status.HTTP_201_CREATED,
    response_model=ActivityCommandResponse,
    dependencies=[IdempotencyKey],
)
async def schedule_activity(deal_id: UUID, body: ActivityCreate, send: SendChange) -> Response:
    """Plan a call, meeting, email, task or deadline on an open deal (assigned to its owner
    unless `assignee`; reps only on their own deals and only for themselves)."""
    return await send(
        ScheduleActivity,
        location=f"{router.prefix}/{deal_id}/activities",
        deal_id=deal_id,
        **body.model_dump(),
    )


@router.patch(ACTIVITY, response_model=ActivityCommandResponse, dependencies=[IdempotencyKey])
async def update_activity(
    deal_id: UUID, activity_id: UUID, body: ActivityPatch, send: SendChange
) -> Response:
    """Reschedule, reassign or edit an open activity; fields left out stay as they are."""
    fields = body.changed_fields()
    return await send(
        UpdateActivity,
        deal_id=deal_id,
        activity_id=activity_id,
        occurred_at=body.occurred_at,
        **fields,
    )


@router.post(
    f"{ACTIVITY}/complete", response_model=ActivityCommandResponse, dependencies=[IdempotencyKey]
)
async def complete_activity(
    deal_id: UUID, activity_id: UUID, send: SendChange, body: ActivityComplete | None = None
) -> Response:
    """Mark an open activity done, with an optional `outcome`."""
    fields = body.model_dump() if body else {}
    return await send(CompleteActivity, deal_id=deal_id, activity_id=activity_id, **fields)


@router.post(
    f"{ACTIVITY}/cancel", response_model=ActivityCommandResponse, dependencies=[IdempotencyKey]
)
async def cancel_activity(
    deal_id: UUID, activity_id: UUID, send: SendChange, body: ActivityCancel | None = None
) -> Response:
    """Cancel an open activity, with an optional `reason`."""
    fields = body.model_dump() if body else {}
    return await send(CancelActivity, deal_id=deal_id, activity_id=activity_id, **fields)


@router.post(
    "/{deal_id}/checklist/waive", response_model=ChecklistWaived, dependencies=[IdempotencyKey]
)
async def waive_checklist(deal_id: UUID, body: ChecklistWaive, send: SendChange) -> Response:
    """Waive the open checklist items of the deal's current stage (admins and managers),
    with a reason: they are cancelled as waived, and the deal may leave the stage."""
    return await send(WaiveChecklist, deal_id=deal_id, **body.model_dump())
