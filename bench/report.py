"""The human side of the results: headline figures beside their targets and baselines.

``python -m bench.report [RESULTS.json] [--markdown]`` prints the summary of a results
file (default ``bench/results/latest.json``); ``--markdown`` prints the table used in
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_RESULTS


@dataclass
class Figure:
    name: str
    backend: str
    value: float | None
    unit: str
    target: str = ""
    ok: bool | None = None
    baseline: str = ""
    ratio: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _get(data: Any, *path: str | int) -> Any:
    for key in path:
        if isinstance(data, dict):
            data = data.get(str(key)) if not isinstance(key, int) else data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _at_most(value: float | None, target: float) -> bool | None:
    return None if value is None else value <= target


def figures(results: dict[str, Any]) -> list[Figure]:
    """Every headline figure present in ``results``; targets apply to PostgreSQL."""
    out: list[Figure] = []
    for backend in ("postgres", "sqlite"):
        pg = backend == "postgres"
        cmd = _get(results, "commands", backend)
        if cmd:
            base = _get(cmd, "baseline", "saturation_per_s")
            ratio = _get(cmd, "ratio_to_baseline", "saturation")
            out.append(
                Figure(
                    "command throughput (best level)",
                    backend,
                    cmd.get("saturation_per_s"),
                    "commands/s",
                    "≥ 0.6 x baseline" if pg else "",
                    _at_least(ratio, 0.6) if pg and ratio is not None else None,
                    f"{base:,.0f}/s raw asyncpg INSERT" if base else "",
                    ratio,
                )
            )
            half = _get(cmd, "half_saturation")
            if half:
                p99 = _get(half, "latency", "p99_ms")
                rate = half.get("target_rate_per_s")
                out.append(
                    Figure(
                        f"command latency p99 at half saturation ({rate:g}/s)",
                        backend,
                        p99,
                        "ms",
                        "≤ 25 ms" if pg else "",
                        _at_most(p99, 25) if pg else None,
                    )
                )
        reb = _get(results, "rebuild", backend)
        if reb:
            rate = _get(reb, "rebuild", "events_per_s")
            raw = _get(reb, "raw_read", "events_per_s")
            events = _get(reb, "rebuild", "events") or 0
            out.append(
                Figure(
                    f"projection rebuild, {events:,} events",
                    backend,
                    rate,
                    "events/s",
                    "≥ 20,000/s" if pg else "",
                    _at_least(rate, 20_000) if pg else None,
                    f"{raw:,.0f}/s raw select+decode" if raw else "",
                    reb.get("ratio_to_raw_read"),
                )
            )
            rss = _get(reb, "rebuild", "peak_rss_mb")
            out.append(
                Figure(
                    "rebuild peak RSS",
                    backend,
                    rss,
                    "MB",
                    "≤ 500 MB" if pg else "",
                    _at_most(rss, 500) if pg else None,
                )
            )
        queries = _get(results, "queries", backend)
        if queries:
            clients = queries.get("clients")
            for name, stats in (queries.get("endpoints") or {}).items():
                targeted = name.removesuffix(" (no-cache)") in ("board", "report stage-durations")
                p99 = stats.get("p99_ms")
                failed = sum((stats.get("errors") or {}).values())
                errors = f"; {failed} failed" if failed else ""
                cached = stats.get("x_cache") or {}
                if cached and "(no-cache)" not in name:
                    errors += f"; {cached.get('hit', 0)} of {sum(cached.values())} from cache"
                out.append(
                    Figure(
                        f"query {name} p99 ({clients} clients; p50 {stats.get('p50_ms')} ms"
                        f"{errors})",
                        backend,
                        p99,
                        "ms",
                        "≤ 50 ms" if pg and targeted else "",
                        _at_most(p99, 50) if pg and targeted else None,
                    )
                )
        lag = _get(results, "lag", backend)
        for steady in (lag, _get(lag, "below_saturation")):
            if not steady:
                continue
            every = _get(steady, "lag", "all_read_models") or {}
            answered = _get(steady, "commands", "throughput_per_s")
            answered_text = f"{answered:g}/s" if answered is not None else "? /s"
            out.append(
                Figure(
                    f"projection lag p99 at {steady.get('rate_per_s'):g} commands/s offered, "
                    f"{answered_text} answered (p50 {every.get('p50_ms')} ms)",
                    backend,
                    every.get("p99_ms"),
                    "ms",
                    "≤ 500 ms at 200/s" if pg else "",
                    # Met only when the service also kept up with the offered rate.
                    (
                        _at_most(every.get("p99_ms"), 500)
                        and answered is not None
                        and answered >= 0.95 * float(steady.get("rate_per_s") or 0)
                    )
                    if pg and steady is lag
                    else None,
                )
            )
        imp = _get(results, "import", backend)
        if imp:
            out.append(
                Figure(
                    f"CRM import, {imp.get('rows'):,} rows ({imp.get('total_seconds')} s total)",
                    backend,
                    imp.get("rows_per_s"),
                    "rows/s",
                )
            )
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "MB"):
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f} {unit}"


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "MISSED", None: ""}[ok]


def summary(results: dict[str, Any]) -> str:
    machine = results.get("machine") or {}
    lines = [
        "",
        f"Dealtrail benchmark ({results.get('mode')}), {results.get('updated_at')}",
        f"machine: {machine.get('cores')} cores, {machine.get('memory_gb')} GB, "
        f"PostgreSQL {machine.get('postgres')}, SQLite {machine.get('sqlite')}, "
        f"Python {machine.get('python')}",
        "",
    ]
    rows = figures(results)
    width = max((len(f.name) for f in rows), default=10)
    for f in rows:
        extra = ""
        if f.baseline:
            extra = f"  [baseline {f.baseline}; ratio {f.ratio}]"
        target = f"  target {f.target} {_verdict(f.ok)}" if f.target else ""
        lines.append(
            f"{f.backend:<8} {f.name:<{width}}  {_fmt(f.value, f.unit):>16}{target}{extra}"
        )
    for key, why in (results.get("skipped") or {}).items():
        lines.append(f"skipped {key}: {why}")
    for failure in results.get("failures") or []:
        lines.append(f"FAILED: {failure}")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| backend | figure | value | target | met | baseline | ratio |",
        "|---|---|---:|---|---|---|---:|",
    ]
    for f in figures(results):
        lines.append(
            f"| {f.backend} | {f.name} | {_fmt(f.value, f.unit)} | {f.target} | "
            f"{_verdict(f.ok)} | {f.baseline} | {'' if f.ratio is None else f.ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("results", nargs="?", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    print(markdown(results) if args.markdown else summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
