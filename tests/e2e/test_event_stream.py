"""``GET /v1/events/stream``: server-sent events of the log from a position, following new
events, resuming from ``Last-Event-ID`` with nothing skipped or repeated, filtered by type;
who may read it, what it refuses, and how many may be open at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.feeds.stream import LogStream, StreamHub
from services.projections.source import EventSource
from tests.conftest import Backend, auth
from tests.e2e.test_query_cache import runtime_of
from tests.started import started_service

WAIT_SECONDS = 30.0


@dataclass
class Sse:
    """One server-sent event as a client sees it."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads("\n".join(self.data))


async def sse_blocks(response: httpx.Response) -> AsyncIterator[Sse]:
    """The blocks of a text/event-stream, as the SSE specification splits them."""
    block = Sse()
    async for line in response.aiter_lines():
        if line == "":
            yield block
            block = Sse()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            block.comments.append(value)
        elif name == "id":
            block.id = value
        elif name == "event":
            block.event = value
        elif name == "data":
            block.data.append(value)


async def read_events(
    client: httpx.AsyncClient,
    count: int,
    *,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> list[Sse]:
    """The first ``count`` events of a stream (comments and id-only blocks left out)."""
    got: list[Sse] = []
    async with asyncio.timeout(WAIT_SECONDS):
        async with client.stream(
            "GET", "/v1/events/stream", params=params, headers=headers or auth("auditor")
        ) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            async for block in sse_blocks(response):
                if block.data:
                    got.append(block)
                    if len(got) == count:
                        break
    return got


async def write_some(client: httpx.AsyncClient, deals: int) -> int:
    """A pipeline (on first use) and ``deals`` deals; the position of the last event."""
    pipelines = await client.get("/v1/pipelines", headers=auth("admin"))
    items = pipelines.json()["data"] if pipelines.status_code == 200 else []
    if items:
        pipeline_id = items[0]["id"]
        position = 0
    else:
        made = await client.post(
            "/v1/pipelines", json={"name": "Sales", "currency": "EUR"}, headers=auth("admin")
        )
        assert made.status_code == 201, made.text
        pipeline_id, position = made.json()["id"], made.json()["position"]
    for n in range(deals):
        body = {"pipeline_id": pipeline_id, "title": f"Deal {n}", "value": "100"}
        created = await client.post("/v1/deals", json=body, headers=auth("rep"))
        assert created.status_code == 201, created.text
        position = created.json()["position"]
    return int(position)


async def no_streams_open(client: httpx.AsyncClient) -> None:
    """Wait until the service has noticed that every stream's client went away."""
    deadline = time.monotonic() + WAIT_SECONDS
    while "dealtrail_sse_streams_open 0.0" not in (await client.get("/metrics")).text:
        assert time.monotonic() < deadline, "closed streams stayed counted as open"
        await asyncio.sleep(0.1)


async def test_a_stream_sends_the_log_follows_new_events_and_resumes_from_last_event_id(
    backend: Backend, tmp_path: Path
) -> None:
    with started_service(backend, tmp_path, DEALTRAIL_SSE_MAX_STREAMS="2") as service:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
            head = await write_some(client, 3)
            exported = await client.get("/v1/audit/export", headers=auth("admin"))
            lines = [json.loads(line) for line in exported.text.splitlines()]
            log = [line for line in lines if "position" in line and "type" in line]
            assert log[-1]["position"] == head

            # from the start: every event, id = position, event = type, data = the event
            first = await read_events(client, len(log), after=0)
            assert [int(e.id or 0) for e in first] == [line["position"] for line in log]
            assert [e.event for e in first] == [line["type"] for line in log]
            for event, line in zip(first, log, strict=True):
                body = dict(event.json)
                deal = body.pop("deal", None)
                assert body == {k: v for k, v in line.items() if k in body}
                assert set(body) >= {"position", "type", "aggregate_id", "payload"}
                if line["aggregate_type"] == "Deal":  # the deal as it stood after the event
                    assert deal is not None
                    assert deal["id"] == line["aggregate_id"]
                    assert deal["version"] == line["version"]

            # from a position, and following: events stored after the stream opened arrive
            middle = log[len(log) // 2]["position"]
            expected_after = [line["position"] for line in log if line["position"] > middle]
            got: list[Sse] = []
            async with asyncio.timeout(WAIT_SECONDS):
                async with client.stream(
                    "GET",
                    "/v1/events/stream",
                    params={"after": middle},
                    headers=auth("admin"),
                ) as response:
                    assert response.status_code == 200
                    wrote = False
                    async for block in sse_blocks(response):
                        if not block.data:
                            continue
                        got.append(block)
                        if len(got) == len(expected_after) and not wrote:
                            wrote = True
                            newest = await write_some(client, 2)
                        if wrote and int(got[-1].id or 0) == newest:
                            break
            positions = [int(e.id or 0) for e in got]
            assert positions[: len(expected_after)] == expected_after
            assert len(positions) == len(set(positions))
            assert positions == sorted(positions)
            assert positions[-1] == newest
            assert [e.event for e in got[len(expected_after) :]] == ["DealCreated"] * 2

            # resume: Last-Event-ID replaces `after`; the next event is the one after it
            everything = [line["position"] for line in log] + positions[len(expected_after) :]
            resume_from = everything[3]
            resumed = await read_events(
                client,
                len(everything) - 4,
                after=0,
                headers={**auth("auditor"), "Last-Event-ID": str(resume_from)},
            )
            assert [int(e.id or 0) for e in resumed] == everything[4:]

            # only the types asked for
            created = await read_events(client, 5, types="DealCreated")
            assert {e.event for e in created} == {"DealCreated"}
            assert len(created) == 5

            # at most two streams open in this process: the third is refused, then allowed
            await no_streams_open(client)
            async with (
                client.stream("GET", "/v1/events/stream", headers=auth("admin")) as one,
                client.stream("GET", "/v1/events/stream", headers=auth("admin")) as two,
            ):
                assert one.status_code == two.status_code == 200
                third = await client.get("/v1/events/stream", headers=auth("admin"))
                assert third.status_code == 503, third.text
                assert third.json()["error"]["code"] == "too_many_streams"
                assert "Retry-After" in third.headers
                scraped = (await client.get("/metrics")).text
                assert "dealtrail_sse_streams_open 2.0" in scraped
            await no_streams_open(client)
            assert len(await read_events(client, 1)) == 1


async def test_only_auditors_and_admins_read_the_stream_and_bad_positions_are_named(
    api: httpx.AsyncClient,
) -> None:
    for who in ("rep", "manager"):
        refused = await api.get("/v1/events/stream", headers=auth(who))
        assert refused.status_code == 403, refused.text
    assert (await api.get("/v1/events/stream")).status_code == 401

    for after in ("-1", "x", str(2**63)):
        bad = await api.get("/v1/events/stream", params={"after": after}, headers=auth("admin"))
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"]["details"]["field"] == "after"
    for value in ("abc", "-3", "1.5", str(2**63)):
        bad = await api.get(
            "/v1/events/stream", headers={**auth("auditor"), "Last-Event-ID": value}
        )
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"]["details"]["field"] == "Last-Event-ID"
    unknown = await api.get(
        "/v1/events/stream", params={"types": "DealCreated,Nope"}, headers=auth("admin")
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "unknown_event_type"
    assert unknown.json()["error"]["details"]["field"] == "types"
    # nothing was left counted open by the refusals
    assert api.app.state.event_streams.open == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("types", [(), ("DealWon",)])
async def test_a_stream_ends_after_its_lifetime_and_a_filtered_one_moves_its_id_past_the_rest(
    api: httpx.AsyncClient, types: tuple[str, ...]
) -> None:
    await write_some(api, 2)
    runtime = runtime_of(api)
    hub = StreamHub(1)
    assert hub.try_open()
    stream = LogStream(
        EventSource(runtime.application),
        hub,
        after=0,
        types=types,
        lifetime_seconds=1.5,
        heartbeat_seconds=0.2,
        poll_seconds=0.05,
    )
    chunks = []
    async with asyncio.timeout(WAIT_SECONDS):
        async for chunk in stream.events():  # ends by itself
            chunks.append(chunk.decode())
    text = "".join(chunks)
    head = runtime.application.head_position()
    assert text.startswith("retry: ")
    assert ": heartbeat" in text
    events = EventSource(runtime.application).read(0, 1000)
    if types:
        assert "event: " not in text
        assert f"id: {head}\n" in text  # a reconnection starts after what it left out
    else:
        assert text.count("event: ") == len(events)
        assert f"id: {head}\n" in text
