"""Command-line options shared by ``python -m bench`` and each part run on its own."""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import report
from bench.common import (
    BACKENDS,
    DEFAULT_RESULTS,
    RESULTS_DIR,
    WEB_WORKERS,
    LoadGenerator,
    Run,
    Sizes,
    load_generator,
    say,
)

Step = Callable[[Run, str, LoadGenerator], None]  # one part (or several) on one backend


def parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, the same code paths (seconds; for CI); writes bench/results/smoke.json",
    )
    p.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated: postgres, sqlite (default both; PostgreSQL from "
        "BENCH_DATABASE_URL, skipped when unreachable)",
    )
    p.add_argument("--output", type=Path, default=None, help="results JSON to write/merge")
    p.add_argument("--events", type=int, default=None, help="events to generate (PostgreSQL)")
    p.add_argument("--sqlite-events", type=int, default=None, help="events to generate (SQLite)")
    p.add_argument("--levels", default=None, help="command concurrency levels, e.g. 1,4,16,32")
    p.add_argument("--level-seconds", type=float, default=None, help="seconds per level")
    p.add_argument("--lag-seconds", type=float, default=None, help="seconds of steady load")
    p.add_argument("--lag-rate", type=float, default=None, help="commands/s of steady load")
    p.add_argument(
        "--lag-saturation",
        type=float,
        default=None,
        help="part 4 alone: the service's saturation (commands/s, from part 1); when below "
        "the rate, lag is also measured at half of it",
    )
    p.add_argument(
        "--web-workers",
        type=int,
        default=1,
        help="API processes on PostgreSQL, for the service and the baseline alike (default 1)",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the service logs")
    return p


def make_run(args: argparse.Namespace) -> Run:
    sizes = Sizes.smoke_run() if args.smoke else Sizes.full()
    if args.events is not None:
        sizes.pg_events = args.events
        if args.sqlite_events is None:
            sizes.sqlite_events = args.events
    if args.sqlite_events is not None:
        sizes.sqlite_events = args.sqlite_events
    if args.levels:
        sizes.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if args.level_seconds is not None:
        sizes.level_s = args.level_seconds
    if args.lag_seconds is not None:
        sizes.lag_s = args.lag_seconds
    if args.lag_rate is not None:
        sizes.lag_rate = args.lag_rate
    sizes.lag_saturation = args.lag_saturation
    output = args.output or (RESULTS_DIR / "smoke.json" if args.smoke else DEFAULT_RESULTS)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s): {', '.join(unknown)}")
    WEB_WORKERS["postgres"] = max(1, args.web_workers)
    return Run(sizes=sizes, output=output, backends=backends)


def _steps_on(run: Run, backend: str, steps: list[tuple[str, Step]]) -> None:
    """The steps on one backend, each with the same load generator; a step that breaks
    is reported and the next one still runs."""
    with load_generator() as gen:
        for name, step in steps:
            try:
                step(run, backend, gen)
            except Exception as exc:
                traceback.print_exc()
                with run.lock:
                    run.failures.append(f"{name} on {backend}: {type(exc).__name__}: {exc}")
                say(f"{name} on {backend} FAILED: {exc}")


def execute(run: Run, steps: list[tuple[str, Step]], keep_logs: bool) -> int:
    """Run the steps on every backend: one after the other for real figures; at the same
    time (a thread and a load generator each) in the smoke run, where only the time to
    get through matters."""
    say(f"logs in {run.log_root}; results to {run.output}")
    try:
        backends = run.backends_available()
        if run.sizes.smoke and len(backends) > 1:
            threads = [
                threading.Thread(target=_steps_on, args=(run, b, steps), name=b) for b in backends
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for backend in backends:
                _steps_on(run, backend, steps)
    finally:
        run.results["failures"] = run.failures
        run.save()
        if keep_logs or run.failures:
            say(f"logs kept in {run.log_root}")
        else:
            shutil.rmtree(run.log_root, ignore_errors=True)
    print(report.summary(json.loads(run.output.read_text())), flush=True)
    return 1 if run.failures else 0


def part_main(step: Step, description: str | None) -> int:
    args = parser(description).parse_args()
    run = make_run(args)
    name = step.__module__.rsplit(".", 1)[-1]
    return execute(run, [(name, step)], args.keep_logs)
