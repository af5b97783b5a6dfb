"""Per rep: open pipeline now, closes and speed in the period, events recorded."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from services.projections.analytics import queries as analytics
from services.projections.audit_history import queries as audit_history
from services.projections.current_pipeline import queries as current_pipeline
from services.projections.sql import micros_to_days
from services.queries.reports import Report, ReportContext, ReportParams, day_stats, ratio
from services.queries.reports.activities import activity_filter
from services.queries.reports.common import (
    close_filter,
    currencies,
    open_deal_totals,
    owners_of_team,
)

ZERO = Decimal(0)


async def owners(ctx: ReportContext, params: ReportParams) -> Report:
    """Per rep and currency: open deals and value, weighted value (now); won count and
    value, lost count, win rate, average won deal size, median days to win (in the
    period); the events the rep recorded (in the period), the activities they completed
    (in the period) and their overdue ones (now), over every currency."""
    open_totals, position = await open_deal_totals(ctx, params, "owner")
    currency = await currencies(ctx, params)
    async with ctx.models.open("analytics", params.min_position) as view:
        closes = await analytics.owner_closes(view.conn, view.tables, close_filter(params))
        members = await analytics.memberships(view.conn, view.tables)
        apos = view.position
    now = ctx.clock()
    per: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(owner: str, code: str) -> dict[str, Any]:
        if (owner, code) not in per:
            team, region = analytics.membership_at(members, owner, now)
            per[(owner, code)] = {
                "owner": owner,
                "team": team,
                "region": region,
                "currency": code,
                "open_deals": 0,
                "open_value": ZERO,
                "weighted_value": ZERO,
                "won": 0,
                "won_value": ZERO,
                "lost": 0,
                "_days": [],
            }
        return per[(owner, code)]

    for t in open_totals:
        e = entry(t["key"], t["currency"])
        e["open_deals"] += t["count"]
        e["open_value"] += t["value"]
        e["weighted_value"] += t["weighted_value"]
    for c in closes:
        e = entry(c["owner"], currency[c["pipeline_id"]])
        e["won"] += c["won"]
        e["won_value"] += c["won_value"]
        e["lost"] += c["lost"]
        e["_days"] += [micros_to_days(m) for m in c["win_micros"]]
    async with ctx.models.open("audit_history", params.min_position) as view:
        events = await audit_history.events_by_actor(
            view.conn,
            view.tables,
            start=params.start,
            end=params.end,
            schema_version=view.schema_version,
        )
    team = await owners_of_team(ctx, params, now)
    async with ctx.models.open("current_pipeline", params.min_position) as view:
        work = await current_pipeline.activity_work(
            view.conn, view.tables, activity_filter(params, team), now
        )
    rows = []
    for key in sorted(per):
        e = per[key]
        days = sorted(e.pop("_days"))
        e["win_rate"] = ratio(e["won"], e["won"] + e["lost"])
        e["average_deal_size"] = (
            (e["won_value"] / e["won"]).quantize(Decimal("0.01")) if e["won"] else None
        )
        e["median_days_to_win"] = day_stats(days)["median_days"]
        e["events_recorded"] = events.get(e["owner"], 0)
        done = work.get(e["owner"], {})
        e["activities_completed"] = done.get("completed", 0)
        e["activities_overdue"] = done.get("overdue", 0)
        rows.append(e)
    return Report(
        "owners",
        params.as_dict(),
        rows,
        {"owners": len({r["owner"] for r in rows})},
        min(position, apos),
        notes="A row per rep and currency (amounts never add across currencies). "
        "events_recorded: events the rep made (as actor) in the period (occurred_at), "
        "in any currency. activities_completed: activities assigned to the rep and completed "
        "in the period; activities_overdue: open and due before now (any period).",
    )
