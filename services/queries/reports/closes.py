"""Reports on closes: win rate, lost reasons, cycle time and sales velocity."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any

from services.projections.analytics import queries as analytics
from services.projections.sql import micros_to_days
from services.queries.reports import Report, ReportContext, ReportParams, day_stats, ratio
from services.queries.reports.common import (
    close_filter,
    open_deal_totals,
    pipeline_for,
    stage_names,
)

ZERO = Decimal(0)
VELOCITY_DEFAULT_DAYS = 90


def _win_rows(counts: list[dict[str, Any]], dimension: str, key: str) -> list[dict[str, Any]]:
    totals: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for c in counts:
        totals[c[key]][0 if c["outcome"] == "won" else 1] += c["n"]
    return [
        {
            "dimension": dimension,
            "key": k,
            "won": w,
            "lost": lost,
            "win_rate": ratio(w, w + lost),
        }
        for k, (w, lost) in sorted(totals.items(), key=lambda kv: str(kv[0]))
    ]


async def win_rate(ctx: ReportContext, params: ReportParams) -> Report:
    """won / (won + lost) over the closes in the period: overall, by owner, team, region,
    and by the stage the deal was in when it closed."""
    async with ctx.models.open("analytics", params.min_position) as view:
        counts = await analytics.close_counts(view.conn, view.tables, close_filter(params))
        position = view.position
    names: dict[str, str] = {}
    if params.pipeline_id is not None:
        pipeline, _ = await pipeline_for(ctx, params)
        names = stage_names(pipeline)
    for c in counts:
        c["stage"] = names.get(c["stage_id"], c["stage_id"])
    won = sum(c["n"] for c in counts if c["outcome"] == "won")
    lost = sum(c["n"] for c in counts) - won
    rows = [
        {
            "dimension": "overall",
            "key": None,
            "won": won,
            "lost": lost,
            "win_rate": ratio(won, won + lost),
        }
    ]
    for dimension, key in (
        ("owner", "owner"),
        ("team", "team"),
        ("region", "region"),
        ("stage", "stage"),
    ):
        rows += _win_rows(counts, dimension, key)
    summary = {"won": won, "lost": lost, "win_rate": ratio(won, won + lost)}
    return Report(
        "win-rate",
        params.as_dict(),
        rows,
        summary,
        position,
        notes="Every close in the period counts (a reopened deal closed twice "
        "counts twice); team and region are as of each close.",
    )


async def lost_reasons(ctx: ReportContext, params: ReportParams) -> Report:
    """Count and value of losses in the period per reason, and per stage and reason."""
    async with ctx.models.open("analytics", params.min_position) as view:
        groups = await analytics.loss_totals(view.conn, view.tables, close_filter(params))
        position = view.position
    names: dict[str, str] = {}
    if params.pipeline_id is not None:
        pipeline, _ = await pipeline_for(ctx, params)
        names = stage_names(pipeline)
    per_reason: dict[str, list[Any]] = defaultdict(lambda: [0, ZERO])
    per_stage: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, ZERO])
    for g in groups:
        reason = g["lost_reason"] or "(none)"
        per_reason[reason][0] += g["n"]
        per_reason[reason][1] += g["value"]
        per_stage[(g["stage_id"], reason)][0] += g["n"]
        per_stage[(g["stage_id"], reason)][1] += g["value"]
    losses = sum(g["n"] for g in groups)
    rows: list[dict[str, Any]] = [
        {
            "dimension": "reason",
            "stage_id": None,
            "stage_name": None,
            "reason": reason,
            "count": n,
            "value": value,
            "share": ratio(n, losses),
        }
        for reason, (n, value) in sorted(per_reason.items(), key=lambda kv: (-kv[1][0], kv[0]))
    ]
    rows += [
        {
            "dimension": "stage",
            "stage_id": sid,
            "stage_name": names.get(sid, sid),
            "reason": reason,
            "count": n,
            "value": value,
            "share": ratio(n, losses),
        }
        for (sid, reason), (n, value) in sorted(per_stage.items())
    ]
    total_value = sum((g["value"] for g in groups), ZERO)
    return Report(
        "lost-reasons",
        params.as_dict(),
        rows,
        {"lost": losses, "lost_value": total_value},
        position,
    )


async def cycle_time(ctx: ReportContext, params: ReportParams) -> Report:
    """Days from creation to won and to lost for closes in the period: mean, median and
    90th percentile, overall, by owner and by team."""
    async with ctx.models.open("analytics", params.min_position) as view:
        groups = await analytics.close_durations(view.conn, view.tables, close_filter(params))
        position = view.position
    for g in groups:
        g["days"] = [micros_to_days(m) for m in g.pop("micros")]
    rows = []
    for dimension, key in (("overall", None), ("owner", "owner"), ("team", "team")):
        by_key: dict[Any, dict[str, list[float]]] = defaultdict(lambda: {"won": [], "lost": []})
        for g in groups:
            by_key[g[key] if key else None][g["outcome"]].extend(g["days"])
        for k in sorted(by_key, key=str):
            for outcome in ("won", "lost"):
                rows.append(
                    {
                        "dimension": dimension,
                        "key": k,
                        "outcome": outcome,
                        **day_stats(by_key[k][outcome]),
                    }
                )
    won_days = [d for g in groups if g["outcome"] == "won" for d in g["days"]]
    lost_days = [d for g in groups if g["outcome"] == "lost" for d in g["days"]]
    summary = {"won": day_stats(won_days), "lost": day_stats(lost_days)}
    return Report("cycle-time", params.as_dict(), rows, summary, position)


async def velocity(ctx: ReportContext, params: ReportParams) -> Report:
    """Sales velocity = open deals * win rate * average won value / average days to win.

    The win rate, average won value and days to win come from the closes in the period
    (default: the 90 days before now); open deals are counted now.
    """
    now = ctx.clock()
    if params.start is None and params.end is None:
        params = ReportParams(
            params.pipeline_id,
            now - timedelta(days=VELOCITY_DEFAULT_DAYS),
            now,
            params.owner,
            params.team,
            params.min_position,
        )
    open_totals, position = await open_deal_totals(ctx, params, None)
    open_deals = sum(t["count"] for t in open_totals)
    async with ctx.models.open("analytics", params.min_position) as view:
        closes = close_filter(params)
        totals = await analytics.close_totals(view.conn, view.tables, closes)
        micros = await analytics.win_durations(view.conn, view.tables, closes)
        apos = view.position
    wins = totals["won"]
    rate = ratio(wins, totals["closes"])
    avg_value = totals["won_value"] / wins if wins else None
    days = [micros_to_days(m) for m in micros]
    avg_days = sum(days) / len(days) if days else None
    result = None
    if rate is not None and avg_value is not None and avg_days:
        result = Decimal(open_deals) * Decimal(str(rate)) * avg_value / Decimal(str(avg_days))
        result = result.quantize(Decimal("0.01"))
    summary = {
        "open_deals": open_deals,
        "win_rate": rate,
        "average_won_value": avg_value.quantize(Decimal("0.01")) if avg_value else None,
        "average_days_to_win": avg_days,
        "velocity_per_day": result,
    }
    return Report(
        "velocity",
        params.as_dict(),
        [summary],
        summary,
        min(position, apos),
        notes="velocity_per_day: expected won value per day at the current pace.",
    )
