"""Owners: the team and region each sales rep belongs to, as it changes over time."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from libs.domain.commands import AssignTeam
from services.pipeline_api.deps import CurrentPrincipal, ReadModelsDep, RuntimeDep
from services.pipeline_api.dispatch import SendCommand
from services.pipeline_api.idempotency import IdempotencyKey
from services.pipeline_api.query_params import MinPosition
from services.pipeline_api.schemas import OwnersPublic, OwnerTeam
from services.queries.owners import owners_now

router = APIRouter(prefix="/v1/owners", tags=["owners"])


@router.put("/{owner}", response_model=dict[str, Any], dependencies=[IdempotencyKey])
async def set_owner_team(
    owner: str,
    body: OwnerTeam,
    send: SendCommand,
) -> Response:
    """Set an owner's team and region from `occurred_at` on (admins only)."""
    return await send(AssignTeam, owner=owner, **body.model_dump())


@router.get("", response_model=OwnersPublic)
async def list_owners(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    models: ReadModelsDep,
    min_position: MinPosition = None,
) -> JSONResponse:
    """Every owner with a team or region, as they are now, with their history."""
    return JSONResponse(await owners_now(models, runtime.clock(), min_position))
