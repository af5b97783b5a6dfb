"""The funnel: per stage, deals that reached it, went on, were lost there, were won."""

from __future__ import annotations

from services.projections.analytics import queries as analytics
from services.queries.reports import Report, ReportContext, ReportParams, ratio
from services.queries.reports.common import pipeline_for, stage_names


async def funnel(ctx: ReportContext, params: ReportParams) -> Report:
    """Per stage: deals that reached it in the period, how many went on, were lost there,
    were won, and the stage-to-stage and stage-to-won conversion."""
    pipeline, position = await pipeline_for(ctx, params)
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
            schema_version=view.schema_version,
        )
        position = min(position, view.position)
    names = stage_names(pipeline)
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
