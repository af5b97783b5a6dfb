"""Owners: the team and region each sales rep belongs to, as it changes over time."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from libs.domain.commands import AssignTeam
from services.pipeline_api.deps import CurrentPrincipal, ReadModelsDep, RuntimeDep
from services.pipeline_api.dispatch import SendCommand
from services.pipeline_api.errors import ERROR_RESPONSES
from services.pipeline_api.idempotency import IdempotencyKey
from services.pipeline_api.query_params import MinPosition
from services.pipeline_api.schemas import OwnerTeam
from services.projections import analytics

router = APIRouter(prefix="/v1/owners", tags=["owners"], responses=ERROR_RESPONSES)


@router.put("/{owner}", dependencies=[IdempotencyKey])
async def set_team(
    owner: str,
    body: OwnerTeam,
    send: SendCommand,
) -> dict[str, Any]:
    """Set an owner's team and region from `occurred_at` on (admins only)."""
    return await send(AssignTeam, owner=owner, **body.model_dump())


@router.get("")
async def list_owners(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    models: ReadModelsDep,
    min_position: MinPosition = None,
) -> dict[str, Any]:
    """Every owner with a team or region, as they are now, with their history."""
    now = runtime.clock()
    async with models.open("analytics", min_position) as view:
        history = await analytics.memberships(view.conn, view.tables)
        position = view.position
    data = []
    for owner in sorted(history):
        team, region = analytics.membership_at(history, owner, now)
        data.append(
            {
                "owner": owner,
                "team": team,
                "region": region,
                "history": [
                    {"from": f.isoformat(), "team": t, "region": r} for f, _, t, r in history[owner]
                ],
            }
        )
    return {"data": data, "position": position}
