"""Bringing a deal to the state a source row describes, with the Deal's own commands.

A source row (an import of existing records) says what a deal is *now*, and its
activities; ``plan_deal`` compares it with the stored deal and calls the aggregate's
methods for the difference, in memory, so that every rule applies with backdated
``occurred_at`` and a row that matches the stored deal appends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, partial
from typing import Any
from uuid import UUID

from libs.domain.activities import activity_id_for
from libs.domain.actors import Actor
from libs.domain.deal import LOST, OPEN, WON, Deal, check_optional_name, check_owner, deal_id_for
from libs.domain.errors import ActivityNotOpen, InvalidInput, RuleViolation
from libs.domain.pipeline import Pipeline
from libs.domain.state import CANCELLED, DONE, ActivityState
from libs.domain.values import MAX_TITLE_LENGTH, check_money, check_text

STATUSES = (OPEN, WON, LOST)


@dataclass(frozen=True)
class RowError:
    """A source row that was not imported, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason}


ACTIVITY_STATUSES = (OPEN, DONE, CANCELLED)


@dataclass(frozen=True)
class ActivityRow:
    """One activity of a deal as the source holds it now.

    ``key`` identifies it in the source (its own id, or what the reader makes of its
    content) and decides its id on the deal, so importing it again finds it. It is
    planned at ``created_at`` (default: the deal's creation) and completed or cancelled
    at ``completed_at`` (default: when it was due).
    """

    file: str
    line: int
    key: str
    type: str
    subject: str
    due_at: datetime
    status: str = OPEN
    duration_minutes: int | None = None
    assignee: str | None = None
    note: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class DealRow:
    """One deal as the source holds it now.

    ``stage`` names the stage the deal is in (or closed in); ``None`` means the
    pipeline's first stage. ``stage_entered_at`` is when it entered that stage, if the
    source knows. Changes the source does not date (a new value, owner or title, a
    reopening) are dated at the row's latest known time; every change is dated no
    earlier than the deal's previous event.
    """

    file: str
    line: int
    pipeline: Pipeline
    external_id: str
    title: str
    value: Any
    owner: str
    created_at: datetime
    stage: str | None = None
    status: str = OPEN
    stage_entered_at: datetime | None = None
    closed_at: datetime | None = None
    lost_reason: str | None = None
    lost_note: str | None = None
    account: str | None = None
    product: str | None = None
    activities: tuple[ActivityRow, ...] = ()

    @cached_property
    def deal_id(self) -> UUID:
        return deal_id_for(self.pipeline.id, self.external_id)

    @property
    def latest(self) -> datetime:
        """The latest time the row names: when its undated changes are recorded."""
        times = [t for t in (self.created_at, self.stage_entered_at, self.closed_at) if t]
        return max(times)


def later(when: datetime, previous: datetime) -> datetime:
    """``when``, or ``previous`` if that is later (a change is never dated before the last)."""
    return when if when >= previous else previous


def plan_deal(deal: Deal | None, row: DealRow, *, actor: Actor, now: datetime) -> Deal | None:
    """Bring ``deal`` (or a new one) to the row's state with domain commands, in memory.

    Returns the aggregate with its new pending events, or ``None`` when the stored deal
    already matches the row. Raises :class:`DomainError` when a rule refuses the row;
    the aggregate is then discarded (nothing of it is stored).
    """
    pipeline = row.pipeline
    name = actor.name
    status = row.status
    if status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", field="status")
    target = pipeline.first_stage if row.stage is None else pipeline.stage(row.stage)
    if deal is None:
        actor.check_may_assign(row.owner)
        deal = Deal.create(
            pipeline=pipeline,
            title=row.title,
            value=row.value,
            owner=row.owner,
            stage=target.id,
            external_id=row.external_id,
            account=row.account,
            product=row.product,
            actor=name,
            occurred_at=row.created_at,
            now=now,
        )
        _new_history(deal, row, actor=actor, now=now)
        return deal

    actor.check_may_change_deal(deal.owner)
    if deal.pipeline_id != pipeline.id:
        raise RuleViolation(
            "the deal has been moved to another pipeline since it was imported; "
            "the import leaves it there"
        )
    changes = _changed_fields(deal, row)
    if "owner" in changes:
        actor.check_may_assign(changes["owner"])
    lost_changed = (
        status == LOST
        and deal.status == LOST
        and (
            pipeline.check_lost_reason(row.lost_reason) != deal.lost_reason
            or (row.lost_note or None) != deal.lost_note
        )
    )
    differs = bool(changes) or target.id != deal.stage_id or status != deal.status or lost_changed
    if differs:
        _change(deal, row, target.id, changes, actor=actor, now=now)
    for activity in row.activities:
        _plan_activity(deal, activity, row.latest, actor=actor, now=now)
    return deal if deal.pending_events else None


def _change(
    deal: Deal,
    row: DealRow,
    target: str,
    changes: dict[str, Any],
    *,
    actor: Actor,
    now: datetime,
) -> None:
    """The deal's own changes towards the row: reopen, move, update, close."""
    pipeline, name = row.pipeline, actor.name
    if deal.status != OPEN:
        deal.reopen(
            pipeline,
            target,
            actor=name,
            occurred_at=later(row.latest, deal.last_occurred_at),
            now=now,
        )
    if target != deal.stage_id:
        deal.advance(
            pipeline,
            target,
            actor=name,
            occurred_at=later(row.stage_entered_at or row.latest, deal.last_occurred_at),
            now=now,
        )
    if changes:
        deal.update(
            **changes,
            actor=name,
            occurred_at=later(row.latest, deal.last_occurred_at),
            now=now,
        )
    _close(deal, row, actor=actor, now=now, clamp=True)


def _new_history(deal: Deal, row: DealRow, *, actor: Actor, now: datetime) -> None:
    """A new deal's activities and its close, each at its own time, in time order (an
    activity completed during the deal's life is dated then, not after the close)."""
    steps: list[tuple[datetime, int, Callable[[], None]]] = []
    for n, activity in enumerate(row.activities):
        planned = activity.created_at or row.created_at
        finished = max(_finished_at(activity, now), planned)
        steps.append((planned, 2 * n, partial(_schedule, deal, activity, planned, actor, now)))
        if activity.status != OPEN:
            finish = partial(_finish, deal, activity, finished, actor, now)
            steps.append((finished, 2 * n + 1, finish))
    if row.status != OPEN:
        # not clamped: a row closed before its deal was created is refused
        closed = row.closed_at or row.latest
        steps.append((closed, -1, partial(_close, deal, row, actor=actor, now=now, clamp=False)))
    for _, _, step in sorted(steps, key=lambda s: (s[0], s[1])):
        step()


def _finished_at(activity: ActivityRow, now: datetime) -> datetime:
    """When a done or cancelled activity finished: as given, else when it was due (or
    now, if that is still ahead)."""
    return activity.completed_at or min(activity.due_at, now)


def _schedule(
    deal: Deal, activity: ActivityRow, when: datetime, actor: Actor, now: datetime
) -> None:
    """Plan the row's activity on the deal, dated ``when`` or the deal's last event."""
    if activity.assignee is not None:
        actor.check_may_assign_activity(activity.assignee.strip())
    deal.schedule_activity(
        type=activity.type,
        subject=activity.subject,
        due_at=activity.due_at,
        duration_minutes=activity.duration_minutes,
        assignee=activity.assignee,
        note=activity.note,
        key=f"import:{activity.key}",
        actor=actor.name,
        occurred_at=later(when, deal.last_occurred_at),
        now=now,
    )


def _finish(deal: Deal, activity: ActivityRow, when: datetime, actor: Actor, now: datetime) -> None:
    """Complete or cancel the row's activity, dated ``when`` or the deal's last event."""
    activity_id = activity_id_for(deal.id, f"import:{activity.key}")
    close = deal.complete_activity if activity.status == DONE else deal.cancel_activity
    close(
        activity_id,
        activity.outcome,
        actor=actor.name,
        occurred_at=later(when, deal.last_occurred_at),
        now=now,
    )


def _plan_activity(
    deal: Deal, activity: ActivityRow, latest: datetime, *, actor: Actor, now: datetime
) -> None:
    """Bring one activity of a stored deal to the row's state; a change the source does
    not date is dated ``latest`` (never before the deal's last event)."""
    activity_id = activity_id_for(deal.id, f"import:{activity.key}")
    stored = next((a for a in deal.state.activities if a.id == activity_id), None)
    if stored is None:
        _schedule(deal, activity, activity.created_at or deal.created_at, actor, now)
        stored = deal.activity(activity_id)
    changes = _changed_activity_fields(stored, activity)
    if stored.status != OPEN:
        if changes or activity.status != stored.status:
            raise ActivityNotOpen(
                f"activity {activity.key!r} is {stored.status}; an import cannot change "
                "or reopen it"
            )
        return
    if changes:
        if "assignee" in changes:
            actor.check_may_assign_activity(changes["assignee"])
        deal.update_activity(
            activity_id,
            **changes,
            actor=actor.name,
            occurred_at=later(latest, deal.last_occurred_at),
            now=now,
        )
    if activity.status != OPEN:
        _finish(deal, activity, _finished_at(activity, now), actor, now)


def _changed_activity_fields(stored: ActivityState, activity: ActivityRow) -> dict[str, Any]:
    """The row's activity fields that differ from the stored activity's (the assignee
    only when the row names one)."""
    wanted: dict[str, Any] = {
        "type": activity.type.strip().casefold(),
        "subject": activity.subject.strip(),
        "due_at": activity.due_at,
        "duration_minutes": activity.duration_minutes,
        "note": (activity.note or "").strip() or None,
    }
    if activity.assignee:
        wanted["assignee"] = activity.assignee.strip()
    return {k: v for k, v in wanted.items() if getattr(stored, k) != v}


def _changed_fields(deal: Deal, row: DealRow) -> dict[str, Any]:
    """The row's fields whose checked value differs from the deal's (as update() sees it)."""
    wanted: dict[str, Any] = {
        "title": check_text(row.title, "title", max_length=MAX_TITLE_LENGTH),
        "value": check_money(row.value),
        "owner": check_owner(row.owner),
        "account": check_optional_name(row.account, "account"),
        "product": check_optional_name(row.product, "product"),
    }
    return {key: val for key, val in wanted.items() if getattr(deal, key) != val}


def _close(deal: Deal, row: DealRow, *, actor: Actor, now: datetime, clamp: bool) -> None:
    # A new deal closed before it was created is a bad row; a stored deal whose last
    # event is later than the row's close date is closed at that last event instead.
    if row.status == OPEN or deal.status == row.status:
        return
    when = row.closed_at or row.latest
    if clamp:
        when = later(when, deal.last_occurred_at)
    if row.status == WON:
        deal.win(row.pipeline, actor=actor.name, occurred_at=when, now=now)
    else:
        deal.lose(
            row.pipeline,
            row.lost_reason,
            row.lost_note,
            actor=actor.name,
            occurred_at=when,
            now=now,
        )
