"""The forecast: open deals by expected close month, with the value won per month."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.projections.analytics import queries as analytics
from services.queries.reports import Report, ReportContext, ReportParams
from services.queries.reports.common import (
    close_filter,
    currencies,
    open_deal_totals,
    per_currency,
)

ZERO = Decimal(0)


def _month(d: date | datetime) -> str:
    return f"{d.year:04d}-{d.month:02d}"


async def forecast(ctx: ReportContext, params: ReportParams) -> Report:
    """Open deals' value and weighted value by expected close month (overdue and undated
    in their own buckets), with the value won per month beside it; a row per month and
    currency, totals per currency."""
    by_date, position = await open_deal_totals(ctx, params, "expected_close_date")
    currency = await currencies(ctx, params)
    async with ctx.models.open("analytics", params.min_position) as view:
        wins = await analytics.wins_by_month(view.conn, view.tables, close_filter(params))
        apos = view.position
    today = ctx.clock().date()
    buckets: dict[tuple[str, str], dict[str, Any]] = {}

    def bucket(name: str, code: str) -> dict[str, Any]:
        return buckets.setdefault(
            (name, code),
            {
                "bucket": name,
                "currency": code,
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
        b = bucket(name, d["currency"])
        b["open_count"] += d["count"]
        b["open_value"] += d["value"]
        b["weighted_value"] += d["weighted_value"]
    for w in wins:
        b = bucket(w["month"], currency[w["pipeline_id"]])
        b["won_count"] += w["n"]
        b["won_value"] += w["value"]
    special = {"overdue": "0", "no date": "1"}
    rows = sorted(
        buckets.values(),
        key=lambda b: (special.get(b["bucket"], "2" + b["bucket"]), b["currency"]),
    )
    summary = {
        field: per_currency((r["currency"], r[field]) for r in rows)
        for field in ("open_value", "weighted_value", "won_value")
    }
    return Report(
        "forecast",
        params.as_dict(),
        rows,
        {**summary, "today": today.isoformat()},
        min(position, apos),
        notes="Open deals by expected close month as of now; `from`/`to` bound "
        "the months shown and the wins counted. Amounts never add across currencies: "
        "a row per month and currency, totals per currency.",
    )
