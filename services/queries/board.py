"""The pipeline board, now and as of a past moment: per stage, open deals' count, total and
weighted value, and the first deals.

Both boards are assembled by :func:`_board` from per-stage figures: the live one reads
them from ``current_pipeline`` in four queries (the pipeline, its stage totals, the
first page of every stage, the stale counts), the past one folds them from the
``analytics`` history rows valid at the moment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from libs.domain.state import PipelineState, Stage, probability, weighted_value
from libs.domain.values import format_money
from services.projections.analytics import queries as analytics
from services.projections.current_pipeline import queries as current_pipeline
from services.projections.folding import partial_deal_state, pipeline_state_of
from services.projections.read_models import ReadModels
from services.queries.cursors import deal_cursor_after
from services.queries.deals import as_of_view, live_view, pipeline_as_of
from services.queries.errors import QueryError
from services.queries.staleness import stale_counts

ZERO = Decimal(0)


@dataclass
class StageFigures:
    """One column of a board: its open deals' count and values, and the first deals."""

    count: int = 0
    total_value: Decimal = ZERO
    weighted_value: Decimal = ZERO
    deals: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _board(
    pipeline_id: UUID,
    pipeline: PipelineState,
    columns: Sequence[tuple[Stage, StageFigures]],
    *,
    position: int,
    **top: Any,
) -> dict[str, Any]:
    stages = []
    count, total, weighted = 0, ZERO, ZERO
    for stage, figures in columns:
        count += figures.count
        total += figures.total_value
        weighted += figures.weighted_value
        extra = figures.extra  # the live board's: rotting_days, stale_count, next_cursor
        column: dict[str, Any] = {
            "id": stage.id,
            "name": stage.name,
            "probability": stage.probability,
        }
        if "rotting_days" in extra:
            column["rotting_days"] = extra["rotting_days"]
        column.update(
            count=figures.count,
            total_value=format_money(figures.total_value),
            weighted_value=format_money(figures.weighted_value),
        )
        if "stale_count" in extra:
            column["stale_count"] = extra["stale_count"]
        column["deals"] = figures.deals
        if "next_cursor" in extra:
            column["next_cursor"] = extra["next_cursor"]
        stages.append(column)
    return {
        "pipeline": {"id": str(pipeline_id), "name": pipeline.name, "currency": pipeline.currency},
        **top,
        "stages": stages,
        "totals": {
            "count": count,
            "total_value": format_money(total),
            "weighted_value": format_money(weighted),
        },
        "position": position,
    }


async def live_board(
    models: ReadModels,
    pipeline_id: UUID,
    per_stage: int,
    min_position: int | None,
    clock: Callable[[], datetime],
) -> dict[str, Any]:
    """The board now."""
    async with models.open("current_pipeline", min_position) as view:
        row = await current_pipeline.get_pipeline(view.conn, view.tables, pipeline_id)
        if row is None:
            raise QueryError(
                f"pipeline {pipeline_id} does not exist (as of position {view.position})",
                status=404,
            )
        pipeline = pipeline_state_of(row)
        stage_ids = [stage.id for stage in pipeline.stages]
        totals = await current_pipeline.stage_totals(view.conn, view.tables, pipeline_id)
        first_pages = await current_pipeline.first_open_pages(
            view.conn, view.tables, pipeline_id, stage_ids, per_stage + 1
        )
        now = clock()
        stale = await stale_counts(view.conn, view.tables["deals"], pipeline_id, pipeline, now)
    pipelines = {str(pipeline_id): pipeline}
    columns = []
    for stage in pipeline.stages:
        total = totals.get(stage.id, {})
        rows = first_pages[stage.id]
        page = rows[:per_stage]
        more = len(rows) > per_stage and page
        last = (page[-1]["created_at"], page[-1]["deal_id"]) if more else None
        figures = StageFigures(
            count=int(total.get("open_count", 0)),
            total_value=total.get("open_value", ZERO),
            weighted_value=total.get("weighted_value", ZERO),
            deals=[live_view(r, pipelines, now) for r in page],
            extra={
                "rotting_days": stage.rotting_days,
                "stale_count": stale.get(stage.id, 0),
                "next_cursor": deal_cursor_after(last),
            },
        )
        columns.append((stage, figures))
    return _board(pipeline_id, pipeline, columns, position=view.position)


async def board_as_of(
    models: ReadModels,
    pipeline_id: UUID,
    moment: datetime,
    min_position: int | None,
    per_stage: int,
) -> dict[str, Any]:
    """The board at ``moment``: the stages as defined then, with the deals open then."""
    async with models.open("analytics", min_position) as view:
        pipeline = await pipeline_as_of(view.conn, view.tables, str(pipeline_id), moment)
        if pipeline is None:
            raise QueryError(
                f"pipeline {pipeline_id} did not exist at {moment.isoformat()}",
                field="as_of",
                status=404,
            )
        rows = await analytics.open_deals_as_of(view.conn, view.tables, str(pipeline_id), moment)
    rows.sort(key=lambda d: (d["created_at"], d["deal_id"]))
    columns = []
    for stage in pipeline.stages:
        in_stage = [d for d in rows if d["stage_id"] == stage.id]
        figures = StageFigures(count=len(in_stage), deals=[])
        for d in in_stage:
            state = partial_deal_state(d)
            chance = probability(
                state.status, state.probability_override, pipeline.probability_of(stage.id)
            )
            figures.total_value += state.value
            figures.weighted_value += weighted_value(state.value, chance)
        figures.deals = [as_of_view(d, pipeline) for d in in_stage[:per_stage]]
        columns.append((stage, figures))
    return _board(
        pipeline_id,
        pipeline,
        columns,
        position=view.position,
        as_of=moment.isoformat(),
    )
