"""Event schema versions and the upcasters that bring older stored events up to date.

An event type's shape may change over time (a field added, renamed, split). Events are
never rewritten, so a stored event keeps the shape it was written in, and every reader
brings it to the current shape on the way in. The steps are registered here, once per
event type, in order: ``UPCASTERS[E.X][0]`` turns version 1 into version 2, the next
one version 2 into 3, and so on. An event type's current version is one more than its
number of steps.

Two readers run them, and both through :func:`upcast`:

* the eventsourcing library, when it loads an aggregate: :func:`versioned_events` gives
  each registered event class its ``class_version`` and ``upcast_vN_vN+1`` methods (the
  library's own mechanism, which also stores ``class_version`` in every new event whose
  version is above 1);
* ``libs.application.records.decode``, which turns stored events into plain records for
  the projections and every other consumer of the log without resolving event classes.

An upcaster gets the stored state as a dict (the event's fields, plus ``actor``,
``occurred_at`` and the library's ``timestamp``) and changes it in place. It must only
add, rename or reshape fields from what the event itself says: it never looks anything
up, so the same stored event reads the same everywhere, forever.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from libs.domain.events import EventType

E = EventType
CLASS_VERSION = "class_version"  # the key the library stores an event's version under

Upcaster = Callable[[dict[str, Any]], None]


class NewerEventVersion(ValueError):
    """A stored event was written by a newer release than this one (its version is higher
    than any this release knows); reading it as the older shape would misread it."""


# --- the steps, oldest first ------------------------------------------------------------------


def _pipeline_defined_v1_v2(state: dict[str, Any]) -> None:
    """Version 1 had no pipeline rules and no entry requirements on its stages."""
    state.setdefault("allow_skipping_stages", True)
    state.setdefault("allow_moving_back", True)
    state.setdefault("stale_after_days", None)
    for stage in state.get("stages") or ():
        stage.setdefault("rotting_days", None)
        stage.setdefault("requires", [])


def _deal_created_v1_v2(state: dict[str, Any]) -> None:
    """Version 1 had no account, product or note."""
    state.setdefault("account", None)
    state.setdefault("product", None)
    state.setdefault("note", None)


def _stage_advanced_v1_v2(state: dict[str, Any]) -> None:
    """Version 1 had no note and no cause (the change that moved the deal, if any)."""
    state.setdefault("note", None)
    state.setdefault("cause", None)


def _deal_reopened_v1_v2(state: dict[str, Any]) -> None:
    """Version 1 did not say which stage the deal closed in (unknown: null) and had no
    note."""
    state.setdefault("from_stage_id", None)
    state.setdefault("from_stage_name", None)
    state.setdefault("note", None)


UPCASTERS: Mapping[str, tuple[Upcaster, ...]] = {
    E.PIPELINE_DEFINED: (_pipeline_defined_v1_v2,),
    E.DEAL_CREATED: (_deal_created_v1_v2,),
    E.STAGE_ADVANCED: (_stage_advanced_v1_v2,),
    E.DEAL_REOPENED: (_deal_reopened_v1_v2,),
}
"""Per event type, the steps from version 1 up to the current version, in order."""


def current_version(event_type: str) -> int:
    """The version this release writes events of ``event_type`` in (1 for most)."""
    return len(UPCASTERS.get(event_type, ())) + 1


def upcast(event_type: str, state: dict[str, Any]) -> dict[str, Any]:
    """Bring a stored event's state to the current version of its type, in place.

    Takes the stored version out of ``state`` (1 when it names none) and runs the steps
    after it. Raises :class:`NewerEventVersion` for a version this release does not know.
    """
    version = state.pop(CLASS_VERSION, 1)
    steps = UPCASTERS.get(event_type, ())
    if type(version) is not int or not 1 <= version <= len(steps) + 1:
        raise NewerEventVersion(
            f"{event_type} is stored at version {version!r}; this release reads versions "
            f"1 to {len(steps) + 1}"
        )
    for step in steps[version - 1 :]:
        step(state)
    return state


_A = TypeVar("_A", bound=type)


def versioned_events(aggregate: _A) -> _A:
    """Class decorator for an aggregate: its event classes get the versions and upcasters
    registered here, in the form the eventsourcing library runs when it loads events."""
    for event_type, steps in UPCASTERS.items():
        event_class = aggregate.__dict__.get(event_type)
        if not isinstance(event_class, type):
            continue
        event_class.class_version = len(steps) + 1  # type: ignore[attr-defined]
        for n, step in enumerate(steps, start=1):
            setattr(event_class, f"upcast_v{n}_v{n + 1}", staticmethod(step))
    return aggregate
