"""``stage_durations``'s table: one row per deal per visit to a stage."""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table

from services.projections.sql import Position, UtcDateTime

# The layout of these tables (see ``Projection.schema_version``); raise it with any change.
#   1: positions as 32-bit integers on PostgreSQL
#   2: positions 64-bit (version 1 tables are still read while a rebuild replaces them)
SCHEMA_VERSION = 2
READABLE_SINCE = 1


def define(metadata: MetaData, suffix: str) -> dict[str, Table]:
    """The one table, named with ``suffix``: a row per deal per visit to a stage."""
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
    return {"visits": visits}
