"""Automation rules and their firings read back from the ``automations`` read model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from services.projections.automations import queries as automations
from services.projections.read_models import ReadModels
from services.queries.errors import QueryError


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def rule_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """An ``automations`` rule row as the API shows it."""
    return {
        "id": row["rule_id"],
        "name": row["name"],
        "description": row["description"],
        "pipeline_id": row["pipeline_id"],
        "trigger": row["trigger"],
        "actions": row["actions"],
        "status": row["status"],
        "version": row["version"],
        "created_at": _iso(row["created_at"]),
        "created_by": row["created_by"],
        "updated_at": _iso(row["updated_at"]),
        "last_fired_at": _iso(row["last_fired_at"]),
        "fired_count": row["fired_count"],
    }


def firing_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "position": row["position"],
        "occurred_at": _iso(row["occurred_at"]),
        "deal_id": row["deal_id"],
        "reason": row["reason"],
        "occurrence": row["occurrence"],
        "actions": row["actions"],
    }


@dataclass(frozen=True)
class Page:
    """One page of items, the position the next page starts after (None: no more), and
    the read model's position."""

    items: list[dict[str, Any]]
    after: int | None
    position: int


async def rule_page(
    models: ReadModels,
    *,
    pipeline_id: UUID | None,
    status: str | None,
    after: int,
    limit: int,
    min_position: int | None,
) -> Page:
    """Rules (not deleted) in the order they were created, a page at a time."""
    async with models.open("automations", min_position) as view:
        rows = await automations.list_rules(
            view.conn,
            view.tables,
            pipeline_id=pipeline_id,
            status=status,
            after_position=after,
            limit=limit + 1,
        )
    page = rows[:limit]
    last = page[-1]["created_position"] if len(rows) > limit else None
    return Page([rule_view(r) for r in page], last, view.position)


async def rule_now(models: ReadModels, rule_id: UUID, min_position: int | None) -> dict[str, Any]:
    """A rule as it is now (404 when there is none, or it was deleted)."""
    async with models.open("automations", min_position) as view:
        row = await automations.get_rule(view.conn, view.tables, rule_id)
    if row is None:
        raise QueryError(
            f"automation {rule_id} does not exist (as of position {view.position})", status=404
        )
    return rule_view(row)


async def firing_stats(models: ReadModels, rule_id: UUID) -> dict[str, Any]:
    """``last_fired_at`` and ``fired_count`` of a rule as the read model has them now
    (none yet: a rule it has not seen)."""
    async with models.open("automations") as view:
        row = await automations.get_rule(view.conn, view.tables, rule_id)
    if row is None:
        return {"last_fired_at": None, "fired_count": 0}
    return {"last_fired_at": _iso(row["last_fired_at"]), "fired_count": row["fired_count"]}


async def firing_page(
    models: ReadModels, rule_id: UUID, *, after: int, limit: int, min_position: int | None
) -> Page:
    """A rule's firings in log order, a page at a time (404 for an unknown rule)."""
    async with models.open("automations", min_position) as view:
        if await automations.get_rule(view.conn, view.tables, rule_id) is None:
            raise QueryError(
                f"automation {rule_id} does not exist (as of position {view.position})",
                status=404,
            )
        rows = await automations.list_firings(
            view.conn, view.tables, rule_id, after_position=after, limit=limit + 1
        )
    page = rows[:limit]
    last = page[-1]["position"] if len(rows) > limit else None
    return Page([firing_view(r) for r in page], last, view.position)
