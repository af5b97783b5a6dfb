"""The benchmark suite's smoke mode (``make bench-smoke``): every part of ``bench/`` runs at
tiny sizes, so the benchmark code cannot rot. No figure is checked, only that it ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.report import figures, summary
from tests.conftest import PG_URL, REQUIRE_POSTGRES, postgres_problem

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600  # the smoke run takes seconds; this only stops a hang


def test_bench_smoke_runs_every_part(tmp_path: Path) -> None:
    backends = ["sqlite"]
    problem = postgres_problem()
    if problem is None:
        backends.insert(0, "postgres")
    elif REQUIRE_POSTGRES:
        raise AssertionError(f"REQUIRE_POSTGRES=1 but {problem}")
    output = tmp_path / "smoke.json"
    env = {**os.environ, "BENCH_DATABASE_URL": PG_URL, "PYTHONUNBUFFERED": "1"}
    args = ["--smoke", "--backends", ",".join(backends), "--output", str(output)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    results = json.loads(output.read_text())
    assert results["mode"] == "smoke"
    assert results["failures"] == []
    assert results["machine"]["cores"]
    # Every part ran on every backend; the figures themselves depend on how busy the
    # machine is (a level may complete no command in a smoke run's second), so none is
    # checked, only that it is there.
    for backend in backends:
        commands = results["commands"][backend]
        assert "saturation_per_s" in commands
        assert "latency" in commands["half_saturation"]
        assert commands["levels"] and "mix" in commands["levels"][0]
        rebuilt = results["rebuild"][backend]
        assert rebuilt["rebuild"]["events"] == rebuilt["generated"]["events"] > 0
        assert rebuilt["raw_read"]["events"] == rebuilt["generated"]["events"]
        assert "peak_rss_mb" in rebuilt["rebuild"]
        endpoints = results["queries"][backend]["endpoints"]
        assert {"board", "deal list page", "deal history", "report stage-durations"} <= set(
            endpoints
        )
        assert all("count" in stats for stats in endpoints.values())
        assert "all_read_models" in results["lag"][backend]["lag"]
    if "postgres" in backends:
        postgres = results["commands"]["postgres"]
        assert postgres["baseline"]["levels"], "the raw baseline did not run"
        assert "saturation" in postgres["ratio_to_baseline"]
    if "import" not in results.get("skipped", {}):
        assert all(results["import"][b]["rows"] > 0 for b in backends)
    assert figures(results)
    assert "Dealtrail benchmark (smoke)" in summary(results)
