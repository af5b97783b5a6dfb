"""Activities on the Deal aggregate and the stage checklist rule, in the domain alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.domain.activities import MAX_ACTIVITIES_PER_DEAL, MAX_CHECKLIST_ITEMS
from libs.domain.actors import Actor, Role
from libs.domain.deal import Deal
from libs.domain.errors import (
    ActivityNotFound,
    ActivityNotOpen,
    ChecklistIncomplete,
    DealClosed,
    Forbidden,
    InvalidInput,
    NoOpenChecklistItems,
    NothingToChange,
    OccurredBeforePrevious,
    TimeOutOfRange,
    TooManyActivities,
)
from libs.domain.pipeline import Pipeline
from libs.domain.state import CANCELLED, DONE, summarize

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
START = NOW - timedelta(days=30)
CHECKLIST = [
    {"title": "Qualify budget", "type": "call", "due_in_days": 2},
    {"title": "Send the deck", "type": "email"},
]


def day(n: float) -> datetime:
    return START + timedelta(days=n)


def pipeline(require: bool = True, **overrides: Any) -> Pipeline:
    kwargs: dict[str, Any] = {
        "name": "Sales",
        "currency": "EUR",
        "stages": [
            {"name": "Lead", "probability": 10, "checklist": CHECKLIST},
            {"name": "Offer", "probability": 50},
            {
                "name": "Contract",
                "probability": 80,
                "checklist": [{"title": "Sign", "type": "task"}],
            },
        ],
        "lost_reasons": ["Price"],
        "require_checklist_before_leaving": require,
        "actor": "ann",
        "occurred_at": START - timedelta(days=1),
        "now": NOW,
    }
    kwargs.update(overrides)
    return Pipeline.define(**kwargs)


def deal(p: Pipeline, stage: str | None = None) -> Deal:
    return Deal.create(
        pipeline=p,
        title="ACME",
        value="100",
        owner="rita",
        stage=stage,
        actor="rita",
        occurred_at=day(0),
        now=NOW,
    )


def stamp(n: float, actor: str = "rita") -> dict[str, Any]:
    return {"actor": actor, "occurred_at": day(n), "now": NOW}


def checklist_ids(d: Deal) -> dict[str, str]:
    return {a.subject: a.id for a in d.open_checklist_items()}


# --- activities --------------------------------------------------------------------------


def test_an_activity_is_planned_for_the_owner_and_summarised_against_the_clock() -> None:
    d = deal(pipeline(require=False, stages=[{"name": "Lead", "probability": 10}]))
    call = d.schedule_activity(type="Call", subject=" Intro ", due_at=day(3), **stamp(1))
    task = d.schedule_activity(
        type="task", subject="Deck", due_at=day(2), assignee="raj", duration_minutes=15, **stamp(1)
    )

    assert d.activity(call).type == "call" and d.activity(call).subject == "Intro"
    assert d.activity(call).assignee == "rita" and d.activity(task).assignee == "raj"
    summary = summarize(d.activities)
    assert summary.open_count == 2 and summary.next is not None
    assert summary.next["id"] == task  # the soonest due
    assert summary.overdue_count(day(2.5)) == 1 and summary.overdue_count(day(4)) == 2
    assert summary.next_view(day(1))["overdue"] is False  # type: ignore[index]

    d.complete_activity(task, "sent", **stamp(2))
    d.cancel_activity(call, "no answer", **stamp(3))

    assert (d.activity(task).status, d.activity(task).outcome) == (DONE, "sent")
    assert (d.activity(call).status, d.activity(call).cancel_reason) == (CANCELLED, "no answer")
    summary = summarize(d.activities)
    assert summary.open_count == 0 and summary.next is None
    assert summary.last_completed is not None and summary.last_completed["id"] == task


def test_activity_ids_follow_the_deals_history_so_every_writer_gets_the_same() -> None:
    p = pipeline(require=False)

    def history(external_id: str) -> Deal:
        d = Deal.create(
            pipeline=p,
            title="ACME",
            value="100",
            owner="rita",
            external_id=external_id,
            actor="rita",
            occurred_at=day(0),
            now=NOW,
        )
        d.schedule_activity(type="call", subject="x", due_at=day(1), **stamp(1))
        return d

    first, again, other = history("crm-1"), history("crm-1"), history("crm-2")

    assert [a.id for a in first.activities] == [a.id for a in again.activities]
    assert not {a.id for a in first.activities} & {a.id for a in other.activities}
    assert len({a.id for a in first.activities}) == 3  # two checklist items and the call


def test_an_update_reschedules_reassigns_or_edits_and_records_only_real_changes() -> None:
    d = deal(pipeline(require=False))
    call = d.schedule_activity(type="call", subject="Intro", due_at=day(3), **stamp(1))

    d.update_activity(call, due_at=day(5), subject="Intro", assignee="raj", **stamp(2))

    event = d.pending_events[-1]
    assert getattr(event, "changes") == {"due_at": day(5), "assignee": "raj"}  # noqa: B009
    assert getattr(event, "previous") == {"due_at": day(3), "assignee": "rita"}  # noqa: B009
    with pytest.raises(NothingToChange):
        d.update_activity(call, due_at=day(5), **stamp(2))
    d.complete_activity(call, **stamp(2))
    with pytest.raises(ActivityNotOpen):
        d.update_activity(call, subject="Later", **stamp(3))
    with pytest.raises(ActivityNotOpen):
        d.cancel_activity(call, **stamp(3))
    with pytest.raises(ActivityNotFound):
        d.complete_activity("00000000-0000-0000-0000-000000000000", **stamp(3))


def test_activities_are_bounded_in_time_size_and_number() -> None:
    d = deal(pipeline(require=False, stages=[{"name": "Lead", "probability": 10}]))
    good: dict[str, Any] = {"type": "call", "subject": "x", "due_at": day(1)}

    for bad, field in (
        ({"type": "lunch"}, "type"),
        ({"subject": ""}, "subject"),
        ({"subject": "x" * 201}, "subject"),
        ({"due_at": "tomorrow"}, "due_at"),
        ({"due_at": datetime(2026, 6, 1, 12)}, "due_at"),  # no zone
        ({"duration_minutes": 0}, "duration_minutes"),
        ({"duration_minutes": 1441}, "duration_minutes"),
        ({"duration_minutes": True}, "duration_minutes"),
        ({"note": "x" * 2001}, "note"),
        ({"assignee": "a\x00b"}, "assignee"),
    ):
        with pytest.raises(InvalidInput) as exc:
            d.schedule_activity(**{**good, **bad}, **stamp(1))
        assert exc.value.field == field, bad
    with pytest.raises(TimeOutOfRange):
        d.schedule_activity(**{**good, "due_at": NOW + timedelta(days=3700)}, **stamp(1))
    with pytest.raises(OccurredBeforePrevious):
        d.schedule_activity(**good, **{**stamp(1), "occurred_at": day(-1)})

    for _ in range(MAX_ACTIVITIES_PER_DEAL):
        d.schedule_activity(**good, **stamp(1))
    with pytest.raises(TooManyActivities) as too_many:
        d.schedule_activity(**good, **stamp(1))
    assert too_many.value.details["limit"] == MAX_ACTIVITIES_PER_DEAL


def test_a_closed_deal_still_takes_its_activities_but_not_a_waiver() -> None:
    p = pipeline(require=False)
    d = deal(p)
    d.lose(p, "Price", **stamp(1))

    follow_up = d.schedule_activity(type="email", subject="Thanks", due_at=day(3), **stamp(2))
    d.complete_activity(follow_up, **stamp(3))
    with pytest.raises(DealClosed):
        d.waive_checklist(p, "not needed", **stamp(3))


# --- checklists --------------------------------------------------------------------------


def test_entering_a_stage_with_a_checklist_adds_its_items_in_one_event_with_its_version() -> None:
    p = pipeline()
    d = deal(p)

    assert [type(e).__name__ for e in d.pending_events] == ["DealCreated", "ChecklistApplied"]
    applied = d.pending_events[1]
    assert getattr(applied, "checklist_version") == 1  # noqa: B009
    items = d.open_checklist_items()
    assert [(a.subject, a.type, a.due_at) for a in items] == [
        ("Qualify budget", "call", day(2)),
        ("Send the deck", "email", None),
    ]
    assert all(a.checklist_stage_id == "lead" and a.assignee == "rita" for a in items)


def test_leaving_a_stage_with_open_items_is_refused_naming_them_and_losing_is_not() -> None:
    p = pipeline()
    for leave in (
        lambda d: d.advance(p, "offer", **stamp(1)),
        lambda d: d.win(p, **stamp(1)),
        lambda d: d.move_to_pipeline(p, pipeline(name="Other"), **stamp(1)),
    ):
        d = deal(p)
        with pytest.raises(ChecklistIncomplete) as exc:
            leave(d)
        assert exc.value.kind == "conflict"
        assert [i["title"] for i in exc.value.details["open_items"]] == [
            "Qualify budget",
            "Send the deck",
        ]
        assert "'Qualify budget'" in exc.value.message

    d = deal(p, stage="offer")
    d.advance(p, "contract", **stamp(1))
    with pytest.raises(ChecklistIncomplete):
        d.advance(p, "offer", **stamp(2))  # moving back leaves the stage too

    d = deal(p)
    d.lose(p, "Price", **stamp(1))
    assert d.status == "lost" and len(d.open_checklist_items()) == 2


def test_completed_cancelled_or_waived_items_let_the_deal_go() -> None:
    p = pipeline()
    d = deal(p)
    ids = checklist_ids(d)
    d.complete_activity(ids["Qualify budget"], **stamp(1))
    d.cancel_activity(ids["Send the deck"], "not needed", **stamp(1))
    d.advance(p, "offer", **stamp(2))
    assert d.stage_id == "offer"

    d = deal(p)
    d.complete_activity(checklist_ids(d)["Qualify budget"], **stamp(1))
    waived = d.waive_checklist(p, "buyer has the deck", **stamp(1, "max"))
    assert waived == [a.id for a in d.activities if a.subject == "Send the deck"]
    assert d.activity(waived[0]).waived and d.activity(waived[0]).status == CANCELLED
    with pytest.raises(NoOpenChecklistItems):
        d.waive_checklist(p, "again", **stamp(1, "max"))
    d.win(p, **stamp(2))
    assert d.status == "won"


def test_only_admins_and_managers_may_waive() -> None:
    for role in (Role.REP, Role.AUDITOR):
        with pytest.raises(Forbidden):
            Actor("someone", role).check_may_waive_checklist()
    Actor("max", Role.MANAGER).check_may_waive_checklist()
    Actor("ann", Role.ADMIN).check_may_waive_checklist()


def test_without_the_rule_a_deal_leaves_with_items_open_and_reentry_does_not_repeat_them() -> None:
    p = pipeline(require=False)
    d = deal(p)
    d.advance(p, "offer", **stamp(1))
    d.advance(p, "lead", **stamp(2))

    assert [a.subject for a in d.open_checklist_items()] == ["Qualify budget", "Send the deck"]
    assert len(d.activities) == 2  # still open from the first visit: not added again
    d.complete_activity(checklist_ids(d)["Qualify budget"], **stamp(3))
    d.advance(p, "offer", **stamp(4))
    d.advance(p, "lead", **stamp(5))
    assert sorted(a.subject for a in d.open_checklist_items()) == [
        "Qualify budget",
        "Send the deck",
    ]
    assert len(d.activities) == 3  # the done one comes back; the open one is not repeated


def test_a_stage_removal_moves_deals_out_whatever_their_checklist() -> None:
    p = pipeline()
    d = deal(p)
    cause = {"type": "StageRemoved", "direction": "forward"}
    d.advance(p, "offer", **stamp(1), cause=cause)
    assert d.stage_id == "offer"


def test_a_changed_checklist_gets_the_next_version_and_applies_to_later_entries() -> None:
    p = pipeline()
    before = deal(p)
    p.update_stage(
        "lead", checklist=[{"title": "Book a demo", "type": "meeting"}], **stamp(0.5, "max")
    )
    after = deal(p)

    assert p.stage("lead").checklist_version == 2
    assert {a.checklist_version for a in before.activities} == {1}
    assert [(a.subject, a.checklist_version) for a in after.activities] == [("Book a demo", 2)]
    with pytest.raises(NothingToChange):
        p.update_stage("lead", checklist=[{"title": "Book a demo", "type": "meeting"}], **stamp(1))
    p.update_stage("lead", checklist=[], **stamp(1, "max"))
    assert p.stage("lead").checklist == () and p.stage("lead").checklist_version == 3
    assert len(deal(p).activities) == 0


@pytest.mark.parametrize(
    ("checklist", "field"),
    [
        ("call them", "stages[0].checklist"),
        ([{"title": "x", "type": "x"}], "stages[0].checklist[0].type"),
        ([{"type": "call"}], "stages[0].checklist[0].title"),
        ([{"title": "x", "due_in_days": 366}], "stages[0].checklist[0].due_in_days"),
        ([{"title": "x", "due_in_days": -1}], "stages[0].checklist[0].due_in_days"),
        ([{"title": "A"}, {"title": "a"}], "stages[0].checklist[1].title"),
        ([{"title": f"item {n}"} for n in range(MAX_CHECKLIST_ITEMS + 1)], "stages[0].checklist"),
    ],
)
def test_a_bad_checklist_is_refused_naming_the_item(checklist: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        pipeline(stages=[{"name": "Lead", "probability": 10, "checklist": checklist}])
    assert exc.value.field == field


def test_the_rule_is_a_pipeline_rule_like_the_others() -> None:
    p = pipeline(require=False)
    p.change_rules(require_checklist_before_leaving=True, **stamp(0.1, "max"))
    assert p.require_checklist_before_leaving is True
    with pytest.raises(InvalidInput):
        p.change_rules(require_checklist_before_leaving="yes", **stamp(0.2, "max"))
