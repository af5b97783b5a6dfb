"""Build the golden history and dump every read-model table and query answer as JSON."""

from __future__ import annotations

import gzip
import json
import tempfile
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from services.demo.generator import generate
from services.projections.catalog import all_projections
from tests.conftest import Backend, TestClock, auth, client_for
from tests.integration.test_read_models import states, table_rows

HERE = Path(__file__).parent
DEALS = 2000
SEED = 42
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # the service clock throughout
END = datetime(2026, 5, 31, tzinfo=UTC)  # the generated history ends here
# Server times (when an event was stored): they differ from run to run by definition.
SERVER_TIMES = frozenset({"recorded_at", "updated_at"})
REPORTS = (
    "stage-durations",
    "funnel",
    "win-rate",
    "lost-reasons",
    "forecast",
    "cycle-time",
    "velocity",
    "owners",
    "stale-deals",
    "activities",
    "response-time",
)
PERIOD = {"from": "2026-01-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}


def canonical(value: Any, key: str = "") -> Any:
    """The same value on both backends: exact decimals, UTC moments, server times masked."""
    if key in SERVER_TIMES and value is not None:
        return "(server time)"
    if isinstance(value, dict):
        return {str(k): canonical(v, str(k)) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and key in ("stages", "removed_stages", "state", "changes"):
        return canonical(json.loads(value))
    return value


async def tables(engine: Any) -> dict[str, list[Any]]:
    """Every read-model table of the active generations, rows by primary key."""
    generations = {name: s.generation for name, s in (await states(engine)).items()}
    out: dict[str, list[Any]] = {}
    for projection in all_projections():
        for key in projection.tables(generations[projection.name]):
            rows = await table_rows(engine, projection, key)
            out[f"{projection.name}.{key}"] = [canonical(row) for row in rows]
    return out


async def answers(api: httpx.AsyncClient) -> dict[str, Any]:
    """The board of each pipeline, now and as of a past moment, every report (all
    pipelines, each pipeline, and each over a period), the first overdue activities and
    the first open deals with nothing planned, as JSON."""
    headers = auth("manager")

    async def get(path: str, **params: Any) -> Any:
        r = await api.get(path, params=params, headers=headers)
        assert r.status_code == 200, (path, params, r.text)
        return canonical(r.json())

    pipelines = (await get("/v1/pipelines"))["data"]
    out: dict[str, Any] = {}
    for pipeline in sorted(pipelines, key=lambda p: p["name"]):
        pid, name = pipeline["id"], pipeline["name"]
        out[f"board {name}"] = await get(f"/v1/pipelines/{pid}/board", per_stage=5)
        out[f"board {name} as of 2026-03-01"] = await get(
            f"/v1/pipelines/{pid}/board", per_stage=5, as_of="2026-03-01T00:00:00Z"
        )
        for report in REPORTS:
            out[f"{report} {name}"] = await get(f"/v1/reports/{report}", pipeline_id=pid)
            out[f"{report} {name} Q1"] = await get(
                f"/v1/reports/{report}", pipeline_id=pid, **PERIOD
            )
    for report in REPORTS:
        if report not in ("stage-durations", "funnel"):
            out[f"{report} all pipelines"] = await get(f"/v1/reports/{report}")
    out["activities overdue"] = await get("/v1/activities", status="overdue", limit=50)
    out["deals without a next step"] = await get("/v1/deals", has_next_activity="false", limit=50)
    return out


async def build(backend: Backend) -> dict[str, Any]:
    """The golden history on ``backend``: its tables and answers."""
    with tempfile.TemporaryDirectory() as data:
        settings = backend.settings(Path(data), DEALTRAIL_READ_WAIT_SECONDS=60)
        async with client_for(settings, TestClock(NOW)) as api:
            runtime = api.app.state.runtime  # type: ignore[attr-defined]
            generate(runtime.application, deals=DEALS, seed=SEED, end=END)
            head = runtime.application.head_position()
            r = await api.get("/v1/deals", params={"min_position": head}, headers=auth("admin"))
            assert r.status_code == 200, r.text
            await runtime.worker.catch_up()
            return {"tables": await tables(runtime.engine), "answers": await answers(api)}


def path(kind: str) -> Path:
    return HERE / f"{kind}.json.gz"


def write(golden: dict[str, Any]) -> None:
    for kind, content in golden.items():
        text = json.dumps(content, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        text = text.replace("},{", "},\n{")  # a row a line: readable diffs of the text
        path(kind).write_bytes(gzip.compress(text.encode(), mtime=0))


def read(kind: str) -> Any:
    return json.loads(gzip.decompress(path(kind).read_bytes()))
