"""Bringing a deal to the state a source row describes, with the Deal's own commands.

A source row (an import of existing records) says what a deal is *now*; ``plan_deal``
compares it with the stored deal and calls the aggregate's methods for the difference,
in memory, so that every rule applies with backdated ``occurred_at`` and a row that
matches the stored deal appends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any
from uuid import UUID

from libs.domain.actors import Actor
from libs.domain.deal import LOST, OPEN, WON, Deal, check_optional_name, check_owner, deal_id_for
from libs.domain.errors import InvalidInput, RuleViolation
from libs.domain.pipeline import Pipeline
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
        _close(deal, row, actor=actor, now=now, clamp=False)
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
    if not differs:
        return None
    if deal.status != OPEN:
        deal.reopen(
            pipeline,
            target.id,
            actor=name,
            occurred_at=later(row.latest, deal.last_occurred_at),
            now=now,
        )
    if target.id != deal.stage_id:
        deal.advance(
            pipeline,
            target.id,
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
    return deal


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
