"""Read model 4, sales analytics: the history the reports need, on business time.

Tables (all keyed so that a rebuild gives the same rows as incremental work):

- ``analytics_deal_history``: a deal's state after each of its events, valid from that
  event's ``occurred_at`` until the next one's (state as of any moment);
- ``analytics_pipeline_history``: the same for pipelines (stage order and probabilities);
- ``analytics_reach``: the first time a deal reached each stage of a pipeline, entered or
  skipped past (a deal that jumps from the first to the third stage has passed the
  second); moving back reaches nothing new;
- ``analytics_outcomes``: one row per win or loss, with the deal's owner, value, stage
  and creation time at that moment;
- ``analytics_memberships``: each owner's team and region from a moment on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Date,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.records import EventRecord
from services.projections.base import Money, Projection, UtcDateTime, bulk_insert, upsert
from services.projections.current_pipeline import (
    DEAL_EVENTS,
    OWNER_EVENTS,
    PIPELINE_EVENTS,
    _pipeline_row,
)

# Deal events that change nothing the analytics keep (still valid history rows).
STATE_FIELDS = (
    "pipeline_id",
    "stage_id",
    "status",
    "value",
    "owner",
    "probability_override",
    "expected_close_date",
    "created_at",
)


class Analytics(Projection):
    """History tables behind funnel, win rate, forecast, cycle time and as-of queries."""

    name = "analytics"
    handles = DEAL_EVENTS | PIPELINE_EVENTS | OWNER_EVENTS
    ignores: frozenset[str] = frozenset()

    def define(self, metadata: MetaData, suffix: str) -> dict[str, Table]:
        history = Table(
            f"analytics_deal_history{suffix}",
            metadata,
            Column("deal_id", String(36), primary_key=True),
            Column("position", Integer, primary_key=True, autoincrement=False),
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
            Column("position", Integer, primary_key=True, autoincrement=False),
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
            Column("position", Integer, nullable=False),
        )
        Index(f"ix_ar{suffix}_pipeline", reach.c.pipeline_id, reach.c.reached_at)
        outcomes = Table(
            f"analytics_outcomes{suffix}",
            metadata,
            Column("position", Integer, primary_key=True, autoincrement=False),
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
            Column("position", Integer, primary_key=True, autoincrement=False),
            Column("valid_from", UtcDateTime(), nullable=False),
            Column("team", String(100), nullable=True),
            Column("region", String(100), nullable=True),
        )
        return {
            "history": history,
            "pipelines": pipelines,
            "reach": reach,
            "outcomes": outcomes,
            "memberships": memberships,
        }

    async def apply(
        self, conn: AsyncConnection, tables: dict[str, Table], records: Sequence[EventRecord]
    ) -> None:
        history_t, pipelines_t = tables["history"], tables["pipelines"]
        reach_t, outcomes_t = tables["reach"], tables["outcomes"]
        dialect = conn.dialect.name

        # Current pipeline states (few) and the current state of each deal in the batch.
        current_pipelines: dict[str, dict[str, Any]] = {}
        rows = await conn.execute(select(pipelines_t).where(pipelines_t.c.valid_to.is_(None)))
        for r in rows.mappings().all():
            current_pipelines[r["pipeline_id"]] = dict(r)
        deal_ids = list({r.key for r in records if r.event_type in DEAL_EVENTS})
        current_deals: dict[str, dict[str, Any]] = {}
        reached: dict[tuple[str, str], set[str]] = {}
        for i in range(0, len(deal_ids), 500):
            chunk = deal_ids[i : i + 500]
            rows = await conn.execute(
                select(history_t).where(
                    history_t.c.deal_id.in_(chunk), history_t.c.valid_to.is_(None)
                )
            )
            for r in rows.mappings().all():
                current_deals[r["deal_id"]] = dict(r)
            rows = await conn.execute(
                select(reach_t.c.deal_id, reach_t.c.pipeline_id, reach_t.c.stage_id).where(
                    reach_t.c.deal_id.in_(chunk)
                )
            )
            for deal_id, pipeline_id, stage_id in rows.all():
                reached.setdefault((deal_id, pipeline_id), set()).add(stage_id)

        history_rows: dict[tuple[str, int], dict[str, Any]] = {}
        closed_rows: list[tuple[str, int, datetime]] = []  # rows already stored, now ended
        pipeline_rows: dict[tuple[str, int], dict[str, Any]] = {}
        closed_pipelines: list[tuple[str, int, datetime]] = []
        reach_rows: list[dict[str, Any]] = []
        outcome_rows: list[dict[str, Any]] = []
        membership_rows: list[dict[str, Any]] = []

        def end_previous(
            previous: dict[str, Any] | None,
            key: str,
            store: dict[tuple[str, int], dict[str, Any]],
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
            pipeline = current_pipelines.get(pipeline_id)
            order = [s["id"] for s in pipeline["state"]["stages"]] if pipeline else [stage_id]
            seen = reached.setdefault((deal_id, pipeline_id), set())
            if stage_id not in order:
                order = [*order, stage_id]
            for sid in order[: order.index(stage_id) + 1]:
                if sid in seen:
                    continue
                seen.add(sid)
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

        for rec in records:
            kind, p, when = rec.event_type, rec.payload, rec.when
            if kind in PIPELINE_EVENTS:
                pid = rec.key
                previous = current_pipelines.get(pid)
                end_previous(previous, "pipeline_id", pipeline_rows, closed_pipelines, when)
                definition = _pipeline_row(rec, previous["state"] if previous else None)
                prow = {
                    "pipeline_id": pid,
                    "position": rec.position,
                    "valid_from": when,
                    "valid_to": None,
                    "state": {k: _jsonable(v) for k, v in definition.items()},
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
            elif kind in DEAL_EVENTS:
                deal_id = rec.key
                before = current_deals.get(deal_id)
                state = _next_state(before, rec)
                if state is None:
                    continue
                end_previous(before, "deal_id", history_rows, closed_rows, when)
                row: dict[str, Any] = {
                    **state,
                    "deal_id": deal_id,
                    "position": rec.position,
                    "valid_from": when,
                    "valid_to": None,
                }
                current_deals[deal_id] = row
                history_rows[(deal_id, rec.position)] = row
                if kind in ("DealCreated", "StageAdvanced", "DealReopened", "DealMoved"):
                    pipeline_id, stage_id = str(row["pipeline_id"]), str(row["stage_id"])
                    reach(deal_id, pipeline_id, stage_id, str(row["owner"]), rec)
                elif kind in ("DealWon", "DealLost"):
                    outcome_rows.append(
                        {
                            "position": rec.position,
                            "deal_id": deal_id,
                            "pipeline_id": row["pipeline_id"],
                            "outcome": "won" if kind == "DealWon" else "lost",
                            "closed_at": when,
                            "created_at": row["created_at"],
                            "stage_id": row["stage_id"],
                            "owner": row["owner"],
                            "value": row["value"],
                            "lost_reason": p.get("reason"),
                        }
                    )

        for table, key, ended in (
            (history_t, "deal_id", closed_rows),
            (pipelines_t, "pipeline_id", closed_pipelines),
        ):
            if ended:
                stmt = (
                    update(table)
                    .where(
                        table.c[key] == bindparam("k_id"), table.c.position == bindparam("k_pos")
                    )
                    .values(valid_to=bindparam("k_to"))
                )
                params = [{"k_id": i, "k_pos": pos, "k_to": to} for i, pos, to in ended]
                await conn.execute(stmt, params)
        for table, batch in (
            (history_t, list(history_rows.values())),
            (pipelines_t, list(pipeline_rows.values())),
            (outcomes_t, outcome_rows),
            (tables["memberships"], membership_rows),
        ):
            await bulk_insert(conn, table, batch)
        if reach_rows:
            stmt = upsert(reach_t, ["deal_id", "pipeline_id", "stage_id"], dialect)
            for i in range(0, len(reach_rows), 1000):
                await conn.execute(stmt, reach_rows[i : i + 1000])


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _next_state(previous: dict[str, Any] | None, rec: EventRecord) -> dict[str, Any] | None:
    p, kind, when = rec.payload, rec.event_type, rec.when
    if kind == "DealCreated":
        return {
            "pipeline_id": str(p["pipeline_id"]),
            "stage_id": p["stage_id"],
            "status": "open",
            "value": Decimal(p["value"]),
            "owner": p["owner"],
            "probability_override": None,
            "expected_close_date": p.get("expected_close_date"),
            "created_at": when,
        }
    if previous is None:
        return None
    state = {k: previous[k] for k in STATE_FIELDS}
    if kind == "StageAdvanced":
        state["stage_id"] = p["to_stage_id"]
    elif kind == "DealMoved":
        state.update(pipeline_id=str(p["to_pipeline_id"]), stage_id=p["to_stage_id"])
    elif kind == "DealWon":
        state["status"] = "won"
    elif kind == "DealLost":
        state["status"] = "lost"
    elif kind == "DealReopened":
        state.update(status="open", stage_id=p["stage_id"])
    elif kind == "DealUpdated":
        for key, value in p["changes"].items():
            if key in state:
                state[key] = Decimal(value) if key == "value" else value
    elif kind == "OwnerChanged":
        state["owner"] = p["to_owner"]
    return state


# --- queries --------------------------------------------------------------------------------


async def state_as_of(
    conn: AsyncConnection, tables: dict[str, Table], deal_id: str, moment: datetime
) -> dict[str, Any] | None:
    """The deal's analytics state valid at ``moment`` (None before it was created)."""
    h = tables["history"]
    row = (
        (
            await conn.execute(
                select(h)
                .where(
                    h.c.deal_id == deal_id,
                    h.c.valid_from <= moment,
                    (h.c.valid_to.is_(None)) | (h.c.valid_to > moment),
                )
                .order_by(h.c.position.desc())
                .limit(1)
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def pipeline_as_of(
    conn: AsyncConnection, tables: dict[str, Table], pipeline_id: str, moment: datetime
) -> dict[str, Any] | None:
    """The pipeline's definition (stages, probabilities) valid at ``moment``.

    Deals may be backdated to before their pipeline was defined (imports); for a moment
    before the first definition, the first definition answers.
    """
    t = tables["pipelines"]
    row = (
        await conn.execute(
            select(t.c.state)
            .where(t.c.pipeline_id == pipeline_id, t.c.valid_from <= moment)
            .order_by(t.c.valid_from.desc(), t.c.position.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        row = (
            await conn.execute(
                select(t.c.state)
                .where(t.c.pipeline_id == pipeline_id)
                .order_by(t.c.position)
                .limit(1)
            )
        ).first()
    return dict(row[0]) if row else None


async def open_deals_as_of(
    conn: AsyncConnection, tables: dict[str, Table], pipeline_id: str, moment: datetime
) -> list[dict[str, Any]]:
    """Every deal open in the pipeline at ``moment``, in the state it had then."""
    h = tables["history"]
    query = select(h).where(
        h.c.pipeline_id == pipeline_id,
        h.c.valid_from <= moment,
        (h.c.valid_to.is_(None)) | (h.c.valid_to > moment),
        h.c.status == "open",
    )
    rows = [dict(r) for r in (await conn.execute(query)).mappings().all()]
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        kept = latest.get(row["deal_id"])
        if kept is None or row["position"] > kept["position"]:
            latest[row["deal_id"]] = row
    return list(latest.values())


async def memberships(
    conn: AsyncConnection, tables: dict[str, Table]
) -> dict[str, list[tuple[datetime, int, str | None, str | None]]]:
    """Per owner, their (valid_from, position, team, region) in time order."""
    m = tables["memberships"]
    out: dict[str, list[tuple[datetime, int, str | None, str | None]]] = {}
    query = select(m).order_by(m.c.owner, m.c.valid_from, m.c.position)
    for r in (await conn.execute(query)).mappings().all():
        out.setdefault(r["owner"], []).append(
            (r["valid_from"], r["position"], r["team"], r["region"])
        )
    return out


def membership_at(
    history: dict[str, list[tuple[datetime, int, str | None, str | None]]],
    owner: str,
    moment: datetime,
) -> tuple[str | None, str | None]:
    """(team, region) of ``owner`` at ``moment``; (None, None) if none was set yet."""
    found: tuple[str | None, str | None] = (None, None)
    for valid_from, _, team, region in history.get(owner, []):
        if valid_from <= moment:
            found = (team, region)
        else:
            break
    return found


async def outcomes(
    conn: AsyncConnection,
    tables: dict[str, Table],
    *,
    pipeline_id: str | None,
    start: datetime | None,
    end: datetime | None,
) -> list[dict[str, Any]]:
    o = tables["outcomes"]
    clauses: list[Any] = []
    if pipeline_id is not None:
        clauses.append(o.c.pipeline_id == pipeline_id)
    if start is not None:
        clauses.append(o.c.closed_at >= start)
    if end is not None:
        clauses.append(o.c.closed_at < end)
    query = select(o).where(and_(*clauses)).order_by(o.c.position)
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]


async def reach_rows(
    conn: AsyncConnection, tables: dict[str, Table], pipeline_id: str, end: datetime | None
) -> list[dict[str, Any]]:
    r = tables["reach"]
    clauses: list[Any] = [r.c.pipeline_id == pipeline_id]
    if end is not None:
        clauses.append(r.c.reached_at < end)
    query = select(r).where(*clauses)
    return [dict(x) for x in (await conn.execute(query)).mappings().all()]


async def owner_names(conn: AsyncConnection, tables: dict[str, Table]) -> list[str]:
    m = tables["memberships"]
    rows = await conn.execute(select(m.c.owner, func.count()).group_by(m.c.owner))
    return [r[0] for r in rows.all()]
