"""The raw baseline: the same server stack (FastAPI on uvicorn) doing one asyncpg INSERT
of an event-like row per request, and nothing else.

It answers the same command routes as Dealtrail, so the load generator drives it
exactly as it drives the service: it parses the body, checks the bearer token, inserts
one row (shaped like the event store's: aggregate id, version, topic, JSON state, a
serial position) and answers with the id, version and position. Run it with
``python -m uvicorn bench.baseline_app:app`` and ``BENCH_BASELINE_DSN`` set.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from fastapi import FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, ConfigDict

TABLE = "baseline_events"
CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    notification_id bigserial,
    PRIMARY KEY (originator_id, originator_version)
);
CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_position ON {TABLE} (notification_id);
"""
INSERT = (
    f"INSERT INTO {TABLE} (originator_id, originator_version, topic, state) "
    "VALUES ($1, $2, $3, $4) RETURNING notification_id"
)

_versions = itertools.count(1)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PipelineIn(_Body):
    name: str
    currency: str


class DealIn(_Body):
    pipeline_id: uuid.UUID
    title: str
    value: Decimal
    expected_close_date: date | None = None
    account: str | None = None
    product: str | None = None


class AdvanceIn(_Body):
    stage: str


class LoseIn(_Body):
    reason: str
    note: str | None = None


class PatchIn(_Body):
    value: Decimal | None = None
    expected_close_date: date | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    size = int(os.environ.get("BENCH_BASELINE_POOL", "8"))
    pool = await asyncpg.create_pool(os.environ["BENCH_BASELINE_DSN"], min_size=size, max_size=size)
    async with pool.acquire() as conn:
        await conn.execute(CREATE)
    app.state.pool = pool
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(lifespan=lifespan)


def _check(authorization: str | None) -> str:
    token = os.environ.get("BENCH_BASELINE_TOKEN", "")
    if authorization != f"Bearer {token}":
        raise HTTPException(401, "unknown API token")
    return "bench-admin"


async def _record(
    request: Request, aggregate: uuid.UUID, topic: str, fields: dict[str, Any], actor: str
) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    state = {"timestamp": now, "occurred_at": now, "actor": actor, **fields}
    version = next(_versions)
    payload = json.dumps(state, default=str, separators=(",", ":")).encode()
    position = await request.app.state.pool.fetchval(INSERT, aggregate, version, topic, payload)
    return {"id": str(aggregate), "version": version, "position": position, **fields}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/pipelines", status_code=201)
async def define_pipeline(
    body: PipelineIn, request: Request, authorization: str | None = Header(default=None)
) -> dict[str, Any]:
    actor = _check(authorization)
    stages = [{"id": f"stage-{n}", "name": f"Stage {n}", "probability": 10 * n} for n in range(4)]
    reasons = ["Price", "Lost to competitor", "No budget", "Other"]
    fields = {**body.model_dump(), "stages": stages, "lost_reasons": reasons}
    return await _record(request, uuid.uuid4(), "Pipeline.PipelineDefined", fields, actor)


@app.post("/v1/deals", status_code=201)
async def create_deal(
    body: DealIn, request: Request, authorization: str | None = Header(default=None)
) -> dict[str, Any]:
    actor = _check(authorization)
    fields = {**body.model_dump(mode="json"), "owner": actor, "stage_id": "stage-0"}
    return await _record(request, uuid.uuid4(), "Deal.DealCreated", fields, actor)


@app.post("/v1/deals/{deal_id}/advance")
async def advance(
    deal_id: uuid.UUID,
    body: AdvanceIn,
    request: Request,
    authorization: str | None = Header(default=None),
) -> dict[str, Any]:
    actor = _check(authorization)
    fields = {"from_stage": "?", "to_stage": body.stage, "direction": "forward"}
    return await _record(request, deal_id, "Deal.StageAdvanced", fields, actor)


@app.post("/v1/deals/{deal_id}/win")
async def win(
    deal_id: uuid.UUID, request: Request, authorization: str | None = Header(default=None)
) -> dict[str, Any]:
    actor = _check(authorization)
    return await _record(request, deal_id, "Deal.DealWon", {"status": "won"}, actor)


@app.post("/v1/deals/{deal_id}/lose")
async def lose(
    deal_id: uuid.UUID,
    body: LoseIn,
    request: Request,
    authorization: str | None = Header(default=None),
) -> dict[str, Any]:
    actor = _check(authorization)
    fields = {"status": "lost", **body.model_dump()}
    return await _record(request, deal_id, "Deal.DealLost", fields, actor)


@app.patch("/v1/deals/{deal_id}")
async def update(
    deal_id: uuid.UUID,
    body: PatchIn,
    request: Request,
    authorization: str | None = Header(default=None),
) -> dict[str, Any]:
    actor = _check(authorization)
    fields = body.model_dump(mode="json", exclude_none=True)
    return await _record(request, deal_id, "Deal.DealUpdated", fields, actor)
