"""Pipelines that change over time, and the pipeline's rules every deal obeys (domain only).

Each pipeline change is one event on the Pipeline aggregate; deals are checked against the
pipeline as it is now (skipping stages, moving back, entry requirements), whoever the
writer is and whatever business time the command claims.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from libs.domain.deal import LOST, OPEN, WON, Deal
from libs.domain.errors import (
    AlreadyInStage,
    DealClosed,
    EntryRequirementsNotMet,
    InvalidInput,
    InvalidPipeline,
    MovingBackNotAllowed,
    NothingToChange,
    OccurredBeforePrevious,
    OccurredInFuture,
    PipelineMismatch,
    RuleViolation,
    SkippingStagesNotAllowed,
    StageHasOpenDeals,
    UnknownLostReason,
    UnknownStage,
)
from libs.domain.pipeline import Pipeline, Stage, default_template

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
DEFINED_AT = NOW - timedelta(days=60)
CREATED_AT = NOW - timedelta(days=30)

IDS = ["deal-created", "demo-or-meeting", "quote-sent", "negotiation"]


def day(n: float) -> datetime:
    """Business time ``n`` days after the deals are created (before NOW for n < 30)."""
    return CREATED_AT + timedelta(days=n)


def make_pipeline(**overrides: Any) -> Pipeline:
    template = default_template()
    kwargs: dict[str, Any] = {
        "name": "Sales",
        "currency": "EUR",
        "stages": template["stages"],
        "lost_reasons": template["lost_reasons"],
        "actor": "alice",
        "occurred_at": DEFINED_AT,
        "now": NOW,
    }
    kwargs.update(overrides)
    pipeline = Pipeline.define(**kwargs)
    pipeline.collect_events()
    return pipeline


def make_deal(pipeline: Pipeline, **overrides: Any) -> Deal:
    kwargs: dict[str, Any] = {
        "pipeline": pipeline,
        "title": "Acme renewal",
        "value": "12000",
        "owner": "bob",
        "actor": "bob",
        "occurred_at": CREATED_AT,
        "now": NOW,
    }
    kwargs.update(overrides)
    return Deal.create(**kwargs)


def with_requirements(stage_id: str, *requires: str, **overrides: Any) -> Pipeline:
    """The default pipeline where ``stage_id`` requires ``requires`` to be entered."""
    stages = [
        {**s, "requires": list(requires) if IDS[i] == stage_id else []}
        for i, s in enumerate(default_template()["stages"])
    ]
    return make_pipeline(stages=stages, **overrides)


def new_events(aggregate: Any) -> list[Any]:
    """The events a command just produced (and forget them, as a save would)."""
    return list(aggregate.collect_events())


def names(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def snapshot(aggregate: Any) -> tuple[int, list[str], dict[str, Any]]:
    """What a refused command must leave alone: version, pending events, state."""
    return aggregate.version, names(list(aggregate.pending_events)), aggregate.as_dict()


@pytest.fixture
def pipeline() -> Pipeline:
    return make_pipeline()


# --- adding a stage ----------------------------------------------------------------------


def test_adding_a_stage_at_a_position_inserts_it_there_and_records_stage_added(
    pipeline: Pipeline,
) -> None:
    stage = pipeline.add_stage(
        name="Proof of concept",
        probability=40,
        rotting_days=21,
        requires=["expected_close_date"],
        index=2,
        actor="max",
        occurred_at=day(1),
        now=NOW,
    )

    assert stage == Stage("proof-of-concept", "Proof of concept", 40, 21, ("expected_close_date",))
    assert [s.id for s in pipeline.stages] == [
        "deal-created",
        "demo-or-meeting",
        "proof-of-concept",
        "quote-sent",
        "negotiation",
    ]
    [added] = new_events(pipeline)
    assert type(added).__name__ == "StageAdded"
    assert added.index == 2
    assert added.stage == stage.as_dict()
    assert added.actor == "max"
    assert added.occurred_at == day(1)
    assert pipeline.version == 2
    assert pipeline.last_occurred_at == day(1)


def test_a_stage_added_without_a_position_goes_last(pipeline: Pipeline) -> None:
    pipeline.add_stage(name="Contract", probability=90, actor="max", occurred_at=day(1), now=NOW)

    assert pipeline.stages[-1].id == "contract"
    assert new_events(pipeline)[0].index == 4


@pytest.mark.parametrize("position", [-1, 5, "1", 1.0, True])
def test_a_stage_position_outside_the_pipeline_is_refused_naming_position(
    pipeline: Pipeline, position: Any
) -> None:
    before = snapshot(pipeline)

    with pytest.raises(InvalidInput) as exc:
        pipeline.add_stage(
            name="Contract",
            probability=90,
            index=position,
            actor="max",
            occurred_at=day(1),
            now=NOW,
        )

    assert exc.value.field == "position"
    assert snapshot(pipeline) == before


@pytest.mark.parametrize(
    ("stage", "field"),
    [
        ({"name": "Contract", "probability": 101}, "probability"),
        ({"name": "  ", "probability": 90}, "name"),
        ({"name": "Contract", "probability": 90, "rotting_days": 0}, "rotting_days"),
        ({"name": "Contract", "probability": 90, "requires": ["signature"]}, "requires"),
        ({"name": "Contract", "probability": 90, "stage_id": "Not A Slug"}, "id"),
    ],
)
def test_an_invalid_new_stage_is_refused_naming_the_field_as_the_request_spells_it(
    pipeline: Pipeline, stage: dict[str, Any], field: str
) -> None:
    before = snapshot(pipeline)

    with pytest.raises(InvalidInput) as exc:
        pipeline.add_stage(**stage, actor="max", occurred_at=day(1), now=NOW)

    assert exc.value.field == field
    assert snapshot(pipeline) == before


def test_a_new_stage_cannot_take_the_name_of_a_current_stage(pipeline: Pipeline) -> None:
    with pytest.raises(InvalidPipeline) as exc:
        pipeline.add_stage(
            name="quote SENT", probability=50, actor="max", occurred_at=day(1), now=NOW
        )

    assert exc.value.field == "name"
    assert "already used" in exc.value.message
    assert len(pipeline.stages) == 4


def test_a_new_stage_never_reuses_the_id_of_a_removed_stage(pipeline: Pipeline) -> None:
    pipeline.remove_stage("quote-sent", open_deals=0, actor="max", occurred_at=day(1), now=NOW)

    stage = pipeline.add_stage(
        name="Quote sent", probability=55, actor="max", occurred_at=day(2), now=NOW
    )

    assert stage.id == "quote-sent-2"
    assert pipeline.stage_name("quote-sent") == "Quote sent"
    assert pipeline.probability_of("quote-sent") == 50
    assert pipeline.probability_of("quote-sent-2") == 55


def test_a_new_stage_with_an_explicit_id_of_a_removed_stage_is_refused(pipeline: Pipeline) -> None:
    pipeline.remove_stage("quote-sent", open_deals=0, actor="max", occurred_at=day(1), now=NOW)

    with pytest.raises(InvalidPipeline) as exc:
        pipeline.add_stage(
            name="Proposal",
            probability=55,
            stage_id="quote-sent",
            actor="max",
            occurred_at=day(2),
            now=NOW,
        )

    assert "used twice" in exc.value.message
    assert "quote-sent" not in [s.id for s in pipeline.stages]


# --- renaming and updating a stage ----------------------------------------------------------


def test_renaming_a_stage_keeps_its_id_and_records_the_old_and_new_name(
    pipeline: Pipeline,
) -> None:
    pipeline.rename_stage(
        "Demo or meeting", name="Discovery call", actor="max", occurred_at=day(1), now=NOW
    )

    assert pipeline.stage("demo-or-meeting").name == "Discovery call"
    assert pipeline.stage("discovery call").id == "demo-or-meeting"
    [renamed] = new_events(pipeline)
    assert type(renamed).__name__ == "StageRenamed"
    assert (renamed.stage_id, renamed.from_name, renamed.to_name) == (
        "demo-or-meeting",
        "Demo or meeting",
        "Discovery call",
    )
    with pytest.raises(UnknownStage):
        pipeline.stage("Demo or meeting")


def test_renaming_a_stage_to_its_own_name_is_nothing_to_change(pipeline: Pipeline) -> None:
    with pytest.raises(NothingToChange) as exc:
        pipeline.rename_stage(
            "quote-sent", name=" Quote sent ", actor="max", occurred_at=day(1), now=NOW
        )

    assert exc.value.field == "name"
    assert new_events(pipeline) == []


def test_renaming_a_stage_to_another_stages_name_is_refused(pipeline: Pipeline) -> None:
    with pytest.raises(InvalidPipeline) as exc:
        pipeline.rename_stage(
            "quote-sent", name="Negotiation", actor="max", occurred_at=day(1), now=NOW
        )

    assert exc.value.field == "name"
    assert new_events(pipeline) == []


def test_updating_a_stage_records_only_the_fields_that_change_with_their_previous_values(
    pipeline: Pipeline,
) -> None:
    pipeline.update_stage(
        "quote-sent",
        probability=50,  # unchanged
        rotting_days=14,
        requires=["note", "value", "note"],
        actor="max",
        occurred_at=day(1),
        now=NOW,
    )

    [updated] = new_events(pipeline)
    assert type(updated).__name__ == "StageUpdated"
    assert updated.stage_id == "quote-sent"
    assert updated.changes == {"rotting_days": 14, "requires": ["note", "value"]}
    assert updated.previous == {"rotting_days": None, "requires": []}
    assert pipeline.stage("quote-sent") == Stage(
        "quote-sent", "Quote sent", 50, 14, ("note", "value")
    )


def test_a_probability_change_records_the_previous_probability(pipeline: Pipeline) -> None:
    pipeline.update_stage("negotiation", probability=80, actor="max", occurred_at=day(1), now=NOW)

    [updated] = new_events(pipeline)
    assert (updated.changes, updated.previous) == ({"probability": 80}, {"probability": 75})
    assert pipeline.probability_of("negotiation") == 80


def test_an_update_that_changes_no_stage_field_is_nothing_to_change(pipeline: Pipeline) -> None:
    with pytest.raises(NothingToChange):
        pipeline.update_stage(
            "quote-sent",
            probability=50,
            rotting_days=None,
            requires=[],
            actor="max",
            occurred_at=day(1),
            now=NOW,
        )
    with pytest.raises(NothingToChange):
        pipeline.update_stage("quote-sent", actor="max", occurred_at=day(1), now=NOW)

    assert new_events(pipeline) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"probability": 101}, "probability"),
        ({"probability": -1}, "probability"),
        ({"probability": True}, "probability"),
        ({"rotting_days": 0}, "rotting_days"),
        ({"requires": ["signature"]}, "requires"),
        ({"requires": "note"}, "requires"),
    ],
)
def test_a_stage_update_out_of_range_is_refused_naming_the_field(
    pipeline: Pipeline, change: dict[str, Any], field: str
) -> None:
    before = snapshot(pipeline)

    with pytest.raises(InvalidPipeline) as exc:
        pipeline.update_stage("quote-sent", **change, actor="max", occurred_at=day(1), now=NOW)

    assert exc.value.field == field
    assert snapshot(pipeline) == before


def test_changing_an_unknown_stage_is_refused_as_unknown_stage(pipeline: Pipeline) -> None:
    with pytest.raises(UnknownStage):
        pipeline.update_stage("contract", probability=90, actor="max", occurred_at=day(1), now=NOW)
    with pytest.raises(UnknownStage):
        pipeline.rename_stage("contract", name="Contract", actor="max", occurred_at=day(1), now=NOW)


# --- reordering stages ----------------------------------------------------------------------


def test_reordering_stages_records_the_new_and_the_previous_order(pipeline: Pipeline) -> None:
    order = ["deal-created", "quote-sent", "demo-or-meeting", "negotiation"]

    pipeline.reorder_stages(order, actor="max", occurred_at=day(1), now=NOW)

    assert [s.id for s in pipeline.stages] == order
    [reordered] = new_events(pipeline)
    assert type(reordered).__name__ == "StagesReordered"
    assert reordered.order == order
    assert reordered.previous_order == IDS


@pytest.mark.parametrize(
    "order",
    [
        ["deal-created", "quote-sent", "demo-or-meeting"],  # one missing
        ["deal-created", "quote-sent", "demo-or-meeting", "negotiation", "won"],  # one extra
        ["deal-created", "quote-sent", "quote-sent", "negotiation"],  # one twice
        ["deal-created", "demo-or-meeting", "quote-sent", "quote-sent", "negotiation"],
        ["deal-created", "quote-sent", "demo", "negotiation"],  # one unknown
        "deal-created,quote-sent,demo-or-meeting,negotiation",  # not a list
    ],
)
def test_a_stage_order_that_is_not_a_permutation_of_the_stages_is_refused(
    pipeline: Pipeline, order: Any
) -> None:
    before = snapshot(pipeline)

    with pytest.raises(InvalidInput) as exc:
        pipeline.reorder_stages(order, actor="max", occurred_at=day(1), now=NOW)

    assert exc.value.field == "stage_order"
    assert snapshot(pipeline) == before


def test_reordering_into_the_current_order_is_nothing_to_change(pipeline: Pipeline) -> None:
    with pytest.raises(NothingToChange):
        pipeline.reorder_stages(list(IDS), actor="max", occurred_at=day(1), now=NOW)


def test_a_removed_stage_cannot_be_named_in_a_new_order(pipeline: Pipeline) -> None:
    pipeline.remove_stage("quote-sent", open_deals=0, actor="max", occurred_at=day(1), now=NOW)

    with pytest.raises(InvalidInput):
        pipeline.reorder_stages(list(reversed(IDS)), actor="max", occurred_at=day(2), now=NOW)
    pipeline.reorder_stages(
        ["negotiation", "demo-or-meeting", "deal-created"], actor="max", occurred_at=day(2), now=NOW
    )
    assert [s.id for s in pipeline.stages] == ["negotiation", "demo-or-meeting", "deal-created"]
    assert [s.id for s in pipeline.removed_stages] == ["quote-sent"]


# --- removing a stage ------------------------------------------------------------------------


def test_removing_a_stage_with_open_deals_and_no_destination_is_refused_naming_the_count(
    pipeline: Pipeline,
) -> None:
    before = snapshot(pipeline)

    with pytest.raises(StageHasOpenDeals) as exc:
        pipeline.remove_stage("quote-sent", open_deals=3, actor="max", occurred_at=day(1), now=NOW)

    assert "3 open deal" in exc.value.message
    assert exc.value.details["open_deals"] == 3
    assert exc.value.field == "move_open_deals_to"
    assert snapshot(pipeline) == before


def test_removing_a_stage_moves_its_open_deals_to_the_named_stage(pipeline: Pipeline) -> None:
    destination = pipeline.remove_stage(
        "Quote sent",
        open_deals=2,
        move_open_deals_to="Negotiation",
        actor="max",
        occurred_at=day(1),
        now=NOW,
    )

    assert destination is not None and destination.id == "negotiation"
    [removed] = new_events(pipeline)
    assert type(removed).__name__ == "StageRemoved"
    assert removed.stage_id == "quote-sent"
    assert removed.stage_name == "Quote sent"
    assert removed.move_open_deals_to == "negotiation"
    assert removed.moved_deals == 2
    assert [s.id for s in pipeline.stages] == ["deal-created", "demo-or-meeting", "negotiation"]


def test_removing_a_stage_without_open_deals_needs_no_destination(pipeline: Pipeline) -> None:
    destination = pipeline.remove_stage(
        "quote-sent", open_deals=0, actor="max", occurred_at=day(1), now=NOW
    )

    assert destination is None
    [removed] = new_events(pipeline)
    assert (removed.move_open_deals_to, removed.moved_deals) == (None, 0)


@pytest.mark.parametrize(
    ("destination", "error"),
    [
        ("quote-sent", InvalidInput),  # the stage itself
        ("Quote SENT", InvalidInput),
        ("won", UnknownStage),
        ("", UnknownStage),
    ],
)
def test_the_destination_of_open_deals_must_be_another_current_stage(
    pipeline: Pipeline, destination: str, error: type[Exception]
) -> None:
    before = snapshot(pipeline)

    with pytest.raises(error) as exc:
        pipeline.remove_stage(
            "quote-sent",
            open_deals=1,
            move_open_deals_to=destination,
            actor="max",
            occurred_at=day(1),
            now=NOW,
        )

    assert exc.value.field == "move_open_deals_to"  # type: ignore[attr-defined]
    assert exc.value.details["field"] == "move_open_deals_to"  # type: ignore[attr-defined]
    assert snapshot(pipeline) == before


def test_a_removed_stage_is_no_destination_for_open_deals(pipeline: Pipeline) -> None:
    pipeline.remove_stage("negotiation", open_deals=0, actor="max", occurred_at=day(1), now=NOW)

    with pytest.raises(UnknownStage) as exc:
        pipeline.remove_stage(
            "quote-sent",
            open_deals=1,
            move_open_deals_to="negotiation",
            actor="max",
            occurred_at=day(2),
            now=NOW,
        )

    assert exc.value.details["field"] == "move_open_deals_to"
    assert "removed" in exc.value.message


def test_the_last_stage_of_a_pipeline_cannot_be_removed() -> None:
    pipeline = make_pipeline(stages=[{"name": "Lead", "probability": 10}])

    with pytest.raises(RuleViolation) as exc:
        pipeline.remove_stage("lead", open_deals=0, actor="max", occurred_at=day(1), now=NOW)

    assert "last stage" in exc.value.message
    assert [s.id for s in pipeline.stages] == ["lead"]


def test_a_removed_stage_is_kept_in_removed_stages_and_its_last_name_still_resolves(
    pipeline: Pipeline,
) -> None:
    pipeline.rename_stage("quote-sent", name="Proposal", actor="max", occurred_at=day(1), now=NOW)
    pipeline.remove_stage("quote-sent", open_deals=0, actor="max", occurred_at=day(2), now=NOW)

    assert pipeline.removed_stages == (Stage("quote-sent", "Proposal", 50),)
    assert pipeline.stage_name("quote-sent") == "Proposal"
    assert pipeline.probability_of("quote-sent") == 50
    assert pipeline.position_of("quote-sent") == -1
    assert pipeline.as_dict()["removed_stages"] == [
        {
            "id": "quote-sent",
            "name": "Proposal",
            "probability": 50,
            "rotting_days": None,
            "requires": [],
            "checklist": [],
            "checklist_version": 0,
        }
    ]
    with pytest.raises(UnknownStage) as exc:
        pipeline.stage("quote-sent")
    assert "removed" in exc.value.message
    with pytest.raises(UnknownStage):
        pipeline.remove_stage("quote-sent", open_deals=0, actor="max", occurred_at=day(3), now=NOW)


# --- lost reasons -----------------------------------------------------------------------------


def test_adding_a_lost_reason_records_lost_reason_added(pipeline: Pipeline) -> None:
    pipeline.add_lost_reason(" Went dark ", actor="max", occurred_at=day(1), now=NOW)

    [added] = new_events(pipeline)
    assert type(added).__name__ == "LostReasonAdded"
    assert added.reason == "Went dark"
    assert pipeline.lost_reasons[-1] == "Went dark"
    assert pipeline.check_lost_reason("went dark") == "Went dark"


def test_adding_a_lost_reason_that_is_listed_is_nothing_to_change(pipeline: Pipeline) -> None:
    with pytest.raises(NothingToChange) as exc:
        pipeline.add_lost_reason("PRICE", actor="max", occurred_at=day(1), now=NOW)

    assert exc.value.field == "reason"
    assert new_events(pipeline) == []


def test_a_retired_lost_reason_cannot_be_chosen_for_new_losses(pipeline: Pipeline) -> None:
    deal = make_deal(pipeline)
    pipeline.retire_lost_reason("timing", actor="max", occurred_at=day(1), now=NOW)

    [retired] = new_events(pipeline)
    assert type(retired).__name__ == "LostReasonRetired"
    assert retired.reason == "Timing"
    assert "Timing" not in pipeline.lost_reasons
    assert pipeline.retired_lost_reasons == ("Timing",)
    with pytest.raises(UnknownLostReason) as exc:
        deal.lose(pipeline, "Timing", actor="bob", occurred_at=day(2), now=NOW)
    assert "retired" in exc.value.message
    assert exc.value.field == "reason"
    assert "Timing" not in exc.value.details["lost_reasons"]
    assert deal.status == OPEN


def test_a_loss_recorded_before_its_reason_was_retired_keeps_the_reason(pipeline: Pipeline) -> None:
    deal = make_deal(pipeline)
    deal.lose(pipeline, "Timing", actor="bob", occurred_at=day(1), now=NOW)

    pipeline.retire_lost_reason("Timing", actor="max", occurred_at=day(2), now=NOW)

    assert (deal.status, deal.lost_reason) == (LOST, "Timing")


def test_adding_a_retired_lost_reason_again_brings_it_back(pipeline: Pipeline) -> None:
    deal = make_deal(pipeline)
    pipeline.retire_lost_reason("Timing", actor="max", occurred_at=day(1), now=NOW)
    new_events(pipeline)

    pipeline.add_lost_reason("TIMING", actor="max", occurred_at=day(2), now=NOW)

    [added] = new_events(pipeline)
    assert added.reason == "Timing"  # the pipeline's own spelling
    assert pipeline.retired_lost_reasons == ()
    assert "Timing" in pipeline.lost_reasons
    deal.lose(pipeline, "timing", actor="bob", occurred_at=day(3), now=NOW)
    assert deal.lost_reason == "Timing"


def test_retiring_a_retired_or_unknown_lost_reason_is_refused(pipeline: Pipeline) -> None:
    pipeline.retire_lost_reason("Timing", actor="max", occurred_at=day(1), now=NOW)
    new_events(pipeline)

    with pytest.raises(UnknownLostReason) as retired:
        pipeline.retire_lost_reason("Timing", actor="max", occurred_at=day(2), now=NOW)
    with pytest.raises(UnknownLostReason):
        pipeline.retire_lost_reason("Weather", actor="max", occurred_at=day(2), now=NOW)

    assert "retired" in retired.value.message
    assert new_events(pipeline) == []


def test_the_last_active_lost_reason_cannot_be_retired() -> None:
    pipeline = make_pipeline(lost_reasons=["Price", "Timing"])
    pipeline.retire_lost_reason("Price", actor="max", occurred_at=day(1), now=NOW)

    with pytest.raises(RuleViolation) as exc:
        pipeline.retire_lost_reason("Timing", actor="max", occurred_at=day(2), now=NOW)

    assert "last active lost reason" in exc.value.message
    assert pipeline.lost_reasons == ("Timing",)


# --- the pipeline itself -----------------------------------------------------------------------


def test_renaming_a_pipeline_records_pipeline_renamed(pipeline: Pipeline) -> None:
    pipeline.rename("New business", actor="max", occurred_at=day(1), now=NOW)

    [renamed] = new_events(pipeline)
    assert type(renamed).__name__ == "PipelineRenamed"
    assert (renamed.from_name, renamed.to_name) == ("Sales", "New business")
    assert pipeline.name == "New business"
    with pytest.raises(NothingToChange):
        pipeline.rename("New business", actor="max", occurred_at=day(2), now=NOW)


def test_changing_the_rules_records_only_the_rules_that_change(pipeline: Pipeline) -> None:
    pipeline.change_rules(
        allow_skipping_stages=False,
        allow_moving_back=True,  # unchanged
        stale_after_days=30,
        actor="max",
        occurred_at=day(1),
        now=NOW,
    )

    [changed] = new_events(pipeline)
    assert type(changed).__name__ == "PipelineRulesChanged"
    assert changed.changes == {"allow_skipping_stages": False, "stale_after_days": 30}
    assert changed.previous == {"allow_skipping_stages": True, "stale_after_days": None}
    assert (pipeline.allow_skipping_stages, pipeline.allow_moving_back) == (False, True)
    assert pipeline.stale_after_days == 30


def test_rules_that_are_already_in_force_are_nothing_to_change(pipeline: Pipeline) -> None:
    with pytest.raises(NothingToChange):
        pipeline.change_rules(
            allow_skipping_stages=True,
            allow_moving_back=True,
            actor="max",
            occurred_at=day(1),
            now=NOW,
        )
    with pytest.raises(NothingToChange):
        pipeline.change_rules(actor="max", occurred_at=day(1), now=NOW)


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        ({"allow_skipping_stages": "no"}, "allow_skipping_stages"),
        ({"allow_moving_back": 0}, "allow_moving_back"),
        ({"stale_after_days": 0}, "stale_after_days"),
    ],
)
def test_invalid_rules_are_refused_naming_the_field(
    pipeline: Pipeline, rules: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as exc:
        pipeline.change_rules(**rules, actor="max", occurred_at=day(1), now=NOW)

    assert exc.value.field == field


# --- business time of pipeline changes -----------------------------------------------------------

PipelineChange = Callable[[Pipeline, datetime], Any]

PIPELINE_CHANGES: dict[str, PipelineChange] = {
    "StageAdded": lambda p, when: p.add_stage(
        name="Contract", probability=90, actor="max", occurred_at=when, now=NOW
    ),
    "StageRenamed": lambda p, when: p.rename_stage(
        "quote-sent", name="Proposal", actor="max", occurred_at=when, now=NOW
    ),
    "StageUpdated": lambda p, when: p.update_stage(
        "quote-sent", probability=60, actor="max", occurred_at=when, now=NOW
    ),
    "StagesReordered": lambda p, when: p.reorder_stages(
        list(reversed(IDS)), actor="max", occurred_at=when, now=NOW
    ),
    "StageRemoved": lambda p, when: p.remove_stage(
        "quote-sent", open_deals=0, actor="max", occurred_at=when, now=NOW
    ),
    "LostReasonAdded": lambda p, when: p.add_lost_reason(
        "Went dark", actor="max", occurred_at=when, now=NOW
    ),
    "LostReasonRetired": lambda p, when: p.retire_lost_reason(
        "Price", actor="max", occurred_at=when, now=NOW
    ),
    "PipelineRenamed": lambda p, when: p.rename("Renewals", actor="max", occurred_at=when, now=NOW),
    "PipelineRulesChanged": lambda p, when: p.change_rules(
        allow_moving_back=False, actor="max", occurred_at=when, now=NOW
    ),
}


@pytest.mark.parametrize("kind", list(PIPELINE_CHANGES))
def test_a_pipeline_change_may_be_backdated_but_not_before_the_previous_change_nor_into_the_future(
    pipeline: Pipeline, kind: str
) -> None:
    change = PIPELINE_CHANGES[kind]
    pipeline.rename("Sales 2025", actor="max", occurred_at=day(5), now=NOW)
    new_events(pipeline)
    before = snapshot(pipeline)

    with pytest.raises(OccurredBeforePrevious):
        change(pipeline, day(4))
    with pytest.raises(OccurredInFuture):
        change(pipeline, NOW + timedelta(seconds=1))
    with pytest.raises(InvalidInput) as naive:
        change(pipeline, day(6).replace(tzinfo=None))
    assert naive.value.field == "occurred_at"
    assert snapshot(pipeline) == before

    change(pipeline, day(5))  # the same moment as the previous change is fine

    [recorded] = new_events(pipeline)
    assert type(recorded).__name__ == kind
    assert recorded.occurred_at == day(5)
    assert recorded.actor == "max"
    assert pipeline.last_occurred_at == day(5)


# --- pipeline rules on deals: skipping stages and moving back -------------------------------------


def test_without_skipping_a_deal_advances_only_to_the_next_stage() -> None:
    pipeline = make_pipeline(allow_skipping_stages=False)
    deal = make_deal(pipeline)
    before = snapshot(deal)

    with pytest.raises(SkippingStagesNotAllowed) as exc:
        deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(1), now=NOW)

    assert exc.value.details["next_stage"] == "demo-or-meeting"
    assert exc.value.field == "stage"
    assert "Demo or meeting" in exc.value.message
    assert snapshot(deal) == before
    deal.advance(pipeline, "demo-or-meeting", actor="bob", occurred_at=day(1), now=NOW)
    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(2), now=NOW)
    assert deal.stage_id == "quote-sent"


def test_without_skipping_moving_back_any_number_of_stages_is_still_allowed() -> None:
    pipeline = make_pipeline(allow_skipping_stages=False)
    deal = make_deal(pipeline)
    for n, stage in enumerate(IDS[1:], start=1):
        deal.advance(pipeline, stage, actor="bob", occurred_at=day(n), now=NOW)

    deal.advance(pipeline, "deal-created", actor="bob", occurred_at=day(5), now=NOW)

    assert deal.pending_events[-1].direction == "backward"


def test_without_skipping_new_deals_must_start_in_the_first_stage() -> None:
    pipeline = make_pipeline(allow_skipping_stages=False)

    with pytest.raises(SkippingStagesNotAllowed) as exc:
        make_deal(pipeline, stage="quote-sent")

    assert exc.value.details["next_stage"] == "deal-created"
    assert make_deal(pipeline, stage="Deal created").stage_id == "deal-created"


def test_without_moving_back_a_deal_cannot_return_to_an_earlier_stage() -> None:
    pipeline = make_pipeline(allow_moving_back=False)
    deal = make_deal(pipeline)
    deal.advance(pipeline, "negotiation", actor="bob", occurred_at=day(1), now=NOW)
    before = snapshot(deal)

    with pytest.raises(MovingBackNotAllowed) as exc:
        deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(2), now=NOW)

    assert exc.value.field == "stage"
    assert snapshot(deal) == before


def test_reopening_is_not_moving_back_even_when_moving_back_is_not_allowed() -> None:
    pipeline = make_pipeline(allow_moving_back=False)
    deal = make_deal(pipeline)
    deal.advance(pipeline, "negotiation", actor="bob", occurred_at=day(1), now=NOW)
    deal.lose(pipeline, "Price", actor="bob", occurred_at=day(2), now=NOW)

    deal.reopen(pipeline, actor="bob", occurred_at=day(3), now=NOW)

    assert (deal.status, deal.stage_id) == (OPEN, "negotiation")


def test_rules_changed_after_a_deal_was_created_apply_to_it_from_then_on(
    pipeline: Pipeline,
) -> None:
    deal = make_deal(pipeline)
    deal.advance(pipeline, "negotiation", actor="bob", occurred_at=day(1), now=NOW)
    deal.advance(pipeline, "deal-created", actor="bob", occurred_at=day(2), now=NOW)

    pipeline.change_rules(
        allow_skipping_stages=False,
        allow_moving_back=False,
        actor="max",
        occurred_at=day(3),
        now=NOW,
    )

    with pytest.raises(SkippingStagesNotAllowed):
        deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(4), now=NOW)
    deal.advance(pipeline, "demo-or-meeting", actor="bob", occurred_at=day(4), now=NOW)
    with pytest.raises(MovingBackNotAllowed):
        deal.advance(pipeline, "deal-created", actor="bob", occurred_at=day(5), now=NOW)


# --- entry requirements ----------------------------------------------------------------------


def test_advancing_into_a_stage_with_unmet_requirements_names_every_missing_field() -> None:
    pipeline = with_requirements("quote-sent", "note", "expected_close_date", "value")
    deal = make_deal(pipeline, value="0")
    before = snapshot(deal)

    with pytest.raises(EntryRequirementsNotMet) as exc:
        deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(1), now=NOW)

    assert exc.value.details["missing_fields"] == ["value", "expected_close_date", "note"]
    assert exc.value.details["stage"] == "quote-sent"
    assert exc.value.field == "value"
    assert "value, expected_close_date, note" in exc.value.message
    assert snapshot(deal) == before


def test_only_the_requirements_still_missing_are_named() -> None:
    pipeline = with_requirements("quote-sent", "value", "expected_close_date", "note")
    deal = make_deal(pipeline, value="100")

    with pytest.raises(EntryRequirementsNotMet) as exc:
        deal.advance(pipeline, "quote-sent", "  ", actor="bob", occurred_at=day(1), now=NOW)

    assert exc.value.details["missing_fields"] == ["expected_close_date", "note"]
    assert exc.value.field == "expected_close_date"


def test_a_deal_that_meets_the_requirements_enters_and_its_note_is_recorded() -> None:
    pipeline = with_requirements("quote-sent", "value", "expected_close_date", "note")
    deal = make_deal(pipeline, expected_close_date=date(2025, 6, 30))

    deal.advance(
        pipeline, "quote-sent", "sent v2 of the quote", actor="bob", occurred_at=day(1), now=NOW
    )

    assert deal.stage_id == "quote-sent"
    assert deal.pending_events[-1].note == "sent v2 of the quote"


def test_requirements_of_a_stage_are_checked_when_it_becomes_a_requirement_later(
    pipeline: Pipeline,
) -> None:
    deal = make_deal(pipeline, value="0")
    pipeline.update_stage(
        "quote-sent", requires=["value"], actor="max", occurred_at=day(1), now=NOW
    )

    with pytest.raises(EntryRequirementsNotMet) as exc:
        deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(2), now=NOW)
    assert exc.value.details["missing_fields"] == ["value"]

    deal.update(value="10", actor="bob", occurred_at=day(2), now=NOW)
    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(3), now=NOW)
    assert deal.stage_id == "quote-sent"


def test_reopening_into_a_stage_with_unmet_requirements_is_refused_and_a_note_satisfies_it() -> (
    None
):
    pipeline = with_requirements("negotiation", "note")
    deal = make_deal(pipeline)
    deal.lose(pipeline, "Price", actor="bob", occurred_at=day(1), now=NOW)
    before = snapshot(deal)

    with pytest.raises(EntryRequirementsNotMet) as exc:
        deal.reopen(pipeline, "negotiation", actor="bob", occurred_at=day(2), now=NOW)

    assert exc.value.details["missing_fields"] == ["note"]
    assert exc.value.field == "note"
    assert snapshot(deal) == before
    deal.reopen(pipeline, "negotiation", "budget is back", actor="bob", occurred_at=day(2), now=NOW)
    assert (deal.status, deal.stage_id) == (OPEN, "negotiation")


def test_creating_a_deal_in_a_stage_with_unmet_requirements_names_the_missing_fields() -> None:
    pipeline = with_requirements("deal-created", "value", "expected_close_date")

    with pytest.raises(EntryRequirementsNotMet) as exc:
        make_deal(pipeline, value="0")

    assert exc.value.details["missing_fields"] == ["value", "expected_close_date"]
    assert exc.value.field == "value"
    deal = make_deal(pipeline, value="5", expected_close_date=date(2025, 6, 30))
    assert deal.stage_id == "deal-created"


def test_moving_a_deal_into_a_stage_with_unmet_requirements_is_refused_and_a_note_satisfies_it(
    pipeline: Pipeline,
) -> None:
    target = with_requirements("demo-or-meeting", "note", "expected_close_date")
    deal = make_deal(pipeline, expected_close_date=date(2025, 6, 30))
    before = snapshot(deal)

    with pytest.raises(EntryRequirementsNotMet) as exc:
        deal.move_to_pipeline(
            pipeline, target, "demo-or-meeting", actor="bob", occurred_at=day(1), now=NOW
        )

    assert exc.value.details["missing_fields"] == ["note"]
    assert snapshot(deal) == before
    deal.move_to_pipeline(
        pipeline, target, "demo-or-meeting", "handed over", actor="bob", occurred_at=day(1), now=NOW
    )
    assert (deal.pipeline_id, deal.stage_id) == (target.id, "demo-or-meeting")


# --- the same rules for backdated commands ----------------------------------------------------


def test_every_rule_holds_the_same_for_commands_backdated_into_the_past() -> None:
    pipeline = with_requirements(
        "negotiation", "note", allow_skipping_stages=False, allow_moving_back=False
    )
    deal = make_deal(pipeline)
    deal.advance(pipeline, "demo-or-meeting", actor="bob", occurred_at=day(1), now=NOW)
    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(2), now=NOW)
    past = day(3)  # long before NOW, after the deal's previous event
    before = snapshot(deal)

    with pytest.raises(MovingBackNotAllowed):
        deal.advance(pipeline, "deal-created", actor="importer", occurred_at=past, now=NOW)
    with pytest.raises(EntryRequirementsNotMet):
        deal.advance(pipeline, "negotiation", actor="importer", occurred_at=past, now=NOW)
    deal.lose(pipeline, "Price", actor="importer", occurred_at=past, now=NOW)
    with pytest.raises(EntryRequirementsNotMet):
        deal.reopen(pipeline, "negotiation", actor="importer", occurred_at=past, now=NOW)
    with pytest.raises(SkippingStagesNotAllowed):
        make_deal(pipeline, stage="quote-sent", occurred_at=day(-20))

    deal.reopen(pipeline, actor="importer", occurred_at=past, now=NOW)
    deal.advance(
        pipeline, "negotiation", "imported note", actor="importer", occurred_at=past, now=NOW
    )
    assert deal.stage_id == "negotiation"
    assert deal.version == before[0] + 3
    assert deal.pending_events[-1].occurred_at == past


def test_a_backdated_skip_is_refused_like_a_skip_made_now() -> None:
    pipeline = make_pipeline(allow_skipping_stages=False)
    now_deal, past_deal = make_deal(pipeline), make_deal(pipeline)

    with pytest.raises(SkippingStagesNotAllowed) as now_exc:
        now_deal.advance(pipeline, "negotiation", actor="bob", occurred_at=NOW, now=NOW)
    with pytest.raises(SkippingStagesNotAllowed) as past_exc:
        past_deal.advance(pipeline, "negotiation", actor="bob", occurred_at=day(1), now=NOW)

    assert now_exc.value.details == past_exc.value.details


# --- probability override ---------------------------------------------------------------------


@pytest.mark.parametrize("override", [0, 1, 99, 100])
def test_a_probability_override_from_0_to_100_is_recorded_in_deal_updated(
    pipeline: Pipeline, override: int
) -> None:
    deal = make_deal(pipeline)

    deal.update(probability_override=override, actor="bob", occurred_at=day(1), now=NOW)

    updated = deal.pending_events[-1]
    assert type(updated).__name__ == "DealUpdated"
    assert updated.changes == {"probability_override": override}
    assert updated.previous == {"probability_override": None}
    assert deal.as_dict(pipeline)["probability"] == override
    assert deal.as_dict(pipeline)["probability_override"] == override


@pytest.mark.parametrize("override", [-1, 101, True, "50", 50.0])
def test_a_probability_override_outside_0_to_100_is_refused_naming_it(
    pipeline: Pipeline, override: Any
) -> None:
    deal = make_deal(pipeline)
    before = snapshot(deal)

    with pytest.raises(InvalidInput) as exc:
        deal.update(probability_override=override, actor="bob", occurred_at=day(1), now=NOW)

    assert exc.value.field == "probability_override"
    assert snapshot(deal) == before


def test_clearing_the_override_returns_to_the_stages_probability(pipeline: Pipeline) -> None:
    deal = make_deal(pipeline)
    deal.update(probability_override=90, actor="bob", occurred_at=day(1), now=NOW)

    deal.update(probability_override=None, actor="bob", occurred_at=day(2), now=NOW)

    cleared = deal.pending_events[-1]
    assert (cleared.changes, cleared.previous) == (
        {"probability_override": None},
        {"probability_override": 90},
    )
    assert deal.probability_override is None
    assert deal.as_dict(pipeline)["probability"] == 10
    with pytest.raises(NothingToChange):
        deal.update(probability_override=None, actor="bob", occurred_at=day(3), now=NOW)


# --- moving a deal to another pipeline ------------------------------------------------------------


def test_moving_a_deal_to_another_pipeline_records_one_deal_moved_into_the_first_stage(
    pipeline: Pipeline,
) -> None:
    target = make_pipeline(
        name="Renewals",
        stages=[{"name": "Intake", "probability": 30}, {"name": "Offer", "probability": 60}],
    )
    deal = make_deal(pipeline)
    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(1), now=NOW)
    pipeline.rename_stage("quote-sent", name="Proposal", actor="max", occurred_at=day(1), now=NOW)
    version = deal.version

    deal.move_to_pipeline(
        pipeline, target, note="wrong team", actor="bob", occurred_at=day(2), now=NOW
    )

    moved = deal.pending_events[-1]
    assert type(moved).__name__ == "DealMoved"
    assert deal.version == version + 1
    assert (moved.from_pipeline_id, moved.to_pipeline_id) == (pipeline.id, target.id)
    assert (moved.from_stage_id, moved.from_stage_name) == ("quote-sent", "Proposal")
    assert (moved.to_stage_id, moved.to_stage_name) == ("intake", "Intake")
    assert moved.note == "wrong team"
    assert moved.occurred_at == day(2)
    assert (deal.pipeline_id, deal.stage_id, deal.stage_entered_at) == (target.id, "intake", day(2))
    assert deal.as_dict(target)["probability"] == 30


def test_a_deal_can_be_moved_into_a_named_stage_of_the_other_pipeline(pipeline: Pipeline) -> None:
    target = make_pipeline(name="Renewals")
    deal = make_deal(pipeline)

    deal.move_to_pipeline(pipeline, target, "Negotiation", actor="bob", occurred_at=day(1), now=NOW)

    assert deal.stage_id == "negotiation"
    with pytest.raises(UnknownStage):
        deal.move_to_pipeline(
            target, pipeline, "Contract", actor="bob", occurred_at=day(2), now=NOW
        )


def test_a_deal_cannot_be_moved_into_its_own_pipeline(pipeline: Pipeline) -> None:
    deal = make_deal(pipeline)

    with pytest.raises(PipelineMismatch) as exc:
        deal.move_to_pipeline(
            pipeline, pipeline, "quote-sent", actor="bob", occurred_at=day(1), now=NOW
        )

    assert exc.value.field == "pipeline_id"
    assert deal.version == 1


def test_a_deal_cannot_be_moved_into_a_pipeline_of_another_currency(pipeline: Pipeline) -> None:
    target = make_pipeline(name="US sales", currency="USD")
    deal = make_deal(pipeline)

    with pytest.raises(PipelineMismatch) as exc:
        deal.move_to_pipeline(pipeline, target, actor="bob", occurred_at=day(1), now=NOW)

    assert "USD" in exc.value.message and "EUR" in exc.value.message
    assert deal.pipeline_id == pipeline.id


def test_a_closed_deal_cannot_be_moved_to_another_pipeline(pipeline: Pipeline) -> None:
    target = make_pipeline(name="Renewals")
    deal = make_deal(pipeline)
    deal.win(pipeline, actor="bob", occurred_at=day(1), now=NOW)

    with pytest.raises(DealClosed):
        deal.move_to_pipeline(pipeline, target, actor="bob", occurred_at=day(2), now=NOW)

    assert (deal.status, deal.pipeline_id) == (WON, pipeline.id)


# --- deals in a removed stage, and moves caused by a pipeline change -------------------------


@pytest.mark.parametrize("way_out", ["deal-created", "demo-or-meeting", "negotiation"])
def test_a_deal_in_a_removed_stage_can_still_advance_out_of_it_to_any_current_stage(
    way_out: str,
) -> None:
    pipeline = make_pipeline(allow_skipping_stages=False, allow_moving_back=False)
    deal = make_deal(pipeline)
    for n, stage in enumerate(IDS[1:3], start=1):
        deal.advance(pipeline, stage, actor="bob", occurred_at=day(n), now=NOW)
    pipeline.rename_stage("quote-sent", name="Proposal", actor="max", occurred_at=day(3), now=NOW)
    pipeline.remove_stage("quote-sent", open_deals=0, actor="max", occurred_at=day(3), now=NOW)
    assert deal.stage_id == "quote-sent"

    deal.advance(pipeline, way_out, actor="bob", occurred_at=day(4), now=NOW)

    advanced = deal.pending_events[-1]
    assert (advanced.from_stage_id, advanced.from_stage_name) == ("quote-sent", "Proposal")
    assert (advanced.to_stage_id, advanced.direction) == (way_out, "forward")
    assert deal.stage_id == way_out


def test_a_deal_in_a_removed_stage_can_still_be_won_in_it_under_its_last_name(
    pipeline: Pipeline,
) -> None:
    deal = make_deal(pipeline)
    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(1), now=NOW)
    pipeline.remove_stage("quote-sent", open_deals=0, actor="max", occurred_at=day(2), now=NOW)

    deal.win(pipeline, actor="bob", occurred_at=day(3), now=NOW)

    won = deal.pending_events[-1]
    assert (won.stage_id, won.stage_name) == ("quote-sent", "Quote sent")
    assert deal.as_dict(pipeline)["stage"] == {"id": "quote-sent", "name": "Quote sent"}


def test_an_advance_caused_by_a_pipeline_change_bypasses_the_route_and_entry_rules() -> None:
    pipeline = with_requirements(
        "negotiation", "note", "value", allow_skipping_stages=False, allow_moving_back=False
    )
    deal = make_deal(pipeline, value="0")
    cause = {"type": "StageRemoved", "pipeline_id": str(pipeline.id), "stage_id": "x"}

    deal.advance(pipeline, "negotiation", actor="max", occurred_at=day(1), now=NOW, cause=cause)

    skipped = deal.pending_events[-1]
    assert (skipped.to_stage_id, skipped.direction, skipped.cause) == (
        "negotiation",
        "forward",
        cause,
    )
    assert skipped.note is None

    deal.advance(pipeline, "demo-or-meeting", actor="max", occurred_at=day(2), now=NOW, cause=cause)

    back = deal.pending_events[-1]
    assert (back.to_stage_id, back.direction) == ("demo-or-meeting", "backward")


def test_an_advance_caused_by_a_pipeline_change_still_refuses_closed_deals_and_the_same_stage(
    pipeline: Pipeline,
) -> None:
    cause = {"type": "StageRemoved"}
    deal = make_deal(pipeline)

    with pytest.raises(AlreadyInStage):
        deal.advance(
            pipeline, "deal-created", actor="max", occurred_at=day(1), now=NOW, cause=cause
        )
    deal.lose(pipeline, "Price", actor="bob", occurred_at=day(1), now=NOW)
    with pytest.raises(DealClosed):
        deal.advance(pipeline, "quote-sent", actor="max", occurred_at=day(2), now=NOW, cause=cause)


def test_an_advance_without_a_cause_records_none(pipeline: Pipeline) -> None:
    deal = make_deal(pipeline)

    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(1), now=NOW)

    assert deal.pending_events[-1].cause is None


# --- requirements and rules at creation, moves and removals -------------------------------


def test_a_deal_created_into_a_stage_that_requires_a_note_needs_one() -> None:
    pipeline = with_requirements("deal-created", "note")

    with pytest.raises(EntryRequirementsNotMet) as refused:
        make_deal(pipeline)
    assert refused.value.details["missing_fields"] == ["note"]

    deal = make_deal(pipeline, note="met at the trade fair")
    assert deal.pending_events[-1].note == "met at the trade fair"


def test_a_deal_moves_only_into_the_first_stage_of_a_pipeline_that_forbids_skipping(
    pipeline: Pipeline,
) -> None:
    strict = make_pipeline(allow_skipping_stages=False)
    deal = make_deal(pipeline)

    with pytest.raises(SkippingStagesNotAllowed):
        deal.move_to_pipeline(
            pipeline, strict, "negotiation", actor="bob", occurred_at=day(1), now=NOW
        )
    assert deal.pipeline_id == pipeline.id

    deal.move_to_pipeline(pipeline, strict, actor="bob", occurred_at=day(1), now=NOW)
    assert (deal.pipeline_id, deal.stage_id) == (strict.id, "deal-created")


def test_a_removal_names_the_direction_of_its_moves_because_the_removed_stage_is_gone() -> None:
    pipeline = make_pipeline()
    deal = make_deal(pipeline, stage="negotiation")
    pipeline.remove_stage(
        "negotiation",
        open_deals=1,
        move_open_deals_to="quote-sent",
        actor="max",
        occurred_at=day(1),
        now=NOW,
    )
    cause = {"type": "StageRemoved", "stage_id": "negotiation", "direction": "backward"}

    deal.advance(pipeline, "quote-sent", actor="max", occurred_at=day(1), now=NOW, cause=cause)

    assert deal.pending_events[-1].direction == "backward"
