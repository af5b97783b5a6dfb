"""``automations``'s tables: one row per rule, one row per firing."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Index, Integer, MetaData, String, Table, Text

from services.projections.sql import Position, UtcDateTime

# The layout of these tables (see ``Projection.schema_version``); raise it with any change.
#   1: the first layout
SCHEMA_VERSION = 1
READABLE_SINCE = 1


def define(metadata: MetaData, suffix: str) -> dict[str, Table]:
    """The tables, named with ``suffix``: rules and firings."""
    rules = Table(
        f"automations_rules{suffix}",
        metadata,
        Column("rule_id", String(36), primary_key=True),
        Column("pipeline_id", String(36), nullable=False),
        Column("name", String(100), nullable=False),
        Column("description", Text, nullable=True),
        Column("trigger", JSON, nullable=False),
        Column("actions", JSON, nullable=False),
        Column("status", String(8), nullable=False),
        Column("deleted", Boolean, nullable=False),
        Column("version", Integer, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("created_by", String(100), nullable=False),
        Column("updated_at", UtcDateTime(), nullable=False),
        Column("last_fired_at", UtcDateTime(), nullable=True),
        Column("fired_count", Integer, nullable=False),
        Column("created_position", Position, nullable=False),
        Column("position", Position, nullable=False),
    )
    Index(f"ix_autr{suffix}_order", rules.c.created_position)
    Index(f"ix_autr{suffix}_pipeline", rules.c.pipeline_id, rules.c.created_position)
    firings = Table(
        f"automations_firings{suffix}",
        metadata,
        Column("position", Position, primary_key=True, autoincrement=False),
        Column("firing_id", String(36), nullable=False),
        Column("rule_id", String(36), nullable=False),
        Column("deal_id", String(36), nullable=True),
        Column("occurred_at", UtcDateTime(), nullable=False),
        Column("reason", Text, nullable=False),
        Column("occurrence", String(200), nullable=False),
        Column("actions", JSON, nullable=False),
    )
    Index(f"ix_autf{suffix}_rule", firings.c.rule_id, firings.c.position)
    return {"rules": rules, "firings": firings}
