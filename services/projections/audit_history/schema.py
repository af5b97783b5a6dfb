"""``audit_history``'s tables: one append-only row per event, and the events counted per
actor and month (the owners report's ``events_recorded``)."""

from __future__ import annotations

from sqlalchemy import JSON, Column, Date, Index, Integer, MetaData, String, Table

from services.projections.sql import Position, UtcDateTime

# The layout of these tables (see ``Projection.schema_version``); raise it with any change.
#   1: positions as 32-bit integers on PostgreSQL
#   2: positions 64-bit (version 1 tables are still read while a rebuild replaces them)
#   3: events counted per actor and month (queries count the events themselves in
#      version 1 and 2 tables, as before)
SCHEMA_VERSION = 3
READABLE_SINCE = 1
ACTOR_COUNTS_SINCE = 3  # the first layout with the counts per actor


def define(metadata: MetaData, suffix: str) -> dict[str, Table]:
    """The tables, named with ``suffix``: a row per event; per actor and month (of the
    business time, else the recording time, in UTC) the events they made."""
    events = Table(
        f"audit_history_events{suffix}",
        metadata,
        Column("position", Position, primary_key=True, autoincrement=False),
        Column("aggregate_id", String(36), nullable=False),
        Column("aggregate_type", String(40), nullable=False),
        Column("event_type", String(60), nullable=False),
        Column("version", Integer, nullable=False),
        Column("actor", String(100), nullable=True),
        Column("occurred_at", UtcDateTime(), nullable=True),
        Column("recorded_at", UtcDateTime(), nullable=True),
        Column("changes", JSON, nullable=False),
    )
    Index(f"ix_ahe{suffix}_aggregate", events.c.aggregate_id, events.c.position)
    Index(f"ix_ahe{suffix}_actor", events.c.actor, events.c.position)
    Index(f"ix_ahe{suffix}_type", events.c.event_type, events.c.position)
    Index(f"ix_ahe{suffix}_occurred", events.c.occurred_at)
    actors = Table(
        f"audit_history_actors{suffix}",
        metadata,
        Column("actor", String(100), primary_key=True),
        Column("month", Date, primary_key=True),
        Column("events", Position, nullable=False),
    )
    return {"events": events, "actors": actors}
