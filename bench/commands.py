"""Part 1: command throughput and latency over HTTP, beside a raw asyncpg baseline.

For each backend, in a fresh database: the service (``dealtrail serve`` and a separate
``dealtrail projections run``) takes the command mix (create, advance, update, win or
lose) closed-loop at each concurrency level. On PostgreSQL the baseline app
(``bench/baseline_app.py``: the same uvicorn stack, one asyncpg INSERT per request)
takes the same load right after each level, so both see the same machine. Then the
service gets an open-loop load at half of its saturation rate (its best throughput),
for the latency a not-overloaded service shows; and one level with ``Idempotency-Key``
on every command, to show that middleware's cost.

Run alone: ``python -m bench.commands [--smoke] [--backends postgres,sqlite]``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    TOKEN,
    BenchError,
    Database,
    LoadGenerator,
    Proc,
    Run,
    Service,
    free_port,
    fresh_database,
    ratio,
    running_service,
    say,
    wait_healthy,
    web_workers,
)

PART = "commands"


@contextlib.contextmanager
def baseline_server(db: Database, log_dir: Path) -> Iterator[str]:
    """The raw baseline app on uvicorn, on the same database; yields its base URL."""
    port = free_port()
    env = {
        "BENCH_BASELINE_DSN": db.url,
        "BENCH_BASELINE_TOKEN": TOKEN,
        "BENCH_BASELINE_POOL": "8",  # as DEALTRAIL_STORE_POOL_SIZE's default
        "PYTHONUNBUFFERED": "1",
    }
    env = {**os.environ, **env}
    args = [sys.executable, "-m", "uvicorn", "bench.baseline_app:app"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    args += ["--workers", str(web_workers(db))]  # as many processes as the service
    proc = Proc("baseline", args, env, log_dir)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def check(run: Run, result: dict[str, Any], label: str) -> None:
    """Refused requests mean the bench sends what the API no longer accepts: in the smoke
    run that is a failure of the benchmark code; in the full run it is reported."""
    errors = result.get("errors") or {}
    if not errors:
        return
    detail = f"{label}: non-2xx answers {errors}; e.g. {result.get('error_examples')}"
    client_errors = {k: v for k, v in errors.items() if k.startswith("4")}
    if run.sizes.smoke and client_errors:
        raise BenchError(detail)
    say("WARNING " + detail)


def closed(
    gen: LoadGenerator,
    run: Run,
    base_url: str,
    pipelines: list[dict[str, Any]],
    concurrency: int,
    label: str,
    **extra: Any,
) -> dict[str, Any]:
    sizes = run.sizes
    result = gen.run(
        op="commands",
        mode="closed",
        base_url=base_url,
        token=TOKEN,
        pipelines=pipelines,
        concurrency=concurrency,
        warmup_s=sizes.warmup_s,
        duration_s=sizes.level_s,
        max_requests=sizes.level_max_requests,
        seed=concurrency,
        label=label,
        **extra,
    )
    check(run, result, label)
    lat = result["latency"]
    say(
        f"{label}: {result['throughput_per_s']:,.0f} commands/s, "
        f"p50 {lat.get('p50_ms', 0):.1f} ms, p95 {lat.get('p95_ms', 0):.1f} ms, "
        f"p99 {lat.get('p99_ms', 0):.1f} ms"
    )
    return {"concurrency": concurrency, **result}


def measure(run: Run, db: Database, service: Service, gen: LoadGenerator) -> dict[str, Any]:
    """Every level on the running service (and the baseline beside it on PostgreSQL)."""
    sizes = run.sizes
    backend = db.backend
    baseline_cm: contextlib.AbstractContextManager[str | None] = (
        baseline_server(db, run.log_dir(f"{PART}-{backend}-baseline"))
        if backend == "postgres"
        else contextlib.nullcontext()
    )
    with baseline_cm as baseline_url:
        pipelines = gen.run(op="pipelines", base_url=service.base_url, token=TOKEN)["pipelines"]
        base_pipelines = (
            gen.run(op="pipelines", base_url=baseline_url, token=TOKEN)["pipelines"]
            if baseline_url
            else []
        )
        levels, base_levels = [], []
        for concurrency in sizes.levels:
            service.wait_caught_up()
            label = f"{backend} dealtrail c={concurrency}"
            levels.append(closed(gen, run, service.base_url, pipelines, concurrency, label))
            if baseline_url:
                service.wait_caught_up()
                label = f"{backend} baseline c={concurrency}"
                base_levels.append(
                    closed(gen, run, baseline_url, base_pipelines, concurrency, label)
                )
    best = max(levels, key=lambda r: r["throughput_per_s"])
    saturation = best["throughput_per_s"]
    half_rate = max(1.0, round(saturation / 2, 1))
    service.wait_caught_up()
    label = f"{backend} dealtrail open loop at {half_rate:g}/s"
    half = gen.run(
        op="commands",
        mode="open",
        base_url=service.base_url,
        token=TOKEN,
        pipelines=pipelines,
        rate=half_rate,
        warmup_s=sizes.warmup_s,
        duration_s=sizes.half_saturation_s,
        seed=99,
        label=label,
    )
    check(run, half, label)
    say(
        f"{label}: p50 {half['latency'].get('p50_ms', 0):.1f} ms, "
        f"p99 {half['latency'].get('p99_ms', 0):.1f} ms"
    )
    service.wait_caught_up()
    label = f"{backend} dealtrail c={best['concurrency']} with Idempotency-Key"
    idem = closed(
        gen, run, service.base_url, pipelines, best["concurrency"], label, idempotency=True
    )
    catch_up = service.wait_caught_up()
    figures: dict[str, Any] = {
        "levels": levels,
        "saturation_per_s": saturation,
        "saturation_concurrency": best["concurrency"],
        "half_saturation": half,
        "with_idempotency_key": idem,
        "worker_catch_up_after_load_s": round(catch_up, 2),
    }
    if base_levels:
        base_best = max(base_levels, key=lambda r: r["throughput_per_s"])
        figures["baseline"] = {
            "levels": base_levels,
            "saturation_per_s": base_best["throughput_per_s"],
            "saturation_concurrency": base_best["concurrency"],
        }
        figures["ratio_to_baseline"] = {
            "saturation": ratio(saturation, base_best["throughput_per_s"]),
            "by_concurrency": {
                str(a["concurrency"]): ratio(a["throughput_per_s"], b["throughput_per_s"])
                for a, b in zip(levels, base_levels, strict=True)
            },
        }
    figures["web_workers"] = web_workers(db)
    return figures


def step(run: Run, backend: str, gen: LoadGenerator) -> None:
    """Alone: a fresh, empty database."""
    say(f"== part 1, command throughput and latency on {backend}")
    with (
        fresh_database(backend) as db,
        running_service(db, run.log_dir(f"{PART}-{backend}")) as service,
    ):
        figures = measure(run, db, service, gen)
        figures["memory"] = service.memory()
        figures["dataset_events"] = 0
        run.record(PART, backend, figures)


if __name__ == "__main__":
    from bench.cli import part_main

    sys.exit(part_main(step, __doc__))
