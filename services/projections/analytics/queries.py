"""Reading ``analytics``: state as of a moment, memberships, and the aggregates behind the
reports (the database groups and counts; Python only shapes the few grouped rows)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, case, false, func, literal_column, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.domain.times import first_of_month, starts_a_month
from services.projections.analytics import schema
from services.projections.sql import (
    count_if,
    int_list,
    int_list_agg,
    micros_between,
    money_sum,
    money_total,
    month_of,
)


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


async def activities_as_of(
    conn: AsyncConnection, tables: dict[str, Table], deal_id: str, moment: datetime
) -> list[dict[str, Any]]:
    """The deal's activities as they were at ``moment`` (those created by then), in the
    order they were created."""
    a = tables["activities"]
    query = select(a).where(
        a.c.deal_id == deal_id,
        a.c.valid_from <= moment,
        (a.c.valid_to.is_(None)) | (a.c.valid_to > moment),
    )
    latest: dict[str, dict[str, Any]] = {}
    for r in (await conn.execute(query)).mappings().all():
        kept = latest.get(r["activity_id"])
        if kept is None or r["position"] > kept["position"]:
            latest[r["activity_id"]] = dict(r)
    return sorted(latest.values(), key=lambda r: (r["created_at"], r["activity_id"]))


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
    """Losses per (pipeline, stage, reason): ``n`` and ``value`` (the deal's value at the
    loss)."""
    o = tables["outcomes"]
    dialect = conn.dialect.name
    closes = _closes(tables, f)
    keys = (o.c.pipeline_id, o.c.stage_id, o.c.lost_reason)
    query = (
        select(*keys, func.count().label("n"), *money_sum(o.c.value, dialect, "value"))
        .select_from(closes.source)
        .where(*closes.clauses, o.c.outcome == "lost")
        .group_by(*keys)
    )
    rows = (await conn.execute(query)).mappings().all()
    return [
        {
            "pipeline_id": r["pipeline_id"],
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
    """Wins per (pipeline, ``YYYY-MM`` of the close in UTC): ``n`` and ``value``."""
    o = tables["outcomes"]
    dialect = conn.dialect.name
    closes = _closes(tables, f)
    month = month_of(o.c.closed_at, dialect).label("month")
    query = (
        select(
            o.c.pipeline_id,
            month,
            func.count().label("n"),
            *money_sum(o.c.value, dialect, "value"),
        )
        .select_from(closes.source)
        .where(*closes.clauses, o.c.outcome == "won")
        .group_by(o.c.pipeline_id, month)
    )
    rows = (await conn.execute(query)).mappings().all()
    return [
        {
            "pipeline_id": r["pipeline_id"],
            "month": r["month"],
            "n": r["n"],
            "value": money_total(r, "value"),
        }
        for r in rows
    ]


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
    """Per (owner, pipeline): ``won``, ``lost``, ``won_value`` and ``win_micros`` (each
    win's time from creation in microseconds, in no particular order)."""
    o = tables["outcomes"]
    dialect = conn.dialect.name
    closes = _closes(tables, f)
    won = o.c.outcome == "won"
    win_micros = case((won, micros_between(o.c.created_at, o.c.closed_at, dialect)))
    query = (
        select(
            o.c.owner,
            o.c.pipeline_id,
            count_if(won).label("won"),
            count_if(o.c.outcome != "won").label("lost"),
            *money_sum(case((won, o.c.value)), dialect, "won_value"),
            int_list_agg(win_micros, dialect).label("win_micros"),
        )
        .select_from(closes.source)
        .where(*closes.clauses)
        .group_by(o.c.owner, o.c.pipeline_id)
    )
    rows = (await conn.execute(query)).mappings().all()
    return [
        {
            "owner": r["owner"],
            "pipeline_id": r["pipeline_id"],
            "won": int(r["won"]),
            "lost": int(r["lost"]),
            "won_value": money_total(r, "won_value"),
            "win_micros": int_list(r["win_micros"]),
        }
        for r in rows
    ]


async def close_totals(
    conn: AsyncConnection, tables: dict[str, Table], f: CloseFilter
) -> list[dict[str, Any]]:
    """Per pipeline: ``closes``, ``won`` and ``won_value`` over the filtered closes."""
    o = tables["outcomes"]
    dialect = conn.dialect.name
    closes = _closes(tables, f)
    won = o.c.outcome == "won"
    query = (
        select(
            o.c.pipeline_id,
            func.count().label("closes"),
            count_if(won).label("won"),
            *money_sum(case((won, o.c.value)), dialect, "won_value"),
        )
        .select_from(closes.source)
        .where(*closes.clauses)
        .group_by(o.c.pipeline_id)
    )
    rows = (await conn.execute(query)).mappings().all()
    return [
        {
            "pipeline_id": r["pipeline_id"],
            "closes": int(r["closes"]),
            "won": int(r["won"]),
            "won_value": money_total(r, "won_value"),
        }
        for r in rows
    ]


async def win_durations(
    conn: AsyncConnection, tables: dict[str, Table], f: CloseFilter
) -> list[tuple[str, int]]:
    """Each win's pipeline and time from the deal's creation in microseconds, in log
    order."""
    o = tables["outcomes"]
    closes = _closes(tables, f)
    query = (
        select(o.c.pipeline_id, micros_between(o.c.created_at, o.c.closed_at, conn.dialect.name))
        .select_from(closes.source)
        .where(*closes.clauses, o.c.outcome == "won")
        .order_by(o.c.position)
    )
    return [(str(p), int(m)) for p, m in (await conn.execute(query)).all()]


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
    schema_version: int = schema.SCHEMA_VERSION,
) -> dict[str, dict[str, int]]:
    """Per stage of ``order`` (the pipeline's stages in order): the deals that first reached
    it in [start, end) - by the owner then, in the team then - as ``entered``, of which
    ``skipped``; and of those, how many reached a later stage of ``order`` at or after that
    (``advanced``), were lost in this stage at or after it (``lost_here``), were won at or
    after it (``won``); everything before ``end``.

    Without an owner or team, over whole months (UTC) or all time, the counts kept per
    stage and month (``analytics_funnel``) answer, a few hundred rows; otherwise the
    reaches and closes themselves are grouped per deal."""
    if not order:
        return {}
    if funnel_from_counts(schema_version, start=start, end=end, owner=owner, team=team):
        return await _funnel_from_counts(conn, tables, pipeline_id, order, start, end)
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


def funnel_from_counts(
    schema_version: int,
    *,
    start: datetime | None,
    end: datetime | None,
    owner: str | None,
    team: str | None,
) -> bool:
    """Whether the funnel counts answer a funnel with these filters (else the reaches)."""
    return (
        schema_version >= schema.FUNNEL_SINCE
        and owner is None
        and team is None
        and starts_a_month(start)
        and starts_a_month(end)
    )


async def _funnel_from_counts(
    conn: AsyncConnection,
    tables: dict[str, Table],
    pipeline_id: str,
    order: Sequence[str],
    start: datetime | None,
    end: datetime | None,
) -> dict[str, dict[str, int]]:
    f = tables["funnel"]
    clauses: list[Any] = [f.c.pipeline_id == pipeline_id, f.c.stage_id.in_(list(order))]
    if start is not None:
        clauses.append(f.c.reach_month >= first_of_month(start))
    if end is not None:
        clauses += [f.c.reach_month < first_of_month(end), f.c.at_month < first_of_month(end)]
    query = (
        select(f.c.stage_id, f.c.kind, func.sum(f.c.deals))
        .where(*clauses)
        .group_by(f.c.stage_id, f.c.kind)
    )
    counts = {sid: dict.fromkeys(schema.FUNNEL_KINDS, 0) for sid in order}
    for stage_id, kind, n in (await conn.execute(query)).all():
        counts[stage_id][kind] = int(n)
    for c in counts.values():  # entered counts every reach, skipped ones included
        c["entered"] += c["skipped"]
    return counts


@dataclass(frozen=True)
class ResponseFilter:
    """The deals the response-time report counts: created in the period, in the pipeline,
    by the owner (at creation), in the team (at creation)."""

    pipeline_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    owner: str | None = None
    team: str | None = None


async def response_times(
    conn: AsyncConnection, tables: dict[str, Table], f: ResponseFilter
) -> list[dict[str, Any]]:
    """Per (owner at creation, team then): ``deals`` created, how many have had an
    activity completed (``responded``), and ``micros``, each one's time from creation to
    its first completed activity in microseconds (in no particular order)."""
    r = tables["responses"]
    dialect = conn.dialect.name
    spans = membership_spans(tables)
    source = r.outerjoin(spans, membership_join(spans, r.c.owner, r.c.created_at))
    clauses: list[Any] = []
    if f.pipeline_id is not None:
        clauses.append(r.c.pipeline_id == f.pipeline_id)
    if f.start is not None:
        clauses.append(r.c.created_at >= f.start)
    if f.end is not None:
        clauses.append(r.c.created_at < f.end)
    if f.owner is not None:
        clauses.append(r.c.owner == f.owner)
    if f.team is not None:
        clauses.append(spans.c.team == f.team)
    responded = r.c.responded_at.is_not(None)
    micros = case((responded, micros_between(r.c.created_at, r.c.responded_at, dialect)))
    keys = (r.c.owner, spans.c.team.label("team"))
    query = (
        select(
            *keys,
            func.count().label("deals"),
            count_if(responded).label("responded"),
            int_list_agg(micros, dialect).label("micros"),
        )
        .select_from(source)
        .where(*clauses)
        .group_by(*keys)
    )
    rows = (await conn.execute(query)).mappings().all()
    return [
        {
            "owner": row["owner"],
            "team": row["team"],
            "deals": int(row["deals"]),
            "responded": int(row["responded"]),
            "micros": int_list(row["micros"]),
        }
        for row in rows
    ]
