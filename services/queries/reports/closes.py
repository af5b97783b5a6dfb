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
    currencies,
    open_deal_totals,
    per_currency,
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
    """Count and value of losses in the period per reason, and per stage and reason (a row
    per currency of the lost deals' pipelines)."""
    async with ctx.models.open("analytics", params.min_position) as view:
        groups = await analytics.loss_totals(view.conn, view.tables, close_filter(params))
        position = view.position
    currency = await currencies(ctx, params)
    names: dict[str, str] = {}
    if params.pipeline_id is not None:
        pipeline, _ = await pipeline_for(ctx, params)
        names = stage_names(pipeline)
    per_reason: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, ZERO])
    per_stage: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, ZERO])
    for g in groups:
        reason, code = g["lost_reason"] or "(none)", currency[g["pipeline_id"]]
        for entry in (per_reason[(reason, code)], per_stage[(g["stage_id"], reason, code)]):
            entry[0] += g["n"]
            entry[1] += g["value"]
    losses = sum(g["n"] for g in groups)
    rows: list[dict[str, Any]] = [
        {
            "dimension": "reason",
            "stage_id": None,
            "stage_name": None,
            "reason": reason,
            "currency": code,
            "count": n,
            "value": value,
            "share": ratio(n, losses),
        }
        for (reason, code), (n, value) in sorted(
            per_reason.items(), key=lambda kv: (-kv[1][0], kv[0])
        )
    ]
    rows += [
        {
            "dimension": "stage",
            "stage_id": sid,
            "stage_name": names.get(sid, sid),
            "reason": reason,
            "currency": code,
            "count": n,
            "value": value,
            "share": ratio(n, losses),
        }
        for (sid, reason, code), (n, value) in sorted(per_stage.items())
    ]
    lost_value = per_currency((currency[g["pipeline_id"]], g["value"]) for g in groups)
    return Report(
        "lost-reasons",
        params.as_dict(),
        rows,
        {"lost": losses, "lost_value": lost_value},
        position,
        notes="share: of the period's losses, by count. Values never add across "
        "currencies: a row per currency, lost_value per currency.",
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
    (default: the 90 days before now); open deals are counted now. A row per currency.
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
    currency = await currencies(ctx, params)
    async with ctx.models.open("analytics", params.min_position) as view:
        closes = close_filter(params)
        totals = await analytics.close_totals(view.conn, view.tables, closes)
        micros = await analytics.win_durations(view.conn, view.tables, closes)
        apos = view.position
    figures: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"open_deals": 0, "closes": 0, "won": 0, "won_value": ZERO, "days": []}
    )
    for t in open_totals:
        figures[t["currency"]]["open_deals"] += t["count"]
    for t in totals:
        f = figures[currency[t["pipeline_id"]]]
        f["closes"] += t["closes"]
        f["won"] += t["won"]
        f["won_value"] += t["won_value"]
    for pipeline_id, m in micros:
        figures[currency[pipeline_id]]["days"].append(micros_to_days(m))
    rows = [{"currency": code, **_velocity(f)} for code, f in sorted(figures.items())]
    every = _velocity(
        {
            "open_deals": sum(f["open_deals"] for f in figures.values()),
            "closes": sum(f["closes"] for f in figures.values()),
            "won": sum(f["won"] for f in figures.values()),
            "won_value": None,
            "days": [d for f in figures.values() for d in f["days"]],
        }
    )
    summary = {
        "open_deals": every["open_deals"],
        "win_rate": every["win_rate"],
        "average_days_to_win": every["average_days_to_win"],
        "average_won_value": {r["currency"]: r["average_won_value"] for r in rows},
        "velocity_per_day": {r["currency"]: r["velocity_per_day"] for r in rows},
    }
    return Report(
        "velocity",
        params.as_dict(),
        rows,
        summary,
        min(position, apos),
        notes="velocity_per_day: expected won value per day at the current pace, per "
        "currency (amounts never add across currencies).",
    )


def _velocity(f: dict[str, Any]) -> dict[str, Any]:
    """Velocity's figures from open deals, closes, wins, won value and days to win."""
    wins = f["won"]
    rate = ratio(wins, f["closes"])
    avg_value = f["won_value"] / wins if wins and f["won_value"] is not None else None
    days = f["days"]
    avg_days = sum(days) / len(days) if days else None
    result = None
    if rate is not None and avg_value is not None and avg_days:
        result = Decimal(f["open_deals"]) * Decimal(str(rate)) * avg_value / Decimal(str(avg_days))
        result = result.quantize(Decimal("0.01"))
    return {
        "open_deals": f["open_deals"],
        "win_rate": rate,
        "average_won_value": avg_value.quantize(Decimal("0.01")) if avg_value else None,
        "average_days_to_win": avg_days,
        "velocity_per_day": result,
    }
