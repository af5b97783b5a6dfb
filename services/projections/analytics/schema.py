"""``analytics``' tables (all keyed so that a rebuild gives the same rows as incremental work):

- ``analytics_deal_history``: a deal's state after each of its events, valid from that
  event's ``occurred_at`` until the next one's (state as of any moment);
- ``analytics_pipeline_history``: the same for pipelines (stage order and probabilities);
- ``analytics_reach``: the first time a deal reached each stage of a pipeline, entered or
  skipped past (a deal that jumps from the first to the third stage has passed the
  second); moving back reaches nothing new;
- ``analytics_outcomes``: one row per win or loss, with the deal's owner, value, stage
  and creation time at that moment;
- ``analytics_memberships``: each owner's team and region from a moment on;
- ``analytics_activities``: each activity's state after each of its events, valid from
  that event's ``occurred_at`` until the next change (a deal's activities as of any
  moment); activity events add no row to the deal's own history, which they do not change;
- ``analytics_responses``: per deal, its creation, owner then, and its first completed
  activity (the response-time report);
- ``analytics_funnel``: the funnel's deals counted per pipeline, stage, month of the
  reach and what they did (``kind``) in which month (``at_month``): ``entered`` or
  ``skipped`` (the reach itself, as the reach row says how), ``advanced`` (first reach
  of a later stage, in the pipeline's current order, at or after it), ``lost_here``
  (first loss in the stage at or after it), ``won`` (first win at or after it);
- ``analytics_funnel_marks``: per deal and pipeline, the stages it has been counted in
  as lost there and as won (so that each is counted once).
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Date, Index, Integer, MetaData, String, Table

from services.projections.folding import activity_columns
from services.projections.sql import Money, Position, UtcDateTime

# The layout of these tables (see ``Projection.schema_version``); raise it with any change.
#   1: the first layout (positions 32-bit on PostgreSQL)
#   2: positions 64-bit; the activities and responses tables
#   3: the funnel counts (queries count version 2 tables' reaches and closes, as before)
SCHEMA_VERSION = 3
READABLE_SINCE = 2  # queries read what version 1 lacks
FUNNEL_SINCE = 3  # the first layout with the funnel counts
FUNNEL_KINDS = ("entered", "skipped", "advanced", "lost_here", "won")


def define(metadata: MetaData, suffix: str) -> dict[str, Table]:
    """The tables, named with ``suffix``: deal and pipeline history, reaches, outcomes,
    memberships."""
    history = Table(
        f"analytics_deal_history{suffix}",
        metadata,
        Column("deal_id", String(36), primary_key=True),
        Column("position", Position, primary_key=True, autoincrement=False),
        Column("valid_from", UtcDateTime(), nullable=False),
        Column("valid_to", UtcDateTime(), nullable=True),
        Column("pipeline_id", String(36), nullable=False),
        Column("stage_id", String(100), nullable=False),
        Column("status", String(8), nullable=False),
        Column("value", Money(), nullable=False),
        Column("owner", String(100), nullable=False),
        Column("probability_override", Integer, nullable=True),
        Column("expected_close_date", Date, nullable=True),
        Column("created_at", UtcDateTime(), nullable=False),
    )
    Index(f"ix_adh{suffix}_current", history.c.deal_id, history.c.valid_to)
    Index(f"ix_adh{suffix}_pipeline", history.c.pipeline_id, history.c.valid_from)
    pipelines = Table(
        f"analytics_pipeline_history{suffix}",
        metadata,
        Column("pipeline_id", String(36), primary_key=True),
        Column("position", Position, primary_key=True, autoincrement=False),
        Column("valid_from", UtcDateTime(), nullable=False),
        Column("valid_to", UtcDateTime(), nullable=True),
        Column("state", JSON, nullable=False),
    )
    reach = Table(
        f"analytics_reach{suffix}",
        metadata,
        Column("deal_id", String(36), primary_key=True),
        Column("pipeline_id", String(36), primary_key=True),
        Column("stage_id", String(100), primary_key=True),
        Column("reached_at", UtcDateTime(), nullable=False),
        Column("how", String(8), nullable=False),
        Column("owner", String(100), nullable=False),
        Column("position", Position, nullable=False),
    )
    Index(f"ix_ar{suffix}_pipeline", reach.c.pipeline_id, reach.c.reached_at)
    outcomes = Table(
        f"analytics_outcomes{suffix}",
        metadata,
        Column("position", Position, primary_key=True, autoincrement=False),
        Column("deal_id", String(36), nullable=False),
        Column("pipeline_id", String(36), nullable=False),
        Column("outcome", String(4), nullable=False),
        Column("closed_at", UtcDateTime(), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("stage_id", String(100), nullable=False),
        Column("owner", String(100), nullable=False),
        Column("value", Money(), nullable=False),
        Column("lost_reason", String(100), nullable=True),
    )
    Index(f"ix_ao{suffix}_pipeline", outcomes.c.pipeline_id, outcomes.c.closed_at)
    memberships = Table(
        f"analytics_memberships{suffix}",
        metadata,
        Column("owner", String(100), primary_key=True),
        Column("position", Position, primary_key=True, autoincrement=False),
        Column("valid_from", UtcDateTime(), nullable=False),
        Column("team", String(100), nullable=True),
        Column("region", String(100), nullable=True),
    )
    activities = Table(
        f"analytics_activities{suffix}",
        metadata,
        Column("activity_id", String(36), primary_key=True),
        Column("position", Position, primary_key=True, autoincrement=False),
        Column("deal_id", String(36), nullable=False),
        Column("valid_from", UtcDateTime(), nullable=False),
        Column("valid_to", UtcDateTime(), nullable=True),
        *activity_columns(),
    )
    Index(f"ix_aa{suffix}_deal", activities.c.deal_id, activities.c.valid_to)
    responses = Table(
        f"analytics_responses{suffix}",
        metadata,
        Column("deal_id", String(36), primary_key=True),
        Column("pipeline_id", String(36), nullable=False),
        Column("owner", String(100), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("responded_at", UtcDateTime(), nullable=True),
        Column("activity_id", String(36), nullable=True),
        Column("position", Position, nullable=False),
    )
    Index(f"ix_arsp{suffix}_created", responses.c.created_at)
    funnel = Table(
        f"analytics_funnel{suffix}",
        metadata,
        Column("pipeline_id", String(36), primary_key=True),
        Column("stage_id", String(100), primary_key=True),
        Column("reach_month", Date, primary_key=True),  # first day of the UTC month
        Column("kind", String(10), primary_key=True),
        Column("at_month", Date, primary_key=True),
        Column("deals", Integer, nullable=False),
    )
    marks = Table(
        f"analytics_funnel_marks{suffix}",
        metadata,
        Column("deal_id", String(36), primary_key=True),
        Column("pipeline_id", String(36), primary_key=True),
        # the stages whose ``lost_here`` and ``won`` this deal has been counted in already
        Column("lost_here", JSON, nullable=False),
        Column("won", JSON, nullable=False),
    )
    return {
        "history": history,
        "pipelines": pipelines,
        "reach": reach,
        "outcomes": outcomes,
        "memberships": memberships,
        "activities": activities,
        "responses": responses,
        "funnel": funnel,
        "funnel_marks": marks,
    }
