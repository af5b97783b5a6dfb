"""Event versions: the registered upcasters, as the library and the record decoder run them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent, Transcoder
from eventsourcing.utils import get_topic

from libs.application.app import DealtrailApplication
from libs.domain.deal import Deal
from libs.domain.owner import Owner
from libs.domain.pipeline import Pipeline
from libs.domain.state import deal_after, pipeline_after
from libs.domain.upcasting import UPCASTERS, NewerEventVersion, current_version, upcast

WHEN = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def v1_pipeline() -> dict[str, Any]:
    """``PipelineDefined`` as the first release stored it: no rules, no requirements."""
    return {
        "name": "Legacy",
        "currency": "EUR",
        "stages": [
            {"id": "new", "name": "New", "probability": 10, "rotting_days": None},
            {"id": "quote", "name": "Quote", "probability": 50, "rotting_days": 14},
        ],
        "lost_reasons": ["Price"],
        "actor": "ann",
        "occurred_at": WHEN,
    }


def v1_deal_created() -> dict[str, Any]:
    """``DealCreated`` before deals had an account, a product or a note."""
    return {
        "pipeline_id": uuid4(),
        "title": "Old deal",
        "value": Decimal("500.00"),
        "owner": "rita",
        "stage_id": "new",
        "stage_name": "New",
        "expected_close_date": None,
        "external_id": None,
        "actor": "rita",
        "occurred_at": WHEN,
    }


def test_every_registered_event_type_is_versioned_on_its_aggregate_class() -> None:
    classes = {
        name: cls.__dict__[name]
        for cls in (Pipeline, Deal, Owner)
        for name in UPCASTERS
        if name in cls.__dict__
    }
    assert set(classes) == set(UPCASTERS)
    for name, event_class in classes.items():
        assert event_class.class_version == current_version(name) == len(UPCASTERS[name]) + 1
        for n, step in enumerate(UPCASTERS[name], start=1):
            assert getattr(event_class, f"upcast_v{n}_v{n + 1}") is step
    assert "class_version" not in vars(Deal.__dict__["DealWon"])
    assert current_version("DealWon") == 1


def test_a_version_1_pipeline_and_deal_fold_into_the_state_of_today() -> None:
    pipeline = pipeline_after(
        None, "PipelineDefined", upcast("PipelineDefined", v1_pipeline()), WHEN
    )
    assert pipeline is not None
    assert (pipeline.allow_skipping_stages, pipeline.allow_moving_back) == (True, True)
    assert pipeline.stale_after_days is None
    assert [s.requires for s in pipeline.stages] == [(), ()]
    assert pipeline.stages[1].rotting_days == 14

    deal = deal_after(None, "DealCreated", upcast("DealCreated", v1_deal_created()), WHEN)
    assert deal is not None
    assert (deal.account, deal.product) == (None, None)
    assert deal.value == Decimal("500.00")


def test_upcasting_a_current_event_changes_nothing_but_takes_its_version_out() -> None:
    state = {**upcast("DealCreated", v1_deal_created()), "account": "ACME", "note": "hi"}
    stored = {**state, "class_version": 2}
    assert upcast("DealCreated", dict(stored)) == state
    reopened = {
        "previous_status": "lost",
        "from_stage_id": "quote",
        "from_stage_name": "Quote",
        "stage_id": "new",
        "stage_name": "New",
        "note": "back",
        "class_version": 2,
    }
    assert upcast("DealReopened", dict(reopened)) == {
        k: v for k, v in reopened.items() if k != "class_version"
    }


def test_a_version_1_reopening_says_its_earlier_stage_is_unknown() -> None:
    state = upcast(
        "DealReopened", {"previous_status": "won", "stage_id": "new", "stage_name": "New"}
    )
    assert state["from_stage_id"] is None and state["from_stage_name"] is None
    assert state["note"] is None


@pytest.mark.parametrize("version", [3, 0, "2", None])
def test_a_version_this_release_does_not_know_is_refused(version: object) -> None:
    with pytest.raises(NewerEventVersion, match="DealCreated is stored at version"):
        upcast("DealCreated", {**v1_deal_created(), "class_version": version})
    with pytest.raises(NewerEventVersion):
        upcast("DealWon", {"stage_id": "new", "class_version": 2})


def _mapper() -> Mapper[Any]:
    app = DealtrailApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        return app.mapper
    finally:
        app.close()


def test_the_library_upcasts_a_stored_version_1_event_with_the_same_steps() -> None:
    """What ``Mapper.to_domain_event`` does when the application loads an aggregate."""
    mapper = _mapper()
    transcoder: Transcoder = mapper.transcoder
    assert isinstance(transcoder, JSONTranscoder)
    state = {"timestamp": WHEN, "originator_topic": get_topic(Deal), **v1_deal_created()}
    stored = StoredEvent(
        originator_id=uuid4(),
        originator_version=1,
        topic=get_topic(Deal.__dict__["DealCreated"]),
        state=transcoder.encode(state),
    )
    event = mapper.to_domain_event(stored)
    assert (event.account, event.product, event.note) == (None, None, None)  # type: ignore[attr-defined]
    # and it stores new events of the type with their version
    assert b'"class_version":2' in mapper.to_stored_event(event).state
