"""Reports, one route each, from the read models; JSON, or CSV with ``Accept: text/csv``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import Response

from services.pipeline_api.deps import CurrentPrincipal, QueryCacheDep, ReadModelsDep, RuntimeDep
from services.pipeline_api.errors import ApiError
from services.pipeline_api.openapi import raises
from services.pipeline_api.query_cache import Computed, FreshAnswer, TimeUse, json_body
from services.pipeline_api.query_params import MinPosition
from services.pipeline_api.schemas import FilterText, Moment, ReportAnswer
from services.projections.read_models import ReadModels
from services.queries.reports import ReportContext, ReportFn, ReportParams
from services.queries.reports.catalog import NEEDS_PIPELINE, OFF_LOOP, REPORTS

router = APIRouter(prefix="/v1/reports", tags=["reports"])

CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The report as JSON, or its rows as CSV with `Accept: text/csv`",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ReportAnswer"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


async def _any_pipeline(
    pipeline_id: Annotated[UUID | None, Query(description="Only this pipeline")] = None,
) -> UUID | None:
    return pipeline_id


async def _one_pipeline(
    pipeline_id: Annotated[UUID, Query(description="The pipeline to report on")],
) -> UUID | None:
    return pipeline_id


AnyPipeline = Annotated[UUID | None, Depends(_any_pipeline)]
OnePipeline = Annotated[UUID | None, Depends(_one_pipeline)]


def _route(name: str, fn: ReportFn) -> Callable[..., Awaitable[Response]]:
    async def report(
        principal: CurrentPrincipal,
        runtime: RuntimeDep,
        cache: QueryCacheDep,
        models: ReadModelsDep,
        fresh: FreshAnswer,
        pipeline_id: AnyPipeline,
        from_: Annotated[
            Moment | None, Query(alias="from", description="period start (occurred_at)")
        ] = None,
        to: Annotated[Moment | None, Query(description="period end, exclusive")] = None,
        owner: FilterText | None = None,
        team: FilterText | None = None,
        min_position: MinPosition = None,
        accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Response:
        start, end = from_, to
        if start and end and start >= end:
            raise ApiError(422, "from must be before to", details={"field": "from"})
        params = ReportParams(pipeline_id, start, end, owner, team, min_position)
        as_csv = bool(accept and "text/csv" in accept)

        async def compute() -> Computed:
            if name in OFF_LOOP and runtime.report_reads is not None:
                return await runtime.report_reads.run(answer)
            return await answer(models)

        async def answer(read_models: ReadModels) -> Computed:
            clock = TimeUse(runtime.clock)
            result = await fn(ReportContext(read_models, clock), params)
            if as_csv:
                return Computed(
                    result.as_csv().encode(),
                    media_type="text/csv; charset=utf-8",
                    headers=(
                        ("Content-Disposition", f'attachment; filename="{name}.csv"'),
                        ("X-Position", str(result.position)),
                    ),
                    uses_clock=clock.used,
                )
            body = json_body(result.as_json())
            return Computed(body, uses_clock=clock.used)

        key = (
            "report",
            name,
            "csv" if as_csv else "json",
            str(pipeline_id) if pipeline_id else None,
            start.isoformat() if start else None,
            end.isoformat() if end else None,
            owner,
            team,
        )
        return await cache.answer(key, models.states, min_position, compute, fresh=fresh)

    # A report about one pipeline's stages declares pipeline_id required.
    report.__annotations__["pipeline_id"] = OnePipeline if name in NEEDS_PIPELINE else AnyPipeline
    report.__name__ = f"get_{name.replace('-', '_')}_report"
    report.__doc__ = fn.__doc__
    return raises(404)(report)  # a pipeline_id that names no pipeline


for _name, _fn in REPORTS.items():
    router.add_api_route(
        f"/{_name}",
        _route(_name, _fn),
        methods=["GET"],
        summary=f"Report: {_name}",
        description=(_fn.__doc__ or "")
        + "\n\nAll reports accept `pipeline_id`, `from`, `to` (on business time), `owner`, "
        "`team`, `min_position`; send `Accept: text/csv` for the rows as CSV.",
        response_model=ReportAnswer,
        responses=CSV_RESPONSE,
    )
