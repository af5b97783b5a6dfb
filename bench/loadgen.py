"""The load generator: a separate process that drives the service over HTTP (async httpx).

Started by the suite (``bench.common.LoadGenerator``); it reads one JSON request per
line on stdin and answers one JSON line on stdout, so that the process that makes the
load is never the process being measured. Operations:

- ``pipelines``: define pipelines (default stages) to run deals in;
- ``commands``: the command mix, closed-loop at a concurrency or open-loop at a rate,
  bounded by time and by request count; optionally with a probe that follows the
  projection positions to measure how long the read models lag behind each command;
- ``queries``: GET requests at a concurrency, one endpoint after another.

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import random
import sqlite3
import sys
import time
import traceback
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.common import latency_stats
from services.progress import Progress

OPEN_LOOP_MAX_IN_FLIGHT = 512
PROBE_INTERVAL_S = 0.005
LAG_DRAIN_S = 30.0
ACCOUNTS = ("Acme Logistics", "Aurora Health", "Cobalt Systems", "Delta Foods", "Lumen Labs")
PRODUCTS = ("Starter plan", "Team plan", "Enterprise plan")


def _local_only(url: str) -> str:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"the load generator only talks to 127.0.0.1, not {host}")
    return url


@dataclass
class PipelineInfo:
    id: str
    stages: list[str]
    lost_reasons: list[str]


# --- the command mix --------------------------------------------------------------------


class Lifecycle:
    """One deal's life as a sequence of commands: created, advanced through one to three
    stages with the odd update on the way, then won (30%) or lost (70%)."""

    def __init__(self, rng: random.Random, pipeline: PipelineInfo, serial: int) -> None:
        self.rng = rng
        self.pipeline = pipeline
        self.serial = serial
        self.deal_id: str | None = None
        self.value = rng.randrange(1_000, 90_000, 50)
        self.close = date.today() + timedelta(days=rng.randint(20, 120))
        self.steps: list[tuple[str, int]] = [("create", 0)]
        last = len(pipeline.stages) - 1
        for stage in range(1, rng.randint(1, max(1, min(3, last))) + 1):
            self.steps.append(("advance", stage))
            if rng.random() < 0.4:
                self.steps.append(("update", 0))
        self.steps.append(("win", 0) if rng.random() < 0.3 else ("lose", 0))
        self.next = 0

    @property
    def finished(self) -> bool:
        return self.next >= len(self.steps)

    def request(self) -> tuple[str, str, str, dict[str, Any] | None]:
        """(kind, method, path, JSON body) of the next command."""
        kind, arg = self.steps[self.next]
        rng = self.rng
        if kind == "create":
            body = {
                "pipeline_id": self.pipeline.id,
                "title": f"Bench deal {self.serial}",
                "value": f"{self.value}.00",
                "expected_close_date": self.close.isoformat(),
                "account": rng.choice(ACCOUNTS),
                "product": rng.choice(PRODUCTS),
            }
            return kind, "POST", "/v1/deals", body
        path = f"/v1/deals/{self.deal_id}"
        if kind == "advance":
            return kind, "POST", path + "/advance", {"stage": self.pipeline.stages[arg]}
        if kind == "update":  # always a real change: an update that changes nothing is a 422
            if rng.random() < 0.6:
                changed = self.value + rng.randrange(-20, 40) * 50
                self.value = changed if changed > 0 and changed != self.value else self.value + 50
                return kind, "PATCH", path, {"value": f"{self.value}.00"}
            self.close += timedelta(days=rng.randint(1, 30))
            return kind, "PATCH", path, {"expected_close_date": self.close.isoformat()}
        if kind == "win":
            return kind, "POST", path + "/win", None
        body = {"reason": rng.choice(self.pipeline.lost_reasons)}
        if rng.random() < 0.3:
            body["note"] = "went with a cheaper offer"
        return kind, "POST", path + "/lose", body

    def done(self, answer: dict[str, Any]) -> None:
        if self.next == 0:
            self.deal_id = str(answer["id"])
        self.next += 1


class Mix:
    """Hands out the next command of a deal that has no command in flight."""

    def __init__(self, pipelines: list[PipelineInfo], seed: int) -> None:
        self.rng = random.Random(seed)
        self.pipelines = pipelines
        self.ready: deque[Lifecycle] = deque()
        self.serial = 0

    def new(self) -> Lifecycle:
        self.serial += 1
        return Lifecycle(self.rng, self.rng.choice(self.pipelines), self.serial)

    def take(self) -> Lifecycle:
        return self.ready.popleft() if self.ready else self.new()

    def give_back(self, life: Lifecycle) -> None:
        if not life.finished:
            self.ready.append(life)


@dataclass
class Sample:
    kind: str
    started: float  # when the request was due (open loop) or sent (closed loop)
    answered: float
    status: int
    position: int | None = None


@dataclass
class Recorder:
    """Collects samples inside the measured window."""

    measure_from: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)

    def add(self, sample: Sample, detail: str = "") -> None:
        if sample.started >= self.measure_from:
            self.samples.append(sample)
        if not 200 <= sample.status < 300:
            self.errors[str(sample.status)] += 1
            if len(self.error_examples) < 5:
                self.error_examples.append(f"{sample.kind} -> {sample.status}: {detail[:300]}")


async def send_command(
    client: httpx.AsyncClient,
    life: Lifecycle,
    recorder: Recorder,
    idempotency: bool,
    due: float | None = None,
) -> bool:
    kind, method, path, body = life.request()
    headers = {"Idempotency-Key": f"bench-{life.serial}-{life.next}"} if idempotency else None
    started = time.perf_counter()
    try:
        response = await client.request(method, path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        recorder.add(
            Sample(kind, due or started, time.perf_counter(), 599), f"{type(exc).__name__}"
        )
        return False
    answered = time.perf_counter()
    if not 200 <= response.status_code < 300:
        recorder.add(Sample(kind, due or started, answered, response.status_code), response.text)
        return False
    answer = response.json()
    position = answer.get("position")
    recorder.add(Sample(kind, due or started, answered, response.status_code, position))
    life.done(answer)
    return True


def summarize(recorder: Recorder, window_s: float) -> dict[str, Any]:
    ok = [s for s in recorder.samples if 200 <= s.status < 300]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for s in ok:
        by_kind[s.kind].append((s.answered - s.started) * 1000)
    all_ms = [(s.answered - s.started) * 1000 for s in ok]
    return {
        "requests": len(recorder.samples),
        "ok": len(ok),
        "errors": dict(recorder.errors),
        "error_examples": recorder.error_examples,
        "seconds": round(window_s, 3),
        "throughput_per_s": round(len(ok) / window_s, 1) if window_s > 0 else 0.0,
        "latency": latency_stats(all_ms),
        "by_kind": {k: latency_stats(v) for k, v in sorted(by_kind.items())},
        "mix": {k: len(v) for k, v in sorted(by_kind.items())},
    }


def make_client(base_url: str, token: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=_local_only(base_url),
        headers={"Authorization": f"Bearer {token}"},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=httpx.Timeout(60.0),
    )


# --- projection probe -------------------------------------------------------------------


class Probe:
    """Follows ``projection_state`` directly in the database, every few milliseconds."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.times: list[float] = []
        self.lowest: list[int] = []  # the lowest position of all projections at that time
        self.each: dict[str, list[int]] = defaultdict(list)
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        if self.spec["kind"] == "postgres":
            import asyncpg

            self._conn = await asyncpg.connect(self.spec["dsn"], timeout=10)
        else:
            uri = f"file:{self.spec['path']}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=5, check_same_thread=False)
        self._task = asyncio.create_task(self._run())

    async def _read(self) -> list[tuple[str, int]]:
        sql = "SELECT name, position FROM projection_state"
        if self.spec["kind"] == "postgres":
            rows = await self._conn.fetch(sql)
            return [(r["name"], r["position"]) for r in rows]
        return await asyncio.to_thread(lambda: list(self._conn.execute(sql).fetchall()))

    async def _run(self) -> None:
        while not self._stop.is_set():
            rows = await self._read()
            now = time.perf_counter()
            if rows:
                self.times.append(now)
                self.lowest.append(min(p for _, p in rows))
                for name, position in rows:
                    self.each[name].append(position)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), PROBE_INTERVAL_S)

    def latest(self) -> int:
        return self.lowest[-1] if self.lowest else 0

    async def reached(self, position: int, deadline: float) -> None:
        """Return once every projection has reached ``position`` (or at the deadline)."""
        while self.latest() < position and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self.spec["kind"] == "postgres":
            await self._conn.close()
        else:
            self._conn.close()

    @staticmethod
    def _lag(times: list[float], positions: list[int], answered: float, position: int) -> float:
        i = bisect.bisect_left(positions, position)
        if i >= len(positions):
            return float("nan")
        return max(0.0, times[i] - answered) * 1000

    def lags(self, samples: list[Sample]) -> dict[str, Any]:
        """Per command: time from its answer until the read models reached its position."""
        commands = [s for s in samples if s.position is not None and 200 <= s.status < 300]
        # Positions only grow, so the series is sorted (a rebuild switch never lowers it).
        lowest = list(self.lowest)
        for i in range(1, len(lowest)):
            lowest[i] = max(lowest[i], lowest[i - 1])
        result: dict[str, Any] = {}
        all_lags = [self._lag(self.times, lowest, s.answered, s.position or 0) for s in commands]
        missing = sum(1 for x in all_lags if x != x)
        result["all_read_models"] = latency_stats([x for x in all_lags if x == x])
        result["all_read_models"]["not_reached"] = missing
        per: dict[str, Any] = {}
        for name, series in sorted(self.each.items()):
            mono = list(series)
            for i in range(1, len(mono)):
                mono[i] = max(mono[i], mono[i - 1])
            lags = [self._lag(self.times, mono, s.answered, s.position or 0) for s in commands]
            per[name] = latency_stats([x for x in lags if x == x])
        result["per_projection"] = per
        result["probe_interval_ms"] = PROBE_INTERVAL_S * 1000
        return result


# --- operations -------------------------------------------------------------------------


async def op_pipelines(req: dict[str, Any]) -> dict[str, Any]:
    out = []
    async with make_client(req["base_url"], req["token"], 4) as client:
        for n in range(req.get("count", 3)):
            body = {"name": f"{req.get('prefix', 'Bench')} pipeline {n + 1}", "currency": "EUR"}
            response = await client.post("/v1/pipelines", json=body)
            if response.status_code != 201:
                raise RuntimeError(f"POST /v1/pipelines -> {response.status_code}: {response.text}")
            answer = response.json()
            out.append(
                {
                    "id": answer["id"],
                    "stages": [s["id"] for s in answer["stages"]],
                    "lost_reasons": list(answer["lost_reasons"]),
                }
            )
    return {"pipelines": out}


async def op_commands(req: dict[str, Any]) -> dict[str, Any]:
    pipelines = [PipelineInfo(**p) for p in req["pipelines"]]
    mix = Mix(pipelines, req.get("seed", 1))
    idempotency = bool(req.get("idempotency", False))
    warmup = float(req.get("warmup_s", 0.0))
    duration = float(req["duration_s"])
    max_requests = int(req.get("max_requests", 10**9))
    label = req.get("label", "commands")
    recorder = Recorder()
    probe = Probe(req["probe"]) if req.get("probe") else None
    if req["mode"] == "closed":
        connections = int(req["concurrency"])
    else:
        connections = min(OPEN_LOOP_MAX_IN_FLIGHT, max(16, int(req["rate"]) * 2))
    async with make_client(req["base_url"], req["token"], connections) as client:
        if probe is not None:
            await probe.start()
        start = time.perf_counter()
        recorder.measure_from = start + warmup
        end = recorder.measure_from + duration
        with Progress(None, label=label, unit="req") as bar:
            if req["mode"] == "closed":
                await _closed_loop(client, mix, recorder, req, end, max_requests, bar, idempotency)
            else:
                await _open_loop(client, mix, recorder, req, end, max_requests, bar, idempotency)
        finished = max((s.answered for s in recorder.samples), default=recorder.measure_from)
        window = max(1e-9, finished - recorder.measure_from)
        result = summarize(recorder, window)
        if req["mode"] == "open":
            result["target_rate_per_s"] = req["rate"]
            result["offered_rate_per_s"] = round(len(recorder.samples) / duration, 1)
        if probe is not None:
            wanted = max((s.position or 0 for s in recorder.samples), default=0)
            deadline = time.perf_counter() + LAG_DRAIN_S
            await probe.reached(wanted, deadline)
            await probe.stop()
            result["lag"] = probe.lags(recorder.samples)
    return result


async def _closed_loop(
    client: httpx.AsyncClient,
    mix: Mix,
    recorder: Recorder,
    req: dict[str, Any],
    end: float,
    max_requests: int,
    bar: Progress,
    idempotency: bool,
) -> None:
    issued = 0

    async def worker() -> None:
        nonlocal issued
        life = mix.new()
        while time.perf_counter() < end and issued < max_requests:
            issued += 1
            ok = await send_command(client, life, recorder, idempotency)
            bar.update()
            if not ok or life.finished:
                life = mix.new()

    await asyncio.gather(*(worker() for _ in range(int(req["concurrency"]))))


async def _open_loop(
    client: httpx.AsyncClient,
    mix: Mix,
    recorder: Recorder,
    req: dict[str, Any],
    end: float,
    max_requests: int,
    bar: Progress,
    idempotency: bool,
) -> None:
    """Requests at fixed times (no coordinated omission: latency counts from the due time)."""
    interval = 1.0 / float(req["rate"])
    slots = asyncio.Semaphore(OPEN_LOOP_MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def one(life: Lifecycle, due: float) -> None:
        async with slots:
            ok = await send_command(client, life, recorder, idempotency, due=due)
        bar.update()
        if ok:
            mix.give_back(life)

    n = 0
    while n < max_requests:
        due = start + n * interval
        if due >= end:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(mix.take(), due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.gather(*tasks)


async def op_queries(req: dict[str, Any]) -> dict[str, Any]:
    """Each endpoint in turn at ``concurrency`` clients, bounded by time and count."""
    concurrency = int(req["concurrency"])
    results: dict[str, Any] = {}
    async with make_client(req["base_url"], req["token"], concurrency) as client:
        for endpoint in req["endpoints"]:
            results[endpoint["name"]] = await _query_endpoint(client, endpoint, req, concurrency)
    return {"endpoints": results}


async def _query_endpoint(
    client: httpx.AsyncClient, endpoint: dict[str, Any], req: dict[str, Any], concurrency: int
) -> dict[str, Any]:
    urls: list[str] = endpoint["urls"]
    extra_headers: dict[str, str] | None = endpoint.get("headers")
    cache: Counter[str] = Counter()  # X-Cache answers (board and reports)
    samples: list[float] = []
    sizes: list[int] = []
    errors: Counter[str] = Counter()
    examples: list[str] = []
    issued = 0

    async def run(limit: int, until: float, record: bool, bar: Progress) -> None:
        nonlocal issued

        async def worker() -> None:
            nonlocal issued
            while issued < limit and time.perf_counter() < until:
                url = urls[issued % len(urls)]
                issued += 1
                started = time.perf_counter()
                try:
                    response = await client.get(url, headers=extra_headers)
                    status, body = response.status_code, response.content
                    if record and "x-cache" in response.headers:
                        cache[response.headers["x-cache"]] += 1
                except httpx.HTTPError as exc:
                    status, body = 599, type(exc).__name__.encode()
                elapsed = (time.perf_counter() - started) * 1000
                if not 200 <= status < 300:
                    errors[str(status)] += 1
                    if len(examples) < 3:
                        examples.append(f"GET {url} -> {status}: {body[:200]!r}")
                elif record:
                    samples.append(elapsed)
                    sizes.append(len(body))
                bar.update()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    warmup = int(req.get("warmup_requests", concurrency))
    with Progress(None, label=f"query {endpoint['name']}", unit="req") as bar:
        await run(warmup, time.perf_counter() + 60.0, False, bar)
        began = time.perf_counter()
        limit = issued + int(req["max_requests"])
        await run(limit, began + float(req["duration_s"]), True, bar)
        window = time.perf_counter() - began
    stats = latency_stats(samples)
    stats.update(
        {
            "errors": dict(errors),
            "error_examples": examples,
            "throughput_per_s": round(len(samples) / window, 1) if window > 0 else 0.0,
            "mean_response_bytes": round(sum(sizes) / len(sizes)) if sizes else 0,
            "x_cache": dict(cache),
        }
    )
    return stats


OPERATIONS = {"pipelines": op_pipelines, "commands": op_commands, "queries": op_queries}


async def main() -> None:
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        req = json.loads(line)
        if req.get("op") == "quit":
            print(json.dumps({"ok": True}), flush=True)
            return
        try:
            answer = await OPERATIONS[req["op"]](req)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answer["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
