"""Stale deals: open deals past their stage's or pipeline's threshold, most stale first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from libs.domain.state import PipelineState, days_between, staleness
from services.queries.deals import pipelines_now
from services.queries.reports import Report, ReportContext, ReportParams
from services.queries.reports.common import open_deal_clauses, owners_of_team
from services.queries.staleness import not_snoozed, stale_over

STALE_LIMIT = 1000
RANK_MARGIN_MICROS = 1000


async def _stale_candidates(
    ctx: ReportContext, params: ReportParams, now: datetime
) -> tuple[list[dict[str, Any]], int, dict[str, PipelineState], int]:
    """Open stale deals now (by pipeline, owner, and team as of now), not snoozed: the most
    stale ``STALE_LIMIT`` (and any within a hair of the last), their number, the pipelines."""
    team = await owners_of_team(ctx, params, now)
    async with ctx.models.open("current_pipeline", params.min_position) as view:
        conn = view.conn
        pipelines = await pipelines_now(conn, view.tables)
        d = view.tables["deals"]
        over = stale_over(d, pipelines.items(), now, conn.dialect.name)
        clauses = [*open_deal_clauses(d, params, team), not_snoozed(d, now), over.is_not(None)]
        total = int((await conn.execute(select(func.count()).where(*clauses))).scalar_one())
        if total > STALE_LIMIT:
            last = select(over).where(*clauses).order_by(over.desc()).offset(STALE_LIMIT - 1)
            cutoff = (await conn.execute(last.limit(1))).scalar_one()
            # the float days order as the exact microseconds do, but for rounding far
            # below this margin; the exact order is made below
            clauses.append(over >= int(cutoff) - RANK_MARGIN_MICROS)
        query = select(
            d.c.deal_id,
            d.c.title,
            d.c.pipeline_id,
            d.c.owner,
            d.c.stage_id,
            d.c.status,
            d.c.value,
            d.c.entered_current_stage_at,
            d.c.last_activity_at,
            d.c.snoozed_until,
        ).where(*clauses)
        deals = [dict(r) for r in (await conn.execute(query)).mappings().all()]
        position = view.position
    return deals, total, pipelines, position


async def stale_deals(ctx: ReportContext, params: ReportParams) -> Report:
    """Open stale deals, most stale first, with owner, stage and days (snoozed ones left out)."""
    now = ctx.clock()
    deals, total, pipelines, position = await _stale_candidates(ctx, params, now)
    rows = []
    for d in deals:
        pipeline = pipelines.get(d["pipeline_id"])
        if pipeline is None:
            continue
        stage = next((s for s in pipeline.stages if s.id == d["stage_id"]), None)
        stale = staleness(
            status=d["status"],
            rotting_days=stage.rotting_days if stage else None,
            stale_after_days=pipeline.stale_after_days,
            stage_entered_at=d["entered_current_stage_at"],
            last_activity_at=d["last_activity_at"],
            snoozed_until=d["snoozed_until"],
            now=now,
        )
        if not stale.stale:
            continue
        rows.append(
            {
                "deal_id": d["deal_id"],
                "title": d["title"],
                "pipeline_id": d["pipeline_id"],
                "owner": d["owner"],
                "stage_id": d["stage_id"],
                "stage_name": pipeline.stage_name(d["stage_id"]),
                "value": d["value"],
                "days_in_stage": days_between(d["entered_current_stage_at"], now),
                "days_since_activity": days_between(d["last_activity_at"], now),
                "days_stale": stale.days_stale,
                "reasons": ",".join(stale.reasons),
            }
        )
    rows.sort(key=lambda r: (-r["days_stale"], r["deal_id"]))
    return Report(
        "stale-deals",
        params.as_dict(),
        rows[:STALE_LIMIT],
        {"stale": total, "shown": min(total, STALE_LIMIT), "now": now.isoformat()},
        position,
    )
