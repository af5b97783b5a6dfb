"""``stage_durations``'s table: one row per deal per visit to a stage."""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table

from services.projections.sql import UtcDateTime


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
        Column("entered_position", Integer, nullable=False),
        Column("exited_position", Integer, nullable=True),
    )
    Index(f"ix_sdv{suffix}_stage", visits.c.pipeline_id, visits.c.stage_id, visits.c.entered_at)
    Index(f"ix_sdv{suffix}_owner", visits.c.owner)
    return {"visits": visits}
