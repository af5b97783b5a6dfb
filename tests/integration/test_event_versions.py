"""Events stored in older shapes, read through both paths: aggregates and projections.

The events are written raw into the store (the recorder's insert, as an older release
wrote them: no ``class_version``, fields that came later missing), then read by the
application when it loads the aggregates for a command, and by the projection worker for
the read models the API answers from.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import httpx
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from libs.application.app import DealtrailApplication
from libs.application.records import decode
from libs.domain.deal import Deal
from libs.domain.pipeline import Pipeline
from services.projections.catalog import all_projections
from services.projections.runner import projection_status
from services.projections.source import EventSource
from tests.conftest import auth

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def store_raw(
    app: DealtrailApplication,
    aggregate: type,
    events: list[tuple[str, dict[str, Any]]],
    aggregate_id: UUID,
) -> int:
    """Insert events of one aggregate exactly as given (versions 1, 2, ...); the position
    of the last one."""
    transcoder = app.mapper.transcoder
    stored = []
    for version, (name, state) in enumerate(events, start=1):
        when = T0 + timedelta(hours=version)
        full = {"timestamp": when, "occurred_at": when, "actor": "ann", **state}
        if version == 1:
            full["originator_topic"] = get_topic(aggregate)
        stored.append(
            StoredEvent(
                originator_id=aggregate_id,
                originator_version=version,
                topic=get_topic(aggregate.__dict__[name]),
                state=transcoder.encode(full),
            )
        )
    app.recorder.insert_events(stored)
    return app.head_position()


def legacy_history(app: DealtrailApplication) -> tuple[UUID, UUID, int]:
    """A pipeline and a deal as the first release stored them: defined, created, advanced,
    lost, reopened. Returns their ids and the head position."""
    pipeline_id, deal_id = uuid4(), uuid4()
    store_raw(
        app,
        Pipeline,
        [
            (
                "PipelineDefined",
                {
                    "name": "Legacy",
                    "currency": "EUR",
                    "stages": [
                        {"id": "new", "name": "New", "probability": 10, "rotting_days": None},
                        {"id": "quote", "name": "Quote", "probability": 50, "rotting_days": 30},
                        {
                            "id": "nego",
                            "name": "Negotiation",
                            "probability": 80,
                            "rotting_days": None,
                        },
                    ],
                    "lost_reasons": ["Price", "Timing"],
                },
            )
        ],
        pipeline_id,
    )
    head = store_raw(
        app,
        Deal,
        [
            (
                "DealCreated",
                {
                    "pipeline_id": pipeline_id,
                    "title": "Legacy deal",
                    "value": Decimal("1200.00"),
                    "owner": "rita",
                    "stage_id": "new",
                    "stage_name": "New",
                    "expected_close_date": None,
                    "external_id": "legacy-1",
                },
            ),
            (
                "StageAdvanced",
                {
                    "from_stage_id": "new",
                    "from_stage_name": "New",
                    "to_stage_id": "quote",
                    "to_stage_name": "Quote",
                    "direction": "forward",
                },
            ),
            (
                "DealLost",
                {"reason": "Price", "note": None, "stage_id": "quote", "stage_name": "Quote"},
            ),
            (
                "DealReopened",
                {"previous_status": "lost", "stage_id": "quote", "stage_name": "Quote"},
            ),
        ],
        deal_id,
    )
    return pipeline_id, deal_id, head


async def test_old_shape_events_load_into_aggregates_and_project_into_read_models(
    api: httpx.AsyncClient,
) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    app: DealtrailApplication = runtime.application
    pipeline_id, deal_id, head = await asyncio.to_thread(legacy_history, app)
    raw = await asyncio.to_thread(app.recorder.select_notifications, 1, 10)
    assert raw and not any(b"class_version" in n.state for n in raw)  # stored as version 1

    # path 1: the application loads the aggregates through the library's upcasting
    deal = await asyncio.to_thread(app.get_deal, deal_id)
    assert (deal.status, deal.stage_id, deal.account, deal.product) == ("open", "quote", None, None)
    pipeline = await asyncio.to_thread(app.get_pipeline, pipeline_id)
    assert pipeline.allow_skipping_stages and pipeline.allow_moving_back
    assert [s.requires for s in pipeline.stages] == [(), (), ()]

    # path 2: the projections read the same events through the record decoder
    r = await api.get(f"/v1/deals/{deal_id}", params={"min_position": head}, headers=auth("admin"))
    assert r.status_code == 200, r.text
    now = r.json()
    assert (now["status"], now["stage"]["id"], now["account"]) == ("open", "quote", None)
    assert now["value"] == "1200.00"
    r = await api.get(
        f"/v1/pipelines/{pipeline_id}", params={"min_position": head}, headers=auth("admin")
    )
    assert r.status_code == 200, r.text
    assert r.json()["allow_moving_back"] is True
    assert [s["requires"] for s in r.json()["stages"]] == [[], [], []]
    r = await api.get(
        f"/v1/deals/{deal_id}/history", params={"min_position": head}, headers=auth("admin")
    )
    assert r.status_code == 200, r.text
    history = {e["event_type"]: e for e in r.json()["data"]}
    assert set(history) == {"DealCreated", "StageAdvanced", "DealLost", "DealReopened"}
    # a version-1 reopening did not say where the deal closed: shown as unknown
    assert history["DealReopened"]["changes"]["stage_id"] == {"before": None, "after": "quote"}
    r = await api.get(
        "/v1/reports/stage-durations",
        params={"pipeline_id": str(pipeline_id)},
        headers=auth("admin"),
    )
    assert r.status_code == 200, r.text

    # a command on the old deal: loaded through the upcasters, its new event is version 2
    r = await api.post(
        f"/v1/deals/{deal_id}/advance", json={"stage": "Negotiation"}, headers=auth("admin")
    )
    assert r.status_code == 200, r.text
    newest = (await asyncio.to_thread(app.recorder.select_notifications, r.json()["position"], 1))[
        0
    ]
    assert b'"class_version":2' in newest.state
    assert decode(app.mapper, newest).class_version == 2
    assert decode(app.mapper, newest, as_stored=True).class_version == 2
    old = decode(app.mapper, raw[1], as_stored=True)
    assert old.class_version == 1 and "account" not in old.payload
    assert decode(app.mapper, raw[1]).payload["account"] is None


async def test_an_event_of_a_newer_version_is_parked_not_misread(api: httpx.AsyncClient) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    app: DealtrailApplication = runtime.application
    r = await api.post(
        "/v1/pipelines", json={"name": "P", "currency": "EUR"}, headers=auth("admin")
    )
    pipeline_id = r.json()["id"]
    r = await api.post(
        "/v1/deals",
        json={"pipeline_id": pipeline_id, "title": "D", "value": "1"},
        headers=auth("admin"),
    )
    deal_id = UUID(r.json()["id"])
    # a DealWon written by a release whose DealWon is at version 2
    when = datetime(2026, 6, 1, 11, 0, tzinfo=UTC)
    state = {
        "timestamp": when,
        "occurred_at": when,
        "actor": "ann",
        "stage_id": "deal-created",
        "stage_name": "Deal created",
        "won_value": {"EUR": "1"},
        "class_version": 2,
    }
    stored = (
        StoredEvent(
            originator_id=deal_id,
            originator_version=2,
            topic=get_topic(Deal.__dict__["DealWon"]),
            state=app.mapper.transcoder.encode(state),
        ),
    )
    await asyncio.to_thread(app.recorder.insert_events, stored)
    head = await asyncio.to_thread(app.head_position)
    r = await api.get(f"/v1/deals/{deal_id}", params={"min_position": head}, headers=auth("admin"))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "open"  # not applied as the DealWon this release knows
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        rows = await projection_status(runtime.engine, EventSource(app))
        if all(row["position"] >= head for row in rows):
            break
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.05)
    # each projection that reads DealWon parks it; one that ignores deal events has nothing to park
    readers = {p.name for p in all_projections() if "DealWon" in p.handles}
    assert readers >= {"current_pipeline", "stage_durations", "audit_history", "analytics"}
    assert {row["name"]: row["parked"] for row in rows} == {
        row["name"]: int(row["name"] in readers) for row in rows
    }, rows
