"""``analytics``' projector: every state a deal, an activity and a pipeline passed through,
with the moment it began and ended, plus the stage reaches, the closes, deals' first
responses and owners' memberships."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import MetaData, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.records import EventRecord
from libs.domain.events import (
    ACTIVITY_EVENTS,
    AUTOMATION_EVENTS,
    CLOSES,
    DEAL_EVENTS,
    ENTERS_STAGE,
    OWNER_EVENTS,
    PIPELINE_EVENTS,
    EventType,
)
from libs.domain.state import (
    ActivityState,
    DealState,
    PipelineState,
    activities_after,
    deal_after,
    pipeline_after,
)
from services.projections.analytics import schema
from services.projections.analytics.funnel import FunnelCounts, order_of, recount_advanced
from services.projections.base import Projection
from services.projections.folding import (
    activity_fields,
    activity_state_of,
    history_fields,
    partial_deal_state,
    pipeline_row,
    pipeline_state_of,
)
from services.projections.sql import bulk_insert, bulk_update, bulk_upsert

Key = tuple[str, int]


class Analytics(Projection):
    """History tables behind funnel, win rate, forecast, cycle time and as-of queries."""

    name = "analytics"
    handles = DEAL_EVENTS | PIPELINE_EVENTS | OWNER_EVENTS
    schema_version = schema.SCHEMA_VERSION
    readable_since = schema.READABLE_SINCE
    ignores: frozenset[str] = AUTOMATION_EVENTS

    def define(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        return schema.define(metadata, suffix)

    async def apply(
        self, conn: AsyncConnection, tables: dict[str, Table], records: Sequence[EventRecord]
    ) -> None:
        history_t, pipelines_t = tables["history"], tables["pipelines"]
        reach_t = tables["reach"]

        # Current pipeline states (few) and the current state of each deal in the batch.
        pipelines: dict[str, PipelineState] = {}
        current_pipelines: dict[str, dict[str, Any]] = {}
        rows = await conn.execute(select(pipelines_t).where(pipelines_t.c.valid_to.is_(None)))
        for r in rows.mappings().all():
            current_pipelines[r["pipeline_id"]] = dict(r)
            pipelines[r["pipeline_id"]] = pipeline_state_of(r["state"])
        activities_t, responses_t = tables["activities"], tables["responses"]
        deal_ids = list({r.key for r in records if r.event_type in DEAL_EVENTS})
        deals: dict[str, DealState] = {}
        current_deals: dict[str, dict[str, Any]] = {}
        funnel = FunnelCounts()
        await funnel.load(conn, tables, deal_ids)
        reordered: set[str] = set()
        # each deal's activities now (their current history rows) and first responses
        acts: dict[str, dict[str, ActivityState]] = {}
        current_acts: dict[str, dict[str, Any]] = {}
        responses: dict[str, dict[str, Any]] = {}
        with_activities = list({r.key for r in records if r.event_type in ACTIVITY_EVENTS})
        for i in range(0, len(with_activities), 500):
            chunk = with_activities[i : i + 500]
            rows = await conn.execute(
                select(activities_t).where(
                    activities_t.c.deal_id.in_(chunk), activities_t.c.valid_to.is_(None)
                )
            )
            for r in rows.mappings().all():
                stored = dict(r)
                current_acts[stored["activity_id"]] = stored
                acts.setdefault(stored["deal_id"], {})[stored["activity_id"]] = activity_state_of(
                    stored
                )
            rows = await conn.execute(select(responses_t).where(responses_t.c.deal_id.in_(chunk)))
            responses.update({r["deal_id"]: dict(r) for r in rows.mappings().all()})
        for i in range(0, len(deal_ids), 500):
            chunk = deal_ids[i : i + 500]
            rows = await conn.execute(
                select(history_t).where(
                    history_t.c.deal_id.in_(chunk), history_t.c.valid_to.is_(None)
                )
            )
            for r in rows.mappings().all():
                current_deals[r["deal_id"]] = dict(r)
                deals[r["deal_id"]] = partial_deal_state(dict(r))

        history_rows: dict[Key, dict[str, Any]] = {}
        closed_rows: list[tuple[str, int, datetime]] = []  # rows already stored, now ended
        activity_rows: dict[Key, dict[str, Any]] = {}
        closed_activities: list[tuple[str, int, datetime]] = []
        new_responses: dict[str, dict[str, Any]] = {}
        pipeline_rows: dict[Key, dict[str, Any]] = {}
        closed_pipelines: list[tuple[str, int, datetime]] = []
        reach_rows: list[dict[str, Any]] = []
        outcome_rows: list[dict[str, Any]] = []
        membership_rows: list[dict[str, Any]] = []

        def end_previous(
            previous: dict[str, Any] | None,
            key: str,
            store: dict[Key, dict[str, Any]],
            closed: list[tuple[str, int, datetime]],
            when: datetime,
        ) -> None:
            if previous is None:
                return
            pk = (previous[key], previous["position"])
            if pk in store:
                store[pk]["valid_to"] = when
            else:
                closed.append((previous[key], previous["position"], when))

        def reach(
            deal_id: str, pipeline_id: str, stage_id: str, owner: str, rec: EventRecord
        ) -> None:
            pipeline = pipelines.get(pipeline_id)
            stages = order_of(pipeline)
            order = stages if pipeline else [stage_id]
            seen = funnel.reached.get((deal_id, pipeline_id), {})
            if stage_id not in order:
                order = [*order, stage_id]
            new: list[tuple[str, str]] = []
            for sid in order[: order.index(stage_id) + 1]:
                if sid in seen:
                    continue
                new.append((sid, "entered" if sid == stage_id else "skipped"))
                reach_rows.append(
                    {
                        "deal_id": deal_id,
                        "pipeline_id": pipeline_id,
                        "stage_id": sid,
                        "reached_at": rec.when,
                        "how": "entered" if sid == stage_id else "skipped",
                        "owner": owner,
                        "position": rec.position,
                    }
                )
            funnel.reach(deal_id, pipeline_id, new, rec.when, stages)

        for rec in records:
            kind, p, when = rec.event_type, rec.payload, rec.when
            if kind in PIPELINE_EVENTS:
                pid = rec.key
                pipeline = pipeline_after(pipelines.get(pid), kind, p, when)
                if pipeline is None:
                    continue
                if pid in pipelines and order_of(pipelines[pid]) != order_of(pipeline):
                    reordered.add(pid)
                end_previous(
                    current_pipelines.get(pid), "pipeline_id", pipeline_rows, closed_pipelines, when
                )
                pipelines[pid] = pipeline
                prow = {
                    "pipeline_id": pid,
                    "position": rec.position,
                    "valid_from": when,
                    "valid_to": None,
                    "state": _jsonable(pipeline_row(pid, pipeline, rec)),
                }
                current_pipelines[pid] = prow
                pipeline_rows[(pid, rec.position)] = prow
            elif kind in OWNER_EVENTS:
                membership_rows.append(
                    {
                        "owner": p.get("name") or p.get("owner") or rec.key,
                        "position": rec.position,
                        "valid_from": when,
                        "team": p.get("team"),
                        "region": p.get("region"),
                    }
                )
            elif kind in ACTIVITY_EVENTS:
                deal_id = rec.key
                known = acts.setdefault(deal_id, {})
                for activity_id, activity in activities_after(known, kind, p, when).items():
                    end_previous(
                        current_acts.get(activity_id),
                        "activity_id",
                        activity_rows,
                        closed_activities,
                        when,
                    )
                    known[activity_id] = activity
                    arow = {
                        **activity_fields(activity),
                        "deal_id": deal_id,
                        "position": rec.position,
                        "valid_from": when,
                        "valid_to": None,
                    }
                    current_acts[activity_id] = arow
                    activity_rows[(activity_id, rec.position)] = arow
                    response = responses.get(deal_id)
                    if (
                        kind == EventType.ACTIVITY_COMPLETED
                        and response is not None
                        and response["responded_at"] is None
                    ):
                        response.update(
                            responded_at=when, activity_id=activity_id, position=rec.position
                        )
                        new_responses[deal_id] = response
            elif kind in DEAL_EVENTS:
                deal_id = rec.key
                state = deal_after(deals.get(deal_id), kind, p, when)
                if state is None:
                    continue
                end_previous(current_deals.get(deal_id), "deal_id", history_rows, closed_rows, when)
                deals[deal_id] = state
                row: dict[str, Any] = {
                    **history_fields(state),
                    "deal_id": deal_id,
                    "position": rec.position,
                    "valid_from": when,
                    "valid_to": None,
                }
                current_deals[deal_id] = row
                history_rows[(deal_id, rec.position)] = row
                if kind == EventType.DEAL_CREATED:
                    responses[deal_id] = new_responses[deal_id] = {
                        "deal_id": deal_id,
                        "pipeline_id": row["pipeline_id"],
                        "owner": state.owner,
                        "created_at": when,
                        "responded_at": None,
                        "activity_id": None,
                        "position": rec.position,
                    }
                if kind in ENTERS_STAGE:
                    reach(deal_id, row["pipeline_id"], state.stage_id, state.owner, rec)
                elif kind in CLOSES:
                    won = kind == EventType.DEAL_WON
                    funnel.close(deal_id, row["pipeline_id"], won, state.stage_id, when)
                    outcome_rows.append(
                        {
                            "position": rec.position,
                            "deal_id": deal_id,
                            "pipeline_id": row["pipeline_id"],
                            "outcome": "won" if kind == EventType.DEAL_WON else "lost",
                            "closed_at": when,
                            "created_at": state.created_at,
                            "stage_id": state.stage_id,
                            "owner": state.owner,
                            "value": state.value,
                            "lost_reason": p.get("reason"),
                        }
                    )

        for table, key, ended in (
            (history_t, "deal_id", closed_rows),
            (pipelines_t, "pipeline_id", closed_pipelines),
            (activities_t, "activity_id", closed_activities),
        ):
            await bulk_update(
                conn,
                table,
                [key, "position"],
                ["valid_to"],
                [{key: i, "position": pos, "valid_to": to} for i, pos, to in ended],
            )
        for table, batch in (
            (history_t, list(history_rows.values())),
            (pipelines_t, list(pipeline_rows.values())),
            (tables["outcomes"], outcome_rows),
            (tables["memberships"], membership_rows),
            (activities_t, list(activity_rows.values())),
        ):
            await bulk_insert(conn, table, batch)
        await bulk_upsert(conn, reach_t, ["deal_id", "pipeline_id", "stage_id"], reach_rows)
        await bulk_upsert(conn, responses_t, ["deal_id"], list(new_responses.values()))
        await funnel.write(conn, tables)
        for pid in sorted(reordered):
            await recount_advanced(conn, tables, pid, order_of(pipelines[pid]))


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime | date) else v for k, v in row.items()}
