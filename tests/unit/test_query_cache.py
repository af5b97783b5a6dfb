"""The query cache on its own: keys, read-model states, single flight, time bound, size bound.

The computations here are plain coroutines; the HTTP behaviour on real databases is in
``tests/e2e/test_query_cache.py``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from services.pipeline_api.query_cache import Computed, QueryCache
from services.projections.read_models import note_read

T = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> datetime:
        return self.now


class ReadModel:
    """Stands for the read models' state: what a computation reads, and what
    ``ReadModels.states`` answers."""

    def __init__(self) -> None:
        self.states = {"current_pipeline": (1, 7), "analytics": (1, 7)}
        self.asked = 0

    async def now(self) -> dict[str, tuple[int, int]]:
        self.asked += 1
        return dict(self.states)

    def read(self, name: str = "current_pipeline") -> None:
        note_read(name, *self.states[name])

    def move(self, position: int, generation: int = 1, name: str = "current_pipeline") -> None:
        self.states[name] = (generation, position)


class Counting:
    """A computation that reads the current pipeline and counts its runs; optionally
    held until released."""

    def __init__(self, model: ReadModel, body: bytes = b"{}", uses_clock: bool = False) -> None:
        self.model = model
        self.runs = 0
        self.body = body
        self.uses_clock = uses_clock
        self.release: asyncio.Event | None = None

    async def __call__(self) -> Computed:
        self.runs += 1
        if self.release is not None:
            await self.release.wait()
        self.model.read()
        return Computed(self.body, uses_clock=self.uses_clock)


async def test_a_second_request_at_the_same_state_is_a_hit_with_the_same_bytes() -> None:
    cache, model = QueryCache(Clock()), ReadModel()
    compute = Counting(model, b'{"a":1}')
    first = await cache.answer(("board", 1), model.now, None, compute)
    second = await cache.answer(("board", 1), model.now, None, compute)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert first.body == second.body == b'{"a":1}'
    assert second.headers["content-type"] == "application/json"
    assert compute.runs == 1
    assert (cache.hits, cache.misses) == (1, 1)
    assert model.asked == 1  # a miss with no entry does not even ask for the state


async def test_a_new_position_or_generation_of_a_read_model_read_is_a_miss() -> None:
    cache, model = QueryCache(Clock()), ReadModel()
    compute = Counting(model)
    await cache.answer("k", model.now, None, compute)
    model.move(8)
    assert (await cache.answer("k", model.now, None, compute)).headers["X-Cache"] == "miss"
    model.move(8, generation=2)  # a rebuild switched to a new generation
    assert (await cache.answer("k", model.now, None, compute)).headers["X-Cache"] == "miss"
    assert compute.runs == 3
    assert len(cache) == 1  # one entry per key: the older states are gone
    model.move(99, name="analytics")  # a read model the answer did not read
    assert (await cache.answer("k", model.now, None, compute)).headers["X-Cache"] == "hit"


async def test_a_min_position_beyond_what_the_answer_read_recomputes() -> None:
    cache, model = QueryCache(Clock()), ReadModel()
    compute = Counting(model)
    await cache.answer("k", model.now, 7, compute)
    assert (await cache.answer("k", model.now, 7, compute)).headers["X-Cache"] == "hit"
    # The state read for the look-up lags (shared by concurrent requests): still at 7.
    fresh = await cache.answer("k", model.now, 9, compute)
    assert fresh.headers["X-Cache"] == "miss"
    assert compute.runs == 2


async def test_concurrent_identical_requests_share_one_computation() -> None:
    cache, model = QueryCache(Clock()), ReadModel()
    compute = Counting(model)
    compute.release = asyncio.Event()
    waiting = [asyncio.create_task(cache.answer("k", model.now, None, compute)) for _ in range(20)]
    await asyncio.sleep(0)
    compute.release.set()
    answers = await asyncio.gather(*waiting)
    assert compute.runs == 1
    assert sorted(a.headers["X-Cache"] for a in answers) == ["hit"] * 19 + ["miss"]


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    cache, model = QueryCache(Clock()), ReadModel()
    runs = 0
    gate = asyncio.Event()

    async def failing() -> Computed:
        nonlocal runs
        runs += 1
        await gate.wait()
        raise LookupError("no such pipeline")

    waiting = [asyncio.create_task(cache.answer("k", model.now, None, failing)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert runs == 1
    assert all(isinstance(r, LookupError) for r in results)
    assert len(cache) == 0
    compute = Counting(model)
    assert (await cache.answer("k", model.now, None, compute)).headers["X-Cache"] == "miss"


async def test_a_client_that_goes_away_does_not_cancel_the_computation_for_the_others() -> None:
    cache, model = QueryCache(Clock()), ReadModel()
    compute = Counting(model)
    compute.release = asyncio.Event()
    leader = asyncio.create_task(cache.answer("k", model.now, None, compute))
    await asyncio.sleep(0)
    follower = asyncio.create_task(cache.answer("k", model.now, None, compute))
    await asyncio.sleep(0)
    leader.cancel()
    compute.release.set()
    answer = await follower
    assert answer.headers["X-Cache"] == "hit"
    assert compute.runs == 1
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert len(cache) == 1


async def test_answers_that_read_the_clock_expire_after_the_time_bound_and_others_do_not() -> None:
    clock, model = Clock(), ReadModel()
    cache = QueryCache(clock, time_bound_seconds=5)
    timed, untimed = Counting(model, uses_clock=True), Counting(model)
    await cache.answer("timed", model.now, None, timed)
    await cache.answer("untimed", model.now, None, untimed)
    clock.now = T + timedelta(seconds=4.9)
    assert (await cache.answer("timed", model.now, None, timed)).headers["X-Cache"] == "hit"
    clock.now = T + timedelta(seconds=5)
    assert (await cache.answer("timed", model.now, None, timed)).headers["X-Cache"] == "miss"
    clock.now = T + timedelta(days=30)
    assert (await cache.answer("untimed", model.now, None, untimed)).headers["X-Cache"] == "hit"
    clock.now = T - timedelta(hours=1)  # a clock set back: the timed answer is not reused
    assert (await cache.answer("timed", model.now, None, timed)).headers["X-Cache"] == "miss"
    assert (timed.runs, untimed.runs) == (3, 1)


async def test_an_answer_that_read_no_read_model_is_not_kept() -> None:
    cache, model = QueryCache(Clock()), ReadModel()

    async def blind() -> Computed:
        return Computed(b"{}")

    await cache.answer("k", model.now, None, blind)
    assert len(cache) == 0


async def test_the_entry_bound_drops_the_least_recently_used_first() -> None:
    cache, model = QueryCache(Clock(), max_entries=2), ReadModel()
    compute = Counting(model)
    for key in ("a", "b", "a", "c"):  # a is used again before c comes
        await cache.answer(key, model.now, None, compute)
    assert len(cache) == 2
    assert (await cache.answer("a", model.now, None, compute)).headers["X-Cache"] == "hit"
    assert (await cache.answer("b", model.now, None, compute)).headers["X-Cache"] == "miss"


async def test_the_byte_bound_drops_entries_and_never_keeps_an_oversized_answer() -> None:
    cache, model = QueryCache(Clock(), max_bytes=400), ReadModel()
    small = Counting(model, b"x" * 90)
    for key in "abcde":
        await cache.answer(key, model.now, None, small)
    assert (len(cache), cache.bytes) == (4, 360)
    assert (await cache.answer("a", model.now, None, small)).headers["X-Cache"] == "miss"
    big = Counting(model, b"y" * 101)  # more than a quarter of the bound
    await cache.answer("big", model.now, None, big)
    assert (await cache.answer("big", model.now, None, big)).headers["X-Cache"] == "miss"
    assert (len(cache), cache.bytes) == (4, 360)


async def test_csv_answers_keep_their_media_type_and_headers() -> None:
    cache, model = QueryCache(Clock()), ReadModel()

    async def csv() -> Computed:
        model.read()
        return Computed(
            b"a,b\n1,2\n", media_type="text/csv; charset=utf-8", headers=(("X-Position", "7"),)
        )

    await cache.answer("csv", model.now, None, csv)
    hit = await cache.answer("csv", model.now, None, csv)
    assert hit.headers["content-type"] == "text/csv; charset=utf-8"
    assert (hit.headers["X-Position"], hit.headers["X-Cache"]) == ("7", "hit")
    assert hit.body == b"a,b\n1,2\n"
