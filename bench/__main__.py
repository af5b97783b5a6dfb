"""``python -m bench``: the whole suite (``make bench``); ``--smoke`` for the CI-sized run.

Per backend, one fresh database serves parts 1 to 4, in this order: part 2 generates
the log (about a million events), reads it raw and rebuilds every read model; then the
service starts on it (``dealtrail serve`` and a separate ``dealtrail projections run``)
for part 3 (queries on the freshly rebuilt read models), part 1 (commands, with the
raw baseline beside them) and part 4 (lag). Part 5 (imports) gets a fresh database.
Backends run one after the other (in the smoke run, at the same time). Results are
merged into bench/results/latest.json (smoke: smoke.json) and summarised.
"""

from __future__ import annotations

import sys

from bench import commands, imports, lag, queries, rebuild
from bench.cli import execute, make_run, parser
from bench.common import LoadGenerator, Run, fresh_database, running_service, say


def data_parts(run: Run, backend: str, gen: LoadGenerator) -> None:
    """Parts 2, 3, 1 and 4 on one database: generated once, used throughout."""
    say(f"== parts 1-4 on {backend}: rebuild, queries, commands, lag")
    with fresh_database(backend) as db:
        rebuilt = rebuild.measure(run, db)
        run.record(rebuild.PART, backend, rebuilt)
        events = rebuilt["generated"]["events"]
        with running_service(db, run.log_dir(f"service-{backend}")) as service:
            found = queries.measure(run, service, gen)
            found["deals"] = rebuilt["generated"]["deals"]
            run.record(queries.PART, backend, found)

            measured = commands.measure(run, db, service, gen)
            measured["dataset_events"] = events
            run.record(commands.PART, backend, measured)

            steady = lag.measure(run, db, service, gen, measured["saturation_per_s"])
            steady["dataset_events"] = events
            run.record(lag.PART, backend, steady)
            memory = service.memory()
        with run.lock:
            for part in (queries.PART, commands.PART, lag.PART):
                run.results[part][backend]["memory"] = memory
            run.save()


def main() -> int:
    args = parser(__doc__).parse_args()
    run = make_run(args)
    steps = [("rebuild, queries, commands, lag", data_parts), ("import", imports.step)]
    return execute(run, steps, args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
