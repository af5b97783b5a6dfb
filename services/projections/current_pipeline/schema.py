"""``current_pipeline``'s tables: one row per deal, activity and pipeline, open totals per
stage."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Date, Index, Integer, MetaData, String, Table

from services.projections.folding import activity_columns
from services.projections.sql import Money, Position, UtcDateTime

# The layout of these tables (see ``Projection.schema_version``); raise it with any change.
#   1: the first layout (positions 32-bit on PostgreSQL)
#   2: positions 64-bit; each deal's open and next activities, the activities
#      table, the pipeline's checklist rule
#   3: open deals and open activities indexed apart, with what the board and the reports
#      read of them (version 2 tables answer the same, slower)
SCHEMA_VERSION = 3
READABLE_SINCE = 2  # queries read what version 1 lacks


def define(metadata: MetaData, suffix: str) -> dict[str, Table]:
    """The tables, named with ``suffix`` (the generation): deals, activities, pipelines,
    stage totals."""
    deals = Table(
        f"current_pipeline_deals{suffix}",
        metadata,
        Column("deal_id", String(36), primary_key=True),
        Column("pipeline_id", String(36), nullable=False),
        Column("title", String(200), nullable=False),
        Column("value", Money(), nullable=False),
        Column("owner", String(100), nullable=False),
        Column("stage_id", String(100), nullable=False),
        Column("status", String(8), nullable=False),
        Column("probability", Integer, nullable=False),
        Column("probability_override", Integer, nullable=True),
        Column("weighted_value", Money(), nullable=False),
        Column("expected_close_date", Date, nullable=True),
        Column("entered_current_stage_at", UtcDateTime(), nullable=False),
        Column("last_activity_at", UtcDateTime(), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("closed_at", UtcDateTime(), nullable=True),
        Column("lost_reason", String(100), nullable=True),
        Column("lost_note", String(2000), nullable=True),
        Column("external_id", String(200), nullable=True),
        Column("account", String(100), nullable=True),
        Column("product", String(100), nullable=True),
        Column("snoozed_until", UtcDateTime(), nullable=True),
        Column("snooze_reason", String(2000), nullable=True),
        # its activities in brief: how many are open, when those are due (sorted), the
        # next one and the last completed one (overdue is counted when asked)
        Column("open_activities", Integer, nullable=False),
        Column("open_due", JSON, nullable=False),
        Column("next_activity", JSON, nullable=True),
        Column("last_completed_activity", JSON, nullable=True),
        Column("version", Integer, nullable=False),
        Column("updated_at", UtcDateTime(), nullable=False),
        Column("position", Position, nullable=False),
    )
    Index(f"ix_cpd{suffix}_order", deals.c.created_at, deals.c.deal_id)
    Index(
        f"ix_cpd{suffix}_pipeline",
        deals.c.pipeline_id,
        deals.c.status,
        deals.c.stage_id,
        deals.c.created_at,
        deals.c.deal_id,
    )
    Index(
        f"ix_cpd{suffix}_pipeline_order",
        deals.c.pipeline_id,
        deals.c.created_at,
        deals.c.deal_id,
    )
    Index(f"ix_cpd{suffix}_owner", deals.c.owner, deals.c.created_at, deals.c.deal_id)
    # Open deals only (a fraction of all), with every column the board's stale counts, the
    # stale-deals, forecast, owners and velocity reports read of them: PostgreSQL answers
    # those from the index alone instead of visiting each open deal's row.
    Index(
        f"ix_cpd{suffix}_open",
        deals.c.pipeline_id,
        deals.c.stage_id,
        postgresql_include=[
            "owner",
            "entered_current_stage_at",
            "last_activity_at",
            "snoozed_until",
            "expected_close_date",
            "value",
            "weighted_value",
        ],
        postgresql_where=deals.c.status == "open",
        sqlite_where=deals.c.status == "open",
    )
    Index(f"ix_cpd{suffix}_updated", deals.c.updated_at)
    activities = Table(
        f"current_pipeline_activities{suffix}",
        metadata,
        Column("activity_id", String(36), primary_key=True),
        Column("deal_id", String(36), nullable=False),
        Column("pipeline_id", String(36), nullable=False),  # the deal's, now
        *activity_columns(),
        Column("position", Position, nullable=False),
    )
    Index(f"ix_cpa{suffix}_deal", activities.c.deal_id, activities.c.due_order)
    Index(f"ix_cpa{suffix}_order", activities.c.due_order, activities.c.activity_id)
    Index(
        f"ix_cpa{suffix}_assignee",
        activities.c.assignee,
        activities.c.status,
        activities.c.due_order,
        activities.c.activity_id,
    )
    # Open activities only, with what the overdue counts read (owners, activities report)
    Index(
        f"ix_cpa{suffix}_open",
        activities.c.pipeline_id,
        activities.c.assignee,
        postgresql_include=["due_at", "type"],
        postgresql_where=activities.c.status == "open",
        sqlite_where=activities.c.status == "open",
    )
    # Every activity with what the activity counts read (activities report, owners'
    # completed work): PostgreSQL counts them from the index alone
    Index(
        f"ix_cpa{suffix}_counts",
        activities.c.pipeline_id,
        activities.c.assignee,
        activities.c.type,
        postgresql_include=["status", "due_at", "created_at", "completed_at"],
    )
    Index(
        f"ix_cpa{suffix}_status",
        activities.c.status,
        activities.c.due_order,
        activities.c.activity_id,
    )
    pipelines = Table(
        f"current_pipeline_pipelines{suffix}",
        metadata,
        Column("pipeline_id", String(36), primary_key=True),
        Column("name", String(100), nullable=False),
        Column("currency", String(3), nullable=False),
        Column("stages", JSON, nullable=False),
        Column("removed_stages", JSON, nullable=False),
        Column("lost_reasons", JSON, nullable=False),
        Column("retired_lost_reasons", JSON, nullable=False),
        Column("allow_skipping_stages", Boolean, nullable=False),
        Column("allow_moving_back", Boolean, nullable=False),
        Column("stale_after_days", Integer, nullable=True),
        Column("require_checklist_before_leaving", Boolean, nullable=False),
        Column("version", Integer, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("updated_at", UtcDateTime(), nullable=False),
        Column("position", Position, nullable=False),
    )
    totals = Table(
        f"current_pipeline_stage_totals{suffix}",
        metadata,
        Column("pipeline_id", String(36), primary_key=True),
        Column("stage_id", String(100), primary_key=True),
        Column("open_count", Integer, nullable=False),
        Column("open_value", Money(), nullable=False),
        Column("weighted_value", Money(), nullable=False),
    )
    return {"deals": deals, "activities": activities, "pipelines": pipelines, "totals": totals}
