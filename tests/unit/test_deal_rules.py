"""Rules of the Deal aggregate: creation, stages, outcomes, updates and business time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from libs.domain.deal import LOST, OPEN, WON, Deal, deal_id_for
from libs.domain.errors import (
    AlreadyInStage,
    AlreadyLost,
    AlreadyWon,
    DealClosed,
    DealNotClosed,
    InvalidInput,
    NegativeValue,
    NothingToChange,
    OccurredBeforePrevious,
    OccurredInFuture,
    UnknownLostReason,
    UnknownStage,
)
from libs.domain.pipeline import Pipeline, default_template

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
DEFINED_AT = NOW - timedelta(days=60)
CREATED_AT = NOW - timedelta(days=30)


def day(n: float) -> datetime:
    """Business time ``n`` days after the deal was created (still before NOW for n < 30)."""
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
    return Pipeline.define(**kwargs)


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


def event_names(deal: Deal) -> list[str]:
    return [type(e).__name__ for e in deal.pending_events]


def last_event(deal: Deal) -> Any:
    return deal.pending_events[-1]


def snapshot(deal: Deal) -> tuple[int, list[str], dict[str, Any]]:
    """Everything a refused command must leave alone: version, pending events, state."""
    return deal.version, event_names(deal), deal.as_dict()


@pytest.fixture
def pipeline() -> Pipeline:
    return make_pipeline()


@pytest.fixture
def deal(pipeline: Pipeline) -> Deal:
    return make_deal(pipeline)


@pytest.fixture
def won_deal(pipeline: Pipeline) -> Deal:
    deal = make_deal(pipeline)
    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(1), now=NOW)
    deal.win(pipeline, actor="bob", occurred_at=day(2), now=NOW)
    return deal


@pytest.fixture
def lost_deal(pipeline: Pipeline) -> Deal:
    deal = make_deal(pipeline)
    deal.advance(pipeline, "negotiation", actor="bob", occurred_at=day(1), now=NOW)
    deal.lose(
        pipeline,
        "Price",
        "they went with a cheaper tool",
        actor="bob",
        occurred_at=day(2),
        now=NOW,
    )
    return deal


# --- creating a deal -----------------------------------------------------------------


def test_a_new_deal_starts_open_in_the_first_stage(pipeline):
    deal = make_deal(pipeline)

    assert deal.stage_id == "deal-created"
    assert deal.status == OPEN
    assert deal.pipeline_id == pipeline.id
    assert deal.title == "Acme renewal"
    assert deal.value == Decimal("12000")
    assert deal.owner == "bob"
    assert deal.expected_close_date is None
    assert deal.external_id is None
    assert deal.lost_reason is None
    assert deal.lost_note is None
    assert deal.closed_at is None
    assert deal.created_at == CREATED_AT
    assert deal.stage_entered_at == CREATED_AT
    assert deal.last_occurred_at == CREATED_AT
    assert deal.version == 1


def test_creating_a_deal_records_one_deal_created_event(pipeline):
    deal = make_deal(pipeline, expected_close_date=date(2025, 6, 30), external_id="crm-77")

    assert event_names(deal) == ["DealCreated"]
    created = deal.pending_events[0]
    assert created.originator_id == deal.id
    assert created.pipeline_id == pipeline.id
    assert created.title == "Acme renewal"
    assert created.value == Decimal("12000")
    assert created.owner == "bob"
    assert created.stage_id == "deal-created"
    assert created.stage_name == "Deal created"
    assert created.expected_close_date == date(2025, 6, 30)
    assert created.external_id == "crm-77"
    assert created.actor == "bob"
    assert created.occurred_at == CREATED_AT


def test_a_new_deal_may_start_in_a_named_stage(pipeline):
    deal = make_deal(pipeline, stage="Quote SENT")

    assert deal.stage_id == "quote-sent"
    assert deal.pending_events[0].stage_id == "quote-sent"
    assert deal.pending_events[0].stage_name == "Quote sent"


def test_a_new_deal_may_start_in_a_stage_named_by_id(pipeline):
    assert make_deal(pipeline, stage="negotiation").stage_id == "negotiation"


def test_a_new_deal_cannot_start_in_an_unknown_stage(pipeline):
    with pytest.raises(UnknownStage) as exc:
        make_deal(pipeline, stage="Won")
    assert exc.value.field == "stage"
    assert exc.value.details["stages"] == [s.id for s in pipeline.stages]


def test_title_and_owner_are_trimmed(pipeline):
    deal = make_deal(pipeline, title="  Acme renewal ", owner=" bob ")

    assert deal.title == "Acme renewal"
    assert deal.owner == "bob"


@pytest.mark.parametrize("title", ["", "   ", None, 42])
def test_a_deal_needs_a_title(pipeline, title):
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, title=title)
    assert exc.value.field == "title"


def test_a_title_may_be_200_characters_but_not_more(pipeline):
    assert make_deal(pipeline, title="t" * 200).title == "t" * 200
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, title="t" * 201)
    assert exc.value.field == "title"


def test_a_title_must_not_contain_control_characters(pipeline):
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, title="Acme\x00renewal")
    assert exc.value.field == "title"


@pytest.mark.parametrize("owner", ["", "  ", None])
def test_a_deal_needs_an_owner(pipeline, owner):
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, owner=owner)
    assert exc.value.field == "owner"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", Decimal("0")),
        (0, Decimal("0")),
        ("1234.5678", Decimal("1234.5678")),
        (1500, Decimal("1500")),
        (0.1, Decimal("0.1")),
        (Decimal("99.99"), Decimal("99.99")),
        ("1000000000000000", Decimal("1000000000000000")),
    ],
)
def test_a_value_is_kept_as_an_exact_decimal(pipeline, value, expected):
    deal = make_deal(pipeline, value=value)

    assert deal.value == expected
    assert isinstance(deal.value, Decimal)
    assert deal.pending_events[0].value == expected


@pytest.mark.parametrize("value", ["-0.01", -1, Decimal("-500")])
def test_a_value_must_not_be_negative(pipeline, value):
    with pytest.raises(NegativeValue) as exc:
        make_deal(pipeline, value=value)
    assert exc.value.field == "value"
    assert exc.value.code == "negative_value"


@pytest.mark.parametrize("value", ["abc", "", "12,50", None, [], {}, True, False])
def test_a_value_that_is_not_a_decimal_number_is_invalid_input(pipeline, value):
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, value=value)
    assert type(exc.value) is InvalidInput
    assert exc.value.field == "value"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", float("inf")])
def test_a_value_must_be_finite(pipeline, value):
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, value=value)
    assert exc.value.field == "value"


@pytest.mark.parametrize("value", ["0.00001", "1.23456", 0.12345])
def test_a_value_has_at_most_four_decimal_places(pipeline, value):
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, value=value)
    assert type(exc.value) is InvalidInput
    assert exc.value.field == "value"


def test_a_value_above_ten_to_the_fifteen_is_refused(pipeline):
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, value="1000000000000000.01")
    assert exc.value.field == "value"


@pytest.mark.parametrize("close_date", ["2025-06-30", datetime(2025, 6, 30, tzinfo=UTC), 20250630])
def test_expected_close_date_must_be_a_date(pipeline, close_date):
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, expected_close_date=close_date)
    assert exc.value.field == "expected_close_date"


def test_an_external_id_must_not_be_blank(pipeline):
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, external_id="  ")
    assert exc.value.field == "external_id"


# --- deal ids ------------------------------------------------------------------------


def test_an_external_id_gives_the_deterministic_deal_id(pipeline):
    deal = make_deal(pipeline, external_id="crm-1")

    assert deal.id == deal_id_for(pipeline.id, "crm-1")
    assert deal.external_id == "crm-1"


def test_the_same_external_id_maps_onto_the_same_deal(pipeline):
    first = make_deal(pipeline, external_id="crm-1", title="First import")
    again = make_deal(pipeline, external_id="crm-1", title="Second import")

    assert first.id == again.id


def test_the_same_external_id_in_another_pipeline_is_another_deal(pipeline):
    other = make_pipeline(name="Renewals")

    assert make_deal(pipeline, external_id="crm-1").id != make_deal(other, external_id="crm-1").id


def test_different_external_ids_give_different_deal_ids(pipeline):
    assert (
        make_deal(pipeline, external_id="crm-1").id != make_deal(pipeline, external_id="crm-2").id
    )


def test_deals_without_an_external_id_get_different_ids(pipeline):
    first = make_deal(pipeline)
    second = make_deal(pipeline)

    assert isinstance(first.id, UUID)
    assert first.id != second.id


def test_deal_id_for_is_a_stable_uuid5():
    pipeline_id = UUID("00000000-0000-0000-0000-000000000001")

    assert deal_id_for(pipeline_id, "x") == deal_id_for(pipeline_id, "x")
    assert deal_id_for(pipeline_id, "x").version == 5


# --- advancing -----------------------------------------------------------------------


def test_advancing_moves_the_deal_forward_and_records_it(pipeline, deal):
    deal.advance(pipeline, "Quote sent", actor="carol", occurred_at=day(3), now=NOW)

    assert deal.stage_id == "quote-sent"
    assert deal.stage_entered_at == day(3)
    assert deal.last_occurred_at == day(3)
    assert deal.created_at == CREATED_AT
    assert deal.version == 2
    assert event_names(deal) == ["DealCreated", "StageAdvanced"]
    moved = last_event(deal)
    assert moved.from_stage_id == "deal-created"
    assert moved.from_stage_name == "Deal created"
    assert moved.to_stage_id == "quote-sent"
    assert moved.to_stage_name == "Quote sent"
    assert moved.direction == "forward"
    assert moved.actor == "carol"
    assert moved.occurred_at == day(3)


def test_advancing_may_skip_stages(pipeline, deal):
    deal.advance(pipeline, "negotiation", actor="bob", occurred_at=day(1), now=NOW)

    assert deal.stage_id == "negotiation"
    assert last_event(deal).direction == "forward"


def test_moving_backwards_is_allowed_and_recorded_as_backward(pipeline, deal):
    deal.advance(pipeline, "negotiation", actor="bob", occurred_at=day(1), now=NOW)
    deal.advance(pipeline, "demo-or-meeting", actor="bob", occurred_at=day(2), now=NOW)

    assert deal.stage_id == "demo-or-meeting"
    assert deal.stage_entered_at == day(2)
    assert event_names(deal) == ["DealCreated", "StageAdvanced", "StageAdvanced"]
    back = last_event(deal)
    assert back.from_stage_id == "negotiation"
    assert back.to_stage_id == "demo-or-meeting"
    assert back.direction == "backward"


def test_cannot_advance_to_the_stage_the_deal_is_in(pipeline, deal):
    before = snapshot(deal)

    with pytest.raises(AlreadyInStage) as exc:
        deal.advance(pipeline, "Deal created", actor="bob", occurred_at=day(1), now=NOW)
    assert exc.value.field == "stage"
    assert snapshot(deal) == before


def test_cannot_advance_to_an_unknown_stage(pipeline, deal):
    before = snapshot(deal)

    with pytest.raises(UnknownStage) as exc:
        deal.advance(pipeline, "Won", actor="bob", occurred_at=day(1), now=NOW)
    assert exc.value.field == "stage"
    assert snapshot(deal) == before


def test_cannot_advance_a_won_deal(pipeline, won_deal):
    before = snapshot(won_deal)

    with pytest.raises(DealClosed) as exc:
        won_deal.advance(pipeline, "negotiation", actor="bob", occurred_at=day(3), now=NOW)
    assert exc.value.details["status"] == WON
    assert snapshot(won_deal) == before


def test_cannot_advance_a_lost_deal(pipeline, lost_deal):
    before = snapshot(lost_deal)

    with pytest.raises(DealClosed) as exc:
        lost_deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(3), now=NOW)
    assert exc.value.details["status"] == LOST
    assert snapshot(lost_deal) == before


# --- winning -------------------------------------------------------------------------


def test_winning_closes_the_deal_in_its_current_stage(pipeline, deal):
    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(1), now=NOW)
    deal.win(pipeline, actor="carol", occurred_at=day(2), now=NOW)

    assert deal.status == WON
    assert deal.stage_id == "quote-sent"
    assert deal.closed_at == day(2)
    assert deal.last_occurred_at == day(2)
    assert event_names(deal) == ["DealCreated", "StageAdvanced", "DealWon"]
    won = last_event(deal)
    assert won.stage_id == "quote-sent"
    assert won.stage_name == "Quote sent"
    assert won.actor == "carol"
    assert won.occurred_at == day(2)


def test_a_deal_can_be_won_straight_from_the_first_stage(pipeline, deal):
    deal.win(pipeline, actor="bob", occurred_at=day(1), now=NOW)

    assert deal.status == WON
    assert last_event(deal).stage_id == "deal-created"


def test_cannot_win_a_deal_twice(pipeline, won_deal):
    before = snapshot(won_deal)

    with pytest.raises(AlreadyWon):
        won_deal.win(pipeline, actor="bob", occurred_at=day(3), now=NOW)
    assert snapshot(won_deal) == before


def test_cannot_win_a_lost_deal(pipeline, lost_deal):
    before = snapshot(lost_deal)

    with pytest.raises(DealClosed) as exc:
        lost_deal.win(pipeline, actor="bob", occurred_at=day(3), now=NOW)
    assert exc.value.details["status"] == LOST
    assert snapshot(lost_deal) == before


# --- losing --------------------------------------------------------------------------


def test_losing_closes_the_deal_with_a_reason_and_a_note(pipeline, deal):
    deal.advance(pipeline, "negotiation", actor="bob", occurred_at=day(1), now=NOW)
    deal.lose(
        pipeline, "Lost to competitor", "Chose Initech", actor="carol", occurred_at=day(2), now=NOW
    )

    assert deal.status == LOST
    assert deal.stage_id == "negotiation"
    assert deal.lost_reason == "Lost to competitor"
    assert deal.lost_note == "Chose Initech"
    assert deal.closed_at == day(2)
    assert event_names(deal) == ["DealCreated", "StageAdvanced", "DealLost"]
    lost = last_event(deal)
    assert lost.reason == "Lost to competitor"
    assert lost.note == "Chose Initech"
    assert lost.stage_id == "negotiation"
    assert lost.stage_name == "Negotiation"
    assert lost.actor == "carol"
    assert lost.occurred_at == day(2)


def test_the_lost_reason_is_matched_ignoring_case_and_stored_in_the_pipelines_spelling(
    pipeline, deal
):
    deal.lose(pipeline, "  no BUDGET ", actor="bob", occurred_at=day(1), now=NOW)

    assert deal.lost_reason == "No budget"
    assert last_event(deal).reason == "No budget"


def test_lost_needs_a_reason_from_the_pipelines_list(pipeline, deal):
    before = snapshot(deal)

    with pytest.raises(UnknownLostReason) as exc:
        deal.lose(pipeline, "They ghosted us", actor="bob", occurred_at=day(1), now=NOW)
    assert exc.value.field == "reason"
    assert exc.value.details["lost_reasons"] == list(pipeline.lost_reasons)
    assert "note" in exc.value.message
    assert snapshot(deal) == before


@pytest.mark.parametrize("reason", [None, "", "  "])
def test_lost_without_a_reason_is_refused(pipeline, deal, reason):
    before = snapshot(deal)

    with pytest.raises(UnknownLostReason) as exc:
        deal.lose(pipeline, reason, "no reason given", actor="bob", occurred_at=day(1), now=NOW)
    assert exc.value.field == "reason"
    assert snapshot(deal) == before


def test_free_text_about_a_loss_goes_in_the_note(pipeline, deal):
    deal.lose(
        pipeline,
        "Other",
        "  They ghosted us after the demo.\nNo reply since. ",
        actor="bob",
        occurred_at=day(1),
        now=NOW,
    )

    assert deal.lost_reason == "Other"
    assert deal.lost_note == "They ghosted us after the demo.\nNo reply since."
    assert last_event(deal).note == "They ghosted us after the demo.\nNo reply since."


@pytest.mark.parametrize("note", [None, "", "   "])
def test_a_missing_or_blank_note_is_stored_as_none(pipeline, deal, note):
    deal.lose(pipeline, "Timing", note, actor="bob", occurred_at=day(1), now=NOW)

    assert deal.lost_note is None
    assert last_event(deal).note is None


def test_a_note_is_at_most_2000_characters(pipeline, deal):
    before = snapshot(deal)

    with pytest.raises(InvalidInput) as exc:
        deal.lose(pipeline, "Timing", "n" * 2001, actor="bob", occurred_at=day(1), now=NOW)
    assert exc.value.field == "note"
    assert snapshot(deal) == before


def test_a_note_must_be_text(pipeline, deal):
    with pytest.raises(InvalidInput) as exc:
        deal.lose(pipeline, "Timing", 42, actor="bob", occurred_at=day(1), now=NOW)
    assert exc.value.field == "note"


def test_cannot_lose_a_deal_twice(pipeline, lost_deal):
    before = snapshot(lost_deal)

    with pytest.raises(AlreadyLost):
        lost_deal.lose(pipeline, "Timing", actor="bob", occurred_at=day(3), now=NOW)
    assert snapshot(lost_deal) == before


def test_cannot_lose_a_won_deal(pipeline, won_deal):
    before = snapshot(won_deal)

    with pytest.raises(DealClosed) as exc:
        won_deal.lose(pipeline, "Price", actor="bob", occurred_at=day(3), now=NOW)
    assert exc.value.details["status"] == WON
    assert snapshot(won_deal) == before


# --- reopening -----------------------------------------------------------------------


def test_cannot_reopen_an_open_deal(pipeline, deal):
    before = snapshot(deal)

    with pytest.raises(DealNotClosed):
        deal.reopen(pipeline, actor="bob", occurred_at=day(1), now=NOW)
    assert snapshot(deal) == before


def test_reopening_a_won_deal_puts_it_back_in_the_stage_it_closed_in(pipeline, won_deal):
    won_deal.reopen(pipeline, actor="carol", occurred_at=day(5), now=NOW)

    assert won_deal.status == OPEN
    assert won_deal.stage_id == "quote-sent"
    assert won_deal.closed_at is None
    assert won_deal.stage_entered_at == day(5)
    assert won_deal.last_occurred_at == day(5)
    assert event_names(won_deal) == ["DealCreated", "StageAdvanced", "DealWon", "DealReopened"]
    reopened = last_event(won_deal)
    assert reopened.previous_status == WON
    assert reopened.stage_id == "quote-sent"
    assert reopened.stage_name == "Quote sent"
    assert reopened.actor == "carol"
    assert reopened.occurred_at == day(5)


def test_reopening_a_lost_deal_clears_the_lost_reason_and_note(pipeline, lost_deal):
    lost_deal.reopen(pipeline, actor="bob", occurred_at=day(5), now=NOW)

    assert lost_deal.status == OPEN
    assert lost_deal.stage_id == "negotiation"
    assert lost_deal.lost_reason is None
    assert lost_deal.lost_note is None
    assert lost_deal.closed_at is None
    assert last_event(lost_deal).previous_status == LOST
    assert event_names(lost_deal)[-1] == "DealReopened"


def test_reopening_may_name_another_stage(pipeline, lost_deal):
    lost_deal.reopen(pipeline, "Demo or meeting", actor="bob", occurred_at=day(5), now=NOW)

    assert lost_deal.stage_id == "demo-or-meeting"
    assert last_event(lost_deal).stage_id == "demo-or-meeting"
    assert last_event(lost_deal).stage_name == "Demo or meeting"


def test_reopening_into_an_unknown_stage_is_refused(pipeline, lost_deal):
    before = snapshot(lost_deal)

    with pytest.raises(UnknownStage):
        lost_deal.reopen(pipeline, "Won", actor="bob", occurred_at=day(5), now=NOW)
    assert snapshot(lost_deal) == before


def test_a_reopened_deal_accepts_commands_again(pipeline, won_deal):
    won_deal.reopen(pipeline, actor="bob", occurred_at=day(5), now=NOW)
    won_deal.advance(pipeline, "negotiation", actor="bob", occurred_at=day(6), now=NOW)
    won_deal.lose(pipeline, "Timing", actor="bob", occurred_at=day(7), now=NOW)

    assert won_deal.status == LOST
    assert event_names(won_deal)[-3:] == ["DealReopened", "StageAdvanced", "DealLost"]


# --- business time (occurred_at) -----------------------------------------------------


def test_a_backdated_occurred_at_is_accepted_and_stored(pipeline):
    long_ago = NOW - timedelta(days=400)
    deal = make_deal(pipeline, occurred_at=long_ago)
    deal.advance(
        pipeline, "demo-or-meeting", actor="bob", occurred_at=long_ago + timedelta(days=1), now=NOW
    )

    assert deal.created_at == long_ago
    assert deal.stage_entered_at == long_ago + timedelta(days=1)
    assert [e.occurred_at for e in deal.pending_events] == [long_ago, long_ago + timedelta(days=1)]


def test_occurred_at_may_equal_the_clock(pipeline, deal):
    deal.win(pipeline, actor="bob", occurred_at=NOW, now=NOW)

    assert deal.closed_at == NOW


def test_occurred_at_may_equal_the_previous_event(pipeline, deal):
    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=CREATED_AT, now=NOW)

    assert last_event(deal).occurred_at == CREATED_AT


def test_a_deal_cannot_be_created_in_the_future(pipeline):
    with pytest.raises(OccurredInFuture) as exc:
        make_deal(pipeline, occurred_at=NOW + timedelta(seconds=1))
    assert exc.value.field == "occurred_at"


def test_a_command_cannot_happen_in_the_future(pipeline, deal):
    before = snapshot(deal)

    with pytest.raises(OccurredInFuture) as exc:
        deal.advance(
            pipeline, "quote-sent", actor="bob", occurred_at=NOW + timedelta(minutes=1), now=NOW
        )
    assert exc.value.field == "occurred_at"
    assert snapshot(deal) == before


def test_a_command_cannot_happen_before_the_deals_previous_event(pipeline, deal):
    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(5), now=NOW)
    before = snapshot(deal)

    with pytest.raises(OccurredBeforePrevious) as exc:
        deal.win(pipeline, actor="bob", occurred_at=day(4), now=NOW)
    assert exc.value.field == "occurred_at"
    assert snapshot(deal) == before


def test_a_command_cannot_happen_before_the_deal_was_created(pipeline, deal):
    with pytest.raises(OccurredBeforePrevious) as exc:
        deal.lose(
            pipeline, "Price", actor="bob", occurred_at=CREATED_AT - timedelta(seconds=1), now=NOW
        )
    assert exc.value.field == "occurred_at"
    assert deal.status == OPEN


@pytest.mark.parametrize(
    "command",
    ["advance", "win", "lose", "update"],
)
def test_a_naive_occurred_at_is_refused(pipeline, deal, command):
    naive = datetime(2025, 3, 1, 12, 0)
    before = snapshot(deal)

    with pytest.raises(InvalidInput) as exc:
        if command == "advance":
            deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=naive, now=NOW)
        elif command == "win":
            deal.win(pipeline, actor="bob", occurred_at=naive, now=NOW)
        elif command == "lose":
            deal.lose(pipeline, "Price", actor="bob", occurred_at=naive, now=NOW)
        else:
            deal.update(title="New title", actor="bob", occurred_at=naive, now=NOW)
    assert exc.value.field == "occurred_at"
    assert snapshot(deal) == before


def test_a_deal_cannot_be_created_with_a_naive_occurred_at(pipeline):
    with pytest.raises(InvalidInput) as exc:
        make_deal(pipeline, occurred_at=datetime(2025, 3, 1, 12, 0))
    assert exc.value.field == "occurred_at"


def test_occurred_at_in_another_time_zone_is_compared_as_an_instant(pipeline, deal):
    plus_one = timezone(timedelta(hours=1))

    # 12:30 at UTC+1 is 11:30 UTC, half an hour before the clock.
    deal.advance(
        pipeline,
        "quote-sent",
        actor="bob",
        occurred_at=datetime(2025, 3, 14, 12, 30, tzinfo=plus_one),
        now=NOW,
    )
    assert deal.stage_id == "quote-sent"

    # 13:30 at UTC+1 is 12:30 UTC, half an hour after the clock.
    with pytest.raises(OccurredInFuture):
        deal.win(
            pipeline,
            actor="bob",
            occurred_at=datetime(2025, 3, 14, 13, 30, tzinfo=plus_one),
            now=NOW,
        )


# --- updating ------------------------------------------------------------------------


def test_an_update_records_only_the_fields_that_change(pipeline, deal):
    deal.update(
        title="Acme renewal",
        value="15000.50",
        expected_close_date=date(2025, 5, 1),
        actor="carol",
        occurred_at=day(1),
        now=NOW,
    )

    assert deal.title == "Acme renewal"
    assert deal.value == Decimal("15000.50")
    assert deal.expected_close_date == date(2025, 5, 1)
    assert deal.last_occurred_at == day(1)
    assert event_names(deal) == ["DealCreated", "DealUpdated"]
    updated = last_event(deal)
    assert updated.changes == {
        "value": Decimal("15000.50"),
        "expected_close_date": date(2025, 5, 1),
    }
    assert updated.previous == {"value": Decimal("12000"), "expected_close_date": None}
    assert updated.actor == "carol"
    assert updated.occurred_at == day(1)


def test_an_update_to_an_equal_amount_written_differently_is_no_change(pipeline, deal):
    deal.update(
        value="12000.00", title="Acme renewal 2025", actor="bob", occurred_at=day(1), now=NOW
    )

    assert last_event(deal).changes == {"title": "Acme renewal 2025"}
    assert last_event(deal).previous == {"title": "Acme renewal"}


def test_an_update_may_clear_the_expected_close_date(pipeline):
    deal = make_deal(pipeline, expected_close_date=date(2025, 6, 30))

    deal.update(expected_close_date=None, actor="bob", occurred_at=day(1), now=NOW)

    assert deal.expected_close_date is None
    assert last_event(deal).changes == {"expected_close_date": None}
    assert last_event(deal).previous == {"expected_close_date": date(2025, 6, 30)}


def test_an_owner_change_is_its_own_owner_changed_event(pipeline, deal):
    deal.update(owner="carol", actor="alice", occurred_at=day(1), now=NOW)

    assert deal.owner == "carol"
    assert event_names(deal) == ["DealCreated", "OwnerChanged"]
    changed = last_event(deal)
    assert changed.from_owner == "bob"
    assert changed.to_owner == "carol"
    assert changed.actor == "alice"
    assert changed.occurred_at == day(1)


def test_an_update_with_fields_and_owner_records_deal_updated_then_owner_changed(pipeline, deal):
    deal.update(
        title="Acme 3-year renewal", owner="carol", actor="alice", occurred_at=day(1), now=NOW
    )

    assert event_names(deal) == ["DealCreated", "DealUpdated", "OwnerChanged"]
    updated, changed = deal.pending_events[1:]
    assert updated.changes == {"title": "Acme 3-year renewal"}
    assert "owner" not in updated.changes
    assert changed.from_owner == "bob"
    assert changed.to_owner == "carol"
    assert deal.title == "Acme 3-year renewal"
    assert deal.owner == "carol"
    assert deal.version == 3


def test_an_update_that_changes_nothing_is_refused(pipeline):
    deal = make_deal(pipeline, expected_close_date=date(2025, 6, 30))
    before = snapshot(deal)

    with pytest.raises(NothingToChange) as exc:
        deal.update(
            title=" Acme renewal ",
            value=Decimal("12000.0"),
            expected_close_date=date(2025, 6, 30),
            owner="bob ",
            actor="bob",
            occurred_at=day(1),
            now=NOW,
        )
    assert exc.value.field == "body"
    assert snapshot(deal) == before


def test_an_update_naming_no_field_is_refused(pipeline, deal):
    with pytest.raises(NothingToChange):
        deal.update(actor="bob", occurred_at=day(1), now=NOW)
    assert event_names(deal) == ["DealCreated"]


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"title": ""}, InvalidInput, "title"),
        ({"title": "t" * 201}, InvalidInput, "title"),
        ({"value": "-1"}, NegativeValue, "value"),
        ({"value": "lots"}, InvalidInput, "value"),
        ({"value": "1.00001"}, InvalidInput, "value"),
        ({"expected_close_date": "2025-06-30"}, InvalidInput, "expected_close_date"),
        ({"owner": " "}, InvalidInput, "owner"),
    ],
)
def test_an_update_checks_each_field_and_changes_nothing_when_one_is_wrong(
    pipeline, deal, fields, error, field
):
    before = snapshot(deal)

    with pytest.raises(error) as exc:
        deal.update(
            **{"title": "A valid new title", **fields}, actor="bob", occurred_at=day(1), now=NOW
        )
    assert exc.value.field == field
    assert snapshot(deal) == before


def test_cannot_update_a_won_deal(pipeline, won_deal):
    before = snapshot(won_deal)

    with pytest.raises(DealClosed):
        won_deal.update(value="1", actor="bob", occurred_at=day(3), now=NOW)
    assert snapshot(won_deal) == before


def test_cannot_change_the_owner_of_a_lost_deal(pipeline, lost_deal):
    before = snapshot(lost_deal)

    with pytest.raises(DealClosed):
        lost_deal.update(owner="carol", actor="alice", occurred_at=day(3), now=NOW)
    assert snapshot(lost_deal) == before


def test_an_update_cannot_happen_before_the_previous_event(pipeline, deal):
    deal.advance(pipeline, "quote-sent", actor="bob", occurred_at=day(5), now=NOW)
    before = snapshot(deal)

    with pytest.raises(OccurredBeforePrevious):
        deal.update(title="Too early", actor="bob", occurred_at=day(4), now=NOW)
    assert snapshot(deal) == before


# --- the deal as simple types ----------------------------------------------------------


def test_as_dict_reflects_the_state_after_a_loss(pipeline, lost_deal):
    data = lost_deal.as_dict(pipeline)

    assert data["status"] == LOST
    assert data["stage"] == {"id": "negotiation", "name": "Negotiation"}
    assert data["value"] == "12000.00"
    assert data["currency"] == "EUR"
    assert data["lost_reason"] == "Price"
    assert data["lost_note"] == "they went with a cheaper tool"
    assert data["created_at"] == CREATED_AT.isoformat()
    assert data["closed_at"] == day(2).isoformat()
    assert data["entered_current_stage_at"] == day(1).isoformat()
    assert data["last_activity_at"] == day(2).isoformat()
    assert data["version"] == 3
