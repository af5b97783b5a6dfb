"""``current_pipeline``'s projector: deals and pipelines folded to now, totals kept by delta."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import MetaData, Table, delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.records import EventRecord
from libs.domain.events import (
    ACTIVITY_EVENTS,
    AUTOMATION_EVENTS,
    DEAL_EVENTS,
    OWNER_EVENTS,
    PIPELINE_EVENTS,
    EventType,
)
from libs.domain.state import (
    OPEN,
    ActivityState,
    DealState,
    PipelineState,
    deal_after,
    pipeline_after,
)
from libs.domain.state import weighted_value as weighted
from services.projections.base import Projection
from services.projections.current_pipeline import schema
from services.projections.folding import (
    activity_fields,
    activity_state_of,
    deal_chance,
    deal_row,
    deal_state_of,
    pipeline_row,
    pipeline_state_of,
)
from services.projections.sql import bulk_upsert

ZERO = Decimal(0)
Contribution = tuple[tuple[str, str], tuple[int, Decimal, Decimal]] | None


class CurrentPipeline(Projection):
    """Deals and their activities as they are now, and per pipeline stage the count and
    value of open deals."""

    name = "current_pipeline"
    handles = DEAL_EVENTS | PIPELINE_EVENTS
    schema_version = schema.SCHEMA_VERSION
    readable_since = schema.READABLE_SINCE
    ignores = OWNER_EVENTS | AUTOMATION_EVENTS

    def define(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        return schema.define(metadata, suffix)

    async def apply(
        self, conn: AsyncConnection, tables: dict[str, Table], records: Sequence[EventRecord]
    ) -> None:
        deals_t, pipelines_t = tables["deals"], tables["pipelines"]
        activities_t = tables["activities"]

        pipeline_rows = {
            r["pipeline_id"]: dict(r)
            for r in (await conn.execute(select(pipelines_t))).mappings().all()
        }
        pipelines = {pid: pipeline_state_of(row) for pid, row in pipeline_rows.items()}
        deal_ids = list({r.key for r in records if r.event_type in DEAL_EVENTS})
        rows: dict[str, dict[str, Any]] = {}
        stored: dict[str, list[ActivityState]] = defaultdict(list)
        activity_rows: dict[str, dict[str, Any]] = {}  # stored rows, then the changed ones
        for chunk in _chunks(deal_ids, 500):
            result = await conn.execute(select(deals_t).where(deals_t.c.deal_id.in_(chunk)))
            rows.update({r["deal_id"]: dict(r) for r in result.mappings().all()})
            result = await conn.execute(
                select(activities_t).where(activities_t.c.deal_id.in_(chunk))
            )
            for r in result.mappings().all():
                row = dict(r)
                activity_rows[row["activity_id"]] = row
                stored[row["deal_id"]].append(activity_state_of(row))
        deals: dict[str, DealState] = {d: deal_state_of(row, stored[d]) for d, row in rows.items()}
        positions: dict[str, int] = {}  # activity -> position of its last change

        before = {deal_id: _contribution(row) for deal_id, row in rows.items()}
        touched_deals: set[str] = set()
        touched_pipelines: set[str] = set()
        # A deal's row is built once per batch, after its last event (its probability
        # reads the pipeline as it is then; a change of it on the way builds it earlier).
        unbuilt: dict[str, EventRecord] = {}

        def build(deal_id: str) -> None:
            record = unbuilt.pop(deal_id, None)
            if record is not None:
                deal = deals[deal_id]
                pipeline = pipelines.get(str(deal.pipeline_id))
                rows[deal_id] = deal_row(deal_id, deal, pipeline, record)

        for record in records:
            kind = record.event_type
            if kind in PIPELINE_EVENTS:
                pid = record.key
                pipeline = pipeline_after(pipelines.get(pid), kind, record.payload, record.when)
                if pipeline is None:
                    continue
                pipelines[pid] = pipeline
                pipeline_rows[pid] = pipeline_row(pid, pipeline, record)
                touched_pipelines.add(pid)
                stage_id = _probability_changed(record)
                if stage_id is not None:
                    await self._load_stage(conn, deals_t, pid, stage_id, rows, deals, before)
                    for deal_id, deal in deals.items():
                        if str(deal.pipeline_id) == pid and deal.stage_id == stage_id:
                            build(deal_id)
                            _reweigh(rows[deal_id], deal, pipeline)
                            touched_deals.add(deal_id)
            elif kind in DEAL_EVENTS:
                deal_id = record.key
                after = deal_after(deals.get(deal_id), kind, record.payload, record.when)
                if after is None:
                    continue  # an event of a deal whose creation this projection never saw
                if kind in ACTIVITY_EVENTS:
                    earlier = deals[deal_id].activities if deal_id in deals else ()
                    unchanged = {id(a) for a in earlier}
                    for activity in after.activities:
                        if id(activity) not in unchanged:
                            positions[activity.id] = record.position
                deals[deal_id] = after
                unbuilt[deal_id] = record
                touched_deals.add(deal_id)
        for deal_id in list(unbuilt):
            build(deal_id)

        deltas: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, ZERO, ZERO])
        for deal_id in touched_deals:
            for sign, contribution in (
                (-1, before.get(deal_id)),
                (1, _contribution(rows[deal_id])),
            ):
                if contribution is not None:
                    key, (count, value, weight) = contribution
                    delta = deltas[key]
                    delta[0] += sign * count
                    delta[1] += sign * value
                    delta[2] += sign * weight

        await bulk_upsert(
            conn, pipelines_t, ["pipeline_id"], [pipeline_rows[p] for p in touched_pipelines]
        )
        await bulk_upsert(conn, deals_t, ["deal_id"], [rows[d] for d in touched_deals])
        await bulk_upsert(
            conn,
            activities_t,
            ["activity_id"],
            _changed_activities(touched_deals, deals, activity_rows, positions),
        )
        if deltas:
            await self._apply_totals(conn, tables["totals"], deltas)

    async def _load_stage(
        self,
        conn: AsyncConnection,
        deals_t: Table,
        pipeline_id: str,
        stage_id: str,
        rows: dict[str, dict[str, Any]],
        deals: dict[str, DealState],
        before: dict[str, Contribution],
    ) -> None:
        """Bring the open deals of one stage into the batch (a probability changed)."""
        result = await conn.execute(
            select(deals_t).where(
                deals_t.c.pipeline_id == pipeline_id,
                deals_t.c.stage_id == stage_id,
                deals_t.c.status == OPEN,
            )
        )
        for r in result.mappings().all():
            if r["deal_id"] not in rows:
                row = dict(r)
                rows[row["deal_id"]] = row
                deals[row["deal_id"]] = deal_state_of(row)
                before[row["deal_id"]] = _contribution(row)

    async def _apply_totals(
        self, conn: AsyncConnection, totals_t: Table, deltas: dict[tuple[str, str], list[Any]]
    ) -> None:
        keys = [k for k, d in deltas.items() if d[0] or d[1] or d[2]]
        if not keys:
            return
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for chunk in _chunks(keys, 400):
            result = await conn.execute(
                select(totals_t).where(
                    tuple_(totals_t.c.pipeline_id, totals_t.c.stage_id).in_(chunk)
                )
            )
            for r in result.mappings().all():
                current[(r["pipeline_id"], r["stage_id"])] = dict(r)
        out = []
        for key in keys:
            row = current.get(key) or {
                "pipeline_id": key[0],
                "stage_id": key[1],
                "open_count": 0,
                "open_value": ZERO,
                "weighted_value": ZERO,
            }
            count, value, weight = deltas[key]
            out.append(
                {
                    **row,
                    "open_count": row["open_count"] + count,
                    "open_value": row["open_value"] + value,
                    "weighted_value": row["weighted_value"] + weight,
                }
            )
        # A stage with no open deals has no row, however the batches fell (a replay in
        # one batch never creates the zero rows that smaller batches would leave).
        empty = [(r["pipeline_id"], r["stage_id"]) for r in out if r["open_count"] == 0]
        out = [r for r in out if r["open_count"] != 0]
        for chunk in _chunks(empty, 400):
            await conn.execute(
                delete(totals_t).where(
                    tuple_(totals_t.c.pipeline_id, totals_t.c.stage_id).in_(chunk)
                )
            )
        await bulk_upsert(conn, totals_t, ["pipeline_id", "stage_id"], out)


def _changed_activities(
    touched: set[str],
    deals: dict[str, DealState],
    stored: dict[str, dict[str, Any]],
    positions: dict[str, int],
) -> list[dict[str, Any]]:
    """The rows of the touched deals' activities that differ from what is stored (each at
    the position of its own last change; a deal that moved takes its activities' pipeline
    along)."""
    out = []
    for deal_id in touched:
        deal = deals[deal_id]
        for activity in deal.activities:
            before = stored.get(activity.id)
            row = {
                **activity_fields(activity),
                "deal_id": deal_id,
                "pipeline_id": str(deal.pipeline_id),
                "position": positions.get(activity.id, before["position"] if before else 0),
            }
            if row != before:
                out.append(row)
    return out


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _contribution(row: dict[str, Any]) -> Contribution:
    """What an open deal adds to its stage's totals (None for a closed deal)."""
    if row["status"] != OPEN:
        return None
    return (row["pipeline_id"], row["stage_id"]), (1, row["value"], row["weighted_value"])


def _probability_changed(record: EventRecord) -> str | None:
    """The stage whose win probability ``record`` changes, if any."""
    if record.event_type == EventType.STAGE_UPDATED and "probability" in record.payload["changes"]:
        return str(record.payload["stage_id"])
    return None


def _reweigh(row: dict[str, Any], state: DealState, pipeline: PipelineState) -> None:
    """Set a stored deal's probability and weighted value from its pipeline as it is now."""
    chance = deal_chance(state, pipeline)
    row.update(probability=chance, weighted_value=weighted(state.value, chance))
