"""``automations``'s projector: each rule folded from its events, each firing a row (and
the rule's count and last firing moved on)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import MetaData, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.records import EventRecord, to_json_value
from libs.domain.automation import ACTIVE, PAUSED
from libs.domain.events import (
    AUTOMATION_EVENTS,
    DEAL_EVENTS,
    OWNER_EVENTS,
    PIPELINE_EVENTS,
    EventType,
)
from services.projections.automations import schema
from services.projections.base import Projection
from services.projections.sql import bulk_insert, bulk_upsert

E = EventType


class Automations(Projection):
    """Rules as they are now (deleted ones kept, marked) and their firings."""

    name = "automations"
    handles = AUTOMATION_EVENTS
    ignores = DEAL_EVENTS | PIPELINE_EVENTS | OWNER_EVENTS
    schema_version = schema.SCHEMA_VERSION
    readable_since = schema.READABLE_SINCE

    def define(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        return schema.define(metadata, suffix)

    async def apply(
        self, conn: AsyncConnection, tables: dict[str, Table], records: Sequence[EventRecord]
    ) -> None:
        rules_t, firings_t = tables["rules"], tables["firings"]
        wanted = {
            str(r.payload["rule_id"]) if r.event_type == E.AUTOMATION_FIRED else r.key
            for r in records
            if r.event_type in AUTOMATION_EVENTS
        }
        rules: dict[str, dict[str, Any]] = {}
        ids = sorted(wanted)
        for i in range(0, len(ids), 500):
            query = select(rules_t).where(rules_t.c.rule_id.in_(ids[i : i + 500]))
            rules.update({r["rule_id"]: dict(r) for r in (await conn.execute(query)).mappings()})
        changed: dict[str, dict[str, Any]] = {}
        firings: list[dict[str, Any]] = []
        for rec in records:
            kind, p = rec.event_type, rec.payload
            if kind == E.AUTOMATION_CREATED:
                row = {
                    "rule_id": rec.key,
                    "pipeline_id": str(p["pipeline_id"]),
                    "name": p["name"],
                    "description": p.get("description"),
                    "trigger": to_json_value(p["trigger"]),
                    "actions": to_json_value(p["actions"]),
                    "status": ACTIVE,
                    "deleted": False,
                    "created_at": rec.when,
                    "created_by": rec.actor or "",
                    "last_fired_at": None,
                    "fired_count": 0,
                    "created_position": rec.position,
                }
            elif kind == E.AUTOMATION_FIRED:
                rule_id = str(p["rule_id"])
                firings.append(
                    {
                        "position": rec.position,
                        "firing_id": rec.key,
                        "rule_id": rule_id,
                        "deal_id": p.get("deal_id"),
                        "occurred_at": rec.when,
                        "reason": p["reason"],
                        "occurrence": p["occurrence"],
                        "actions": to_json_value(p["actions"]),
                    }
                )
                known = rules.get(rule_id)
                if known is not None:
                    rules[rule_id] = changed[rule_id] = dict(
                        known, last_fired_at=rec.when, fired_count=known["fired_count"] + 1
                    )
                continue
            else:
                known = rules.get(rec.key)
                if known is None:
                    continue
                row = dict(known)
                if kind == E.AUTOMATION_CHANGED:
                    row.update(to_json_value(p["changes"]))
                elif kind == E.AUTOMATION_PAUSED:
                    row["status"] = PAUSED
                elif kind == E.AUTOMATION_RESUMED:
                    row["status"] = ACTIVE
                elif kind == E.AUTOMATION_DELETED:
                    row["deleted"] = True
            row.update(version=rec.version, updated_at=rec.when, position=rec.position)
            rules[rec.key] = changed[rec.key] = row
        await bulk_upsert(conn, rules_t, ["rule_id"], list(changed.values()))
        await bulk_insert(conn, firings_t, firings)
