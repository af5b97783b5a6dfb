"""The sales reports: funnel, win rate, lost reasons, forecast, cycle time, velocity, owners,
stale deals and stage durations."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.projections import analytics, current_pipeline, stage_durations
from services.projections.analytics import membership_at
from services.projections.current_pipeline import DealFilter
from services.reports import (
    Report,
    ReportContext,
    ReportError,
    ReportFn,
    ReportParams,
    day_stats,
    ratio,
)

ZERO = Decimal(0)
DAY = 86400.0
VELOCITY_DEFAULT_DAYS = 90
STALE_LIMIT = 1000


def _days(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() / DAY


async def _pipeline(ctx: ReportContext, params: ReportParams) -> tuple[dict[str, Any], int]:
    if params.pipeline_id is None:
        raise ReportError("pipeline_id is required for this report", field="pipeline_id")
    async with ctx.models.open("current_pipeline", params.min_position) as view:
        pipeline = await current_pipeline.get_pipeline(view.conn, view.tables, params.pipeline_id)
        position = view.position
    if pipeline is None:
        raise ReportError(
            f"pipeline {params.pipeline_id} does not exist", field="pipeline_id", status=404
        )
    return pipeline, position


def _stage_names(pipeline: dict[str, Any] | None) -> dict[str, str]:
    if not pipeline:
        return {}
    return {s["id"]: s["name"] for s in (*pipeline["stages"], *pipeline["removed_stages"])}


async def _outcomes(
    ctx: ReportContext, params: ReportParams, *, until_end_only: bool = False
) -> tuple[list[dict[str, Any]], Any, int]:
    """Closes in the period (or, with ``until_end_only``, all closes before its end),
    filtered by owner and by team as of each close; with the membership history."""
    async with ctx.models.open("analytics", params.min_position) as view:
        rows = await analytics.outcomes(
            view.conn,
            view.tables,
            pipeline_id=str(params.pipeline_id) if params.pipeline_id else None,
            start=None if until_end_only else params.start,
            end=params.end,
        )
        members = await analytics.memberships(view.conn, view.tables)
        position = view.position
    for row in rows:
        row["team"], row["region"] = membership_at(members, row["owner"], row["closed_at"])
    rows = [
        r
        for r in rows
        if (params.owner is None or r["owner"] == params.owner)
        and (params.team is None or r["team"] == params.team)
    ]
    return rows, members, position


async def _open_deals(
    ctx: ReportContext, params: ReportParams
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], int]:
    """Open deals now (filtered by pipeline, owner, and team as of now), and pipelines."""
    now = ctx.clock()
    async with ctx.models.open("current_pipeline", params.min_position) as view:
        pipelines = {
            p["pipeline_id"]: p
            for p in await current_pipeline.list_pipelines(view.conn, view.tables)
        }
        deals: list[dict[str, Any]] = []
        after = None
        filters = DealFilter(pipeline_id=params.pipeline_id, status="open", owner=params.owner)
        while True:
            page = await current_pipeline.list_deals(view.conn, view.tables, filters, after, 5000)
            deals += page
            if len(page) < 5000:
                break
            after = (page[-1]["created_at"], page[-1]["deal_id"])
        position = view.position
    if params.team is not None:
        async with ctx.models.open("analytics", params.min_position) as aview:
            members = await analytics.memberships(aview.conn, aview.tables)
        deals = [d for d in deals if membership_at(members, d["owner"], now)[0] == params.team]
    return deals, pipelines, position


# --- funnel ---------------------------------------------------------------------------------


async def funnel(ctx: ReportContext, params: ReportParams) -> Report:
    """Per stage: deals that reached it in the period, how many went on, were lost there,
    were won, and the stage-to-stage and stage-to-won conversion."""
    pipeline, position = await _pipeline(ctx, params)
    pid = str(params.pipeline_id)
    async with ctx.models.open("analytics", params.min_position) as view:
        reach = await analytics.reach_rows(view.conn, view.tables, pid, params.end)
        closes = await analytics.outcomes(
            view.conn, view.tables, pipeline_id=pid, start=None, end=params.end
        )
        members = await analytics.memberships(view.conn, view.tables)
        position = min(position, view.position)
    order = [s["id"] for s in pipeline["stages"]]
    index = {sid: i for i, sid in enumerate(order)}
    by_deal: dict[str, dict[str, datetime]] = defaultdict(dict)
    by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in reach:
        by_deal[r["deal_id"]][r["stage_id"]] = r["reached_at"]
        by_stage[r["stage_id"]].append(r)
    closes_by_deal: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in closes:
        closes_by_deal[c["deal_id"]].append(c)

    def in_period(moment: datetime) -> bool:
        return (params.start is None or moment >= params.start) and (
            params.end is None or moment < params.end
        )

    def selected(r: dict[str, Any]) -> bool:
        if params.owner is not None and r["owner"] != params.owner:
            return False
        if params.team is not None:
            return membership_at(members, r["owner"], r["reached_at"])[0] == params.team
        return True

    names = _stage_names(pipeline)
    rows = []
    for stage_id in order:
        cohort = {
            r["deal_id"]: r
            for r in by_stage.get(stage_id, [])
            if in_period(r["reached_at"]) and selected(r)
        }
        entered = len(cohort)
        skipped = sum(1 for r in cohort.values() if r["how"] == "skipped")
        advanced = lost = won = 0
        for deal_id, r in cohort.items():
            since = r["reached_at"]
            later = [
                at
                for sid, at in by_deal[deal_id].items()
                if index.get(sid, -1) > index[stage_id] and at >= since
            ]
            if later:
                advanced += 1
            deal_closes = [c for c in closes_by_deal.get(deal_id, []) if c["closed_at"] >= since]
            if any(c["outcome"] == "lost" and c["stage_id"] == stage_id for c in deal_closes):
                lost += 1
            if any(c["outcome"] == "won" for c in deal_closes):
                won += 1
        rows.append(
            {
                "stage_id": stage_id,
                "stage_name": names.get(stage_id, stage_id),
                "entered": entered,
                "of_which_skipped": skipped,
                "advanced": advanced,
                "lost_here": lost,
                "won": won,
                "conversion_to_next": ratio(advanced, entered),
                "conversion_to_won": ratio(won, entered),
            }
        )
    return Report(
        "funnel",
        params.as_dict(),
        rows,
        {"stages": len(rows)},
        position,
        notes=(
            "entered: deals that first reached the stage in the period, counting deals that "
            "skipped past it (of_which_skipped); moving back never counts a deal twice. "
            "advanced: of those, deals that later reached a later stage; lost_here: lost "
            "while in this stage; won: won afterwards at any stage (all before `to`)."
        ),
    )


# --- win rate and lost reasons --------------------------------------------------------------


def _win_rows(closes: list[dict[str, Any]], dimension: str, key: str) -> list[dict[str, Any]]:
    counts: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for c in closes:
        counts[c[key]][0 if c["outcome"] == "won" else 1] += 1
    return [
        {
            "dimension": dimension,
            "key": k,
            "won": w,
            "lost": lost,
            "win_rate": ratio(w, w + lost),
        }
        for k, (w, lost) in sorted(counts.items(), key=lambda kv: str(kv[0]))
    ]


async def win_rate(ctx: ReportContext, params: ReportParams) -> Report:
    """won / (won + lost) over the closes in the period: overall, by owner, team, region,
    and by the stage the deal was in when it closed."""
    closes, _, position = await _outcomes(ctx, params)
    names: dict[str, str] = {}
    if params.pipeline_id is not None:
        pipeline, _ = await _pipeline(ctx, params)
        names = _stage_names(pipeline)
    for c in closes:
        c["stage"] = names.get(c["stage_id"], c["stage_id"])
    won = sum(1 for c in closes if c["outcome"] == "won")
    lost = len(closes) - won
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
        rows += _win_rows(closes, dimension, key)
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
    closes, _, position = await _outcomes(ctx, params)
    names: dict[str, str] = {}
    if params.pipeline_id is not None:
        pipeline, _ = await _pipeline(ctx, params)
        names = _stage_names(pipeline)
    losses = [c for c in closes if c["outcome"] == "lost"]
    per_reason: dict[str, list[Any]] = defaultdict(lambda: [0, ZERO])
    per_stage: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, ZERO])
    for c in losses:
        reason = c["lost_reason"] or "(none)"
        per_reason[reason][0] += 1
        per_reason[reason][1] += c["value"]
        per_stage[(c["stage_id"], reason)][0] += 1
        per_stage[(c["stage_id"], reason)][1] += c["value"]
    rows: list[dict[str, Any]] = [
        {
            "dimension": "reason",
            "stage_id": None,
            "stage_name": None,
            "reason": reason,
            "count": n,
            "value": value,
            "share": ratio(n, len(losses)),
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
            "share": ratio(n, len(losses)),
        }
        for (sid, reason), (n, value) in sorted(per_stage.items())
    ]
    total_value = sum((c["value"] for c in losses), ZERO)
    return Report(
        "lost-reasons",
        params.as_dict(),
        rows,
        {"lost": len(losses), "lost_value": total_value},
        position,
    )


# --- forecast -------------------------------------------------------------------------------


def _month(d: date | datetime) -> str:
    return f"{d.year:04d}-{d.month:02d}"


async def forecast(ctx: ReportContext, params: ReportParams) -> Report:
    """Open deals' value and weighted value by expected close month (overdue and undated
    in their own buckets), with the value won per month beside it."""
    deals, _, position = await _open_deals(ctx, params)
    closes, _, apos = await _outcomes(ctx, params)
    today = ctx.clock().date()
    buckets: dict[str, dict[str, Any]] = {}

    def bucket(name: str) -> dict[str, Any]:
        return buckets.setdefault(
            name,
            {
                "bucket": name,
                "open_count": 0,
                "open_value": ZERO,
                "weighted_value": ZERO,
                "won_count": 0,
                "won_value": ZERO,
            },
        )

    start_month = _month(params.start) if params.start else None
    end_month = _month(params.end - timedelta(microseconds=1)) if params.end else None
    for d in deals:
        close = d["expected_close_date"]
        if close is None:
            name = "no date"
        elif close < today:
            name = "overdue"
        else:
            name = _month(close)
            if (start_month and name < start_month) or (end_month and name > end_month):
                continue
        b = bucket(name)
        b["open_count"] += 1
        b["open_value"] += d["value"]
        b["weighted_value"] += d["weighted_value"]
    for c in closes:
        if c["outcome"] == "won":
            b = bucket(_month(c["closed_at"]))
            b["won_count"] += 1
            b["won_value"] += c["value"]
    special = {"overdue": "0", "no date": "1"}
    rows = sorted(buckets.values(), key=lambda b: special.get(b["bucket"], "2" + b["bucket"]))
    summary = {
        "open_value": sum((r["open_value"] for r in rows), ZERO),
        "weighted_value": sum((r["weighted_value"] for r in rows), ZERO),
        "won_value": sum((r["won_value"] for r in rows), ZERO),
        "today": today.isoformat(),
    }
    return Report(
        "forecast",
        params.as_dict(),
        rows,
        summary,
        min(position, apos),
        notes="Open deals by expected close month as of now; `from`/`to` bound "
        "the months shown and the wins counted.",
    )


# --- cycle time and velocity ----------------------------------------------------------------


async def cycle_time(ctx: ReportContext, params: ReportParams) -> Report:
    """Days from creation to won and to lost for closes in the period: mean, median and
    90th percentile, overall, by owner and by team."""
    closes, _, position = await _outcomes(ctx, params)
    rows = []
    for dimension, key in (("overall", None), ("owner", "owner"), ("team", "team")):
        groups: dict[Any, dict[str, list[float]]] = defaultdict(lambda: {"won": [], "lost": []})
        for c in closes:
            groups[c[key] if key else None][c["outcome"]].append(
                _days(c["created_at"], c["closed_at"])
            )
        for k in sorted(groups, key=str):
            for outcome in ("won", "lost"):
                rows.append(
                    {
                        "dimension": dimension,
                        "key": k,
                        "outcome": outcome,
                        **day_stats(groups[k][outcome]),
                    }
                )
    won_days = [_days(c["created_at"], c["closed_at"]) for c in closes if c["outcome"] == "won"]
    lost_days = [_days(c["created_at"], c["closed_at"]) for c in closes if c["outcome"] == "lost"]
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
    deals, _, position = await _open_deals(ctx, params)
    closes, _, apos = await _outcomes(ctx, params)
    wins = [c for c in closes if c["outcome"] == "won"]
    rate = ratio(len(wins), len(closes))
    avg_value = sum((c["value"] for c in wins), ZERO) / len(wins) if wins else None
    days = [_days(c["created_at"], c["closed_at"]) for c in wins]
    avg_days = sum(days) / len(days) if days else None
    result = None
    if rate is not None and avg_value is not None and avg_days:
        result = Decimal(len(deals)) * Decimal(str(rate)) * avg_value / Decimal(str(avg_days))
        result = result.quantize(Decimal("0.01"))
    summary = {
        "open_deals": len(deals),
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


# --- owners ---------------------------------------------------------------------------------


async def owners(ctx: ReportContext, params: ReportParams) -> Report:
    """Per rep: open deals and value, weighted value (now); won count and value, lost count,
    win rate, average won deal size, median days to win and events recorded (in the period)."""
    deals, _, position = await _open_deals(ctx, params)
    closes, members, apos = await _outcomes(ctx, params)
    now = ctx.clock()
    per: dict[str, dict[str, Any]] = {}

    def entry(owner: str) -> dict[str, Any]:
        if owner not in per:
            team, region = membership_at(members, owner, now)
            per[owner] = {
                "owner": owner,
                "team": team,
                "region": region,
                "open_deals": 0,
                "open_value": ZERO,
                "weighted_value": ZERO,
                "won": 0,
                "won_value": ZERO,
                "lost": 0,
                "_days": [],
            }
        return per[owner]

    for d in deals:
        e = entry(d["owner"])
        e["open_deals"] += 1
        e["open_value"] += d["value"]
        e["weighted_value"] += d["weighted_value"]
    for c in closes:
        e = entry(c["owner"])
        if c["outcome"] == "won":
            e["won"] += 1
            e["won_value"] += c["value"]
            e["_days"].append(_days(c["created_at"], c["closed_at"]))
        else:
            e["lost"] += 1
    async with ctx.models.open("audit_history", params.min_position) as view:
        events = await _events_by_actor(view.conn, view.tables, params)
    rows = []
    for owner in sorted(per):
        e = per[owner]
        days = sorted(e.pop("_days"))
        e["win_rate"] = ratio(e["won"], e["won"] + e["lost"])
        e["average_deal_size"] = (
            (e["won_value"] / e["won"]).quantize(Decimal("0.01")) if e["won"] else None
        )
        e["median_days_to_win"] = day_stats(days)["median_days"]
        e["events_recorded"] = events.get(owner, 0)
        rows.append(e)
    return Report(
        "owners",
        params.as_dict(),
        rows,
        {"owners": len(rows)},
        min(position, apos),
        notes="events_recorded: events the rep made (as actor) in the period (occurred_at).",
    )


async def _events_by_actor(conn: Any, tables: Any, params: ReportParams) -> dict[str, int]:
    from sqlalchemy import func, select

    t = tables["events"]
    # the period is on business time, as for every report (recorded_at only if none)
    when = func.coalesce(t.c.occurred_at, t.c.recorded_at)
    clauses: list[Any] = []
    if params.start is not None:
        clauses.append(when >= params.start)
    if params.end is not None:
        clauses.append(when < params.end)
    query = select(t.c.actor, func.count()).where(*clauses).group_by(t.c.actor)
    return {actor: n for actor, n in (await conn.execute(query)).all() if actor}


# --- stale deals ----------------------------------------------------------------------------


def staleness(
    deal: dict[str, Any], pipeline: dict[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """Whether an open deal is stale now: longer in its stage than the stage's rotting
    threshold, or untouched longer than the pipeline's stale_after_days; snoozes hide it."""
    if deal["status"] != "open" or pipeline is None:
        return {"stale": False, "stale_reasons": [], "days_stale": 0.0, "snoozed": False}
    reasons: list[str] = []
    over = 0.0
    stage = next((s for s in pipeline["stages"] if s["id"] == deal["stage_id"]), None)
    in_stage = _days(deal["entered_current_stage_at"], now)
    if stage and stage.get("rotting_days") and in_stage > stage["rotting_days"]:
        reasons.append("rotting_in_stage")
        over = max(over, in_stage - stage["rotting_days"])
    idle = _days(deal["last_activity_at"], now)
    limit = pipeline.get("stale_after_days")
    if limit and idle > limit:
        reasons.append("no_activity")
        over = max(over, idle - limit)
    snoozed = bool(deal.get("snoozed_until") and deal["snoozed_until"] > now)
    return {
        "stale": bool(reasons) and not snoozed,
        "stale_reasons": reasons,
        "days_stale": over if reasons else 0.0,
        "snoozed": snoozed,
        "snoozed_until": deal.get("snoozed_until"),
    }


async def stale_deals(ctx: ReportContext, params: ReportParams) -> Report:
    """Open stale deals, most stale first, with owner, stage and days (snoozed ones left out)."""
    now = ctx.clock()
    deals, pipelines, position = await _open_deals(ctx, params)
    rows = []
    for d in deals:
        pipeline = pipelines.get(d["pipeline_id"])
        s = staleness(d, pipeline, now)
        if not s["stale"]:
            continue
        rows.append(
            {
                "deal_id": d["deal_id"],
                "title": d["title"],
                "pipeline_id": d["pipeline_id"],
                "owner": d["owner"],
                "stage_id": d["stage_id"],
                "stage_name": _stage_names(pipeline).get(d["stage_id"], d["stage_id"]),
                "value": d["value"],
                "days_in_stage": _days(d["entered_current_stage_at"], now),
                "days_since_activity": _days(d["last_activity_at"], now),
                "days_stale": s["days_stale"],
                "reasons": ",".join(s["stale_reasons"]),
            }
        )
    rows.sort(key=lambda r: (-r["days_stale"], r["deal_id"]))
    total = len(rows)
    return Report(
        "stale-deals",
        params.as_dict(),
        rows[:STALE_LIMIT],
        {"stale": total, "shown": min(total, STALE_LIMIT), "now": now.isoformat()},
        position,
    )


# --- stage durations ------------------------------------------------------------------------


async def stage_durations_report(ctx: ReportContext, params: ReportParams) -> Report:
    """Per stage in pipeline order: visits, mean/median/p90 days in stage, open visits;
    removed stages are listed after the current ones, marked removed."""
    pipeline, _ = await _pipeline(ctx, params)
    assert params.pipeline_id is not None
    async with ctx.models.open("stage_durations", params.min_position) as view:
        report = await stage_durations.stage_report(
            view.conn,
            view.tables,
            params.pipeline_id,
            owner=params.owner,
            start=params.start,
            end=params.end,
        )
        position = view.position
    removed_names = {s["id"]: s["name"] for s in pipeline["removed_stages"]}
    empty = {
        "visits": 0,
        "open": 0,
        "completed": 0,
        "mean_seconds": None,
        "median_seconds": None,
        "p90_seconds": None,
    }
    rows = []
    for stage in pipeline["stages"]:
        entry = {**empty, **report.pop(stage["id"], {})}
        entry.update(stage_id=stage["id"], stage_name=stage["name"], removed=False)
        rows.append(entry)
    for sid, entry in report.items():
        entry.update(removed=True, stage_name=removed_names.get(sid, entry["stage_name"]))
        rows.append(entry)
    for row in rows:
        for key in ("mean", "median", "p90"):
            seconds = row[f"{key}_seconds"]
            row[f"{key}_days"] = seconds / DAY if seconds is not None else None
    ordered = [
        {
            k: r[k]
            for k in (
                "stage_id",
                "stage_name",
                "removed",
                "visits",
                "completed",
                "open",
                "mean_seconds",
                "median_seconds",
                "p90_seconds",
                "mean_days",
                "median_days",
                "p90_days",
            )
        }
        for r in rows
    ]
    return Report(
        "stage-durations",
        params.as_dict(),
        ordered,
        {"stages": len(ordered)},
        position,
        notes="Visits that entered the stage in the period; statistics "
        "over completed visits, business time.",
    )


REPORTS: dict[str, ReportFn] = {
    "funnel": funnel,
    "win-rate": win_rate,
    "lost-reasons": lost_reasons,
    "forecast": forecast,
    "cycle-time": cycle_time,
    "velocity": velocity,
    "owners": owners,
    "stale-deals": stale_deals,
    "stage-durations": stage_durations_report,
}
