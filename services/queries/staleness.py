"""Staleness in SQL: the rule of ``libs.domain.state.staleness``, said once for the database.

A deal is stale when it is open, has been in its (current) stage longer than the stage's
``rotting_days`` or without sales activity longer than its pipeline's
``stale_after_days``, and is not snoozed past now. A single deal's view applies the
domain's function; counting and ranking many deals happens here, in the read model's
database, with the same thresholds (:func:`thresholds`) and the same comparisons.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, Table, and_, case, func, literal, null, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.domain.automation import deal_occurrences
from libs.domain.state import OPEN, ActivityState, PipelineState
from services.projections.folding import activity_state_of, deal_state_of
from services.projections.read_models import ReadModels
from services.projections.sql import epoch_micros
from services.queries.deals import pipelines_now

DAY_MICROS = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def thresholds(pipeline: PipelineState) -> tuple[int | None, list[tuple[str, int]]]:
    """The pipeline's ``stale_after_days`` and its current stages' ``rotting_days``."""
    rotting = [(s.id, s.rotting_days) for s in pipeline.stages if s.rotting_days]
    return pipeline.stale_after_days, rotting


def not_snoozed(deals: Table, now: datetime) -> Any:
    """The deal has no snooze running at ``now``."""
    return or_(deals.c.snoozed_until.is_(None), deals.c.snoozed_until <= now)


async def stale_counts(
    conn: AsyncConnection, deals: Table, pipeline_id: UUID, pipeline: PipelineState, now: datetime
) -> dict[str, int]:
    """Per stage of the pipeline, its open, unsnoozed deals that are stale at ``now``, in
    one GROUP BY (stages with none are absent from the answer)."""
    stale_after_days, rotting = thresholds(pipeline)
    idle = (
        deals.c.last_activity_at < now - timedelta(days=stale_after_days)
        if stale_after_days
        else None
    )
    by_rotting: dict[int, list[str]] = defaultdict(list)
    for stage_id, days in rotting:
        by_rotting[days].append(stage_id)
    branches: list[Any] = []
    for days, ids in by_rotting.items():
        rots = deals.c.entered_current_stage_at < now - timedelta(days=days)
        branches.append(and_(deals.c.stage_id.in_(ids), rots if idle is None else or_(rots, idle)))
    idle_only = [s.id for s in pipeline.stages if not s.rotting_days]
    if idle_only and idle is not None:
        branches.append(and_(deals.c.stage_id.in_(idle_only), idle))
    if not branches:
        return {}
    query = (
        select(deals.c.stage_id, func.count())
        .where(
            deals.c.pipeline_id == str(pipeline_id),
            deals.c.status == OPEN,
            or_(*branches),
            not_snoozed(deals, now),
        )
        .group_by(deals.c.stage_id)
    )
    return {str(r[0]): int(r[1]) for r in (await conn.execute(query)).all()}


def _epoch_micros(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def stale_over(
    deals: Table, pipelines: Iterable[tuple[str, PipelineState]], now: datetime, dialect: str
) -> Any:
    """Per open deal, how far past its stale threshold it is at ``now`` in microseconds
    (the larger of rotting in a current stage of its pipeline and idling), NULL when it is
    not stale.

    Thresholds are whole days (at most 3650), so these exact integer comparisons decide as
    the domain's ``staleness`` does on float days."""
    now_micros = literal(_epoch_micros(now), BigInteger)
    in_stage = now_micros - epoch_micros(deals.c.entered_current_stage_at, dialect)
    idle = now_micros - epoch_micros(deals.c.last_activity_at, dialect)
    rotting: list[tuple[Any, int]] = []
    idling: list[tuple[Any, int]] = []
    for pipeline_id, pipeline in pipelines:
        stale_after_days, stages = thresholds(pipeline)
        for stage_id, days in stages:
            in_pipeline = deals.c.pipeline_id == pipeline_id
            rotting.append((and_(in_pipeline, deals.c.stage_id == stage_id), days * DAY_MICROS))
        if stale_after_days:
            idling.append((deals.c.pipeline_id == pipeline_id, stale_after_days * DAY_MICROS))
    overs = []
    for since, limits in ((in_stage, rotting), (idle, idling)):
        if limits:
            over = since - case(*limits)
            overs.append(case((over > 0, over)))
    if not overs:
        return null()
    if len(overs) == 1:
        return overs[0]
    a, b = overs
    return case((a.is_(None), b), (b.is_(None), a), (a > b, a), else_=b)


async def occurrences_in_pipeline(
    models: ReadModels,
    pipeline_id: UUID,
    trigger: Mapping[str, Any],
    now: datetime,
) -> list[tuple[str, str, str]]:
    """(deal id, occurrence, reason) of every deal of the pipeline that a time trigger
    (``stale``, ``rotting``, ``activity_overdue``) finds at ``now``.

    The database picks the candidates with the thresholds' comparisons (open, not snoozed,
    idle or in the stage long enough; open activities past due); each candidate is then
    decided by the domain's rule (``deal_occurrences``), as the firing will be again on
    the deal itself."""
    async with models.open("current_pipeline") as view:
        conn, d = view.conn, view.tables["deals"]
        pipeline = (await pipelines_now(conn, view.tables)).get(str(pipeline_id))
        if pipeline is None:
            return []
        kind = trigger["type"]
        clauses: list[Any] = [d.c.pipeline_id == str(pipeline_id)]
        activities: dict[str, list[ActivityState]] = defaultdict(list)
        if kind == "activity_overdue":
            a = view.tables["activities"]
            rows = await conn.execute(
                select(a).where(
                    a.c.pipeline_id == str(pipeline_id),
                    a.c.status == OPEN,
                    a.c.due_at.is_not(None),
                    a.c.due_at < now,
                )
            )
            for row in rows.mappings():
                activities[row["deal_id"]].append(activity_state_of(dict(row)))
            clauses.append(d.c.deal_id.in_(list(activities)))
        else:
            clauses += [d.c.status == OPEN, not_snoozed(d, now)]
            if kind == "stale":
                days = pipeline.stale_after_days
                clauses.append(d.c.last_activity_at < now - timedelta(days=days or 0))
            else:
                stage = trigger.get("stage")
                if stage is not None:
                    clauses.append(d.c.stage_id == stage)
                limits = [
                    trigger.get("days") or s.rotting_days
                    for s in pipeline.stages
                    if stage in (None, s.id)
                ]
                days = min((n for n in limits if n), default=None)
                if days is None:
                    return []
                clauses.append(d.c.entered_current_stage_at < now - timedelta(days=days))
        found = []
        for row in (await conn.execute(select(d).where(*clauses))).mappings():
            state = deal_state_of(dict(row), activities.get(row["deal_id"], ()))
            for occurrence, reason in deal_occurrences(
                trigger, state, row["deal_id"], pipeline, now
            ):
                found.append((row["deal_id"], occurrence, reason))
        return found
