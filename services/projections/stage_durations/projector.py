"""``stage_durations``'s projector: a visit opens when a deal enters a stage, closes when
it leaves (advanced, moved back, won, lost, moved to another pipeline); the histogram
counts each visit under its stage, month of entry and duration bucket, in the same
transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

from sqlalchemy import MetaData, Table, and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.records import EventRecord
from libs.domain.events import (
    ACTIVITY_EVENTS,
    AUTOMATION_EVENTS,
    CLOSES,
    DEAL_EVENTS,
    OWNER_EVENTS,
    PIPELINE_EVENTS,
    EventType,
)
from libs.domain.times import first_of_month
from services.projections.base import Projection
from services.projections.sql import bulk_add, bulk_upsert
from services.projections.stage_durations import schema

E = EventType
OPEN = schema.OPEN
MICROSECOND = timedelta(microseconds=1)
EXIT_KINDS = ("advanced", "moved_back", "won", "lost", "moved_pipeline")


class StageDurations(Projection):
    """Each visit of a deal to a stage: when it entered, when and how it left."""

    name = "stage_durations"
    handles = DEAL_EVENTS - ACTIVITY_EVENTS
    ignores = PIPELINE_EVENTS | OWNER_EVENTS | ACTIVITY_EVENTS | AUTOMATION_EVENTS
    schema_version = schema.SCHEMA_VERSION
    readable_since = schema.READABLE_SINCE

    def define(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        return schema.define(metadata, suffix)

    async def apply(
        self, conn: AsyncConnection, tables: dict[str, Table], records: Sequence[EventRecord]
    ) -> None:
        visits_t = tables["visits"]
        deal_ids = list({r.key for r in records if r.event_type in DEAL_EVENTS})
        last: dict[str, dict[str, Any]] = {}
        for i in range(0, len(deal_ids), 500):
            chunk = deal_ids[i : i + 500]
            latest = (
                select(visits_t.c.deal_id, func.max(visits_t.c.visit).label("visit"))
                .where(visits_t.c.deal_id.in_(chunk))
                .group_by(visits_t.c.deal_id)
                .subquery()
            )
            rows = await conn.execute(
                select(visits_t).join(
                    latest,
                    and_(
                        visits_t.c.deal_id == latest.c.deal_id, visits_t.c.visit == latest.c.visit
                    ),
                )
            )
            last.update({r["deal_id"]: dict(r) for r in rows.mappings().all()})

        changed: dict[tuple[str, int], dict[str, Any]] = {}
        # (pipeline, stage, month, bucket) -> [visits, duration in microseconds] added
        counts: dict[tuple[str, str, date, int], list[int]] = {}

        def count(row: dict[str, Any], bucket: int, visits: int, micros: int) -> None:
            key = (row["pipeline_id"], row["stage_id"], first_of_month(row["entered_at"]), bucket)
            kept = counts.setdefault(key, [0, 0])
            kept[0] += visits
            kept[1] += micros

        def open_visit(
            prev: dict[str, Any],
            stage_id: str,
            stage_name: str,
            rec: EventRecord,
            pipeline_id: str | None = None,
        ) -> None:
            row = {
                "deal_id": prev["deal_id"],
                "visit": prev["visit"] + 1,
                "pipeline_id": pipeline_id or prev["pipeline_id"],
                "stage_id": stage_id,
                "stage_name": stage_name,
                "owner": prev["owner"],
                "entered_at": rec.when,
                "exited_at": None,
                "duration_seconds": None,
                "exit_kind": None,
                "entered_position": rec.position,
                "exited_position": None,
            }
            last[row["deal_id"]] = row
            changed[(row["deal_id"], row["visit"])] = row
            count(row, schema.OPEN, 1, 0)

        def close_visit(row: dict[str, Any], kind: str, rec: EventRecord) -> None:
            row = dict(row)
            duration = rec.when - row["entered_at"]
            row.update(
                exited_at=rec.when,
                duration_seconds=duration.total_seconds(),
                exit_kind=kind,
                exited_position=rec.position,
            )
            count(row, schema.OPEN, -1, 0)
            count(row, schema.bucket_of(row["duration_seconds"]), 1, duration // MICROSECOND)
            last[row["deal_id"]] = row
            changed[(row["deal_id"], row["visit"])] = row

        for rec in records:
            kind = rec.event_type
            if kind not in DEAL_EVENTS:
                continue
            deal_id, p = rec.key, rec.payload
            prev = last.get(deal_id)
            if kind == E.DEAL_CREATED:
                seed = {
                    "deal_id": deal_id,
                    "visit": 0,
                    "pipeline_id": str(p["pipeline_id"]),
                    "owner": p["owner"],
                }
                open_visit(seed, p["stage_id"], p["stage_name"], rec)
                continue
            if prev is None:
                continue
            is_open = prev["exited_at"] is None
            if kind == E.STAGE_ADVANCED and is_open:
                moved = "moved_back" if p.get("direction") == "backward" else "advanced"
                close_visit(prev, moved, rec)
                open_visit(last[deal_id], p["to_stage_id"], p["to_stage_name"], rec)
            elif kind == E.DEAL_MOVED and is_open:
                close_visit(prev, "moved_pipeline", rec)
                open_visit(
                    last[deal_id],
                    p["to_stage_id"],
                    p["to_stage_name"],
                    rec,
                    pipeline_id=str(p["to_pipeline_id"]),
                )
            elif kind in CLOSES and is_open:
                close_visit(prev, "won" if kind == E.DEAL_WON else "lost", rec)
            elif kind == E.DEAL_REOPENED and not is_open:
                open_visit(prev, p["stage_id"], p["stage_name"], rec)
            elif kind == E.OWNER_CHANGED and is_open:
                # Only open deals change owner; the open visit (and later ones) carry it.
                row = dict(prev, owner=p["to_owner"])
                last[deal_id] = row
                changed[(deal_id, row["visit"])] = row

        await bulk_upsert(conn, visits_t, ["deal_id", "visit"], list(changed.values()))
        await bulk_add(
            conn,
            tables["histogram"],
            ["pipeline_id", "stage_id", "month", "bucket"],
            ["visits", "duration_micros"],
            [
                {
                    "pipeline_id": p,
                    "stage_id": s,
                    "month": m,
                    "bucket": b,
                    "visits": n,
                    "duration_micros": micros,
                }
                for (p, s, m, b), (n, micros) in counts.items()
                if n or micros
            ],
        )
        # Open visits are counted up and down again: drop the counts that reached zero, so
        # the table holds what a rebuild (which nets them out in memory) holds.
        emptied = sorted({p for (p, _, _, b), (n, _) in counts.items() if b == OPEN and n < 0})
        if emptied:
            h = tables["histogram"]
            await conn.execute(
                delete(h).where(
                    h.c.pipeline_id.in_(emptied), h.c.bucket == schema.OPEN, h.c.visits == 0
                )
            )
