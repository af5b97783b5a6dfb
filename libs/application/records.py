"""Stored notifications decoded into plain event records.

Projections, the export and the audit trail read events through this one function. It
decodes the stored state straight into a dict, without resolving the event class, so an
event type that no code knows any more (or not yet) is still readable and never a crash.
An event stored in an older shape is brought to the current one by the same upcasters
the aggregates load it with (``libs/domain/upcasting.py``); only the export asks for the
shape as stored, because its lines are checked against the hashed bytes.
"""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder, Mapper, Notification

from libs.domain.upcasting import CLASS_VERSION, current_version, upcast


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
    class_version: int = 1  # the shape of ``payload`` (see libs/domain/upcasting.py)

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
        """The record as JSON-ready values (the export's line format); ``class_version``
        only when it is above 1, as the library stores it."""
        line = {
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
        if self.class_version != 1:
            line["class_version"] = self.class_version
        return line


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


class _FastJSON:
    """Decodes what a :class:`JSONTranscoder` encoded, with orjson and one walk.

    Gives exactly what the transcoder's ``decode`` gives (every ``{"_type_", "_data_"}``
    object through its registered transcoding) and hands anything unusual to the
    transcoder: an unknown transcoding, JSON that orjson refuses, and any float (orjson
    reads an integer beyond 64 bits as a float; the events themselves carry none).
    """

    def __init__(self, transcoder: JSONTranscoder) -> None:
        self.decoders: dict[str, Callable[[Any], Any]] = {
            name: t.decode for name, t in transcoder.names.items()
        }

    def decode(self, transcoder: JSONTranscoder, data: bytes) -> Any:
        try:
            value = orjson.loads(data)
            t = type(value)
            if t is dict:
                return self._dict(value)
            if t is list:
                return self._list(value)
            if t is not float:
                return value
        except (orjson.JSONDecodeError, _Unusual):
            pass
        return transcoder.decode(data)

    def _typed(self, value: dict[str, Any]) -> Any:
        data = value["_data_"]
        t = type(data)
        if t is dict:
            data = self._dict(data)
        elif t is list:
            data = self._list(data)
        elif t is float:
            raise _Unusual
        decoder = self.decoders.get(value["_type_"])
        if decoder is None:
            raise _Unusual
        return decoder(data)

    def _leaf(self, value: dict[str, Any]) -> Any:
        """A ``{"_type_": name, "_data_": text}`` value decoded (most typed values are
        such leaves: moments, amounts, ids), else ``value`` itself, untouched."""
        if len(value) == 2 and type(value.get("_data_")) is str and "_type_" in value:
            decoder = self.decoders.get(value["_type_"])
            if decoder is None:
                raise _Unusual
            return decoder(value["_data_"])
        return value

    def _dict(self, value: dict[str, Any]) -> Any:
        for k, v in value.items():
            t = type(v)
            if t is dict:
                leaf = self._leaf(v)
                value[k] = self._dict(v) if leaf is v else leaf
            elif t is list:
                value[k] = self._list(v)
            elif t is float:
                raise _Unusual
        if len(value) == 2 and "_type_" in value and "_data_" in value:
            return self._typed(value)
        return value

    def _list(self, value: list[Any]) -> list[Any]:
        out = []
        for v in value:
            t = type(v)
            if t is dict:
                leaf = self._leaf(v)
                v = self._dict(v) if leaf is v else leaf
            elif t is list:
                v = self._list(v)
            elif t is float:
                raise _Unusual
            out.append(v)
        return out


class _Unusual(Exception):
    """The fast path cannot decode this state the way the transcoder would."""


_fast: weakref.WeakKeyDictionary[JSONTranscoder, _FastJSON] = weakref.WeakKeyDictionary()


def _state_of(mapper: Mapper[Any], state_bytes: bytes) -> dict[str, Any]:
    transcoder = mapper.transcoder
    if isinstance(transcoder, JSONTranscoder):
        fast = _fast.get(transcoder)
        if fast is None or len(fast.decoders) != len(transcoder.names):
            fast = _fast[transcoder] = _FastJSON(transcoder)
        state: dict[str, Any] = fast.decode(transcoder, state_bytes)
        return state
    decoded: dict[str, Any] = transcoder.decode(state_bytes)
    return decoded


@functools.lru_cache(maxsize=1024)
def _topic_names(topic: str) -> tuple[str, str]:
    return split_topic(topic)


def decode(
    mapper: Mapper[Any], notification: Notification, *, as_stored: bool = False
) -> EventRecord:
    """Decode one stored notification into an :class:`EventRecord` in the current shape
    of its type (``as_stored``: in the shape it was stored in, with its stored version).

    An event stored at a version this release does not know raises
    :class:`~libs.domain.upcasting.NewerEventVersion` (a projection parks it).
    """
    return decode_stored(
        mapper,
        notification.id,
        notification.originator_id,
        notification.originator_version,
        notification.topic,
        notification.state,
        as_stored=as_stored,
    )


def decode_stored(
    mapper: Mapper[Any],
    position: int,
    originator_id: Any,
    originator_version: int,
    topic: str,
    state: bytes,
    *,
    as_stored: bool = False,
) -> EventRecord:
    """:func:`decode` of a stored event given as its columns (as a driver returns them,
    without a notification object in between)."""
    state_bytes = state
    if mapper.cipher:
        state_bytes = mapper.cipher.decrypt(state_bytes)
    if mapper.compressor:
        state_bytes = mapper.compressor.decompress(state_bytes)
    payload = _state_of(mapper, state_bytes)  # a fresh dict: the envelope is taken out
    aggregate_type, event_type = _topic_names(topic)
    if as_stored:
        class_version = payload.pop(CLASS_VERSION, 1)
    else:
        upcast(event_type, payload)
        class_version = current_version(event_type)
    occurred_at = payload.pop("occurred_at", None)
    recorded_at = payload.pop("timestamp", None)
    actor = payload.pop("actor", None)
    payload.pop("originator_topic", None)
    # asyncpg's UUID is a UUID already (and gives its text faster)
    aggregate_id = originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))
    return EventRecord(
        position,
        aggregate_id,
        aggregate_type,
        event_type,
        originator_version,
        actor if isinstance(actor, str) else None,
        occurred_at if isinstance(occurred_at, datetime) else None,
        recorded_at if isinstance(recorded_at, datetime) else None,
        payload,
        str(aggregate_id),
        class_version,
    )


def event_type_of(topic: str) -> str:
    """The event type a stored topic names (cached: a log has few distinct topics)."""
    return _topic_names(topic)[1]


def decode_all(mapper: Mapper[Any], notifications: Iterable[Notification]) -> list[EventRecord]:
    return [decode(mapper, n) for n in notifications]
