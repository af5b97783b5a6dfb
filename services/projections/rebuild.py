"""Rebuild read models from position 0 without taking them offline.

The rebuild fills a new generation of tables while the active generation keeps serving
(and the worker keeps updating it). When it has caught up, it takes each projection's
state-row lock, applies whatever arrived meanwhile, and points the state row at the new
generation, all in one transaction: queries see either the old tables or the complete
new ones, never a half-built state. Events a projection cannot apply are parked for the
new generation as the worker parks them (``parking``); at the switch they replace the old
generation's parked events. The old generation is dropped after a grace period
that lets queries already running on it finish. The new tables have the projection's
current layout, so the switch records its schema version too: a rebuild is how tables of
an older layout are replaced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.records import EventRecord
from services.projections.base import (
    Projection,
    create_state_table,
    each_projection,
    lock_state,
    projection_state,
    read_states,
)
from services.projections.parking import apply_or_park, forget_parked
from services.projections.runner import ensure_projection, unknown_count
from services.projections.source import EventSource

log = logging.getLogger("dealtrail.projections")

REBUILD_BATCH_SIZE = 5000
DROP_GRACE_SECONDS = 5.0

Progress = Callable[[int, int], None]  # (events done, events expected)


class RebuildInProgress(RuntimeError):
    """Another rebuild of this projection has claimed the next generation."""


@dataclass
class Build:
    projection: Projection
    generation: int
    old_generation: int
    position: int = 0
    skipped: int = 0


async def _claim(engine: AsyncEngine, projection: Projection, force: bool) -> Build:
    await ensure_projection(engine, projection)
    async with engine.begin() as conn:
        state = await lock_state(conn, projection.name)
        if state.building_generation is not None and not force:
            raise RebuildInProgress(
                f"projection {projection.name} is already being rebuilt into generation "
                f"{state.building_generation}; use --force if that rebuild died"
            )
        generation = max(state.generation, state.building_generation or 0) + 1
        await projection.drop_generations(conn, keep={state.generation})
        await forget_parked(conn, projection.name, keep={state.generation})
        # Secondary indexes come after the replay (see _finish_tables): built once from
        # the filled tables, they cost far less than being kept up to date row by row.
        await projection.create_tables(conn, generation, indexes=False)
        await conn.execute(
            update(projection_state)
            .where(projection_state.c.name == projection.name)
            .values(building_generation=generation)
        )
        return Build(projection, generation, state.generation)


async def _apply(engine: AsyncEngine, build: Build, records: Sequence[EventRecord]) -> None:
    todo = [r for r in records if r.position > build.position]
    if not todo:
        return
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # The replay keeps its progress in memory only (a rebuild that dies starts
            # over), so its commits need not wait for the disk; the switch still does.
            await conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
        else:
            # SQLite: take the write lock before the batch's reads, as the worker's first
            # statement does. The batch's SAVEPOINT would otherwise open a deferred
            # transaction that reads first and then cannot upgrade to write (SQLITE_BUSY at
            # once, no waiting) when another writer committed in between.
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        await apply_or_park(conn, build.projection, build.generation, todo)
    build.position = todo[-1].position
    build.skipped += unknown_count(build.projection, todo)


async def _finish_tables(engine: AsyncEngine, build: Build) -> None:
    """Give the replayed tables their secondary indexes and, on PostgreSQL, statistics."""
    projection = build.projection
    async with engine.begin() as conn:
        await projection.create_indexes(conn, build.generation)
    if engine.dialect.name == "postgresql":
        # Fresh tables have no statistics; without them the planner guesses a handful of
        # rows where there are many thousands and picks poor plans for the first queries.
        async with engine.begin() as conn:
            for name in projection.table_names(build.generation):
                await conn.execute(text(f'ANALYZE "{name}"'))


async def _switch(engine: AsyncEngine, source: EventSource, build: Build, batch: int) -> None:
    """Catch up under the state lock and make the new generation the active one."""
    projection = build.projection
    async with engine.begin() as conn:
        await lock_state(conn, projection.name)
        while True:
            records = await asyncio.to_thread(source.read, build.position, batch)
            todo = [r for r in records if r.position > build.position]
            if not todo:
                break
            await apply_or_park(conn, projection, build.generation, todo)
            build.position = todo[-1].position
            build.skipped += unknown_count(projection, todo)
        # From now on the new generation's parked events are the ones that count.
        await forget_parked(conn, projection.name, keep={build.generation})
        await conn.execute(
            update(projection_state)
            .where(projection_state.c.name == projection.name)
            .values(
                generation=build.generation,
                position=build.position,
                skipped=build.skipped,
                building_generation=None,
                schema_version=projection.schema_version,
            )
        )


async def rebuild(
    engine: AsyncEngine,
    source: EventSource,
    projections: Sequence[Projection],
    *,
    progress: Progress | None = None,
    batch_size: int = REBUILD_BATCH_SIZE,
    force: bool = False,
) -> dict[str, int]:
    """Replay the whole log into fresh tables for each projection, then switch over.

    Returns each projection's new generation. One pass over the log feeds them all. The
    old generation stays until :func:`drop_old_generations`.
    """
    await create_state_table(engine)
    builds: list[Build] = []
    try:
        # Claimed inside the try: a refusal on a later projection releases earlier claims.
        for projection in projections:
            builds.append(await _claim(engine, projection, force))
        head = await asyncio.to_thread(source.head)
        done = 0
        position = 0
        # Read the next batch while the current one is written.
        pending = asyncio.create_task(asyncio.to_thread(source.read, position, batch_size))
        while True:
            records = await pending
            if not records:
                break
            position = records[-1].position
            pending = asyncio.create_task(asyncio.to_thread(source.read, position, batch_size))
            await each_projection(engine, builds, partial(_apply, engine, records=records))
            done += len(records)
            if progress:
                progress(done, max(head, position))
        await each_projection(engine, builds, partial(_finish_tables, engine))
        for build in builds:
            await _switch(engine, source, build, batch_size)
    except BaseException:
        async with engine.begin() as conn:
            for build in builds:
                await conn.execute(
                    update(projection_state)
                    .where(projection_state.c.name == build.projection.name)
                    .values(building_generation=None)
                )
        raise
    return {b.projection.name: b.generation for b in builds}


async def drop_old_generations(
    engine: AsyncEngine,
    projections: Sequence[Projection],
    grace_seconds: float = DROP_GRACE_SECONDS,
) -> list[str]:
    """After a grace period for queries still reading them, drop inactive generations."""
    if grace_seconds > 0:
        await asyncio.sleep(grace_seconds)
    dropped: list[str] = []
    async with engine.begin() as conn:
        states = await read_states(conn, [p.name for p in projections])
        for projection in projections:
            state = states[projection.name]
            keep = {state.generation, state.building_generation or state.generation}
            dropped += await projection.drop_generations(conn, keep=keep)
    return dropped
