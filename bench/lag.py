"""Part 4: projection lag under a steady command rate.

Commands (the same mix as part 1) go to the service open-loop at ``lag_rate`` per
second (200 in the full run) for ``lag_s`` seconds (60). Inside the load generator a
probe reads ``projection_state`` every 5 ms, straight from the database; a command's
lag is the time from its answer (which carries its log position) until the probe sees
the read models at that position: every read model ("all read models") and each one
on its own. The probe's interval bounds the resolution.

In the full run this runs on the database of parts 2 and 3 (read models holding the
generated deals). Alone, ``python -m bench.lag`` seeds a fresh database with a few
thousand generated deals first.
"""

from __future__ import annotations

import sys
from typing import Any

from bench.common import (
    TOKEN,
    BenchError,
    Database,
    LoadGenerator,
    Run,
    Service,
    fresh_database,
    running_service,
    say,
)

PART = "lag"
SEED_EVENTS_ALONE = 20_000


def steady(
    run: Run, db: Database, service: Service, gen: LoadGenerator, rate: float, pipelines: Any
) -> dict[str, Any]:
    """Commands open-loop at ``rate`` for ``lag_s`` seconds, with the position probe."""
    sizes = run.sizes
    service.wait_caught_up()
    label = f"{db.backend} steady {rate:g} commands/s for {sizes.lag_s:g}s"
    result = gen.run(
        op="commands",
        mode="open",
        base_url=service.base_url,
        token=TOKEN,
        pipelines=pipelines,
        rate=rate,
        warmup_s=0.0,
        duration_s=sizes.lag_s,
        seed=4242,
        probe=db.probe(),
        label=label,
    )
    errors = result.get("errors") or {}
    if errors:
        detail = f"{label}: non-2xx answers {errors}; e.g. {result.get('error_examples')}"
        if sizes.smoke:
            raise BenchError(detail)
        say("WARNING " + detail)
    lag = result.pop("lag")
    every = lag["all_read_models"]
    say(
        f"{label}: {result['throughput_per_s']:g} answered/s; lag p50 "
        f"{every.get('p50_ms', float('nan')):.1f} ms, p99 {every.get('p99_ms', float('nan')):.1f}"
        f" ms; command p99 {result['latency'].get('p99_ms', float('nan')):.1f} ms"
    )
    if every.get("not_reached"):
        say(f"WARNING {every['not_reached']} commands never showed up in the read models")
    return {"rate_per_s": rate, "seconds": sizes.lag_s, "lag": lag, "commands": result}


def measure(
    run: Run,
    db: Database,
    service: Service,
    gen: LoadGenerator,
    saturation: float | None = None,
) -> dict[str, Any]:
    """Lag at the target rate; and, when the service cannot answer that many commands
    (``saturation``, from part 1, is lower), also at half of its saturation, where the
    worker is not simply measuring a backlog."""
    pipelines = gen.run(op="pipelines", base_url=service.base_url, token=TOKEN, prefix="Lag")
    pipelines = pipelines["pipelines"]
    figures = steady(run, db, service, gen, run.sizes.lag_rate, pipelines)
    if saturation and saturation < run.sizes.lag_rate:
        figures["below_saturation"] = steady(
            run, db, service, gen, max(1.0, round(saturation / 2, 1)), pipelines
        )
    figures["memory"] = service.memory()
    return figures


def step(run: Run, backend: str, gen: LoadGenerator) -> None:
    from bench import rebuild

    say(f"== part 4, projection lag on {backend}")
    with fresh_database(backend) as db:
        seed = min(SEED_EVENTS_ALONE, run.sizes.events_for(backend))
        generated = rebuild.generate_events(db, seed, run.sizes.seed)
        with running_service(db, run.log_dir(f"{PART}-{backend}")) as service:
            service.wait_caught_up()
            figures = measure(run, db, service, gen, run.sizes.lag_saturation)
        figures["dataset_events"] = generated["events"]
        run.record(PART, backend, figures)


if __name__ == "__main__":
    from bench.cli import part_main

    sys.exit(part_main(step, __doc__))
