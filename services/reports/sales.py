"""The sales reports: funnel, win rate, lost reasons, forecast, cycle time, velocity, owners,
stale deals and stage durations."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, and_, case, false, func, literal, null, or_, select

from services.projections import analytics, current_pipeline, stage_durations
from services.projections.analytics import membership_at
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
DAY_MICROS = 86_400_000_000
RANK_MARGIN_MICROS = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


def _close_filter(params: ReportParams) -> analytics.CloseFilter:
    """The closes of the period (by pipeline, owner, and team as of each close)."""
    return analytics.CloseFilter(
        pipeline_id=str(params.pipeline_id) if params.pipeline_id else None,
        start=params.start,
        end=params.end,
        owner=params.owner,
        team=params.team,
    )


async def _team_owners(ctx: ReportContext, params: ReportParams, now: datetime) -> list[str] | None:
    """The owners in ``params.team`` at ``now`` (None without a team filter)."""
    if params.team is None:
        return None
    async with ctx.models.open("analytics", params.min_position) as view:
        members = await analytics.memberships(view.conn, view.tables)
    return sorted(o for o in members if membership_at(members, o, now)[0] == params.team)


def _open_deal_clauses(
    deals: Any, params: ReportParams, team_owners: list[str] | None
) -> list[Any]:
    """Open deals now, filtered by pipeline, owner, and team as of now."""
    clauses: list[Any] = [deals.c.status == "open"]
    if params.pipeline_id is not None:
        clauses.append(deals.c.pipeline_id == str(params.pipeline_id))
    if params.owner is not None:
        clauses.append(deals.c.owner == params.owner)
    if team_owners is not None:
        clauses.append(deals.c.owner.in_(team_owners) if team_owners else false())
    return clauses


async def _open_deal_totals(
    ctx: ReportContext, params: ReportParams, group_by: str | None
) -> tuple[list[dict[str, Any]], int]:
    """Open deals now: ``count``, ``value`` and ``weighted_value``, per ``group_by`` column
    (one row over all without)."""
    team_owners = await _team_owners(ctx, params, ctx.clock())
    async with ctx.models.open("current_pipeline", params.min_position) as view:
        deals = view.tables["deals"]
        dialect = view.conn.dialect.name
        keys = [deals.c[group_by]] if group_by else []
        query = select(
            *keys,
            func.count().label("count"),
            *analytics.money_sum(deals.c.value, dialect, "value"),
            *analytics.money_sum(deals.c.weighted_value, dialect, "weighted_value"),
        ).where(*_open_deal_clauses(deals, params, team_owners))
        if keys:
            query = query.group_by(*keys)
        result = (await view.conn.execute(query)).mappings().all()
        position = view.position
    rows = [
        {
            **({"key": r[group_by]} if group_by else {}),
            "count": int(r["count"]),
            "value": analytics.money_total(r, "value"),
            "weighted_value": analytics.money_total(r, "weighted_value"),
        }
        for r in result
    ]
    return rows, position


# --- funnel ---------------------------------------------------------------------------------


async def funnel(ctx: ReportContext, params: ReportParams) -> Report:
    """Per stage: deals that reached it in the period, how many went on, were lost there,
    were won, and the stage-to-stage and stage-to-won conversion."""
    pipeline, position = await _pipeline(ctx, params)
    order = [s["id"] for s in pipeline["stages"]]
    async with ctx.models.open("analytics", params.min_position) as view:
        counts = await analytics.funnel_counts(
            view.conn,
            view.tables,
            str(params.pipeline_id),
            order,
            start=params.start,
            end=params.end,
            owner=params.owner,
            team=params.team,
        )
        position = min(position, view.position)
    names = _stage_names(pipeline)
    rows = []
    for stage_id in order:
        c = counts.get(stage_id, {})
        entered, advanced, won = c.get("entered", 0), c.get("advanced", 0), c.get("won", 0)
        rows.append(
            {
                "stage_id": stage_id,
                "stage_name": names.get(stage_id, stage_id),
                "entered": entered,
                "of_which_skipped": c.get("skipped", 0),
                "advanced": advanced,
                "lost_here": c.get("lost_here", 0),
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
        counts = await analytics.close_counts(view.conn, view.tables, _close_filter(params))
        position = view.position
    names: dict[str, str] = {}
    if params.pipeline_id is not None:
        pipeline, _ = await _pipeline(ctx, params)
        names = _stage_names(pipeline)
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
        groups = await analytics.loss_totals(view.conn, view.tables, _close_filter(params))
        position = view.position
    names: dict[str, str] = {}
    if params.pipeline_id is not None:
        pipeline, _ = await _pipeline(ctx, params)
        names = _stage_names(pipeline)
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


# --- forecast -------------------------------------------------------------------------------


def _month(d: date | datetime) -> str:
    return f"{d.year:04d}-{d.month:02d}"


async def forecast(ctx: ReportContext, params: ReportParams) -> Report:
    """Open deals' value and weighted value by expected close month (overdue and undated
    in their own buckets), with the value won per month beside it."""
    by_date, position = await _open_deal_totals(ctx, params, "expected_close_date")
    async with ctx.models.open("analytics", params.min_position) as view:
        wins = await analytics.wins_by_month(view.conn, view.tables, _close_filter(params))
        apos = view.position
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
    for d in by_date:
        close = d["key"]
        if close is None:
            name = "no date"
        elif close < today:
            name = "overdue"
        else:
            name = _month(close)
            if (start_month and name < start_month) or (end_month and name > end_month):
                continue
        b = bucket(name)
        b["open_count"] += d["count"]
        b["open_value"] += d["value"]
        b["weighted_value"] += d["weighted_value"]
    for w in wins:
        b = bucket(w["month"])
        b["won_count"] += w["n"]
        b["won_value"] += w["value"]
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
    async with ctx.models.open("analytics", params.min_position) as view:
        groups = await analytics.close_durations(view.conn, view.tables, _close_filter(params))
        position = view.position
    for g in groups:
        g["days"] = [analytics.micros_to_days(m) for m in g.pop("micros")]
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
    open_totals, position = await _open_deal_totals(ctx, params, None)
    open_deals = sum(t["count"] for t in open_totals)
    async with ctx.models.open("analytics", params.min_position) as view:
        closes = _close_filter(params)
        totals = await analytics.close_totals(view.conn, view.tables, closes)
        micros = await analytics.win_durations(view.conn, view.tables, closes)
        apos = view.position
    wins = totals["won"]
    rate = ratio(wins, totals["closes"])
    avg_value = totals["won_value"] / wins if wins else None
    days = [analytics.micros_to_days(m) for m in micros]
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


# --- owners ---------------------------------------------------------------------------------


async def owners(ctx: ReportContext, params: ReportParams) -> Report:
    """Per rep: open deals and value, weighted value (now); won count and value, lost count,
    win rate, average won deal size, median days to win and events recorded (in the period)."""
    open_totals, position = await _open_deal_totals(ctx, params, "owner")
    async with ctx.models.open("analytics", params.min_position) as view:
        closes = await analytics.owner_closes(view.conn, view.tables, _close_filter(params))
        members = await analytics.memberships(view.conn, view.tables)
        apos = view.position
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

    for t in open_totals:
        e = entry(t["key"])
        e["open_deals"] += t["count"]
        e["open_value"] += t["value"]
        e["weighted_value"] += t["weighted_value"]
    for c in closes:
        e = entry(c["owner"])
        e["won"] += c["won"]
        e["won_value"] += c["won_value"]
        e["lost"] += c["lost"]
        e["_days"] += [analytics.micros_to_days(m) for m in c["win_micros"]]
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


def _epoch_micros(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _stale_over(deals: Any, pipelines: list[dict[str, Any]], now: datetime, dialect: str) -> Any:
    """Per open deal, how far past its stale threshold it is now in microseconds (the larger
    of rotting in a current stage of its pipeline and idling), NULL when it is not stale.

    Thresholds are whole days (at most 3650), so these exact integer comparisons decide as
    ``staleness`` does on float days."""
    now_micros = literal(_epoch_micros(now), BigInteger)
    in_stage = now_micros - analytics.epoch_micros(deals.c.entered_current_stage_at, dialect)
    idle = now_micros - analytics.epoch_micros(deals.c.last_activity_at, dialect)
    rotting = [
        (
            and_(deals.c.pipeline_id == p["pipeline_id"], deals.c.stage_id == stage["id"]),
            stage["rotting_days"] * DAY_MICROS,
        )
        for p in pipelines
        for stage in p["stages"]
        if stage.get("rotting_days")
    ]
    idling = [
        (deals.c.pipeline_id == p["pipeline_id"], p["stale_after_days"] * DAY_MICROS)
        for p in pipelines
        if p.get("stale_after_days")
    ]
    overs = []
    for since, limits in ((in_stage, rotting), (idle, idling)):
        if limits:
            over = since - case(*limits)
            overs.append(case((over > 0, over)))
    if not overs:
        return null()
    if len(overs) == 1:
        return overs[0]
    a, b = overs
    return case((a.is_(None), b), (b.is_(None), a), (a > b, a), else_=b)


async def _stale_candidates(
    ctx: ReportContext, params: ReportParams, now: datetime
) -> tuple[list[dict[str, Any]], int, dict[str, dict[str, Any]], int]:
    """Open stale deals now (by pipeline, owner, and team as of now), not snoozed: the most
    stale ``STALE_LIMIT`` (and any within a hair of the last), their number, the pipelines."""
    team_owners = await _team_owners(ctx, params, now)
    async with ctx.models.open("current_pipeline", params.min_position) as view:
        conn = view.conn
        pipelines = {
            p["pipeline_id"]: p for p in await current_pipeline.list_pipelines(conn, view.tables)
        }
        d = view.tables["deals"]
        over = _stale_over(d, list(pipelines.values()), now, conn.dialect.name)
        clauses = [
            *_open_deal_clauses(d, params, team_owners),
            or_(d.c.snoozed_until.is_(None), d.c.snoozed_until <= now),
            over.is_not(None),
        ]
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


# Reports about one pipeline's stages: they need ``pipeline_id``.
NEEDS_PIPELINE = frozenset({"funnel", "stage-durations"})

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
