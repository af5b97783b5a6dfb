"""Owners' teams and regions now, with their history (from ``analytics``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.projections.analytics import queries as analytics
from services.projections.read_models import ReadModels


async def owners_now(models: ReadModels, now: datetime, min_position: int | None) -> dict[str, Any]:
    """Every owner with a team or region, as they are at ``now``, with their history."""
    async with models.open("analytics", min_position) as view:
        history = await analytics.memberships(view.conn, view.tables)
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
    return {"data": data, "position": view.position}
