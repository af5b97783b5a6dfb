"""What several reports share: their pipeline, its stage names, the closes and open deals
they count, and the owners of a team."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import false, func, select

from services.projections.analytics import queries as analytics
from services.projections.current_pipeline import queries as current_pipeline
from services.projections.sql import money_sum, money_total
from services.queries.errors import QueryError
from services.queries.reports import ReportContext, ReportParams


async def pipeline_for(ctx: ReportContext, params: ReportParams) -> tuple[dict[str, Any], int]:
    if params.pipeline_id is None:
        raise QueryError("pipeline_id is required for this report", field="pipeline_id")
    async with ctx.models.open("current_pipeline", params.min_position) as view:
        pipeline = await current_pipeline.get_pipeline(view.conn, view.tables, params.pipeline_id)
        position = view.position
    if pipeline is None:
        raise QueryError(
            f"pipeline {params.pipeline_id} does not exist", field="pipeline_id", status=404
        )
    return pipeline, position


def stage_names(pipeline: dict[str, Any] | None) -> dict[str, str]:
    if not pipeline:
        return {}
    return {s["id"]: s["name"] for s in (*pipeline["stages"], *pipeline["removed_stages"])}


def close_filter(params: ReportParams) -> analytics.CloseFilter:
    """The closes of the period (by pipeline, owner, and team as of each close)."""
    return analytics.CloseFilter(
        pipeline_id=str(params.pipeline_id) if params.pipeline_id else None,
        start=params.start,
        end=params.end,
        owner=params.owner,
        team=params.team,
    )


async def owners_of_team(
    ctx: ReportContext, params: ReportParams, now: datetime
) -> list[str] | None:
    """The owners in ``params.team`` at ``now`` (None without a team filter)."""
    if params.team is None:
        return None
    async with ctx.models.open("analytics", params.min_position) as view:
        members = await analytics.memberships(view.conn, view.tables)
    return sorted(o for o in members if analytics.membership_at(members, o, now)[0] == params.team)


def open_deal_clauses(deals: Any, params: ReportParams, team_owners: list[str] | None) -> list[Any]:
    """Open deals now, filtered by pipeline, owner, and team as of now."""
    clauses: list[Any] = [deals.c.status == "open"]
    if params.pipeline_id is not None:
        clauses.append(deals.c.pipeline_id == str(params.pipeline_id))
    if params.owner is not None:
        clauses.append(deals.c.owner == params.owner)
    if team_owners is not None:
        clauses.append(deals.c.owner.in_(team_owners) if team_owners else false())
    return clauses


async def currencies(ctx: ReportContext, params: ReportParams) -> dict[str, str]:
    """Each pipeline's currency, by pipeline id (a pipeline's currency never changes)."""
    async with ctx.models.open("current_pipeline", params.min_position) as view:
        rows = await current_pipeline.list_pipelines(view.conn, view.tables)
    return {row["pipeline_id"]: row["currency"] for row in rows}


def per_currency(amounts: Iterable[tuple[str, Decimal]]) -> dict[str, Decimal]:
    """Amounts summed per currency, in currency order: money never adds across currencies."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for currency, amount in amounts:
        totals[currency] += amount
    return dict(sorted(totals.items()))


async def open_deal_totals(
    ctx: ReportContext, params: ReportParams, group_by: str | None
) -> tuple[list[dict[str, Any]], int]:
    """Open deals now: ``count``, ``value`` and ``weighted_value`` per ``currency`` (and per
    ``group_by`` column, as ``key``)."""
    team = await owners_of_team(ctx, params, ctx.clock())
    async with ctx.models.open("current_pipeline", params.min_position) as view:
        deals = view.tables["deals"]
        dialect = view.conn.dialect.name
        keys = [deals.c[group_by]] if group_by else []
        query = (
            select(
                *keys,
                deals.c.pipeline_id,
                func.count().label("count"),
                *money_sum(deals.c.value, dialect, "value"),
                *money_sum(deals.c.weighted_value, dialect, "weighted_value"),
            )
            .where(*open_deal_clauses(deals, params, team))
            .group_by(*keys, deals.c.pipeline_id)
        )
        result = (await view.conn.execute(query)).mappings().all()
        currency = {
            p["pipeline_id"]: p["currency"]
            for p in await current_pipeline.list_pipelines(view.conn, view.tables)
        }
        position = view.position
    merged: dict[tuple[Any, str], dict[str, Any]] = {}
    for r in result:
        key = r[group_by] if group_by else None
        entry = merged.setdefault(
            (key, currency[r["pipeline_id"]]),
            {
                **({"key": key} if group_by else {}),
                "currency": currency[r["pipeline_id"]],
                "count": 0,
                "value": Decimal(0),
                "weighted_value": Decimal(0),
            },
        )
        entry["count"] += int(r["count"])
        entry["value"] += money_total(r, "value")
        entry["weighted_value"] += money_total(r, "weighted_value")
    return list(merged.values()), position
