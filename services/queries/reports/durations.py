"""Stage durations: per stage, how long visits lasted (mean, median, 90th percentile)."""

from __future__ import annotations

from services.projections.stage_durations import queries as stage_durations
from services.queries.reports import Report, ReportContext, ReportParams
from services.queries.reports.common import pipeline_for

DAY = 86400.0


async def stage_durations_report(ctx: ReportContext, params: ReportParams) -> Report:
    """Per stage in pipeline order: visits, mean/median/p90 days in stage, open visits;
    removed stages are listed after the current ones, marked removed."""
    pipeline, _ = await pipeline_for(ctx, params)
    assert params.pipeline_id is not None
    async with ctx.models.open("stage_durations", params.min_position) as view:
        report = await stage_durations.stage_report(
            view.conn,
            view.tables,
            params.pipeline_id,
            owner=params.owner,
            start=params.start,
            end=params.end,
            schema_version=view.schema_version,
            named=[s["id"] for s in (*pipeline["stages"], *pipeline["removed_stages"])],
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
