"""Part 3: query latency on read models holding the generated deals.

After the rebuild of part 2, the service (API plus a separate worker) answers at
``query_clients`` concurrent clients (20 in the full run), one endpoint after another:
the board of each pipeline, deal list pages (first pages and pages further on via
cursors), single deals, deal histories, and every report under ``/v1/reports/`` that
the API offers at the time (read from its OpenAPI document, so new reports are
measured without changing the suite), each for each pipeline. The board and the reports
are answered from a cache while the read models stand still, so they are measured twice:
as clients get them, and with ``Cache-Control: no-cache`` (computed for every request).

Run alone: ``python -m bench.queries [--smoke] [--events N]`` (generates and rebuilds
its own data first, and records part 2's figures as well).
"""

from __future__ import annotations

import random
import sys
from typing import Any
from urllib.parse import urlencode

import httpx

from bench import rebuild
from bench.common import (
    TOKEN,
    BenchError,
    LoadGenerator,
    Run,
    Service,
    fresh_database,
    running_service,
    say,
)

PART = "queries"
SAMPLE_PAGES = 3  # deal-list pages read per pipeline to sample deal ids and cursors
SAMPLE_DEALS = 300


def _get(client: httpx.Client, url: str) -> Any:
    response = client.get(url)
    if response.status_code != 200:
        raise BenchError(f"GET {url} -> {response.status_code}: {response.text[:300]}")
    return response.json()


def endpoints(service: Service, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The URLs to measure, from the data the service holds."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=service.base_url, headers=headers, timeout=120) as client:
        pipelines = [p["id"] for p in _get(client, "/v1/pipelines")["data"]]
        deal_ids: list[str] = []
        list_urls: list[str] = []
        for pipeline in pipelines:
            first = f"/v1/deals?{urlencode({'pipeline_id': pipeline, 'limit': 100})}"
            list_urls.append(first)
            list_urls.append(first + "&status=open")
            cursor = None
            for _ in range(SAMPLE_PAGES):
                params: dict[str, Any] = {"pipeline_id": pipeline, "limit": 500}
                if cursor:
                    params["cursor"] = cursor
                page = _get(client, f"/v1/deals?{urlencode(params)}")
                deal_ids += [d["id"] for d in page["data"]]
                cursor = page.get("next_cursor")
                if not cursor:
                    break
                list_urls.append(
                    f"/v1/deals?{urlencode({'pipeline_id': pipeline, 'limit': 100})}"
                    f"&cursor={cursor}"
                )
        if not pipelines or not deal_ids:
            raise BenchError("the service holds no pipelines or deals to query")
        reports = sorted(
            path
            for path, ops in _get(client, "/openapi.json")["paths"].items()
            if path.startswith("/v1/reports/") and "get" in ops and "{" not in path
        )
    sample = rng.sample(deal_ids, min(SAMPLE_DEALS, len(deal_ids)))
    found: list[dict[str, Any]] = [
        {"name": "board", "urls": [f"/v1/pipelines/{p}/board" for p in pipelines]},
        {"name": "deal list page", "urls": list_urls},
        {"name": "deal", "urls": [f"/v1/deals/{d}" for d in sample]},
        {"name": "deal history", "urls": [f"/v1/deals/{d}/history" for d in sample]},
    ]
    for path in reports:
        name = "report " + path.rsplit("/", 1)[-1]
        found.append({"name": name, "urls": [f"{path}?pipeline_id={p}" for p in pipelines]})
    # The board and reports are cached by read-model position; the same URLs again with
    # Cache-Control: no-cache measure the computation itself (every request a miss).
    found += [
        {**e, "name": f"{e['name']} (no-cache)", "headers": {"Cache-Control": "no-cache"}}
        for e in found
        if e["name"] == "board" or e["name"].startswith("report ")
    ]
    context = {"pipelines": len(pipelines), "sampled_deals": len(sample), "reports": reports}
    return found, context


def measure(run: Run, service: Service, gen: LoadGenerator) -> dict[str, Any]:
    sizes = run.sizes
    service.wait_caught_up()
    found, context = endpoints(service, sizes.seed)
    say(f"querying {len(found)} endpoints at {sizes.query_clients} concurrent clients")
    answer = gen.run(
        op="queries",
        base_url=service.base_url,
        token=TOKEN,
        concurrency=sizes.query_clients,
        endpoints=found,
        duration_s=sizes.query_s,
        max_requests=sizes.query_max_requests,
        warmup_requests=sizes.query_clients,
    )
    results = answer["endpoints"]
    for name, stats in results.items():
        if stats.get("errors"):
            detail = f"{name}: {stats['errors']} e.g. {stats.get('error_examples')}"
            if sizes.smoke:
                raise BenchError(detail)
            say("WARNING " + detail)
        say(
            f"{name:<28} p50 {stats.get('p50_ms', float('nan')):8.1f} ms   "
            f"p99 {stats.get('p99_ms', float('nan')):8.1f} ms   "
            f"{stats.get('throughput_per_s', 0):7.1f}/s"
        )
    return {"clients": sizes.query_clients, **context, "endpoints": results}


def step(run: Run, backend: str, gen: LoadGenerator) -> None:
    say(f"== part 3, query latency on {backend} (after part 2 for its data)")
    with fresh_database(backend) as db:
        rebuilt = rebuild.measure(run, db)
        run.record(rebuild.PART, backend, rebuilt)
        with running_service(db, run.log_dir(f"{PART}-{backend}")) as service:
            found = measure(run, service, gen)
            found["deals"] = rebuilt["generated"]["deals"]
            found["memory"] = service.memory()
        run.record(PART, backend, found)


if __name__ == "__main__":
    from bench.cli import part_main

    sys.exit(part_main(step, __doc__))
