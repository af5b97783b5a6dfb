"""Deals: open them, move them through stages, win, lose, reopen, update."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from fastapi import APIRouter, Response, status
from fastapi.types import DecoratedCallable

from libs.domain.commands import (
    AdvanceDeal,
    CreateDeal,
    LoseDeal,
    MoveDeal,
    ReopenDeal,
    SnoozeDeal,
    UpdateDeal,
    WinDeal,
)
from services.pipeline_api.dispatch import SendChange, SendCommand
from services.pipeline_api.idempotency import IdempotencyKey
from services.pipeline_api.openapi import raises
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

router = APIRouter(prefix="/v1/deals", tags=["deals"])


def _on(action: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The route of the command ``POST /v1/deals/{deal_id}/<action>``."""
    return router.post(
        f"/{{deal_id}}/{action}", response_model=DealCommandResponse, dependencies=[IdempotencyKey]
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DealCommandResponse,
    dependencies=[IdempotencyKey],
)
@raises(404)  # the pipeline
async def create_deal(body: DealCreate, send: SendCommand) -> Response:
    """Open a deal; reps may only open deals they own."""
    return await send(CreateDeal, location=router.prefix, **body.model_dump())


@_on("advance")
async def advance_deal(deal_id: UUID, body: DealAdvance, send: SendChange) -> Response:
    """Move the deal to another stage of its pipeline (backwards is allowed)."""
    return await send(AdvanceDeal, deal_id=deal_id, **body.model_dump())


@_on("win")
async def win_deal(deal_id: UUID, send: SendChange, body: DealWin | None = None) -> Response:
    """Close the deal as won."""
    return await send(WinDeal, deal_id=deal_id, **(body.model_dump() if body else {}))


@_on("lose")
async def lose_deal(deal_id: UUID, body: DealLose, send: SendChange) -> Response:
    """Close the deal as lost, with one of the pipeline's reasons and an optional note."""
    return await send(LoseDeal, deal_id=deal_id, **body.model_dump())


@_on("reopen")
async def reopen_deal(deal_id: UUID, send: SendChange, body: DealReopen | None = None) -> Response:
    """Reopen a won or lost deal, in the stage it closed in or a named one."""
    return await send(ReopenDeal, deal_id=deal_id, **(body.model_dump() if body else {}))


@router.patch("/{deal_id}", response_model=DealCommandResponse, dependencies=[IdempotencyKey])
async def update_deal(deal_id: UUID, body: DealPatch, send: SendChange) -> Response:
    """Change title, value, expected close date or owner; unchanged fields record nothing."""
    fields = body.changed_fields()
    return await send(UpdateDeal, deal_id=deal_id, occurred_at=body.occurred_at, **fields)


@_on("move")
async def move_deal(deal_id: UUID, body: DealMove, send: SendChange) -> Response:
    """Move the deal into another pipeline (one event); its earlier history stays with it."""
    return await send(MoveDeal, deal_id=deal_id, **body.model_dump())


@_on("snooze")
async def snooze_deal(deal_id: UUID, body: DealSnooze, send: SendChange) -> Response:
    """Keep the deal off the stale list until `until` (recorded as an event with the reason)."""
    return await send(SnoozeDeal, deal_id=deal_id, **body.model_dump())
