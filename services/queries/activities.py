"""Activities read back from ``current_pipeline``: lists across deals (a rep's day: "mine,
due today or overdue") and a deal's own, each rendered by the domain's activity view
with ``overdue`` measured against the service clock when asked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from libs.domain.views import activity_view
from services.projections.current_pipeline import queries as current_pipeline
from services.projections.current_pipeline.queries import ActivityFilter
from services.projections.folding import activity_state_of
from services.projections.read_models import ReadModels
from services.queries.errors import QueryError


def activity_row_view(row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """A ``current_pipeline`` activity row as the API shows it."""
    return activity_view(row["deal_id"], row["pipeline_id"], activity_state_of(row), now=now)


@dataclass(frozen=True)
class ActivityPage:
    """One page of activities, the key of the last one when more follow, and the read
    model's position."""

    data: list[dict[str, Any]]
    after: tuple[datetime, str] | None
    position: int


async def activity_page(
    models: ReadModels,
    filters: ActivityFilter,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
    min_position: int | None,
    deal_id: UUID | None = None,
) -> ActivityPage:
    """Activities filtered, soonest due first (undated last, then by id), the page after
    ``after``, ``overdue`` measured at ``filters.now``. With ``deal_id``, that deal's
    (404 when there is no such deal)."""
    now = filters.now
    assert now is not None, "an activity's answer says whether it is overdue now"
    async with models.open("current_pipeline", min_position) as view:
        known = await current_pipeline.get_deal(view.conn, view.tables, deal_id) if deal_id else 1
        if known is None:
            raise QueryError(
                f"deal {deal_id} does not exist (as of position {view.position})", status=404
            )
        rows = await current_pipeline.list_activities(
            view.conn, view.tables, filters, after, limit + 1
        )
    page = rows[:limit]
    last = (page[-1]["due_order"], page[-1]["activity_id"]) if len(rows) > limit else None
    return ActivityPage([activity_row_view(r, now) for r in page], last, view.position)
