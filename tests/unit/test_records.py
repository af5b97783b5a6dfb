"""Decoding stored notifications into event records gives what the library's decoder gives."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    Notification,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

from libs.application.app import DateAsISO
from libs.application.records import EventRecord, decode

WHEN = datetime(2026, 2, 3, 4, 5, 6, 789, tzinfo=UTC)


def transcoder() -> JSONTranscoder:
    out = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), DateAsISO()):
        out.register(transcoding)
    return out


def notification(state: dict[str, Any] | bytes, topic: str, id_: UUID | None = None) -> Any:
    raw = state if isinstance(state, bytes) else transcoder().encode(state)
    return Notification(
        id=42, originator_id=id_ or uuid4(), originator_version=3, topic=topic, state=raw
    )


def envelope(**payload: Any) -> dict[str, Any]:
    return {
        "timestamp": WHEN,
        "originator_topic": "libs.domain.deal:Deal",
        "actor": "ann",
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        **payload,
    }


def reference(mapper: Mapper[Any], n: Any) -> dict[str, Any]:
    state: dict[str, Any] = mapper.transcoder.decode(n.state)
    return state


@pytest.mark.parametrize(
    "payload",
    [
        {"value": Decimal("1234.5600"), "pipeline_id": uuid4(), "stage_id": "quote-sent"},
        {"changes": {"expected_close_date": date(2026, 5, 31), "value": "10.00"}},
        {"stages": [{"id": "a", "probability": 10, "requires": []}, {"id": "b"}], "n": None},
        {"nested": [[{"at": WHEN}], {"deep": {"ids": [uuid4(), uuid4()]}}], "flag": True},
        {"big": 123456789012345678901234567890, "small": -(2**63), "text": "ü \u2028 \\"},
        {"ratio": 0.1, "values": [1.5, 2, 1e300]},
        {"looks_typed": {"_type_": "x", "_data_": 1, "third": 2}},
    ],
)
def test_decoding_gives_exactly_what_the_library_decodes(payload: dict[str, Any]) -> None:
    mapper: Mapper[Any] = Mapper(transcoder=transcoder())
    n = notification(envelope(**payload), "libs.domain.deal:Deal.DealUpdated")
    expected = reference(mapper, n)

    record = decode(mapper, n)

    assert record == EventRecord(
        position=42,
        aggregate_id=n.originator_id,
        aggregate_type="Deal",
        event_type="DealUpdated",
        version=3,
        actor="ann",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        recorded_at=WHEN,
        payload={k: v for k, v in expected.items() if k not in envelope()},
    )
    assert record.key == str(n.originator_id)
    assert list(record.payload) == list(payload)
    assert record.payload == payload


def test_an_event_without_business_time_or_actor_decodes_with_none() -> None:
    mapper: Mapper[Any] = Mapper(transcoder=transcoder())
    n = notification({"timestamp": WHEN, "label": "x"}, "tests.module:Gadget.Made")
    record = decode(mapper, n)
    assert (record.actor, record.occurred_at, record.recorded_at) == (None, None, WHEN)
    assert (record.aggregate_type, record.event_type, record.payload) == (
        "Gadget",
        "Made",
        {"label": "x"},
    )
    assert record.when == WHEN


def test_a_text_originator_id_becomes_a_uuid() -> None:
    mapper: Mapper[Any] = Mapper(transcoder=transcoder())
    ident = uuid4()
    n = notification({"timestamp": WHEN}, "m:A.B", id_=ident)
    n = Notification(
        id=n.id, originator_id=str(ident), originator_version=1, topic=n.topic, state=n.state
    )
    record = decode(mapper, n)
    assert record.aggregate_id == ident and record.key == str(ident)


def test_an_unknown_transcoding_fails_as_the_library_fails() -> None:
    mapper: Mapper[Any] = Mapper(transcoder=transcoder())
    raw = b'{"timestamp":{"_type_":"no_such_type","_data_":"x"}}'
    with pytest.raises(TranscodingNotRegisteredError):
        decode(mapper, notification(raw, "m:A.B"))
