"""Reports on activities: the work planned and done per rep, and how soon deals get a
first response."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from services.projections.analytics import queries as analytics
from services.projections.current_pipeline import queries as current_pipeline
from services.projections.current_pipeline.queries import ActivityCountFilter
from services.projections.stage_durations.queries import percentile
from services.queries.reports import Report, ReportContext, ReportParams, ratio
from services.queries.reports.common import owners_of_team

COUNTS = ("planned", "completed", "cancelled", "overdue", "open")
MICROS_PER_HOUR = 3_600_000_000


def activity_filter(params: ReportParams, team: list[str] | None) -> ActivityCountFilter:
    """The activities of the report's pipeline (their deal's, now), owner (the assignee)
    and team (assignees in it now), in its period."""
    return ActivityCountFilter(
        pipeline_id=str(params.pipeline_id) if params.pipeline_id else None,
        assignee=params.owner,
        assignees=team,
        start=params.start,
        end=params.end,
    )


def _completion(row: dict[str, Any]) -> float | None:
    return ratio(row["completed"], row["planned"] - row["cancelled"])


async def activities(ctx: ReportContext, params: ReportParams) -> Report:
    """Per rep (the assignee) and activity type, the activities planned in the period
    (due in it; a checklist item without a due date: created in it): planned, completed,
    cancelled, overdue (open and due before now), open (not yet due) and the completion
    rate, completed / (planned - cancelled)."""
    now = ctx.clock()
    team = await owners_of_team(ctx, params, now)
    async with ctx.models.open("current_pipeline", params.min_position) as view:
        counts = await current_pipeline.activity_counts(
            view.conn, view.tables, activity_filter(params, team), now
        )
        position = view.position
    async with ctx.models.open("analytics", params.min_position) as view:
        members = await analytics.memberships(view.conn, view.tables)
    rows = []
    totals = dict.fromkeys(COUNTS, 0)
    for c in sorted(counts, key=lambda c: (c["assignee"], c["type"])):
        row = {
            "owner": c["assignee"],
            "team": analytics.membership_at(members, c["assignee"], now)[0],
            "type": c["type"],
            "planned": c["planned"],
            "completed": c["done"],
            "cancelled": c["cancelled"],
            "overdue": c["overdue"],
            "open": c["planned"] - c["done"] - c["cancelled"] - c["overdue"],
        }
        row["completion_rate"] = _completion(row)
        rows.append(row)
        for key in COUNTS:
            totals[key] += row[key]
    summary: dict[str, Any] = {**totals, "completion_rate": _completion(totals)}
    return Report(
        "activities",
        params.as_dict(),
        rows,
        summary,
        position,
        notes="An activity belongs to the period it is due in (a checklist item without a "
        "due date: the period it was created in), to its assignee, and to the pipeline its "
        "deal is in now; team as of now. overdue: open and due before now; open: the other "
        "open ones. completion_rate: completed / (planned - cancelled).",
    )


def _hours(micros: list[int]) -> dict[str, Any]:
    values = sorted(m / MICROS_PER_HOUR for m in micros)
    return {"median_hours": percentile(values, 0.5), "p90_hours": percentile(values, 0.9)}


async def response_time(ctx: ReportContext, params: ReportParams) -> Report:
    """Time from a deal's creation to its first completed activity, for the deals created
    in the period: deals, how many got a response (count) and how many still wait, with
    the median and 90th percentile in hours; overall, by owner and by team (the deal's
    owner when it was created, and their team then)."""
    f = analytics.ResponseFilter(
        pipeline_id=str(params.pipeline_id) if params.pipeline_id else None,
        start=params.start,
        end=params.end,
        owner=params.owner,
        team=params.team,
    )
    async with ctx.models.open("analytics", params.min_position) as view:
        groups = await analytics.response_times(view.conn, view.tables, f)
        position = view.position
    rows = []
    for dimension, key in (("overall", None), ("owner", "owner"), ("team", "team")):
        by_key: dict[Any, dict[str, Any]] = defaultdict(
            lambda: {"deals": 0, "count": 0, "micros": []}
        )
        for g in groups:
            entry = by_key[g[key] if key else None]
            entry["deals"] += g["deals"]
            entry["count"] += g["responded"]
            entry["micros"] += g["micros"]
        for k in sorted(by_key, key=str):
            entry = by_key[k]
            rows.append(
                {
                    "dimension": dimension,
                    "key": k,
                    "deals": entry["deals"],
                    "count": entry["count"],
                    "waiting": entry["deals"] - entry["count"],
                    **_hours(entry["micros"]),
                }
            )
    every = [m for g in groups for m in g["micros"]]
    deals = sum(g["deals"] for g in groups)
    summary = {"deals": deals, "count": len(every), "waiting": deals - len(every), **_hours(every)}
    return Report(
        "response-time",
        params.as_dict(),
        rows,
        summary,
        position,
        notes="Deals created in the period; the response is the first activity completed on "
        "the deal (its business time). waiting: no activity completed yet. Owner and team "
        "are the deal's when it was created.",
    )
