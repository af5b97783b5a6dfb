"""Finished answers of the board and the reports, cached by the read-model state they reflect.

A key names the route and every parameter that shapes the answer (the answer format
too: CSV and JSON are different entries). Each key holds one entry, which remembers the
``(generation, position)`` of every read model its computation read. A request is answered
from the entry only while those read models are still at exactly that state (one small
query on ``projection_state``, shared by concurrent requests), so any command the read
models apply, and any rebuild, makes it a miss; with ``min_position``, only if the entry
read every read model at that position or later. Answers that depend on the service clock
(staleness, time in stage, "today") also expire :data:`TIME_BOUND_SECONDS` after they were
computed.

Identical requests that arrive while one is being computed wait for that computation
instead of repeating it (single flight); a request with ``Cache-Control: no-cache``
always computes its own answer (which is then kept); the computation runs in a task of its own, so a
client that goes away does not cancel it for the others.

Entries hold the final body bytes, so a hit costs a look-up. The cache holds at most
:data:`MAX_ENTRIES` entries and :data:`MAX_BYTES` of bodies, dropping the least recently
used first; an answer larger than a quarter of the byte bound is not kept.

Boards and reports are the same for every caller (no route filters by principal), so the
principal is not part of the key; authentication runs before the cache is consulted.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Header
from fastapi.responses import JSONResponse, Response

from libs.observability import metrics
from services.projections.read_models import recording_reads

TIME_BOUND_SECONDS = 5.0
"""How long an answer that depends on the service clock stays valid."""
MAX_ENTRIES = 1024
"""Entries kept at most (least recently used dropped first)."""
MAX_BYTES = 64 * 1024 * 1024
"""Bytes of answer bodies kept at most."""

State = tuple[tuple[str, int, int], ...]
"""The read models' ``(name, generation, position)`` an answer was computed from."""

StatesNow = Callable[[], Awaitable[dict[str, tuple[int, int]]]]
"""Every read model's ``(generation, position)`` now (:meth:`ReadModels.states`)."""


@dataclass(frozen=True)
class Computed:
    """A computed answer, ready to send and to keep."""

    body: bytes
    media_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    uses_clock: bool = False


@dataclass(frozen=True)
class Entry:
    answer: Computed
    state: State
    expires: datetime | None  # service clock; None: valid while the state is unchanged
    computed_at: datetime


class TimeUse:
    """The service clock, remembering whether the computation asked it."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self.used = False

    def __call__(self) -> datetime:
        self.used = True
        return self._clock()


@dataclass
class QueryCache:
    """Position-keyed answers with single flight; see the module documentation."""

    clock: Callable[[], datetime]
    time_bound_seconds: float = TIME_BOUND_SECONDS
    max_entries: int = MAX_ENTRIES
    max_bytes: int = MAX_BYTES
    hits: int = 0
    misses: int = 0
    bytes: int = 0
    _entries: OrderedDict[Hashable, Entry] = field(default_factory=OrderedDict)
    _flights: dict[Hashable, asyncio.Task[Computed]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _count(self, *, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        metrics.query_cache(hit)

    async def answer(
        self,
        key: Hashable,
        states: StatesNow,
        min_position: int | None,
        compute: Callable[[], Awaitable[Computed]],
        *,
        fresh: bool = False,
    ) -> Response:
        """The cached answer for ``key``, or ``compute()``'s (run once for all identical
        requests in flight), as a response with ``X-Cache: hit`` or ``miss``.

        ``fresh`` (the request's ``Cache-Control: no-cache``) computes anew whatever is
        kept or in flight; the answer then replaces the kept one."""
        if fresh:
            self._count(hit=False)
            own = asyncio.ensure_future(self._compute(key, compute))
            own.add_done_callback(_retrieve)
            return _response(await asyncio.shield(own), "miss")
        entry = self._entries.get(key)
        if entry is not None:
            now_states = await states()
            entry = self._entries.get(key)
            if entry is not None and self._fresh(entry, now_states, min_position):
                self._entries.move_to_end(key)
                self._count(hit=True)
                return _response(entry.answer, "hit")
        flight_key = (key, min_position)
        task = self._flights.get(flight_key)
        if task is not None:
            self._count(hit=True)
            return _response(await asyncio.shield(task), "hit")
        self._count(hit=False)
        task = asyncio.ensure_future(self._compute(key, compute))
        self._flights[flight_key] = task
        task.add_done_callback(lambda done: self._landed(flight_key, done))
        return _response(await asyncio.shield(task), "miss")

    def _fresh(
        self, entry: Entry, states: dict[str, tuple[int, int]], min_position: int | None
    ) -> bool:
        if _state_of(states, tuple(name for name, _, _ in entry.state)) != entry.state:
            return False
        if min_position is not None and min(p for _, _, p in entry.state) < min_position:
            return False
        if entry.expires is not None:
            now = self.clock()
            if now >= entry.expires or now < entry.computed_at:
                return False
        return True

    async def _compute(self, key: Hashable, compute: Callable[[], Awaitable[Computed]]) -> Computed:
        started = self.clock()
        with recording_reads() as seen:
            answer = await compute()
        state = tuple(sorted((name, *at) for name, at in seen.items()))
        if state:  # an answer that read no read model cannot be checked, so is not kept
            expires = started + timedelta(seconds=self.time_bound_seconds)
            self._store(key, Entry(answer, state, expires if answer.uses_clock else None, started))
        return answer

    def _landed(self, flight_key: Hashable, task: asyncio.Task[Computed]) -> None:
        if self._flights.get(flight_key) is task:
            del self._flights[flight_key]
        _retrieve(task)

    def _store(self, key: Hashable, entry: Entry) -> None:
        size = len(entry.answer.body)
        old = self._entries.get(key)
        if old is not None and old.state != entry.state and _newer(old.state, entry.state):
            return  # a slower computation of an older state must not replace a newer one
        self._drop(key)
        if size > self.max_bytes // 4 or self.max_entries <= 0:
            return
        self._entries[key] = entry
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry.answer.body)


def _retrieve(task: asyncio.Task[Computed]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: the waiter gets it raised


async def wants_fresh(
    cache_control: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> bool:
    """Whether the request asks for a newly computed answer (``Cache-Control: no-cache``)."""
    return cache_control is not None and "no-cache" in cache_control.lower()


FreshAnswer = Annotated[bool, Depends(wants_fresh)]


def _newer(a: State, b: State) -> bool:
    """Whether state ``a`` is ahead of ``b`` (same read models, positions at least as far)."""
    if [name for name, _, _ in a] != [name for name, _, _ in b]:
        return False
    return all((ga, pa) >= (gb, pb) for (_, ga, pa), (_, gb, pb) in zip(a, b, strict=True))


def json_body(content: Any) -> bytes:
    """``content`` encoded exactly as a ``JSONResponse`` would send it."""
    return bytes(JSONResponse(content).body)


def _response(answer: Computed, cache: str) -> Response:
    headers = {**dict(answer.headers), "X-Cache": cache}
    return Response(answer.body, media_type=answer.media_type, headers=headers)


def _state_of(states: dict[str, tuple[int, int]], names: tuple[str, ...]) -> State:
    return tuple((name, *states.get(name, (-1, -1))) for name in names)
