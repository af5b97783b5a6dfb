"""The counts kept by the projections (stage-duration histograms, funnel counts, events
per actor) give the same answers as the rows they count, for every filter they serve.

A generated history of a few hundred deals over a year; each fast path is compared with
the exact path over the same tables (the exact one is what tables of the layout before
the counts get), all time and over whole months.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.demo.generator import generate
from services.projections.analytics import queries as analytics
from services.projections.audit_history import queries as audit_history
from services.projections.stage_durations import queries as stage_durations
from services.queries.reports import ReportContext, ReportParams
from services.queries.reports.common import pipeline_for
from tests.conftest import Backend, TestClock, auth, client_for

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
END = datetime(2026, 5, 31, tzinfo=UTC)
BEFORE_COUNTS = 2  # a layout without the counts: the queries read the rows themselves


def month(year: int, month: int) -> datetime:
    return datetime(year, month, 1, tzinfo=UTC)


PERIODS: list[tuple[datetime | None, datetime | None]] = [
    (None, None),
    (month(2026, 1), month(2026, 4)),
    (month(2025, 7), None),
    (None, month(2025, 12)),
    (month(2026, 3), month(2026, 4)),
    (month(2024, 1), month(2025, 1)),  # before anything happened
]


async def test_counted_answers_equal_the_exact_ones(backend: Backend) -> None:
    with tempfile.TemporaryDirectory() as data:
        settings = backend.settings(Path(data), DEALTRAIL_READ_WAIT_SECONDS=60)
        async with client_for(settings, TestClock(NOW)) as api:
            runtime = api.app.state.runtime  # type: ignore[attr-defined]
            result = generate(runtime.application, deals=300, seed=11, end=END)
            head = runtime.application.head_position()
            r = await api.get("/v1/deals", params={"min_position": head}, headers=auth("admin"))
            assert r.status_code == 200, r.text
            await runtime.worker.catch_up()
            models = runtime.read_models
            compared = 0
            for pipeline_id in result.pipelines.values():
                ctx = ReportContext(models, lambda: NOW)
                pipeline, _ = await pipeline_for(ctx, ReportParams(pipeline_id))
                order = [s["id"] for s in pipeline["stages"]]
                for start, end in PERIODS:
                    async with models.open("stage_durations") as view:
                        assert stage_durations.histogram_answers(
                            view.schema_version, owner=None, start=start, end=end
                        )
                        answers = []
                        for version in (view.schema_version, BEFORE_COUNTS):
                            report = await stage_durations.stage_report(
                                view.conn,
                                view.tables,
                                pipeline_id,
                                start=start,
                                end=end,
                                schema_version=version,
                                named=order,
                            )
                            answers.append(_rounded(report, drop=("stage_name",)))
                        assert answers[0] == answers[1], (pipeline_id, start, end)
                    async with models.open("analytics") as view:
                        counted, exact = [
                            await analytics.funnel_counts(
                                view.conn,
                                view.tables,
                                str(pipeline_id),
                                order,
                                start=start,
                                end=end,
                                schema_version=version,
                            )
                            for version in (view.schema_version, BEFORE_COUNTS)
                        ]
                        assert counted == exact, (pipeline_id, start, end)
                    compared += 1
            for start, end in PERIODS:
                async with models.open("audit_history") as view:
                    counted_events, exact_events = [
                        await audit_history.events_by_actor(
                            view.conn, view.tables, start=start, end=end, schema_version=v
                        )
                        for v in (view.schema_version, BEFORE_COUNTS)
                    ]
                assert counted_events == exact_events, (start, end)
            assert compared == len(result.pipelines) * len(PERIODS)


def _rounded(report: dict[str, dict[str, Any]], drop: tuple[str, ...]) -> dict[str, Any]:
    """The figures as the answer shows them (floats to six places, as reports round)."""
    return {
        stage: {
            k: round(v, 6) if isinstance(v, float) else v for k, v in row.items() if k not in drop
        }
        for stage, row in report.items()
    }
