"""``audit_history``'s projector: each event as who, when (both clocks) and which fields
changed from what to what; each actor's events counted per month, in the same
transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import MetaData, Table
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.records import EventRecord, to_json_value
from libs.domain.events import DEAL_EVENTS, OWNER_EVENTS, PIPELINE_EVENTS, EventType
from libs.domain.times import first_of_month
from services.projections.audit_history import schema
from services.projections.base import Projection
from services.projections.sql import bulk_add, bulk_insert

E = EventType

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
    if kind == E.DEAL_CREATED:
        out = {f: _change(None, p.get(f)) for f in CREATED_FIELDS if p.get(f) is not None}
        out["stage"] = _change(None, p["stage_name"])
        out["status"] = _change(None, "open")
        return out
    if kind == E.STAGE_ADVANCED:
        out = {
            "stage": _change(p["from_stage_name"], p["to_stage_name"]),
            "stage_id": _change(p["from_stage_id"], p["to_stage_id"]),
        }
        if p.get("note"):
            out["note"] = _change(None, p["note"])
        if p.get("cause"):
            out["cause"] = _change(None, p["cause"])
        return out
    if kind == E.DEAL_MOVED:
        out = {
            "pipeline_id": _change(p["from_pipeline_id"], p["to_pipeline_id"]),
            "stage": _change(p["from_stage_name"], p["to_stage_name"]),
            "stage_id": _change(p["from_stage_id"], p["to_stage_id"]),
        }
        if p.get("note"):
            out["note"] = _change(None, p["note"])
        return out
    if kind == E.DEAL_WON:
        return {"status": _change("open", "won")}
    if kind == E.DEAL_LOST:
        out = {"status": _change("open", "lost"), "lost_reason": _change(None, p["reason"])}
        if p.get("note"):
            out["lost_note"] = _change(None, p["note"])
        return out
    if kind == E.DEAL_REOPENED:
        out = {"status": _change(p["previous_status"], "open")}
        if p["from_stage_id"] != p["stage_id"]:
            out["stage"] = _change(p["from_stage_name"], p["stage_name"])
            out["stage_id"] = _change(p["from_stage_id"], p["stage_id"])
        return out
    if kind == E.OWNER_CHANGED:
        return {"owner": _change(p["from_owner"], p["to_owner"])}
    if kind == E.DEAL_SNOOZED:
        return {
            "snoozed_until": _change(None, p["until"]),
            "snooze_reason": _change(None, p["reason"]),
        }
    if kind in ACTIVITY_CHANGES:
        return ACTIVITY_CHANGES[kind](p)
    if kind == E.STAGE_ADDED:
        return {f"stages[{p['stage']['id']}]": _change(None, p["stage"])}
    if kind == E.STAGE_RENAMED:
        return {f"stages[{p['stage_id']}].name": _change(p["from_name"], p["to_name"])}
    if kind == E.STAGE_UPDATED:
        return {
            f"stages[{p['stage_id']}].{k}": _change(p["previous"].get(k), v)
            for k, v in p["changes"].items()
        }
    if kind == E.STAGES_REORDERED:
        return {"stage_order": _change(p["previous_order"], p["order"])}
    if kind == E.STAGE_REMOVED:
        out = {f"stages[{p['stage_id']}]": _change(p["stage_name"], None)}
        if p.get("move_open_deals_to"):
            out["move_open_deals_to"] = _change(None, p["move_open_deals_to"])
        return out
    if kind == E.LOST_REASON_ADDED:
        return {"lost_reasons": _change(None, p["reason"])}
    if kind == E.LOST_REASON_RETIRED:
        return {"lost_reasons": _change(p["reason"], None)}
    if kind == E.PIPELINE_RENAMED:
        return {"name": _change(p["from_name"], p["to_name"])}
    if kind in (E.PIPELINE_RULES_CHANGED, E.DEAL_UPDATED):
        return {k: _change(p["previous"].get(k), v) for k, v in p["changes"].items()}
    if kind == E.TEAM_ASSIGNED:
        return {
            "team": _change(p.get("previous_team"), p.get("team")),
            "region": _change(p.get("previous_region"), p.get("region")),
        }
    return {k: _change(None, v) for k, v in p.items() if k != "originator_topic"}


def _activity(activity_id: Any, field: str = "") -> str:
    return f"activities[{activity_id}]{'.' + field if field else ''}"


def _scheduled(p: Any) -> dict[str, dict[str, Any]]:
    fields = ("subject", "due_at", "duration_minutes", "assignee", "note")
    return {
        _activity(p["activity_id"]): _change(
            None, {"type": p["activity_type"], **{f: p.get(f) for f in fields}}
        )
    }


def _checklist_applied(p: Any) -> dict[str, dict[str, Any]]:
    out = {
        "checklist": _change(
            None,
            {
                "stage_id": p["stage_id"],
                "stage": p["stage_name"],
                "version": p["checklist_version"],
            },
        )
    }
    for item in p["items"]:
        out[_activity(item["activity_id"])] = _change(
            None,
            {"type": item["type"], "subject": item["title"], "due_at": item.get("due_at")},
        )
    return out


def _waived(p: Any) -> dict[str, dict[str, Any]]:
    out = {_activity(i, "status"): _change("open", "cancelled") for i in p["activity_ids"]}
    out["waiver_reason"] = _change(None, p["reason"])
    return out


Changes = dict[str, dict[str, Any]]


def _closed(status: str, note: str) -> Callable[[Any], Changes]:
    def changes(p: Any) -> Changes:
        out = {_activity(p["activity_id"], "status"): _change("open", status)}
        if p.get(note):
            out[_activity(p["activity_id"], note)] = _change(None, p[note])
        return out

    return changes


# How each activity event shows its changes (stage names as at the time of the event).
ACTIVITY_CHANGES: dict[str, Callable[[Any], Changes]] = {
    E.ACTIVITY_SCHEDULED: _scheduled,
    E.ACTIVITY_UPDATED: lambda p: {
        _activity(p["activity_id"], k): _change(p["previous"].get(k), v)
        for k, v in p["changes"].items()
    },
    E.ACTIVITY_COMPLETED: _closed("done", "outcome"),
    E.ACTIVITY_CANCELLED: _closed("cancelled", "reason"),
    E.CHECKLIST_APPLIED: _checklist_applied,
    E.CHECKLIST_WAIVED: _waived,
}


class AuditHistory(Projection):
    """Who changed what, when (business and recorded time) and how: never updated."""

    name = "audit_history"
    handles = DEAL_EVENTS | PIPELINE_EVENTS | OWNER_EVENTS
    schema_version = schema.SCHEMA_VERSION
    readable_since = schema.READABLE_SINCE
    ignores: frozenset[str] = frozenset()
    records_unknown = True

    def define(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        return schema.define(metadata, suffix)

    async def apply(
        self, conn: AsyncConnection, tables: dict[str, Table], records: Sequence[EventRecord]
    ) -> None:
        # as tuples in the table's column order (see schema.define)
        rows = [
            (
                r.position,
                r.key,
                r.aggregate_type,
                r.event_type,
                r.version,
                r.actor,
                r.occurred_at,
                r.recorded_at,
                changes_of(r),
            )
            for r in records
        ]
        await bulk_insert(conn, tables["events"], rows)
        counted = [
            {"actor": r.actor, "month": first_of_month(r.when), "events": 1}
            for r in records
            if r.actor and (r.occurred_at or r.recorded_at)
        ]
        await bulk_add(conn, tables["actors"], ["actor", "month"], ["events"], counted)
