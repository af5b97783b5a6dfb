"""Checks of activities and stage checklists, and the ids activities get.

An activity (a call, meeting, email, task or deadline) lives on its deal: the Deal
aggregate records its events, so that the rule "a stage's checklist is done before the
deal leaves the stage" is decided on one consistent state. The limits that bound what a
caller can make a deal hold are here, named once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from uuid import UUID, uuid5

from libs.domain.errors import InvalidInput, InvalidPipeline
from libs.domain.state import ACTIVITY_TYPES, ChecklistItem
from libs.domain.values import MAX_NOTE_LENGTH, MAX_TITLE_LENGTH, check_text

MAX_ACTIVITIES_PER_DEAL: Final = 200  # of every status, checklist items included
MAX_SUBJECT_LENGTH: Final = MAX_TITLE_LENGTH
MAX_DURATION_MINUTES: Final = 1440  # one day
MAX_CHECKLIST_ITEMS: Final = 20  # per stage
MAX_CHECKLIST_DUE_DAYS: Final = 365

ACTIVITY_ID_NAMESPACE: Final = UUID("9a4e7c1d-2b3f-4e5a-8c6d-7f1e2d3c4b5a")


def activity_id_for(deal_id: UUID | str, key: str | int) -> str:
    """The id of a deal's activity: from its sequence number on the deal (every writer
    gets the same ids for the same history), or from an imported record's key."""
    return str(uuid5(ACTIVITY_ID_NAMESPACE, f"{deal_id}:{key}"))


def check_activity_type(value: Any, field: str = "type") -> str:
    if not isinstance(value, str) or value.strip().casefold() not in ACTIVITY_TYPES:
        raise InvalidInput(f"{field} must be one of {', '.join(ACTIVITY_TYPES)}", field=field)
    return value.strip().casefold()


def check_subject(value: Any, field: str = "subject") -> str:
    return check_text(value, field, max_length=MAX_SUBJECT_LENGTH)


def check_duration(value: Any) -> int | None:
    """Minutes, from 1 to a day (None: no duration)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_DURATION_MINUTES
    ):
        raise InvalidInput(
            f"duration_minutes must be a whole number from 1 to {MAX_DURATION_MINUTES}",
            field="duration_minutes",
        )
    return value


def check_activity_note(value: Any, field: str) -> str | None:
    if value is None:
        return None
    return check_text(value, field, max_length=MAX_NOTE_LENGTH, required=False) or None


def _check_item(raw: Any, where: str) -> ChecklistItem:
    if not isinstance(raw, Mapping):
        raise InvalidPipeline(f"{where} must be an object with a title and a type", field=where)
    title = check_text(raw.get("title"), f"{where}.title", max_length=MAX_SUBJECT_LENGTH)
    kind = check_activity_type(raw.get("type", "task"), f"{where}.type")
    days = raw.get("due_in_days")
    if days is not None and (
        isinstance(days, bool)
        or not isinstance(days, int)
        or not 0 <= days <= MAX_CHECKLIST_DUE_DAYS
    ):
        raise InvalidPipeline(
            f"{where}.due_in_days must be a whole number from 0 to {MAX_CHECKLIST_DUE_DAYS}",
            field=f"{where}.due_in_days",
        )
    return ChecklistItem(title, kind, days)


def check_checklist(value: Any, field: str) -> tuple[ChecklistItem, ...]:
    """A stage's checklist: at most ``MAX_CHECKLIST_ITEMS`` items with distinct titles
    (None or an empty list: no checklist)."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise InvalidPipeline(f"{field} must be a list of items", field=field)
    if len(value) > MAX_CHECKLIST_ITEMS:
        raise InvalidPipeline(f"{field} has at most {MAX_CHECKLIST_ITEMS} items", field=field)
    items = [_check_item(raw, f"{field}[{i}]") for i, raw in enumerate(value)]
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.title.casefold() in seen:
            raise InvalidPipeline(
                f"{field}[{i}].title {item.title!r} is listed twice", field=f"{field}[{i}].title"
            )
        seen.add(item.title.casefold())
    return tuple(items)
