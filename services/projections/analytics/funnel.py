"""The funnel counted as events apply: per pipeline, stage and month of the reach, the
deals that reached the stage (``entered``, ``skipped``) and, by the month it happened,
what they did next (``advanced``, ``lost_here``, ``won``).

Each deal is counted once per stage and kind, the first time it qualifies, exactly as
``queries.funnel_counts`` counts the reaches and closes: a reach of stage k at ``at_k``
``advanced`` when the deal first reaches a later stage (in the pipeline's current order)
at or after ``at_k``; ``lost_here`` at its first loss in k at or after ``at_k``; ``won`` at
its first win at or after ``at_k``. A deal's events come in time order, so "first in the
log" is "earliest". Whether a reach advanced depends on the stage order, so when a
pipeline's stages change, its ``advanced`` counts are counted again from the reaches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.domain.times import first_of_month
from services.projections.sql import bulk_add, bulk_upsert

DealKey = tuple[str, str]  # deal, pipeline
CountKey = tuple[str, str, date, str, date]  # pipeline, stage, reach month, kind, month


class FunnelCounts:
    """What a batch adds to the funnel counts, from the deals' reaches and marks."""

    def __init__(self) -> None:
        self.reached: dict[DealKey, dict[str, datetime]] = {}  # stage -> first reach
        self.marks: dict[DealKey, dict[str, list[str]]] = {}
        self.changed_marks: set[DealKey] = set()
        self.added: dict[CountKey, int] = {}

    async def load(
        self, conn: AsyncConnection, tables: dict[str, Table], deals: Sequence[str]
    ) -> None:
        """The reaches and marks of ``deals`` as stored."""
        reach, marks = tables["reach"], tables["funnel_marks"]
        for i in range(0, len(deals), 500):
            chunk = deals[i : i + 500]
            r = reach.c
            query = select(r.deal_id, r.pipeline_id, r.stage_id, r.reached_at)
            for deal_id, pipeline_id, stage_id, at in (
                await conn.execute(query.where(reach.c.deal_id.in_(chunk)))
            ).all():
                self.reached.setdefault((deal_id, pipeline_id), {})[stage_id] = at
            rows = await conn.execute(select(marks).where(marks.c.deal_id.in_(chunk)))
            for m in rows.mappings().all():
                self.marks[(m["deal_id"], m["pipeline_id"])] = {
                    "lost_here": list(m["lost_here"]),
                    "won": list(m["won"]),
                }

    def _count(self, pipeline: str, stage: str, reached: datetime, kind: str, at: datetime) -> None:
        key = (pipeline, stage, first_of_month(reached), kind, first_of_month(at))
        self.added[key] = self.added.get(key, 0) + 1

    def reach(
        self,
        deal: str,
        pipeline: str,
        new: Sequence[tuple[str, str]],
        at: datetime,
        order: Sequence[str],
    ) -> None:
        """The deal reached the ``new`` stages (id, how) at ``at``; ``order``: the
        pipeline's stages now."""
        stages = self.reached.setdefault((deal, pipeline), {})
        rank = {sid: i for i, sid in enumerate(order)}
        before = dict(stages)
        for stage_id, how in new:
            stages[stage_id] = at
            self._count(pipeline, stage_id, at, how, at)
        top = max((rank[s] for s, _ in new if s in rank), default=None)
        if top is None:
            return
        for stage_id, reached in stages.items():
            k = rank.get(stage_id)
            if k is None or k >= top or reached > at:
                continue
            if stage_id in before and _advanced(before, stage_id, reached, rank):
                continue
            self._count(pipeline, stage_id, reached, "advanced", at)

    def close(self, deal: str, pipeline: str, won: bool, stage: str, at: datetime) -> None:
        """The deal was won (or lost in ``stage``) at ``at``."""
        stages = self.reached.get((deal, pipeline), {})
        marks = self.marks.setdefault((deal, pipeline), {"lost_here": [], "won": []})
        kind = "won" if won else "lost_here"
        candidates = stages.items() if won else [(stage, stages[stage])] if stage in stages else []
        for stage_id, reached in candidates:
            if reached <= at and stage_id not in marks[kind]:
                marks[kind].append(stage_id)
                self.changed_marks.add((deal, pipeline))
                self._count(pipeline, stage_id, reached, kind, at)

    async def write(self, conn: AsyncConnection, tables: dict[str, Table]) -> None:
        await bulk_upsert(
            conn,
            tables["funnel_marks"],
            ["deal_id", "pipeline_id"],
            [
                {"deal_id": d, "pipeline_id": p, **_sorted(self.marks[(d, p)])}
                for d, p in sorted(self.changed_marks)
            ],
        )
        await _add(conn, tables["funnel"], self.added.items())


def _sorted(marks: dict[str, list[str]]) -> dict[str, list[str]]:
    """The marks in one order whatever the order they were made in (a rebuild's tables
    equal incremental work's)."""
    return {kind: sorted(stages) for kind, stages in marks.items()}


def _advanced(
    stages: dict[str, datetime], stage_id: str, reached: datetime, rank: dict[str, int]
) -> bool:
    """Whether a stage after ``stage_id`` was reached at or after ``reached``."""
    k = rank[stage_id]
    return any(rank.get(s, -1) > k and at >= reached for s, at in stages.items())


async def _add(conn: AsyncConnection, table: Table, counts: Iterable[tuple[CountKey, int]]) -> None:
    rows = [
        {
            "pipeline_id": p,
            "stage_id": s,
            "reach_month": rm,
            "kind": kind,
            "at_month": am,
            "deals": n,
        }
        for (p, s, rm, kind, am), n in counts
        if n
    ]
    keys = ["pipeline_id", "stage_id", "reach_month", "kind", "at_month"]
    await bulk_add(conn, table, keys, ["deals"], rows)


async def recount_advanced(
    conn: AsyncConnection, tables: dict[str, Table], pipeline_id: str, order: Sequence[str]
) -> None:
    """Count the pipeline's ``advanced`` deals again from its reaches, in ``order``."""
    funnel, reach = tables["funnel"], tables["reach"]
    await conn.execute(
        delete(funnel).where(funnel.c.pipeline_id == pipeline_id, funnel.c.kind == "advanced")
    )
    query = select(reach.c.deal_id, reach.c.stage_id, reach.c.reached_at).where(
        reach.c.pipeline_id == pipeline_id
    )
    per_deal: dict[str, dict[str, datetime]] = {}
    for deal_id, stage_id, at in (await conn.execute(query)).all():
        per_deal.setdefault(deal_id, {})[stage_id] = at
    rank = {sid: i for i, sid in enumerate(order)}
    counts: dict[CountKey, int] = {}
    for stages in per_deal.values():
        for stage_id, reached in stages.items():
            k = rank.get(stage_id)
            if k is None:
                continue
            later = [at for s, at in stages.items() if rank.get(s, -1) > k and at >= reached]
            if later:
                first = first_of_month(min(later))
                key = (pipeline_id, stage_id, first_of_month(reached), "advanced", first)
                counts[key] = counts.get(key, 0) + 1
    await _add(conn, funnel, counts.items())


def order_of(pipeline: Any) -> list[str]:
    """A pipeline state's stage ids in order (none for no pipeline)."""
    return [s.id for s in pipeline.stages] if pipeline is not None else []
