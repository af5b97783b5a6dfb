"""The scale curve: rebuild rate, command throughput and query latency as the log grows.

One PostgreSQL database grows through the sizes asked for (``--events 100000,300000,1000000``):
at each size the log is topped up through the application layer (part 2's generator), read
raw and rebuilt (part 2's code: ``dealtrail projections rebuild --all`` as its own
process), then the service takes the command mix (part 1's code) and answers the board,
the deal pages and every report (part 3's code), each measured as those parts measure
them. The figures go to the results file under ``scale`` and a chart (PNG, matplotlib from
the ``bench`` extra: ``pip install -e '.[bench]'``) next to it.

Cost grows linearly when the rebuild rate (events per second) stays flat as the log
grows, and better than linearly for commands and queries when their throughput and
latency stay flat while the log holds more deals.

Run: ``python -m bench.scale --events 100000,300000,1000000 [--levels 4]
[--level-seconds S] [--query-seconds S] [--chart FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import commands, queries, rebuild
from bench.cli import execute, make_run, parser
from bench.common import (
    RESULTS_DIR,
    LoadGenerator,
    Run,
    fresh_database,
    load_average,
    now_iso,
    running_service,
    say,
)

PART = "scale"
DEFAULT_SIZES = "100000,300000,1000000"
DEFAULT_CHART = RESULTS_DIR / "scale.png"
QUERY_P99 = ("board", "board (no-cache)", "report stage-durations (no-cache)")


def sizes_of(text: str) -> list[int]:
    sizes = sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})
    if not sizes or sizes[0] <= 0:
        raise argparse.ArgumentTypeError("--events takes positive sizes, e.g. 100000,300000")
    return sizes


def point(
    run: Run, db: Any, gen: LoadGenerator, target: int, events: int, n: int
) -> dict[str, Any]:
    """Top the log up to ``target`` events and measure every part on it."""
    started = time.monotonic()
    if target > events:
        generated = rebuild.generate_events(db, target - events, run.sizes.seed + 1000 * n)
        say(f"log topped up by {generated['events']:,} events")
    raw = rebuild.raw_read(db)
    head = int(db.query("SELECT max(notification_id) FROM dealtrail_events")[0][0])
    deals = int(db.query("SELECT count(DISTINCT originator_id) FROM dealtrail_events")[0][0])
    rebuilt = rebuild.start_rebuild(db, run, head).finish()
    with running_service(db, run.log_dir(f"{PART}-{head}")) as service:
        said = commands.measure(run, db, service, gen)
        asked = queries.measure(run, service, gen)
        memory = service.memory()
    return {
        "events": head,
        "aggregates": deals,
        "raw_read": raw,
        "rebuild": rebuilt,
        "rebuild_ratio_to_raw_read": round(rebuilt["events_per_s"] / raw["events_per_s"], 3),
        "commands": {
            "levels": said["levels"],
            "saturation_per_s": said["saturation_per_s"],
            "baseline_saturation_per_s": said.get("baseline", {}).get("saturation_per_s"),
            "ratio_to_baseline": said.get("ratio_to_baseline", {}).get("saturation"),
            "half_saturation_p99_ms": said["half_saturation"]["latency"].get("p99_ms"),
        },
        "queries": {
            name: {k: stats.get(k) for k in ("p50_ms", "p99_ms", "throughput_per_s")}
            for name, stats in asked["endpoints"].items()
        },
        "memory": memory,
        "load_average": load_average(),
        "seconds": round(time.monotonic() - started, 1),
    }


def chart_name(path: Path | None) -> str | None:
    """The chart as the results file names it: relative to the results folder, so that
    the file says nothing of the machine it was written on."""
    return os.path.relpath(path, RESULTS_DIR) if path is not None else None


def chart(points: list[dict[str, Any]], path: Path) -> Path | None:
    """The curve as a PNG; None when matplotlib is not installed (the ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        return None
    sizes = [p["events"] / 1e6 for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    seconds = [p["rebuild"]["seconds_to_switch"] for p in points]
    ax.plot(sizes, seconds, "o-", label="rebuild, wall seconds to switch")
    cpu = [p["rebuild"].get("cpu_seconds") for p in points]
    if all(c is not None for c in cpu):
        ax.plot(sizes, cpu, "^-", label="rebuild, CPU seconds of its processes")
    raw = [p["events"] / p["raw_read"]["events_per_s"] for p in points]
    ax.plot(sizes, raw, "s--", label="raw read of the log, wall seconds")
    slope = seconds[0] / sizes[0]
    ax.plot([0, sizes[-1]], [0, slope * sizes[-1]], ":", color="grey", label="linear (first point)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("events in the log (millions)")
    ax.set_ylabel("seconds")
    ax.set_title("Rebuild: seconds by log size")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(sizes, [p["commands"]["saturation_per_s"] for p in points], "o-", label="Dealtrail")
    base = [p["commands"]["baseline_saturation_per_s"] for p in points]
    if all(b is not None for b in base):
        ax.plot(sizes, base, "s--", label="raw asyncpg baseline")
    ax.set_xlabel("events in the log (millions)")
    ax.set_ylabel("commands/s, best level")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_title("Commands: throughput by log size")
    ax.legend(fontsize=8)
    ax = axes[2]
    for name in QUERY_P99:
        values = [p["queries"].get(name, {}).get("p99_ms") for p in points]
        if all(v is not None for v in values):
            ax.plot(sizes, values, "o-", label=f"{name} p99")
    ax.set_xlabel("events in the log (millions)")
    ax.set_ylabel("ms at 20 clients")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_title("Queries: p99 by log size")
    ax.legend(fontsize=8)
    loads = ", ".join(f"{p['load_average'][0]:.1f}" for p in points if p["load_average"])
    fig.suptitle(f"Dealtrail scale curve, PostgreSQL, {now_iso()[:10]} (load average {loads})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    say(f"chart written to {path}")
    return path


def table(points: list[dict[str, Any]]) -> str:
    """The curve as a Markdown table."""
    lines = [
        "| events | rebuild events/s | raw read events/s | ratio | rebuild s | peak RSS MB "
        "(all processes) | commands/s (baseline) | board p99 ms (computed) "
        "| stage-durations computed p99 ms | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        q = p["queries"]
        rb = p["rebuild"]
        c = p["commands"]
        lines.append(
            f"| {p['events']:,} | {rb['events_per_s']:,.0f} | "
            f"{p['raw_read']['events_per_s']:,.0f} | {p['rebuild_ratio_to_raw_read']:.2f} | "
            f"{rb['seconds_to_switch']:.1f} | {rb.get('peak_rss_total_mb') or 0:.0f} | "
            f"{c['saturation_per_s']:,.0f} ({c['baseline_saturation_per_s'] or 0:,.0f}) | "
            f"{q.get('board', {}).get('p99_ms') or 0:,.0f} "
            f"({q.get('board (no-cache)', {}).get('p99_ms') or 0:,.0f}) | "
            f"{q.get('report stage-durations (no-cache)', {}).get('p99_ms') or 0:,.0f} | "
            f"{p['load_average'][0] if p['load_average'] else 0:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = parser(__doc__)
    p.set_defaults(levels="4", backends="postgres")
    p.add_argument("--sizes", type=sizes_of, default=None, help="(same as --events)")
    p.add_argument("--query-seconds", type=float, default=None, help="seconds per endpoint")
    p.add_argument("--chart", type=Path, default=DEFAULT_CHART, help="PNG to write")
    p.add_argument(
        "--chart-only",
        action="store_true",
        help="draw the chart and the table again from the results file, measuring nothing",
    )
    # --events takes a list here: the sizes of the curve
    for action in p._actions:
        if action.dest == "events":
            action.type = sizes_of
            action.default = sizes_of(DEFAULT_SIZES)
    args = p.parse_args()
    sizes: list[int] = args.sizes or args.events
    args.events = None
    if args.output is None:
        args.output = RESULTS_DIR / "scale.json"
    if args.chart_only:
        points = json.loads(args.output.read_text())[PART]["postgres"]["points"]
        chart(points, args.chart)
        print(table(points), flush=True)
        return 0
    run = make_run(args)
    if args.query_seconds is not None:
        run.sizes.query_s = args.query_seconds
    run.sizes.half_saturation_s = run.sizes.level_s  # the curve needs throughput, not this
    run.backends = ["postgres"]

    def step(run: Run, backend: str, gen: LoadGenerator) -> None:
        say(f"== scale curve on {backend}: {', '.join(f'{s:,}' for s in sizes)} events")
        points: list[dict[str, Any]] = []
        with fresh_database(backend) as db:
            events = 0
            for n, target in enumerate(sizes):
                say(f"-- {n + 1}/{len(sizes)}: {target:,} events")
                points.append(point(run, db, gen, target, events, n))
                events = points[-1]["events"]
                written = chart(points, args.chart)  # after each point: a long run shows
                figures = {"points": points, "chart": chart_name(written)}
                run.record(PART, backend, figures)
                print(table(points), flush=True)

    return execute(run, [(PART, step)], args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
