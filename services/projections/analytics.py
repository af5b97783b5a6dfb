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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    cast,
    extract,
    false,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.application.records import EventRecord
from services.projections.base import (
    Money,
    Projection,
    UtcDateTime,
    bulk_insert,
    bulk_update,
    bulk_upsert,
)
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
            (outcomes_t, outcome_rows),
            (tables["memberships"], membership_rows),
        ):
            await bulk_insert(conn, table, batch)
        await bulk_upsert(conn, reach_t, ["deal_id", "pipeline_id", "stage_id"], reach_rows)


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


async def owner_names(conn: AsyncConnection, tables: dict[str, Table]) -> list[str]:
    m = tables["memberships"]
    rows = await conn.execute(select(m.c.owner, func.count()).group_by(m.c.owner))
    return [r[0] for r in rows.all()]


# --- aggregate queries (the reports: the database groups and counts, Python only shapes) --


def money_sum(column: Any, dialect: str, name: str) -> list[Any]:
    """SUM of a money column, exactly, as labelled select columns (read by ``money_total``).

    PostgreSQL sums NUMERIC exactly. SQLite keeps money as text and would sum it as REAL,
    so there the whole units and the (at most four) decimal places are summed as integers.
    """
    if dialect == "postgresql":
        return [func.sum(column).label(name)]
    text = type_coerce(column, String)
    dot = func.instr(text, ".")
    fraction = case((dot > 0, cast(func.substr(text + "0000", dot + 1, 4), Integer)), else_=0)
    return [
        func.sum(cast(text, Integer)).label(f"{name}__whole"),
        func.sum(fraction).label(f"{name}__fraction"),
    ]


def money_total(row: Mapping[Any, Any], name: str) -> Decimal:
    """The exact amount of a ``money_sum`` in a result row (0 over no rows)."""
    if name in row:
        value = row[name]
        return Decimal(0) if value is None else Decimal(value)
    whole, fraction = row[f"{name}__whole"], row[f"{name}__fraction"]
    return Decimal(whole or 0) + Decimal(fraction or 0).scaleb(-4)


def epoch_micros(column: Any, dialect: str) -> Any:
    """A moment as whole microseconds since 1970-01-01 UTC, exactly."""
    if dialect == "postgresql":
        return cast(extract("epoch", column) * 1000000, BigInteger)
    # SQLite keeps "YYYY-MM-DD HH:MM:SS.ffffff" in UTC: whole seconds, then the fraction
    text = type_coerce(column, String)
    seconds = cast(func.strftime("%s", func.substr(text, 1, 19)), Integer)
    return seconds * 1000000 + cast(func.substr(text, 21, 6), Integer)


def micros_between(start: Any, end: Any, dialect: str) -> Any:
    """``end - start`` in whole microseconds, exactly as ``timedelta`` counts them."""
    return epoch_micros(end, dialect) - epoch_micros(start, dialect)


def micros_to_days(micros: int) -> float:
    """The same float as ``timedelta(microseconds=micros).total_seconds() / 86400``."""
    return micros / 1_000_000 / 86400.0


def month_of(column: Any, dialect: str) -> Any:
    """``YYYY-MM`` of a moment, in UTC."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM")
    return func.substr(type_coerce(column, String), 1, 7)


def int_list_agg(expr: Any, dialect: str) -> Any:
    """Every value of an integer expression in the group, as one column (any order)."""
    if dialect == "postgresql":
        return func.array_agg(expr)
    return func.group_concat(expr)


def int_list(value: Any) -> list[int]:
    """The values of an ``int_list_agg`` column (NULLs left out)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [int(v) for v in value.split(",")]
    return [int(v) for v in value if v is not None]


def count_if(condition: Any) -> Any:
    """How many rows of the group meet ``condition`` (0, never NULL, over no rows)."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def membership_spans(tables: dict[str, Table]) -> Any:
    """Each membership with the moment the owner's next one starts (NULL: still valid).

    Joining on ``valid_from <= t < valid_to`` picks what ``membership_at`` picks: the last
    membership by (valid_from, position) that began at or before ``t``.
    """
    m = tables["memberships"]
    following = func.lead(m.c.valid_from).over(
        partition_by=m.c.owner, order_by=(m.c.valid_from, m.c.position)
    )
    return select(
        m.c.owner, m.c.team, m.c.region, m.c.valid_from, following.label("valid_to")
    ).subquery("spans")


def membership_join(spans: Any, owner: Any, moment: Any) -> Any:
    """The join condition for the owner's membership valid at ``moment``."""
    return and_(
        spans.c.owner == owner,
        spans.c.valid_from <= moment,
        or_(spans.c.valid_to.is_(None), spans.c.valid_to > moment),
    )


@dataclass(frozen=True)
class CloseFilter:
    """The closes a report counts: pipeline, period (on ``closed_at``), owner, and team as
    of each close."""

    pipeline_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    owner: str | None = None
    team: str | None = None


@dataclass(frozen=True)
class _Closes:
    source: Any
    clauses: list[Any]
    team: Any
    region: Any


def _closes(tables: dict[str, Table], f: CloseFilter, *, with_team: bool = False) -> _Closes:
    """The filtered closes; with the team and region at each close when asked (or needed)."""
    o = tables["outcomes"]
    clauses: list[Any] = []
    if f.pipeline_id is not None:
        clauses.append(o.c.pipeline_id == f.pipeline_id)
    if f.start is not None:
        clauses.append(o.c.closed_at >= f.start)
    if f.end is not None:
        clauses.append(o.c.closed_at < f.end)
    if f.owner is not None:
        clauses.append(o.c.owner == f.owner)
    if not with_team and f.team is None:
        return _Closes(o, clauses, None, None)
    spans = membership_spans(tables)
    source = o.outerjoin(spans, membership_join(spans, o.c.owner, o.c.closed_at))
    if f.team is not None:
        clauses.append(spans.c.team == f.team)
    return _Closes(source, clauses, spans.c.team, spans.c.region)


async def close_counts(
    conn: AsyncConnection, tables: dict[str, Table], f: CloseFilter
) -> list[dict[str, Any]]:
    """Closes per (owner, team and region at the close, stage, outcome): ``n``."""
    o = tables["outcomes"]
    closes = _closes(tables, f, with_team=True)
    keys = (
        o.c.owner,
        closes.team.label("team"),
        closes.region.label("region"),
        o.c.stage_id,
        o.c.outcome,
    )
    query = (
        select(*keys, func.count().label("n"))
        .select_from(closes.source)
        .where(*closes.clauses)
        .group_by(*keys)
    )
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]


async def loss_totals(
    conn: AsyncConnection, tables: dict[str, Table], f: CloseFilter
) -> list[dict[str, Any]]:
    """Losses per (stage, reason): ``n`` and ``value`` (the deal's value at the loss)."""
    o = tables["outcomes"]
    dialect = conn.dialect.name
    closes = _closes(tables, f)
    keys = (o.c.stage_id, o.c.lost_reason)
    query = (
        select(*keys, func.count().label("n"), *money_sum(o.c.value, dialect, "value"))
        .select_from(closes.source)
        .where(*closes.clauses, o.c.outcome == "lost")
        .group_by(*keys)
    )
    rows = (await conn.execute(query)).mappings().all()
    return [
        {
            "stage_id": r["stage_id"],
            "lost_reason": r["lost_reason"],
            "n": r["n"],
            "value": money_total(r, "value"),
        }
        for r in rows
    ]


async def wins_by_month(
    conn: AsyncConnection, tables: dict[str, Table], f: CloseFilter
) -> list[dict[str, Any]]:
    """Wins per ``YYYY-MM`` of the close (UTC): ``n`` and ``value``."""
    o = tables["outcomes"]
    dialect = conn.dialect.name
    closes = _closes(tables, f)
    month = month_of(o.c.closed_at, dialect).label("month")
    query = (
        select(month, func.count().label("n"), *money_sum(o.c.value, dialect, "value"))
        .select_from(closes.source)
        .where(*closes.clauses, o.c.outcome == "won")
        .group_by(month)
    )
    rows = (await conn.execute(query)).mappings().all()
    return [{"month": r["month"], "n": r["n"], "value": money_total(r, "value")} for r in rows]


async def close_durations(
    conn: AsyncConnection, tables: dict[str, Table], f: CloseFilter
) -> list[dict[str, Any]]:
    """Per (owner, team at the close, outcome): ``micros``, each close's time from the
    deal's creation in microseconds (in no particular order)."""
    o = tables["outcomes"]
    dialect = conn.dialect.name
    closes = _closes(tables, f, with_team=True)
    keys = (o.c.owner, closes.team.label("team"), o.c.outcome)
    micros = micros_between(o.c.created_at, o.c.closed_at, dialect)
    query = (
        select(*keys, int_list_agg(micros, dialect).label("micros"))
        .select_from(closes.source)
        .where(*closes.clauses)
        .group_by(*keys)
    )
    rows = (await conn.execute(query)).mappings().all()
    return [
        {
            "owner": r["owner"],
            "team": r["team"],
            "outcome": r["outcome"],
            "micros": int_list(r["micros"]),
        }
        for r in rows
    ]


async def owner_closes(
    conn: AsyncConnection, tables: dict[str, Table], f: CloseFilter
) -> list[dict[str, Any]]:
    """Per owner: ``won``, ``lost``, ``won_value`` and ``win_micros`` (each win's time from
    creation in microseconds, in no particular order)."""
    o = tables["outcomes"]
    dialect = conn.dialect.name
    closes = _closes(tables, f)
    won = o.c.outcome == "won"
    win_micros = case((won, micros_between(o.c.created_at, o.c.closed_at, dialect)))
    query = (
        select(
            o.c.owner,
            count_if(won).label("won"),
            count_if(o.c.outcome != "won").label("lost"),
            *money_sum(case((won, o.c.value)), dialect, "won_value"),
            int_list_agg(win_micros, dialect).label("win_micros"),
        )
        .select_from(closes.source)
        .where(*closes.clauses)
        .group_by(o.c.owner)
    )
    rows = (await conn.execute(query)).mappings().all()
    return [
        {
            "owner": r["owner"],
            "won": int(r["won"]),
            "lost": int(r["lost"]),
            "won_value": money_total(r, "won_value"),
            "win_micros": int_list(r["win_micros"]),
        }
        for r in rows
    ]


async def close_totals(
    conn: AsyncConnection, tables: dict[str, Table], f: CloseFilter
) -> dict[str, Any]:
    """``closes``, ``won`` and ``won_value`` over the filtered closes."""
    o = tables["outcomes"]
    dialect = conn.dialect.name
    closes = _closes(tables, f)
    won = o.c.outcome == "won"
    query = (
        select(
            func.count().label("closes"),
            count_if(won).label("won"),
            *money_sum(case((won, o.c.value)), dialect, "won_value"),
        )
        .select_from(closes.source)
        .where(*closes.clauses)
    )
    row = (await conn.execute(query)).mappings().one()
    return {
        "closes": int(row["closes"]),
        "won": int(row["won"]),
        "won_value": money_total(row, "won_value"),
    }


async def win_durations(
    conn: AsyncConnection, tables: dict[str, Table], f: CloseFilter
) -> list[int]:
    """Each win's time from the deal's creation in microseconds, in log order."""
    o = tables["outcomes"]
    closes = _closes(tables, f)
    query = (
        select(micros_between(o.c.created_at, o.c.closed_at, conn.dialect.name))
        .select_from(closes.source)
        .where(*closes.clauses, o.c.outcome == "won")
        .order_by(o.c.position)
    )
    return [int(m) for m in (await conn.execute(query)).scalars().all()]


async def funnel_counts(
    conn: AsyncConnection,
    tables: dict[str, Table],
    pipeline_id: str,
    order: Sequence[str],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    owner: str | None = None,
    team: str | None = None,
) -> dict[str, dict[str, int]]:
    """Per stage of ``order`` (the pipeline's stages in order): the deals that first reached
    it in [start, end) - by the owner then, in the team then - as ``entered``, of which
    ``skipped``; and of those, how many reached a later stage of ``order`` at or after that
    (``advanced``), were lost in this stage at or after it (``lost_here``), were won at or
    after it (``won``); everything before ``end``."""
    if not order:
        return {}
    r, o = tables["reach"], tables["outcomes"]
    ranks = {sid: i for i, sid in enumerate(order)}
    reach_clauses = [r.c.pipeline_id == pipeline_id, r.c.stage_id.in_(list(order))]
    close_clauses = [o.c.pipeline_id == pipeline_id]
    if end is not None:
        reach_clauses.append(r.c.reached_at < end)
        close_clauses.append(o.c.closed_at < end)
    # Each deal's reaches and closes, the stage as its rank in ``order`` (a stage is
    # reached at most once per deal; closes in a stage not in ``order`` rank -1); kind:
    # 0 a reach, 1 a win, 2 a loss; cohort: a reach that counts as entering its stage.
    cohort: list[Any] = []
    reach_source: Any = r
    if start is not None:
        cohort.append(r.c.reached_at >= start)
    if owner is not None:
        cohort.append(r.c.owner == owner)
    if team is not None:
        spans = membership_spans(tables)
        reach_source = r.outerjoin(spans, membership_join(spans, r.c.owner, r.c.reached_at))
        cohort.append(spans.c.team == team)
    rank = case(ranks, value=r.c.stage_id)
    in_cohort = case((and_(*cohort), 1), else_=0) if cohort else literal_column("1")

    # entered and skipped: the reaches themselves
    query = (
        select(
            rank.label("rank"),
            count_if(in_cohort == 1).label("entered"),
            count_if(and_(in_cohort == 1, r.c.how == "skipped")).label("skipped"),
        )
        .select_from(reach_source)
        .where(*reach_clauses)
        .group_by(rank)
    )
    counts = {order[row.rank]: row for row in (await conn.execute(query)).all()}

    # advanced, lost here and won: one row per deal with when it reached each stage (and
    # whether that reach is in the cohort), when it was lost in each, when it was last won
    events = union_all(
        select(
            r.c.deal_id,
            rank.label("rank"),
            r.c.reached_at.label("at"),
            literal_column("0").label("kind"),
            in_cohort.label("cohort"),
        )
        .select_from(reach_source)
        .where(*reach_clauses),
        select(
            o.c.deal_id,
            case(ranks, value=o.c.stage_id, else_=-1),
            o.c.closed_at,
            case((o.c.outcome == "won", 1), else_=2),
            literal_column("0"),
        ).where(*close_clauses),
    ).subquery("events")
    e = events.c

    def latest(condition: Any, value: Any) -> Any:
        return func.max(case((condition, value)))

    fields = [("at", 0, e.at), ("lost", 2, e.at)]
    if cohort:
        fields.append(("in", 0, e.cohort))
    per_deal = (
        select(
            latest(e.kind == 1, e.at).label("won"),
            *(
                latest(and_(e.kind == kind, e.rank == k), value).label(f"{name}{k}")
                for k in ranks.values()
                for name, kind, value in fields
            ),
        )
        .group_by(e.deal_id)
        .subquery("per_deal")
    )
    d = per_deal.c
    columns = []
    for k in ranks.values():
        at = d[f"at{k}"]
        entered = d[f"in{k}"] == 1 if cohort else at.is_not(None)
        later = [d[f"at{j}"] >= at for j in ranks.values() if j > k]
        columns += [
            count_if(and_(entered, or_(*later)) if later else false()).label(f"advanced{k}"),
            count_if(and_(entered, d[f"lost{k}"] >= at)).label(f"lost_here{k}"),
            count_if(and_(entered, d.won >= at)).label(f"won{k}"),
        ]
    row = (await conn.execute(select(*columns))).mappings().one()
    return {
        sid: {
            "entered": int(counts[sid].entered) if sid in counts else 0,
            "skipped": int(counts[sid].skipped) if sid in counts else 0,
            **{key: int(row[f"{key}{k}"]) for key in ("advanced", "lost_here", "won")},
        }
        for sid, k in ranks.items()
    }
