"""Rules of the Pipeline aggregate: currency, stages, lost reasons and stage lookup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.domain.errors import (
    InvalidInput,
    InvalidPipeline,
    OccurredInFuture,
    UnknownLostReason,
    UnknownStage,
)
from libs.domain.pipeline import MAX_LOST_REASONS, MAX_STAGES, Pipeline, Stage, default_template

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
DEFINED_AT = NOW - timedelta(days=60)

DEFAULT_STAGE_NAMES = ["Deal created", "Demo or meeting", "Quote sent", "Negotiation"]


def stages_named(*names: str, probability: int = 50) -> list[dict[str, Any]]:
    return [{"name": name, "probability": probability} for name in names]


def define(**overrides: Any) -> Pipeline:
    """A pipeline from the default template; keyword arguments replace any input."""
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
    return Pipeline.define(**kwargs)


def event_names(aggregate: Any) -> list[str]:
    return [type(e).__name__ for e in aggregate.pending_events]


# --- the default template ------------------------------------------------------------


def test_the_default_template_has_exactly_the_four_open_stages_in_order():
    template = default_template()

    assert [s["name"] for s in template["stages"]] == DEFAULT_STAGE_NAMES
    assert [s["probability"] for s in template["stages"]] == [10, 25, 50, 75]


def test_won_and_lost_are_outcomes_not_stages_of_the_default_template():
    names = {s["name"].casefold() for s in default_template()["stages"]}

    assert not names & {"won", "lost", "closed won", "closed lost"}


def test_the_default_template_lists_the_usual_lost_reasons():
    assert default_template()["lost_reasons"] == [
        "Price",
        "Lost to competitor",
        "No budget",
        "No decision",
        "Timing",
        "Product fit",
        "Other",
    ]


def test_each_call_to_the_default_template_returns_a_fresh_copy():
    first = default_template()
    first["stages"].append({"name": "Won", "probability": 100})
    first["lost_reasons"].clear()

    second = default_template()

    assert [s["name"] for s in second["stages"]] == DEFAULT_STAGE_NAMES
    assert len(second["lost_reasons"]) == 7


# --- defining a pipeline -------------------------------------------------------------


def test_defining_a_pipeline_from_the_template_records_one_pipeline_defined_event():
    pipeline = define()

    assert event_names(pipeline) == ["PipelineDefined"]
    defined = pipeline.pending_events[0]
    assert defined.name == "Sales"
    assert defined.currency == "EUR"
    assert [s["id"] for s in defined.stages] == [
        "deal-created",
        "demo-or-meeting",
        "quote-sent",
        "negotiation",
    ]
    assert defined.lost_reasons == default_template()["lost_reasons"]
    assert defined.actor == "alice"
    assert defined.occurred_at == DEFINED_AT


def test_a_defined_pipeline_holds_its_stages_reasons_and_author():
    pipeline = define()

    assert pipeline.name == "Sales"
    assert pipeline.currency == "EUR"
    assert all(isinstance(s, Stage) for s in pipeline.stages)
    assert [s.name for s in pipeline.stages] == DEFAULT_STAGE_NAMES
    assert [s.probability for s in pipeline.stages] == [10, 25, 50, 75]
    assert pipeline.first_stage == Stage("deal-created", "Deal created", 10, None)
    assert list(pipeline.lost_reasons) == default_template()["lost_reasons"]
    assert pipeline.created_by == "alice"
    assert pipeline.last_occurred_at == DEFINED_AT
    assert pipeline.version == 1


def test_the_pipeline_name_is_trimmed():
    assert define(name="  EMEA sales  ").name == "EMEA sales"


def test_a_pipeline_needs_a_name():
    with pytest.raises(InvalidInput) as exc:
        define(name="   ")
    assert exc.value.field == "name"


def test_a_pipeline_name_is_at_most_100_characters():
    assert define(name="x" * 100).name == "x" * 100
    with pytest.raises(InvalidInput) as exc:
        define(name="x" * 101)
    assert exc.value.field == "name"


def test_a_pipeline_cannot_be_defined_in_the_future():
    with pytest.raises(OccurredInFuture) as exc:
        define(occurred_at=NOW + timedelta(seconds=1))
    assert exc.value.field == "occurred_at"


def test_a_pipeline_needs_a_time_zone_on_occurred_at():
    with pytest.raises(InvalidInput) as exc:
        define(occurred_at=datetime(2025, 1, 1, 12, 0))
    assert exc.value.field == "occurred_at"


# --- currency ------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["EUR", "USD", "JPY", "CHF", "GBP"])
def test_currency_may_be_any_iso_4217_code(code):
    assert define(currency=code).currency == code


def test_a_lower_case_currency_is_normalised_to_upper_case():
    pipeline = define(currency="usd")

    assert pipeline.currency == "USD"
    assert pipeline.pending_events[0].currency == "USD"


@pytest.mark.parametrize("code", ["EURO", "XYZ", "", "US", " EUR", "XAU", None, 978])
def test_currency_must_be_an_iso_4217_code(code):
    with pytest.raises(InvalidInput) as exc:
        define(currency=code)
    assert exc.value.field == "currency"
    assert exc.value.kind == "invalid"


# --- stages --------------------------------------------------------------------------


def test_stages_must_not_be_empty():
    with pytest.raises(InvalidPipeline) as exc:
        define(stages=[])
    assert exc.value.field == "stages"


@pytest.mark.parametrize("stages", [None, "Deal created", {"name": "A", "probability": 1}])
def test_stages_must_be_a_list(stages):
    with pytest.raises(InvalidPipeline) as exc:
        define(stages=stages)
    assert exc.value.field == "stages"


def test_a_pipeline_may_have_thirty_stages():
    names = [f"Stage {i}" for i in range(MAX_STAGES)]
    pipeline = define(stages=stages_named(*names))

    assert MAX_STAGES == 30
    assert [s.name for s in pipeline.stages] == names


def test_a_pipeline_has_at_most_thirty_stages():
    with pytest.raises(InvalidPipeline) as exc:
        define(stages=stages_named(*(f"Stage {i}" for i in range(31))))
    assert exc.value.field == "stages"


def test_a_stage_must_be_an_object():
    with pytest.raises(InvalidPipeline) as exc:
        define(stages=[{"name": "Lead", "probability": 5}, "Demo"])
    assert exc.value.field == "stages[1]"


def test_a_stage_needs_a_name():
    with pytest.raises(InvalidInput) as exc:
        define(stages=[{"name": "Lead", "probability": 5}, {"name": " ", "probability": 5}])
    assert exc.value.field == "stages[1].name"


def test_a_stage_name_is_trimmed():
    pipeline = define(stages=[{"name": "  Lead  ", "probability": 5}])

    assert pipeline.stages[0].name == "Lead"
    assert pipeline.stages[0].id == "lead"


def test_stage_names_must_be_unique_naming_the_second_use():
    with pytest.raises(InvalidPipeline) as exc:
        define(stages=stages_named("Lead", "Demo", "Lead"))
    assert exc.value.field == "stages[2].name"


def test_stage_names_are_compared_ignoring_case():
    with pytest.raises(InvalidPipeline) as exc:
        define(stages=stages_named("Quote sent", "Negotiation", "QUOTE SENT"))
    assert exc.value.field == "stages[2].name"


def test_stage_names_are_compared_after_trimming():
    with pytest.raises(InvalidPipeline) as exc:
        define(stages=stages_named("Demo", " demo "))
    assert exc.value.field == "stages[1].name"


@pytest.mark.parametrize("probability", [0, 1, 50, 99, 100])
def test_a_stage_probability_is_a_whole_number_from_0_to_100(probability):
    pipeline = define(stages=[{"name": "Lead", "probability": probability}])

    assert pipeline.stages[0].probability == probability


@pytest.mark.parametrize("probability", [-1, 101, 50.0, 50.5, "50", None, True, False])
def test_a_stage_probability_outside_0_to_100_or_not_an_integer_is_refused(probability):
    stages = [{"name": "Lead", "probability": 10}, {"name": "Demo", "probability": probability}]
    with pytest.raises(InvalidPipeline) as exc:
        define(stages=stages)
    assert exc.value.field == "stages[1].probability"


def test_rotting_days_are_optional():
    pipeline = define(stages=[{"name": "Lead", "probability": 5}])

    assert pipeline.stages[0].rotting_days is None


@pytest.mark.parametrize("days", [1, 14, 3650])
def test_rotting_days_may_be_from_1_to_3650(days):
    pipeline = define(stages=[{"name": "Lead", "probability": 5, "rotting_days": days}])

    assert pipeline.stages[0].rotting_days == days
    assert pipeline.pending_events[0].stages[0]["rotting_days"] == days


@pytest.mark.parametrize("days", [0, -3, 3651, 7.0, "7", True])
def test_rotting_days_outside_1_to_3650_or_not_an_integer_are_refused(days):
    stages = [
        {"name": "Lead", "probability": 5},
        {"name": "Demo", "probability": 20, "rotting_days": days},
    ]
    with pytest.raises(InvalidPipeline) as exc:
        define(stages=stages)
    assert exc.value.field == "stages[1].rotting_days"


# --- stage ids -----------------------------------------------------------------------


def test_stage_ids_are_slugs_derived_from_the_names():
    pipeline = define(
        stages=stages_named("Deal created", "Qualifié — étape 2", "Needs  C-level OK!")
    )

    assert [s.id for s in pipeline.stages] == [
        "deal-created",
        "qualifie-etape-2",
        "needs-c-level-ok",
    ]


def test_a_name_without_letters_or_digits_gets_the_id_stage():
    pipeline = define(stages=stages_named("???"))

    assert pipeline.stages[0].id == "stage"
    assert pipeline.stages[0].name == "???"


def test_stage_ids_stay_unique_when_different_names_make_the_same_slug():
    pipeline = define(stages=stages_named("Quote sent", "Quote-sent", "Quote / sent"))

    ids = [s.id for s in pipeline.stages]
    assert ids == ["quote-sent", "quote-sent-2", "quote-sent-3"]
    assert len(set(ids)) == len(ids)


def test_stage_ids_stay_unique_when_a_suffixed_slug_is_already_taken():
    pipeline = define(stages=stages_named("Demo 2", "Demo", "Demo!"))

    ids = [s.id for s in pipeline.stages]
    assert ids[0] == "demo-2"
    assert ids[1] == "demo"
    assert len(set(ids)) == 3


def test_an_explicit_stage_id_is_kept():
    pipeline = define(stages=[{"id": "lead", "name": "Inbound lead", "probability": 5}])

    assert pipeline.stages[0].id == "lead"
    assert pipeline.stages[0].name == "Inbound lead"


@pytest.mark.parametrize("stage_id", ["Lead", "inbound lead", "lead_1", "-lead", 7])
def test_an_explicit_stage_id_must_be_a_slug(stage_id):
    stages = [
        {"name": "Demo", "probability": 20},
        {"id": stage_id, "name": "Lead", "probability": 5},
    ]
    with pytest.raises(InvalidPipeline) as exc:
        define(stages=stages)
    assert exc.value.field == "stages[1].id"


# --- lost reasons --------------------------------------------------------------------


def test_lost_reasons_must_not_be_empty():
    with pytest.raises(InvalidPipeline) as exc:
        define(lost_reasons=[])
    assert exc.value.field == "lost_reasons"


@pytest.mark.parametrize("reasons", [None, "Price", ("Price",)])
def test_lost_reasons_must_be_a_list(reasons):
    with pytest.raises(InvalidPipeline) as exc:
        define(lost_reasons=reasons)
    assert exc.value.field == "lost_reasons"


def test_lost_reasons_must_be_unique_ignoring_case():
    with pytest.raises(InvalidPipeline) as exc:
        define(lost_reasons=["Price", "Timing", "price "])
    assert exc.value.field == "lost_reasons[2]"


def test_a_lost_reason_must_not_be_blank():
    with pytest.raises(InvalidInput) as exc:
        define(lost_reasons=["Price", "  "])
    assert exc.value.field == "lost_reasons[1]"


def test_a_lost_reason_must_be_text():
    with pytest.raises(InvalidInput) as exc:
        define(lost_reasons=["Price", 42])
    assert exc.value.field == "lost_reasons[1]"


def test_lost_reasons_are_trimmed_and_keep_their_order():
    pipeline = define(lost_reasons=[" Timing ", "Price"])

    assert pipeline.lost_reasons == ("Timing", "Price")
    assert pipeline.pending_events[0].lost_reasons == ["Timing", "Price"]


def test_a_pipeline_has_at_most_fifty_lost_reasons():
    assert len(define(lost_reasons=[f"R{i}" for i in range(MAX_LOST_REASONS)]).lost_reasons) == 50
    with pytest.raises(InvalidPipeline) as exc:
        define(lost_reasons=[f"R{i}" for i in range(MAX_LOST_REASONS + 1)])
    assert exc.value.field == "lost_reasons"


# --- finding stages and reasons ------------------------------------------------------


def test_a_stage_is_found_by_its_id():
    pipeline = define()

    assert pipeline.stage("quote-sent").name == "Quote sent"


def test_a_stage_is_found_by_its_name_ignoring_case_and_spaces():
    pipeline = define()

    assert pipeline.stage("Quote sent").id == "quote-sent"
    assert pipeline.stage("quote SENT").id == "quote-sent"
    assert pipeline.stage("  negotiation ").id == "negotiation"


def test_an_id_match_wins_over_a_name_match():
    pipeline = define(
        stages=[
            {"id": "demo", "name": "Lead", "probability": 5},
            {"id": "lead", "name": "Demo", "probability": 20},
        ]
    )

    assert pipeline.stage("demo").name == "Lead"
    assert pipeline.stage("Demo").name == "Demo"


@pytest.mark.parametrize("ref", ["Won", "lost", "quote", "", None, 2])
def test_an_unknown_stage_raises_unknown_stage_listing_the_stages(ref):
    pipeline = define()

    with pytest.raises(UnknownStage) as exc:
        pipeline.stage(ref)
    assert exc.value.field == "stage"
    assert exc.value.details["stages"] == [
        "deal-created",
        "demo-or-meeting",
        "quote-sent",
        "negotiation",
    ]
    for name in DEFAULT_STAGE_NAMES:
        assert repr(name) in exc.value.message


def test_stage_positions_follow_the_definition_order():
    pipeline = define()

    assert [pipeline.position_of(s.id) for s in pipeline.stages] == [0, 1, 2, 3]
    assert pipeline.position_of("nope") == -1


def test_the_stage_name_of_an_unknown_id_falls_back_to_the_id():
    pipeline = define()

    assert pipeline.stage_name("demo-or-meeting") == "Demo or meeting"
    assert pipeline.stage_name("gone") == "gone"


def test_a_lost_reason_is_returned_in_the_pipelines_spelling():
    pipeline = define()

    assert pipeline.check_lost_reason("lost TO competitor ") == "Lost to competitor"


@pytest.mark.parametrize("reason", ["too expensive", "", None, 1])
def test_a_reason_not_on_the_list_raises_unknown_lost_reason(reason):
    pipeline = define()

    with pytest.raises(UnknownLostReason) as exc:
        pipeline.check_lost_reason(reason)
    assert exc.value.field == "reason"
    assert exc.value.details["lost_reasons"] == list(pipeline.lost_reasons)


def test_as_dict_shows_the_pipeline_as_simple_types():
    pipeline = define(currency="gbp")

    data = pipeline.as_dict()

    assert data["id"] == str(pipeline.id)
    assert data["currency"] == "GBP"
    assert data["stages"][0] == {
        "id": "deal-created",
        "name": "Deal created",
        "probability": 10,
        "rotting_days": None,
        "requires": [],
        "checklist": [],
        "checklist_version": 0,
    }
    assert data["lost_reasons"] == list(pipeline.lost_reasons)
    assert data["version"] == 1
