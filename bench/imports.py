"""Part 5: import of the shared CRM sales-opportunities dataset.

``dealtrail import crm-opportunities DIR`` as its own process into a fresh database per
backend: total seconds (process start to exit), the import's own seconds (from its
progress summary) and rows per second. The dataset is read from
``../shared/data/crm-sales-opportunities`` next to the repository, or ``BENCH_CRM_DIR``;
the part is skipped when it is absent. The smoke run imports its first rows only.

Run alone: ``python -m bench.imports [--smoke] [--backends ...]``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    CRM_DIR,
    BenchError,
    LoadGenerator,
    Run,
    fresh_database,
    run_cli,
    say,
)

PART = "import"
PIPELINE_FILE = "sales_pipeline.csv"
SUMMARY = re.compile(r"([\d,]+) rows in ([\d.]+)s")
IMPORTED = re.compile(r"imported (\d+) deal\(s\).*?(\d+) event\(s\) appended")


def dataset_dir() -> Path | None:
    path = Path(os.environ.get("BENCH_CRM_DIR", CRM_DIR))
    return path if (path / PIPELINE_FILE).exists() else None


def trimmed_copy(source: Path, rows: int) -> Path:
    """A copy of the dataset with only its first ``rows`` opportunities."""
    target = Path(tempfile.mkdtemp(prefix="bench-crm-"))
    for item in source.iterdir():
        if item.is_file() and item.suffix == ".csv" and item.name != PIPELINE_FILE:
            shutil.copyfile(item, target / item.name)
    lines = (source / PIPELINE_FILE).read_text().splitlines(keepends=True)
    (target / PIPELINE_FILE).write_text("".join(lines[: rows + 1]))
    return target


def measure(run: Run, backend: str, directory: Path) -> dict[str, Any]:
    rows = max(0, len((directory / PIPELINE_FILE).read_text().splitlines()) - 1)
    with fresh_database(backend) as db:
        log_dir = run.log_dir(f"{PART}-{backend}")
        code, seconds, proc = run_cli(
            ["import", "crm-opportunities", str(directory)], db, log_dir, "import"
        )
        output = proc.log.read_text(errors="replace")
    if code not in (0, 1):  # 1: some rows rejected, reported below
        raise BenchError(f"dealtrail import crm-opportunities exited {code}:\n{proc.tail()}")
    summaries = list(SUMMARY.finditer(output))
    summary = summaries[-1] if summaries else None
    imported = IMPORTED.search(output)
    own = float(summary.group(2)) if summary else None
    figures = {
        "rows": rows,
        "exit_code": code,
        "deals_imported": int(imported.group(1)) if imported else None,
        "events": int(imported.group(2)) if imported else None,
        "total_seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds, 1) if seconds else None,
        "import_seconds": own,
        "import_rows_per_s": round(rows / own, 1) if own else None,
        "peak_rss_mb": proc.peak_rss_mb,
    }
    say(
        f"import on {backend}: {rows:,} rows in {seconds:.1f}s total "
        f"({figures['rows_per_s']:,.0f} rows/s), {own or float('nan'):.1f}s importing"
    )
    return figures


def step(run: Run, backend: str, gen: LoadGenerator) -> None:
    del gen
    source = dataset_dir()
    if source is None:
        say("skipping the import: the CRM dataset is not there (set BENCH_CRM_DIR)")
        with run.lock:
            run.results.setdefault("skipped", {})[PART] = "CRM dataset not found"
        return
    say(f"== part 5, CRM dataset import on {backend}")
    rows = run.sizes.import_rows
    directory = source if rows is None else trimmed_copy(source, rows)
    try:
        run.record(PART, backend, measure(run, backend, directory))
    finally:
        if directory != source:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    from bench.cli import part_main

    sys.exit(part_main(step, __doc__))
