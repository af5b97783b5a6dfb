"""Read model 3, audit history: one append-only row per event, with before/after values."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    literal,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.records import EventRecord, to_json_value
from services.projections.base import Projection, UtcDateTime, bulk_insert
from services.projections.current_pipeline import DEAL_EVENTS, OWNER_EVENTS, PIPELINE_EVENTS

CREATED_FIELDS = (
    "note",
    "pipeline_id",
    "title",
    "value",
    "owner",
    "expected_close_date",
    "external_id",
    "account",
    "product",
)


_PLAIN = frozenset({str, int, bool, type(None)})


def _change(before: Any, after: Any) -> dict[str, Any]:
    # Most values are already plain JSON (names, ids, None): no walk for those.
    return {
        "before": before if type(before) in _PLAIN else to_json_value(before),
        "after": after if type(after) in _PLAIN else to_json_value(after),
    }


def changes_of(record: EventRecord) -> dict[str, dict[str, Any]]:
    """The fields an event changed, each as ``{"before": ..., "after": ...}``.

    Stage names are the names at the time of the event, as the event recorded them.
    An event type not known here shows its payload as "after" values.
    """
    p, kind = record.payload, record.event_type
    if kind == "DealCreated":
        out = {f: _change(None, p.get(f)) for f in CREATED_FIELDS if p.get(f) is not None}
        out["stage"] = _change(None, p["stage_name"])
        out["status"] = _change(None, "open")
        return out
    if kind == "StageAdvanced":
        out = {
            "stage": _change(p["from_stage_name"], p["to_stage_name"]),
            "stage_id": _change(p["from_stage_id"], p["to_stage_id"]),
        }
        if p.get("note"):
            out["note"] = _change(None, p["note"])
        if p.get("cause"):
            out["cause"] = _change(None, p["cause"])
        return out
    if kind == "DealMoved":
        out = {
            "pipeline_id": _change(p["from_pipeline_id"], p["to_pipeline_id"]),
            "stage": _change(p["from_stage_name"], p["to_stage_name"]),
            "stage_id": _change(p["from_stage_id"], p["to_stage_id"]),
        }
        if p.get("note"):
            out["note"] = _change(None, p["note"])
        return out
    if kind == "DealWon":
        return {"status": _change("open", "won")}
    if kind == "DealLost":
        out = {"status": _change("open", "lost"), "lost_reason": _change(None, p["reason"])}
        if p.get("note"):
            out["lost_note"] = _change(None, p["note"])
        return out
    if kind == "DealReopened":
        out = {"status": _change(p["previous_status"], "open")}
        if p.get("from_stage_id") != p["stage_id"]:
            out["stage"] = _change(p.get("from_stage_name"), p["stage_name"])
            out["stage_id"] = _change(p.get("from_stage_id"), p["stage_id"])
        return out
    if kind == "OwnerChanged":
        return {"owner": _change(p["from_owner"], p["to_owner"])}
    if kind == "DealSnoozed":
        return {
            "snoozed_until": _change(None, p["until"]),
            "snooze_reason": _change(None, p["reason"]),
        }
    if kind == "StageAdded":
        return {f"stages[{p['stage']['id']}]": _change(None, p["stage"])}
    if kind == "StageRenamed":
        return {f"stages[{p['stage_id']}].name": _change(p["from_name"], p["to_name"])}
    if kind == "StageUpdated":
        return {
            f"stages[{p['stage_id']}].{k}": _change(p["previous"].get(k), v)
            for k, v in p["changes"].items()
        }
    if kind == "StagesReordered":
        return {"stage_order": _change(p["previous_order"], p["order"])}
    if kind == "StageRemoved":
        out = {f"stages[{p['stage_id']}]": _change(p["stage_name"], None)}
        if p.get("move_open_deals_to"):
            out["move_open_deals_to"] = _change(None, p["move_open_deals_to"])
        return out
    if kind == "LostReasonAdded":
        return {"lost_reasons": _change(None, p["reason"])}
    if kind == "LostReasonRetired":
        return {"lost_reasons": _change(p["reason"], None)}
    if kind == "PipelineRenamed":
        return {"name": _change(p["from_name"], p["to_name"])}
    if kind in ("PipelineRulesChanged", "DealUpdated"):
        return {k: _change(p["previous"].get(k), v) for k, v in p["changes"].items()}
    if kind == "TeamAssigned":
        return {
            "team": _change(p.get("previous_team"), p.get("team")),
            "region": _change(p.get("previous_region"), p.get("region")),
        }
    return {k: _change(None, v) for k, v in p.items() if k != "originator_topic"}


class AuditHistory(Projection):
    """Who changed what, when (business and recorded time) and how: never updated."""

    name = "audit_history"
    handles = DEAL_EVENTS | PIPELINE_EVENTS | OWNER_EVENTS
    ignores: frozenset[str] = frozenset()
    records_unknown = True

    def define(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        events = Table(
            f"audit_history_events{suffix}",
            metadata,
            Column("position", Integer, primary_key=True, autoincrement=False),
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
        return {"events": events}

    async def apply(
        self, conn: AsyncConnection, tables: dict[str, Table], records: Sequence[EventRecord]
    ) -> None:
        rows = [
            {
                "position": r.position,
                "aggregate_id": r.key,
                "aggregate_type": r.aggregate_type,
                "event_type": r.event_type,
                "version": r.version,
                "actor": r.actor,
                "occurred_at": r.occurred_at,
                "recorded_at": r.recorded_at,
                "changes": changes_of(r),
            }
            for r in records
        ]
        await bulk_insert(conn, tables["events"], rows)


async def history(
    conn: AsyncConnection,
    tables: dict[str, Table],
    *,
    aggregate_id: UUID | None = None,
    actor: str | None = None,
    event_type: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    after_position: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit rows in log order, filtered; ``start``/``end`` bound ``occurred_at``."""
    events = tables["events"]
    # bound as a bigint: a cursor may name a position beyond what the column type holds
    clauses: list[Any] = [events.c.position > literal(after_position, BigInteger)]
    if aggregate_id is not None:
        clauses.append(events.c.aggregate_id == str(aggregate_id))
    if actor is not None:
        clauses.append(events.c.actor == actor)
    if event_type is not None:
        clauses.append(events.c.event_type == event_type)
    if start is not None:
        clauses.append(events.c.occurred_at >= start)
    if end is not None:
        clauses.append(events.c.occurred_at < end)
    query = select(events).where(*clauses).order_by(events.c.position).limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]
