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
import contextlib
import logging
import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.app import DealtrailApplication
from libs.application.sql import connect_raw, make_engine
from libs.application.store import StoreLocation
from services.projections.base import (
    Projection,
    create_state_table,
    each_projection,
    lock_state,
    projection_state,
    read_states,
)
from services.projections.parking import apply_or_park, forget_parked, reads_type
from services.projections.runner import ensure_projection, unknown_count, unknown_types
from services.projections.source import Batch, EventSource, LogReader

log = logging.getLogger("dealtrail.projections")

REBUILD_BATCH_SIZE = 5000
DROP_GRACE_SECONDS = 5.0
# Below this many events a rebuild replays in its own process: starting another Python
# process costs a second or two, more than a small log takes to replay.
PARALLEL_MIN_EVENTS = 50_000
CHILD_POLL_SECONDS = 0.2

Progress = Callable[[int, int], None]  # (events done, events expected)
Reader = Callable[[int, int], Awaitable[Batch]]  # (after position, limit) -> next events


class RebuildInProgress(RuntimeError):
    """Another rebuild of this projection has claimed the next generation."""


class ReplayFailed(RuntimeError):
    """A process replaying projections failed (its traceback is in the message)."""


@dataclass
class Build:
    projection: Projection
    generation: int
    old_generation: int
    position: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class Replayed:
    """How one projection's replay went: events read, in how long, in which process.

    Projections replayed in the same process share the figures of that process
    (``together`` names them all)."""

    name: str
    events: int
    seconds: float
    cpu_seconds: float
    pid: int
    together: tuple[str, ...]

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


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
        # Unlogged until then: the replay writes no WAL (a crash empties the tables, and a
        # rebuild that dies starts over anyway).
        await projection.create_tables(conn, generation, indexes=False, unlogged=True)
        await conn.execute(
            update(projection_state)
            .where(projection_state.c.name == projection.name)
            .values(building_generation=generation)
        )
        return Build(projection, generation, state.generation)


async def _apply(engine: AsyncEngine, build: Build, batch: Batch) -> None:
    todo = [r for r in batch.records if r.position > build.position]
    if todo:
        async with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # The replay keeps its progress in memory only (a rebuild that dies starts
                # over), so its commits need not wait for the disk; the switch still does.
                await conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
            else:
                # SQLite: take the write lock before the batch's reads, as the worker's
                # first statement does. The batch's SAVEPOINT would otherwise open a
                # deferred transaction that reads first and then cannot upgrade to write
                # (SQLITE_BUSY at once, no waiting) when another writer committed between.
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            await apply_or_park(conn, build.projection, build.generation, todo)
    if batch.last > build.position:
        build.position = batch.last
        build.skipped += unknown_types(build.projection, batch.event_types)


async def _finish_tables(engine: AsyncEngine, build: Build) -> None:
    """Make the replayed tables logged and give them their secondary indexes and, on
    PostgreSQL, statistics."""
    projection = build.projection
    async with engine.begin() as conn:
        await projection.set_logged(conn, build.generation)
        await projection.create_indexes(conn, build.generation)
    if engine.dialect.name == "postgresql":
        # Fresh tables have no statistics; without them the planner guesses a handful of
        # rows where there are many thousands and picks poor plans for the first queries.
        async with engine.begin() as conn:
            for name in projection.table_names(build.generation):
                await conn.execute(text(f'ANALYZE "{name}"'))


async def _replay(
    engine: AsyncEngine,
    builds: Sequence[Build],
    read: Reader,
    batch_size: int,
    report: Callable[[int], None],
) -> int:
    """Replay the log from position 0 into the builds' tables, then finish the tables.

    Reads the next batch while the current one is written; returns the events read.
    """
    done = 0
    pending: asyncio.Future[Batch] = asyncio.ensure_future(read(0, batch_size))
    try:
        while True:
            batch = await pending
            if not batch.count:
                break
            pending = asyncio.ensure_future(read(batch.last, batch_size))
            await each_projection(engine, builds, partial(_apply, engine, batch=batch))
            done += batch.count
            report(done)
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
    await each_projection(engine, builds, partial(_finish_tables, engine))
    return done


def _wanted(projections: Sequence[Projection]) -> Callable[[str], bool]:
    """Whether any of the projections reads events of a type (only those are decoded)."""
    return lambda event_type: any(reads_type(p, event_type) for p in projections)


@contextlib.asynccontextmanager
async def _log_reader(
    location: StoreLocation, events_table: str, mapper: Any, projections: Sequence[Projection]
) -> Any:
    conn = await connect_raw(location)
    try:
        if location.schema:
            await conn.execute(f'SET search_path TO "{location.schema}"')
        yield LogReader(conn, events_table, mapper, _wanted(projections))
    finally:
        await conn.close()


@dataclass(frozen=True)
class _ReplaySpec:
    """What a replay process needs: where the store is, and which tables to fill."""

    index: int
    location: StoreLocation
    events_table: str
    mapper_env: dict[str, str]
    projections: tuple[type[Projection], ...]
    generations: tuple[int, ...]
    batch_size: int


def _mapper_env(source: EventSource) -> dict[str, str]:
    """The store's settings with an in-memory recorder: the same mapper (transcodings,
    cipher, compression), without opening another connection pool."""
    env = {k: str(v) for k, v in source.application.env.items()}
    env["PERSISTENCE_MODULE"] = "eventsourcing.popo"
    env[f"{source.application.name.upper()}_PERSISTENCE_MODULE"] = "eventsourcing.popo"
    return env


def _replay_process(spec: _ReplaySpec, messages: Any) -> None:
    """A replay process: fills its projections' tables, reporting progress as it goes."""
    try:
        figures = asyncio.run(_replay_child(spec, messages))
        messages.put(("done", spec.index, figures))
    except Exception:  # noqa: BLE001 - told to the parent, which stops the rebuild
        messages.put(("failed", spec.index, traceback.format_exc()))
        raise SystemExit(1) from None


async def _replay_child(spec: _ReplaySpec, messages: Any) -> _ChildFigures:
    started, cpu_started = time.monotonic(), time.process_time()
    application = DealtrailApplication(env=spec.mapper_env)
    engine = make_engine(spec.location, pool_size=len(spec.projections) + 1)
    projections = [cls() for cls in spec.projections]
    builds = [Build(p, g, 0) for p, g in zip(projections, spec.generations, strict=True)]
    try:
        async with _log_reader(
            spec.location, spec.events_table, application.mapper, projections
        ) as reader:
            events = await _replay(
                engine,
                builds,
                reader.read,
                spec.batch_size,
                lambda done: messages.put(("progress", spec.index, done)),
            )
    finally:
        await engine.dispose()
        application.close()
    return _ChildFigures(
        events,
        time.monotonic() - started,
        time.process_time() - cpu_started,
        os.getpid(),
        [(b.position, b.skipped) for b in builds],
    )


@dataclass(frozen=True)
class _ChildFigures:
    events: int
    seconds: float
    cpu_seconds: float
    pid: int
    positions: list[tuple[int, int]]  # (position, skipped) of each build


# Relative cost of replaying each projection (CPU per event, measured on a generated log
# of a million events); a projection not named here counts as 2.
REPLAY_COST = {"current_pipeline": 4, "analytics": 3, "audit_history": 2, "stage_durations": 1}


def _groups(builds: Sequence[Build], processes: int) -> list[list[Build]]:
    """The builds spread over at most ``processes`` groups of about equal cost (the most
    costly first, each to the group that costs least so far), one process each."""
    count = max(1, min(processes, len(builds)))
    groups: list[list[Build]] = [[] for _ in range(count)]
    costs = [0] * count
    for build in sorted(builds, key=lambda b: -REPLAY_COST.get(b.projection.name, 2)):
        lightest = costs.index(min(costs))
        groups[lightest].append(build)
        costs[lightest] += REPLAY_COST.get(build.projection.name, 2)
    return groups


class _Children:
    """Replay processes started with ``spawn`` (a clean interpreter each: no inherited
    connections, threads or event loop), and the messages they send back."""

    def __init__(self, specs: Sequence[_ReplaySpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self.messages: Any = context.Queue()
        self.processes = {
            spec.index: context.Process(
                target=_replay_process,
                args=(spec, self.messages),
                name=f"rebuild {', '.join(p.name for p in spec.projections)}",
                daemon=True,
            )
            for spec in specs
        }
        self.results: dict[int, _ChildFigures] = {}
        self.done: dict[int, int] = dict.fromkeys(self.processes, 0)

    def start(self) -> None:
        for process in self.processes.values():
            process.start()

    def _receive(self, timeout: float) -> bool:
        try:
            kind, index, value = self.messages.get(timeout=timeout)
        except queue.Empty:
            return False
        if kind == "progress":
            self.done[index] = value
        elif kind == "done":
            self.results[index] = value
        else:
            raise ReplayFailed(f"{self.processes[index].name} failed:\n{value}")
        return True

    def poll(self) -> bool:
        """Take the messages that arrived; True once every process has reported its end.
        Raises :class:`ReplayFailed` when one failed or died without a word."""
        while self._receive(CHILD_POLL_SECONDS):
            pass
        for index, process in self.processes.items():
            if index not in self.results and not process.is_alive():
                # Its last message may still be on its way.
                while self._receive(1.0):
                    pass
                if index not in self.results:
                    raise ReplayFailed(f"{process.name} ended with exit code {process.exitcode}")
        return len(self.results) == len(self.processes)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
        for process in self.processes.values():
            process.join(10)
        self.messages.close()


async def _replay_all(
    engine: AsyncEngine,
    source: EventSource,
    builds: Sequence[Build],
    *,
    head: int,
    batch_size: int,
    processes: int,
    progress: Progress | None,
    stats: dict[str, Replayed] | None,
) -> None:
    """Replay the log into every build: in this process, or spread over several.

    On PostgreSQL with a log of at least :data:`PARALLEL_MIN_EVENTS` events, the builds
    are spread over ``processes`` groups; this process replays the first and a fresh
    process each of the others, every one reading the log itself (:class:`LogReader`).
    Otherwise this process replays them all, reading through ``source`` (the library's
    recorder).
    """
    location = source.location if head >= PARALLEL_MIN_EVENTS else None
    groups = _groups(builds, processes) if location is not None else [list(builds)]
    started, cpu_started = time.monotonic(), time.process_time()
    local_done = 0

    def show(children: _Children | None = None) -> None:
        if progress:
            done = [local_done, *(children.done.values() if children else ())]
            progress(min(done), head)

    def record(group: Sequence[Build], events: int, seconds: float, cpu: float, pid: int) -> None:
        if stats is None:
            return
        names = tuple(b.projection.name for b in group)
        for build in group:
            name = build.projection.name
            stats[name] = Replayed(name, events, seconds, cpu, pid, names)

    def local_report(done: int, children: _Children | None = None) -> None:
        nonlocal local_done
        local_done = done
        show(children)

    if location is None:

        async def read_source(after: int, limit: int) -> Batch:
            return Batch.of(await asyncio.to_thread(source.read, after, limit))

        events = await _replay(engine, builds, read_source, batch_size, local_report)
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu_started
        record(builds, events, seconds, cpu, os.getpid())
        return

    mapper_env = _mapper_env(source)
    specs = [
        _ReplaySpec(
            index,
            location,
            source.events_table,
            mapper_env,
            tuple(type(b.projection) for b in group),
            tuple(b.generation for b in group),
            batch_size,
        )
        for index, group in enumerate(groups[1:], 1)
    ]
    children = _Children(specs)  # none when one process replays them all
    children.start()
    try:

        async def watch() -> None:
            while not await asyncio.to_thread(children.poll):
                show(children)

        async def replay_here() -> int:
            async with _log_reader(
                location,
                source.events_table,
                source.application.mapper,
                [b.projection for b in groups[0]],
            ) as reader:
                return await _replay(
                    engine,
                    groups[0],
                    reader.read,
                    batch_size,
                    partial(local_report, children=children),
                )

        watching = asyncio.ensure_future(watch())
        try:
            events = await replay_here()
            seconds, cpu = time.monotonic() - started, time.process_time() - cpu_started
            record(groups[0], events, seconds, cpu, os.getpid())
            await watching
        finally:
            if not watching.done():
                watching.cancel()
                with contextlib.suppress(BaseException):
                    await watching
        show(children)
    finally:
        children.stop()
    for spec in specs:
        group, figures = groups[spec.index], children.results[spec.index]
        for build, (position, skipped) in zip(group, figures.positions, strict=True):
            build.position, build.skipped = position, skipped
        record(group, figures.events, figures.seconds, figures.cpu_seconds, figures.pid)


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


def default_processes(projections: Sequence[Projection]) -> int:
    """One process per core, at most one per projection: more processes than cores only
    decode the same events more often."""
    return max(1, min(len(projections), os.cpu_count() or 1))


async def rebuild(
    engine: AsyncEngine,
    source: EventSource,
    projections: Sequence[Projection],
    *,
    progress: Progress | None = None,
    batch_size: int = REBUILD_BATCH_SIZE,
    force: bool = False,
    processes: int | None = None,
    stats: dict[str, Replayed] | None = None,
) -> dict[str, int]:
    """Replay the whole log into fresh tables for each projection, then switch over.

    Returns each projection's new generation. On PostgreSQL a long log is replayed by
    ``processes`` processes side by side (default: one per core, see
    :func:`default_processes`), see
    :func:`_replay_all`; ``stats`` receives how each projection's replay went. The old
    generation stays until :func:`drop_old_generations`.
    """
    await create_state_table(engine)
    builds: list[Build] = []
    try:
        # Claimed inside the try: a refusal on a later projection releases earlier claims.
        for projection in projections:
            builds.append(await _claim(engine, projection, force))
        head = await asyncio.to_thread(source.head)
        await _replay_all(
            engine,
            source,
            builds,
            head=head,
            batch_size=batch_size,
            processes=default_processes(projections) if processes is None else processes,
            progress=progress,
            stats=stats,
        )
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
