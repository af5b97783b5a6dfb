"""Automation rules: define them, change, pause, resume and delete them, read them and
their firings.

Changes need admin or manager, accept ``If-Match`` on the rule's version and an
``Idempotency-Key``, and each becomes an event on the AutomationRule aggregate. Rules and
firings are read from the ``automations`` read model, by every role.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response, status

from libs.domain.commands import (
    ChangeAutomation,
    CreateAutomation,
    DeleteAutomation,
    PauseAutomation,
    ResumeAutomation,
)
from services.pipeline_api.deps import CurrentPrincipal, ReadModelsDep
from services.pipeline_api.dispatch import SendChange, SendCommand
from services.pipeline_api.idempotency import IdempotencyKey
from services.pipeline_api.openapi import raises
from services.pipeline_api.query_params import CursorParam, MinPosition
from services.pipeline_api.schemas import (
    AutomationCreate,
    AutomationPatch,
    AutomationPublic,
    AutomationsPage,
    FiringsPage,
)
from services.queries import automations
from services.queries.cursors import position_cursor, position_cursor_after

router = APIRouter(prefix="/v1/automations", tags=["automations"])

MAX_PAGE = 500


async def _answer(models: ReadModelsDep, state: dict[str, Any]) -> dict[str, Any]:
    """A command's answer with the rule's firings as the read model counts them now."""
    return {**state, **await automations.firing_stats(models, UUID(state["id"]))}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AutomationPublic,
    dependencies=[IdempotencyKey],
)
async def create_automation(
    body: AutomationCreate, send: SendCommand, models: ReadModelsDep
) -> dict[str, Any]:
    """Define a rule on a pipeline (admins and managers)."""
    state = await send.state(CreateAutomation, location=router.prefix, **body.model_dump())
    return await _answer(models, state)


@router.get("", response_model=AutomationsPage)
async def list_automations(
    principal: CurrentPrincipal,
    models: ReadModelsDep,
    pipeline_id: UUID | None = None,
    status: Literal["active", "paused"] | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: CursorParam = None,
    min_position: MinPosition = None,
) -> dict[str, Any]:
    """Rules, oldest first, a page at a time."""
    page = await automations.rule_page(
        models,
        pipeline_id=pipeline_id,
        status=status,
        after=position_cursor(cursor),
        limit=limit,
        min_position=min_position,
    )
    return {"items": page.items, "next_cursor": position_cursor_after(page.after)}


@router.get("/{automation_id}", response_model=AutomationPublic)
@raises(404)
async def get_automation(
    automation_id: UUID,
    principal: CurrentPrincipal,
    models: ReadModelsDep,
    response: Response,
    min_position: MinPosition = None,
) -> dict[str, Any]:
    """One rule as it is now."""
    rule = await automations.rule_now(models, automation_id, min_position)
    response.headers["ETag"] = f'"{rule["version"]}"'
    return rule


@router.patch("/{automation_id}", response_model=AutomationPublic, dependencies=[IdempotencyKey])
async def change_automation(
    automation_id: UUID, body: AutomationPatch, send: SendChange, models: ReadModelsDep
) -> dict[str, Any]:
    """Change a rule's name, description, trigger or actions (a new trigger restarts a
    schedule's count from now)."""
    state = await send.state(ChangeAutomation, automation_id=automation_id, **body.changed_fields())
    return await _answer(models, state)


@router.post(
    "/{automation_id}/pause", response_model=AutomationPublic, dependencies=[IdempotencyKey]
)
async def pause_automation(
    automation_id: UUID, send: SendChange, models: ReadModelsDep
) -> dict[str, Any]:
    """Stop a rule from firing until it is resumed."""
    return await _answer(models, await send.state(PauseAutomation, automation_id=automation_id))


@router.post(
    "/{automation_id}/resume", response_model=AutomationPublic, dependencies=[IdempotencyKey]
)
async def resume_automation(
    automation_id: UUID, send: SendChange, models: ReadModelsDep
) -> dict[str, Any]:
    """Let a paused rule fire again; a schedule does not catch up on what it missed."""
    return await _answer(models, await send.state(ResumeAutomation, automation_id=automation_id))


@router.delete(
    "/{automation_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[IdempotencyKey]
)
async def delete_automation(automation_id: UUID, send: SendChange) -> None:
    """Delete a rule: it never fires again; its firings stay in the log."""
    await send.state(DeleteAutomation, automation_id=automation_id)


@router.get("/{automation_id}/firings", response_model=FiringsPage)
@raises(404)
async def list_automation_firings(
    automation_id: UUID,
    principal: CurrentPrincipal,
    models: ReadModelsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: CursorParam = None,
    min_position: MinPosition = None,
) -> dict[str, Any]:
    """A rule's firings in log order: when, which deal, why, and what each action did."""
    page = await automations.firing_page(
        models,
        automation_id,
        after=position_cursor(cursor),
        limit=limit,
        min_position=min_position,
    )
    return {"items": page.items, "next_cursor": position_cursor_after(page.after)}
