"""Every report by the name it has in routes and on the command line."""

from __future__ import annotations

from services.queries.reports import ReportFn
from services.queries.reports.activities import activities, response_time
from services.queries.reports.closes import cycle_time, lost_reasons, velocity, win_rate
from services.queries.reports.durations import stage_durations_report
from services.queries.reports.forecast import forecast
from services.queries.reports.funnel import funnel
from services.queries.reports.owners import owners
from services.queries.reports.stale import stale_deals

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
    "activities": activities,
    "response-time": response_time,
}

# Reports whose Python work grows with the data (a duration per close or per deal to sort,
# or many rows to shape): the API computes them off its event loop.
OFF_LOOP = frozenset({"cycle-time", "owners", "response-time", "stale-deals", "velocity"})
