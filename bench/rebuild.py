"""Part 2: rebuild every read model from a generated log of about a million events.

The log is written through the application layer (``services.demo.generator``: three
pipelines, 25 owners in five teams, deals walked through realistic stage paths with
backdated business time, saved in big batches). Then ``dealtrail projections rebuild
--all`` runs as its own process while the suite samples its peak RSS (``VmHWM``) and
watches ``projection_state`` for the switch to the new generation. Beside it, the raw
read speed of the same log (``select_notifications`` and ``decode``, no writes), the
floor that any rebuild has to pay.

Run alone: ``python -m bench.rebuild [--smoke] [--events N] [--backends ...]``.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.common import (
    API_KEYS,
    BenchError,
    Database,
    LoadGenerator,
    Proc,
    Run,
    dealtrail_command,
    fresh_database,
    load_average,
    ratio,
    say,
    service_env,
)
from services.projections.rebuild import REBUILD_BATCH_SIZE

PART = "rebuild"
EVENTS_PER_DEAL = 12.9  # a little under the generator's average, to overshoot, not top up
GENERATE_BATCH = 500
READ_BATCH = REBUILD_BATCH_SIZE  # as `dealtrail projections rebuild --batch-size` defaults
REBUILD_TIMEOUT_S = 3 * 3600
SUMMARY = re.compile(r"([\d,]+) events in ([\d.]+)s")
# ``dealtrail projections rebuild`` tells how each projection's replay went
REPLAYED = re.compile(
    r"^(\w+): replayed ([\d,]+) events in ([\d.]+) s \(([\d,]+) events/s, "
    r"([\d.]+) s of CPU in process (\d+)",
    re.MULTILINE,
)


def open_app(db: Database) -> Any:
    from services.runtime.settings import Settings
    from services.runtime.stores import open_application

    settings = Settings(  # type: ignore[call-arg]
        DATABASE_URL=db.url,
        DEALTRAIL_DB_SCHEMA="",
        DEALTRAIL_API_KEYS=API_KEYS,
        DEALTRAIL_STORE_POOL_SIZE=2,
    )
    return open_application(settings)


def generate_events(db: Database, target_events: int, seed: int) -> dict[str, Any]:
    """Write at least ``target_events`` events through the application layer."""
    from services.demo.generator import generate
    from services.progress import Progress

    app = open_app(db)
    deals = events = 0
    pipelines = 0
    started = time.perf_counter()
    try:
        round_ = 0
        while events < target_events:
            wanted = max(1, math.ceil((target_events - events) / EVENTS_PER_DEAL))
            with Progress(wanted, label=f"generate ({db.backend})", unit="deals") as bar:
                result = generate(
                    app,
                    deals=wanted,
                    seed=seed + round_,
                    batch_size=GENERATE_BATCH,
                    progress=bar.update,
                )
            deals += result.deals
            events += result.events
            pipelines += len(result.pipelines)
            round_ += 1
        head = app.head_position()
    finally:
        app.close()
    seconds = time.perf_counter() - started
    say(f"generated {deals:,} deals, {events:,} events in {seconds:.1f}s")
    return {
        "deals": deals,
        "events": events,
        "pipelines": pipelines,
        "head": head,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds, 1) if seconds else None,
    }


def raw_read(db: Database, batch: int = READ_BATCH) -> dict[str, Any]:
    """Select and decode the whole log, as the rebuild reads it, writing nothing."""
    from libs.application.records import decode

    app = open_app(db)
    selecting = decoding = 0.0
    count = 0
    position = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        while True:
            t0 = time.perf_counter()
            notifications = app.recorder.select_notifications(
                position + 1, batch, inclusive_of_start=True
            )
            t1 = time.perf_counter()
            if not notifications:
                break
            records = [decode(app.mapper, n) for n in notifications]
            decoding += time.perf_counter() - t1
            selecting += t1 - t0
            count += len(records)
            position = notifications[-1].id
    finally:
        app.close()
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    say(
        f"raw read: {count:,} events in {seconds:.1f}s ({count / max(seconds, 1e-9):,.0f}/s), "
        f"load average {load_average()[0]:.1f}"
    )
    return {
        "events": count,
        "seconds": round(seconds, 2),
        "events_per_s": round(count / seconds, 1) if seconds else None,
        "select_seconds": round(selecting, 2),
        "decode_seconds": round(decoding, 2),
        "cpu_seconds": round(cpu, 2),
        "cpu_us_per_event": round(cpu * 1e6 / count, 1) if count else None,
        "load_average": load_average(),
    }


@dataclass
class Rebuilding:
    """A ``dealtrail projections rebuild --all`` that has switched to the new generation
    and may still be in its grace period before dropping the old one."""

    proc: Proc
    head: int
    figures: dict[str, Any]

    def finish(self) -> dict[str, Any]:
        """Wait for the process to end; its figures, complete."""
        try:
            code = self.proc.wait(REBUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.stop()
            raise BenchError("the rebuild did not end after switching") from None
        if code != 0:
            raise BenchError(f"dealtrail projections rebuild exited {code}:\n{self.proc.tail()}")
        output = self.proc.log.read_text(errors="replace")
        matches = list(SUMMARY.finditer(output))
        reported = float(matches[-1].group(2)) if matches else None
        self.figures.update(
            reported_seconds=reported,
            reported_events_per_s=round(self.head / reported, 1) if reported else None,
            process_wall_seconds=round(time.monotonic() - self.proc.started, 2),
            peak_rss_mb=self.proc.peak_rss_mb,
            peak_rss_total_mb=self.proc.peak_tree_rss_mb,
            peak_rss_replay_processes_mb=self.proc.children_peak_rss_mb,
            cpu_seconds=self.proc.tree_cpu_seconds,
            cpu_us_per_event=round(self.proc.tree_cpu_seconds * 1e6 / self.head, 1)
            if self.head
            else None,
            projections=replayed_figures(output),
        )
        return self.figures


def replayed_figures(output: str) -> dict[str, dict[str, Any]]:
    """Each projection's own replay, as the rebuild command reported it."""
    return {
        m.group(1): {
            "events": int(m.group(2).replace(",", "")),
            "seconds": float(m.group(3)),
            "events_per_s": int(m.group(4).replace(",", "")),
            "cpu_seconds": float(m.group(5)),
            "pid": int(m.group(6)),
        }
        for m in REPLAYED.finditer(output)
    }


def start_rebuild(db: Database, run: Run, head: int) -> Rebuilding:
    """Start ``dealtrail projections rebuild --all``; return once it has switched every
    projection to the new generation (its timing ends there)."""
    log_dir = run.log_dir(f"{PART}-{db.backend}")
    env = service_env(db, log_dir / "data")
    before = {name: gen for name, (gen, _) in db.projection_states().items()}
    say(f"dealtrail projections rebuild --all over {head:,} events ({db.backend})")
    proc = Proc("rebuild", [*dealtrail_command(), "projections", "rebuild", "--all"], env, log_dir)
    last_note = time.monotonic()
    states: dict[str, tuple[int, int]] = {}
    while True:
        states = db.projection_states()
        if states and all(
            gen > before.get(name, 1) and position >= head
            for name, (gen, position) in states.items()
        ):
            break
        if not proc.alive():
            code = proc.wait()
            raise BenchError(f"the rebuild exited {code} before switching:\n{proc.tail()}")
        if time.monotonic() - last_note > 30:
            last_note = time.monotonic()
            say(f"rebuild running, peak RSS so far {proc.peak_rss_mb:.0f} MB")
        if time.monotonic() - proc.started > REBUILD_TIMEOUT_S:
            proc.stop()
            raise BenchError(f"the rebuild took longer than {REBUILD_TIMEOUT_S}s")
        time.sleep(0.1)
    seconds = time.monotonic() - proc.started
    figures: dict[str, Any] = {
        "events": head,
        "seconds_to_switch": round(seconds, 2),
        "events_per_s": round(head / seconds, 1) if seconds else None,
        "peak_rss_mb": proc.peak_rss_mb,
        "load_average": load_average(),
        "generations": {name: gen for name, (gen, _) in states.items()},
    }
    say(
        f"rebuild: {head:,} events, switched after {seconds:.1f}s "
        f"({figures['events_per_s']:,.0f} events/s), peak RSS {proc.peak_rss_mb:.0f} MB "
        f"(with its replay processes {proc.peak_tree_rss_mb:.0f} MB), "
        f"load average {figures['load_average'][0]:.1f}"
    )
    return Rebuilding(proc, head, figures)


def prepare(run: Run, db: Database) -> tuple[dict[str, Any], Rebuilding]:
    """Generate the log, read it raw, and rebuild up to the switch."""
    generated = generate_events(db, run.sizes.events_for(db.backend), run.sizes.seed)
    raw = raw_read(db)
    rebuilding = start_rebuild(db, run, generated["head"])
    figures = {"generated": generated, "raw_read": raw, "rebuild": rebuilding.figures}
    return figures, rebuilding


def complete(figures: dict[str, Any], rebuilding: Rebuilding) -> dict[str, Any]:
    figures["rebuild"] = rebuilding.finish()
    figures["ratio_to_raw_read"] = ratio(
        figures["rebuild"]["events_per_s"], figures["raw_read"]["events_per_s"]
    )
    return figures


def measure(run: Run, db: Database) -> dict[str, Any]:
    return complete(*prepare(run, db))


def step(run: Run, backend: str, gen: LoadGenerator) -> None:
    del gen  # no HTTP load in this part
    say(f"== part 2, projection rebuild on {backend}")
    with fresh_database(backend) as db:
        run.record(PART, backend, measure(run, db))


if __name__ == "__main__":
    from bench.cli import part_main

    sys.exit(part_main(step, __doc__))
