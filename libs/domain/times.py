"""Moments the service accepts: one window for every time, parsed and checked in one place.

Every writer (the API, the importers, the demo generator) and every query goes through
these functions, so a moment that Python, SQLite or PostgreSQL could not hold, or one
that would overflow when converted to UTC, is refused with an error naming the field
before anything is stored or compared.

- Every moment lies in [``EARLIEST``, ``LATEST``) and carries a time zone.
- Business time (``occurred_at``) is never after the service clock and never before the
  aggregate's previous event.
- Moments and dates that look ahead (a snooze's end, an expected close date) are at most
  ``HORIZON`` after the service clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from libs.domain.errors import (
    InvalidInput,
    OccurredBeforePrevious,
    OccurredInFuture,
    TimeOutOfRange,
)

EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)
HORIZON: Final = timedelta(days=3653)  # ten years (and two leap days)
HORIZON_TEXT: Final = "10 years"
MAX_TIME_TEXT: Final = 64  # characters of an ISO 8601 moment, with room for spaces

# Years whose moments convert to UTC without overflow whatever their offset (at most
# 24 hours); anything outside is far outside the window anyway.
_SAFE_YEARS: Final = range(1901, 9999)
_EXAMPLE: Final = "2026-05-01T09:30:00Z"


def to_utc(value: Any, field: str) -> datetime:
    """``value`` (an aware datetime) in UTC, inside [EARLIEST, LATEST); else InvalidInput."""
    if not isinstance(value, datetime):
        raise InvalidInput(
            _named(field, f"must be an ISO 8601 date and time with a zone, such as {_EXAMPLE}"),
            field=field,
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(
            _named(field, f"must include a time zone, such as {_EXAMPLE}"), field=field
        )
    if value.year not in _SAFE_YEARS:
        raise _out_of_range(field)
    moment = value.astimezone(UTC)
    if not EARLIEST <= moment < LATEST:
        raise _out_of_range(field)
    return moment


def parse_moment(value: Any, field: str) -> datetime:
    """An ISO 8601 date and time with a zone (text) as a UTC datetime.

    Numbers are refused (they are not Unix times here), as are dates without a time,
    times without a zone and anything outside the window.
    """
    if isinstance(value, datetime):
        return to_utc(value, field)
    if not isinstance(value, str) or len(value) > MAX_TIME_TEXT:
        raise InvalidInput(
            _named(field, f"must be an ISO 8601 date and time with a zone, such as {_EXAMPLE}"),
            field=field,
        )
    text = value.strip()
    if len(text) <= 10:  # a date alone, or a number: not a moment
        parsed: Any = None
    else:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            parsed = None
    if parsed is None:
        raise InvalidInput(
            _named(
                field,
                f"must be an ISO 8601 date and time with a zone, such as {_EXAMPLE}; "
                f"got {value[:40]!r}",
            ),
            field=field,
        )
    return to_utc(parsed, field)


def check_occurred_at(
    occurred_at: Any, *, now: datetime, previous: datetime | None, field: str = "occurred_at"
) -> datetime:
    """Business time may be backdated, but never into the future or before the last event."""
    moment = to_utc(occurred_at, field)
    if moment > now:
        raise OccurredInFuture(
            f"{field} {moment.isoformat()} is in the future (server time {now.isoformat()})",
            field=field,
        )
    if previous is not None and moment < previous:
        raise OccurredBeforePrevious(
            f"{field} {moment.isoformat()} is before the previous event at {previous.isoformat()}",
            field=field,
        )
    return moment


def check_ahead(value: Any, field: str, *, now: datetime) -> datetime:
    """A moment that may lie ahead, at most ``HORIZON`` after ``now``."""
    moment = to_utc(value, field)
    if moment > now + HORIZON:
        raise TimeOutOfRange(
            f"{field} must be at most {HORIZON_TEXT} after now ({now.isoformat()})",
            field=field,
        )
    return moment


def check_day(value: Any, field: str, *, today: date) -> date:
    """A calendar date from 1970-01-01 to ``HORIZON`` after ``today``."""
    if isinstance(value, datetime) or not isinstance(value, date):
        raise InvalidInput(f"{field} must be a date (YYYY-MM-DD)", field=field)
    if not EARLIEST.date() <= value <= today + HORIZON:
        raise TimeOutOfRange(
            f"{field} must be from {EARLIEST.date().isoformat()} to {HORIZON_TEXT} after "
            f"today ({today.isoformat()})",
            field=field,
        )
    return value


def _out_of_range(field: str) -> TimeOutOfRange:
    return TimeOutOfRange(
        _named(field, f"must be from {EARLIEST.isoformat()} to before {LATEST.isoformat()}"),
        field=field or None,
    )


def _named(field: str, rule: str) -> str:
    """``"occurred_at must ..."``; without a field (a validator whose caller names it)
    just the rule."""
    return f"{field} {rule}" if field else rule


def first_of_month(moment: datetime) -> date:
    """The first day of ``moment``'s month in UTC (the month read models count by)."""
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def starts_a_month(moment: datetime | None) -> bool:
    """Whether ``moment`` is the very start of a month in UTC (None, no bound: True), so
    that a period bounded by such moments is made of whole months."""
    if moment is None:
        return True
    utc = moment.astimezone(UTC)
    return utc.day == 1 and (utc.hour, utc.minute, utc.second, utc.microsecond) == (0, 0, 0, 0)
