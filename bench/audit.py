"""Hash-chain verification speed: ``dealtrail audit verify`` over a generated log.

Generates ``--deals`` demo deals (about thirteen events each, activities included) into
a fresh store, then times the verification of the whole chain ``--repeat`` times and
prints events/s (target: at least 100,000 events/s).

Run alone: ``python -m bench.audit [--backend postgres|sqlite] [--deals N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from datetime import UTC, datetime

import psycopg

from libs.application.integrity import chain_of, verify_store
from services.demo.generator import generate
from services.runtime.settings import Settings
from services.runtime.stores import open_application

PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TARGET = 100_000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--deals", type=int, default=30_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    if args.backend == "postgres":
        settings = Settings(DATABASE_URL=PG_URL, DEALTRAIL_DB_SCHEMA=schema)
    else:
        path = os.path.join(tempfile.mkdtemp(prefix="dealtrail-bench-"), "dealtrail.db")
        settings = Settings(DATABASE_URL=f"sqlite:///{path}")
    app = open_application(settings)
    try:
        generate(app, deals=args.deals, seed=1, end=datetime(2026, 5, 1, tzinfo=UTC))
        chain = chain_of(app.recorder)
        rates = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            report = verify_store(chain)
            elapsed = time.perf_counter() - started
            assert report.ok, report.finding
            rates.append(report.checked / elapsed)
        print(
            f"{args.backend}: {report.checked:,} events, verify "
            + ", ".join(f"{r:,.0f}" for r in rates)
            + f" events/s (best {max(rates):,.0f}; target {TARGET:,}); "
            f"{os.cpu_count()} cores, {platform.platform()}, load {os.getloadavg()[0]:.1f}"
        )
    finally:
        app.close()
        if args.backend == "postgres":
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
