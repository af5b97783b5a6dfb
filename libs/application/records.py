"""Stored notifications decoded into plain event records.

Projections, the export and the audit trail read events through this one function. It
decodes the stored state straight into a dict, without resolving the event class, so an
event type that no code knows any more (or not yet) is still readable and never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, Notification

# Keys the library keeps in every stored event; they are shown as record fields instead.
_ENVELOPE_KEYS = frozenset({"timestamp", "originator_topic", "actor", "occurred_at"})


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event of the log as simple values."""

    position: int
    aggregate_id: UUID
    aggregate_type: str
    event_type: str
    version: int
    actor: str | None
    occurred_at: datetime | None
    recorded_at: datetime | None
    payload: dict[str, Any]
    key: str = ""  # the aggregate id as text (read models key rows by it)

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", str(self.aggregate_id))

    @property
    def when(self) -> datetime:
        """Business time, falling back to the recording time for events without one."""
        value = self.occurred_at or self.recorded_at
        assert value is not None
        return value

    def as_json_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (the export's line format)."""
        return {
            "position": self.position,
            "aggregate_id": str(self.aggregate_id),
            "aggregate_type": self.aggregate_type,
            "type": self.event_type,
            "version": self.version,
            "actor": self.actor,
            "occurred_at": _iso(self.occurred_at),
            "recorded_at": _iso(self.recorded_at),
            "payload": to_json_value(self.payload),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def to_json_value(value: Any) -> Any:
    """Decimals as strings, dates and datetimes as ISO 8601, UUIDs as strings."""
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_json_value(value), separators=(",", ":"), ensure_ascii=False)


def split_topic(topic: str) -> tuple[str, str]:
    """``libs.domain.deal:Deal.DealCreated`` into (``Deal``, ``DealCreated``)."""
    qualname = topic.split(":", 1)[-1]
    owner, _, name = qualname.rpartition(".")
    return (owner.rpartition(".")[-1] or "Unknown"), name


def decode(mapper: Mapper[Any], notification: Notification) -> EventRecord:
    """Decode one stored notification into an :class:`EventRecord`."""
    state_bytes = notification.state
    if mapper.cipher:
        state_bytes = mapper.cipher.decrypt(state_bytes)
    if mapper.compressor:
        state_bytes = mapper.compressor.decompress(state_bytes)
    state: dict[str, Any] = mapper.transcoder.decode(state_bytes)
    aggregate_type, event_type = split_topic(notification.topic)
    occurred_at = state.get("occurred_at")
    recorded_at = state.get("timestamp")
    actor = state.get("actor")
    payload = {k: v for k, v in state.items() if k not in _ENVELOPE_KEYS}
    aggregate_id = UUID(str(notification.originator_id))
    return EventRecord(
        position=notification.id,
        aggregate_id=aggregate_id,
        key=str(aggregate_id),
        aggregate_type=aggregate_type,
        event_type=event_type,
        version=notification.originator_version,
        actor=actor if isinstance(actor, str) else None,
        occurred_at=occurred_at if isinstance(occurred_at, datetime) else None,
        recorded_at=recorded_at if isinstance(recorded_at, datetime) else None,
        payload=payload,
    )


def decode_all(mapper: Mapper[Any], notifications: Iterable[Notification]) -> list[EventRecord]:
    return [decode(mapper, n) for n in notifications]
