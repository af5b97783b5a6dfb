"""Deal commands read their pipeline from a per-process cache; a pipeline changed by
another process (another API replica on the same database) is never decided on from the
old copy: the append checks the pipeline's version and the command is decided again."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from libs.application.app import DealtrailApplication
from libs.application.failures import ReadChanged
from libs.application.handlers import handle
from libs.domain.actors import Actor, Role
from libs.domain.commands import CreateDeal, DefinePipeline
from tests.conftest import PG_URL, Backend, TestClock, auth, client_for


async def test_a_pipeline_changed_by_another_process_is_seen_by_the_next_deal_command(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    first_settings = backend.settings(tmp_path / "first")
    second_settings = backend.settings(tmp_path / "second", DEALTRAIL_EMBEDDED_WORKER=False)
    async with (
        client_for(first_settings, clock) as first,
        client_for(second_settings, clock) as second,
    ):
        r = await first.post(
            "/v1/pipelines", json={"name": "New business", "currency": "EUR"}, headers=auth("admin")
        )
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        stages = [s["id"] for s in r.json()["stages"]]
        deals = []
        for _ in range(3):  # the first process reads (and keeps) the pipeline
            body = {"pipeline_id": pid, "title": "ACME", "value": "1000.00"}
            r = await first.post("/v1/deals", json=body, headers=auth("rep"))
            assert r.status_code == 201, r.text
            deals.append(r.json())

        # The second process adds a lost reason: the first process's copy would refuse it,
        # but a refusal is never given from an old copy.
        r = await second.post(
            f"/v1/pipelines/{pid}/lost-reasons", json={"reason": "Legal"}, headers=auth("admin")
        )
        assert r.status_code == 201, r.text
        r = await first.post(
            f"/v1/deals/{deals[0]['id']}/lose",
            json={"reason": "Legal"},
            headers={**auth("rep"), "If-Match": f'"{deals[0]["version"]}"'},
        )
        assert r.status_code == 200, r.text
        assert r.json()["lost_reason"] == "Legal"

        # The second process changes a stage's probability and retires a lost reason: the
        # first process's copy would accept both commands as they were.
        r = await second.patch(
            f"/v1/pipelines/{pid}/stages/{stages[1]}",
            json={"probability": 77},
            headers=auth("admin"),
        )
        assert r.status_code == 200, r.text
        r = await second.delete(f"/v1/pipelines/{pid}/lost-reasons/timing", headers=auth("admin"))
        assert r.status_code == 200, r.text
        r = await first.post(
            f"/v1/deals/{deals[1]['id']}/advance", json={"stage": stages[1]}, headers=auth("rep")
        )
        assert r.status_code == 200, r.text
        assert r.json()["probability"] == 77
        r = await first.post(
            f"/v1/deals/{deals[2]['id']}/lose", json={"reason": "Timing"}, headers=auth("rep")
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "unknown_lost_reason"


def test_an_append_decided_on_an_older_pipeline_stores_nothing(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    admin = Actor("ann", Role.ADMIN)
    settings = backend.settings(tmp_path / "data")
    if backend.schema:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{backend.schema}"')
    env = settings.store.eventsourcing_env(pool_size=2)
    application = DealtrailApplication(env=env, clock=clock)
    try:
        defined = handle(application, DefinePipeline(actor=admin, name="Renewals", currency="EUR"))
        pipeline = application.read_pipeline(defined.id)
        assert application.read_pipeline(defined.id) is pipeline  # kept
        created = handle(
            application,
            CreateDeal(actor=admin, pipeline_id=defined.id, title="ACME", value="10.00"),
        )
        deal = application.get_deal(created.id)
        stale = application.get_pipeline(defined.id)
        changed = application.get_pipeline(defined.id)
        changed.add_lost_reason("Legal", actor="ann", occurred_at=clock(), now=clock())
        application.record(changed)
        head = application.head_position()

        deal.win(stale, actor="ann", occurred_at=clock(), now=clock())
        with pytest.raises(ReadChanged):
            application.record(deal, read=[stale])

        assert application.head_position() == head
        assert application.get_deal(created.id).status == "open"
        assert application.read_pipeline(defined.id).version == changed.version
    finally:
        application.close()
