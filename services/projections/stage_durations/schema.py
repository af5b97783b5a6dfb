"""``stage_durations``' tables: one row per deal per visit to a stage, and the visits
counted per stage, month of entry and duration bucket (the histogram the report reads)."""

from __future__ import annotations

from bisect import bisect_right
from typing import Final

from sqlalchemy import BigInteger, Column, Date, Float, Index, Integer, MetaData, String, Table

from services.projections.sql import Position, UtcDateTime

# The layout of these tables (see ``Projection.schema_version``); raise it with any change.
#   1: positions as 32-bit integers on PostgreSQL
#   2: positions 64-bit (version 1 tables are still read while a rebuild replaces them)
#   3: the histogram table; visits indexed by duration (queries read version 1 and 2
#      tables without the histogram, as before)
SCHEMA_VERSION = 3
READABLE_SINCE = 1
HISTOGRAM_SINCE = 3  # the first layout with the histogram

# Duration buckets: four per doubling (each bucket's upper bound is 2^(1/4), about 1.19
# times its lower one). Bucket 0 holds durations under one second, bucket i >= 1 those in
# [BOUNDS[i - 1], BOUNDS[i]); the last one is open-ended (about 8,700 years and more).
# Open visits (no duration yet) are counted in bucket OPEN.
BUCKETS_PER_DOUBLING: Final = 4
BOUNDS: Final = tuple(2.0 ** (i / BUCKETS_PER_DOUBLING) for i in range(40 * BUCKETS_PER_DOUBLING))
OPEN: Final = -1


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a completed visit's duration in seconds."""
    return bisect_right(BOUNDS, seconds)


def bucket_floor(bucket: int) -> float | None:
    """The smallest duration of ``bucket`` (None: bucket 0 has no lower bound)."""
    return BOUNDS[bucket - 1] if bucket > 0 else None


def define(metadata: MetaData, suffix: str) -> dict[str, Table]:
    """The tables, named with ``suffix``: a row per deal per visit to a stage; visit
    counts and summed durations per stage, month of entry and bucket."""
    visits = Table(
        f"stage_durations_visits{suffix}",
        metadata,
        Column("deal_id", String(36), primary_key=True),
        Column("visit", Integer, primary_key=True),
        Column("pipeline_id", String(36), nullable=False),
        Column("stage_id", String(100), nullable=False),
        Column("stage_name", String(100), nullable=False),
        Column("owner", String(100), nullable=False),
        Column("entered_at", UtcDateTime(), nullable=False),
        Column("exited_at", UtcDateTime(), nullable=True),
        Column("duration_seconds", Float, nullable=True),
        Column("exit_kind", String(16), nullable=True),
        Column("entered_position", Position, nullable=False),
        Column("exited_position", Position, nullable=True),
    )
    Index(f"ix_sdv{suffix}_stage", visits.c.pipeline_id, visits.c.stage_id, visits.c.entered_at)
    Index(f"ix_sdv{suffix}_owner", visits.c.owner)
    # the k-th shortest visit of a stage, from the bucket the histogram points to
    Index(
        f"ix_sdv{suffix}_duration",
        visits.c.pipeline_id,
        visits.c.stage_id,
        visits.c.duration_seconds,
        visits.c.entered_at,
    )
    histogram = Table(
        f"stage_durations_histogram{suffix}",
        metadata,
        Column("pipeline_id", String(36), primary_key=True),
        Column("stage_id", String(100), primary_key=True),
        Column("month", Date, primary_key=True),  # the first day of the entry's UTC month
        Column("bucket", Integer, primary_key=True, autoincrement=False),
        Column("visits", Integer, nullable=False),
        # completed visits' durations summed in whole microseconds (exact; 0 for OPEN)
        Column("duration_micros", BigInteger, nullable=False),
    )
    return {"visits": visits, "histogram": histogram}
