"""The Webhook aggregate: a subscription that pushes the log's events to an HTTP endpoint.

Its configuration (where to, which event types, which pipeline) and its life (paused
because it kept failing or by hand, resumed, deleted, its signing secret rotated) are
events like any other. The signing secret itself is never part of an event: the
delivery side keeps it in a table of its own, and ``WebhookSecretRotated`` only says
that it changed.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from libs.domain.errors import InvalidInput, NotFound, NothingToChange, RuleViolation
from libs.domain.events import EventType as E
from libs.domain.times import check_occurred_at
from libs.domain.upcasting import versioned_events
from libs.domain.values import MAX_NOTE_LENGTH, UNSET, check_text

MAX_URL_LENGTH: Final = 2000
MAX_EVENT_TYPES: Final = 64
ALL_EVENTS: Final = "*"
ACTIVE: Final = "active"
PAUSED: Final = "paused"
FAILING: Final = "failing"  # paused by delivery after its last retry
MANUAL: Final = "manual"  # paused by an admin
PAUSE_REASONS: Final = (FAILING, MANUAL)
KNOWN_EVENT_TYPES: Final = frozenset(t.value for t in E)


def check_url(value: Any, field: str = "url") -> str:
    """An absolute ``https://`` or ``http://`` URL with a host, no user name or password,
    no fragment, at most ``MAX_URL_LENGTH`` characters (where it resolves to is checked
    by the delivery side, which can reach DNS)."""
    text = check_text(value, field, max_length=MAX_URL_LENGTH)
    if any(ch.isspace() for ch in text):
        raise InvalidInput(f"{field} must not contain spaces", field=field)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"{field} is not a valid URL: {exc}", field=field) from None
    if parts.scheme not in ("https", "http"):
        raise InvalidInput(f"{field} must start with https:// or http://", field=field)
    if not parts.hostname:
        raise InvalidInput(f"{field} must name a host", field=field)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidInput(
            f"{field} must not carry a user name or password; the signature authenticates "
            "each delivery",
            field=field,
        )
    if parts.fragment:
        raise InvalidInput(f"{field} must not have a #fragment", field=field)
    if port == 0:
        raise InvalidInput(f"{field} must not use port 0", field=field)
    host = parts.hostname
    if not _is_ip(host) and not all(
        label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
        for label in host.encode("idna").decode("ascii").rstrip(".").split(".")
    ):
        raise InvalidInput(f"{field} has an invalid host name", field=field)
    return text


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_event_types(value: Any, field: str = "event_types") -> list[str]:
    """A non-empty list of known event type names without repeats, or ``["*"]``."""
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidInput(f"{field} must be a non-empty list of event type names", field=field)
    if len(value) > MAX_EVENT_TYPES:
        raise InvalidInput(f"{field} names at most {MAX_EVENT_TYPES} event types", field=field)
    names: list[str] = []
    for name in value:
        if not isinstance(name, str):
            raise InvalidInput(f"{field} must hold event type names (strings)", field=field)
        if name == ALL_EVENTS:
            if len(value) != 1:
                raise InvalidInput(f'{field}: "*" stands alone (every event type)', field=field)
            return [ALL_EVENTS]
        if name not in KNOWN_EVENT_TYPES:
            raise InvalidInput(
                f"{field}: {name[:100]!r} is not an event type",
                field=field,
                details={"unknown": name[:100]},
            )
        if name in names:
            raise InvalidInput(f"{field} names {name!r} twice", field=field)
        names.append(name)
    return names


def check_pipeline_id(value: Any, field: str = "pipeline_id") -> str | None:
    if value is None:
        return None
    try:
        return str(UUID(str(value)))
    except ValueError:
        raise InvalidInput(f"{field} must be a pipeline id (a UUID)", field=field) from None


def check_description(value: Any, field: str = "description") -> str | None:
    if value is None:
        return None
    return check_text(value, field, max_length=MAX_NOTE_LENGTH, required=False) or None


CHANGEABLE: Final = {
    "url": check_url,
    "event_types": check_event_types,
    "pipeline_id": check_pipeline_id,
    "description": check_description,
}


@versioned_events
class Webhook(Aggregate):
    """Where and which events go out; active or paused; deleted for good."""

    @event(E.WEBHOOK_CREATED)
    def __init__(
        self,
        url: str,
        event_types: list[str],
        pipeline_id: str | None,
        description: str | None,
        actor: str,
        occurred_at: datetime,
        id: UUID | None = None,  # the library's way to choose the id; not in the event
    ) -> None:
        self.url = url
        self.event_types = list(event_types)
        self.pipeline_id = pipeline_id
        self.description = description
        self.created_by = actor
        self.created_at = occurred_at
        self.updated_at = occurred_at
        self.status = ACTIVE
        self.paused_reason: str | None = None
        self.deleted = False
        self.secret_rotated_at: datetime | None = None

    @classmethod
    def create(
        cls,
        *,
        url: Any,
        event_types: Any,
        pipeline_id: Any = None,
        description: Any = None,
        webhook_id: UUID | None = None,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> Webhook:
        fields: dict[str, Any] = {
            "url": check_url(url),
            "event_types": check_event_types(event_types),
            "pipeline_id": check_pipeline_id(pipeline_id),
            "description": check_description(description),
            "actor": actor,
            "occurred_at": check_occurred_at(occurred_at, now=now, previous=None),
        }
        if webhook_id is not None:
            fields["id"] = webhook_id
        return cls(**fields)

    # --- rules -------------------------------------------------------------------------

    def check_exists(self) -> None:
        if self.deleted:
            raise NotFound(f"webhook {self.id} does not exist (it was deleted)")

    def _check(self, occurred_at: datetime, now: datetime) -> None:
        self.check_exists()
        check_occurred_at(occurred_at, now=now, previous=self.updated_at)

    # --- commands ----------------------------------------------------------------------

    def change(self, *, actor: str, occurred_at: datetime, now: datetime, **given: Any) -> None:
        """Change url, event types, pipeline or description; fields left ``UNSET`` stay."""
        self._check(occurred_at, now)
        changes: dict[str, Any] = {}
        for name, value in given.items():
            if value is UNSET:
                continue
            checked = CHANGEABLE[name](value)
            if checked != getattr(self, name):
                changes[name] = checked
        if not changes:
            raise NothingToChange("the webhook already is like that", field="body")
        previous = {name: getattr(self, name) for name in changes}
        self._changed(changes=changes, previous=previous, actor=actor, occurred_at=occurred_at)

    @event(E.WEBHOOK_CHANGED)
    def _changed(
        self, changes: dict[str, Any], previous: dict[str, Any], actor: str, occurred_at: datetime
    ) -> None:
        for name, value in changes.items():
            setattr(self, name, list(value) if isinstance(value, list) else value)
        self.updated_at = occurred_at

    def pause(self, reason: Any, *, actor: str, occurred_at: datetime, now: datetime) -> None:
        """Stop deliveries until resumed (``failing``: delivery gave up; ``manual``)."""
        if reason not in PAUSE_REASONS:
            raise InvalidInput(f"reason must be one of {', '.join(PAUSE_REASONS)}", field="reason")
        self._check(occurred_at, now)
        if self.status == PAUSED:
            raise RuleViolation("the webhook is already paused", details={"status": PAUSED})
        self._paused(reason=reason, actor=actor, occurred_at=occurred_at)

    @event(E.WEBHOOK_PAUSED)
    def _paused(self, reason: str, actor: str, occurred_at: datetime) -> None:
        self.status = PAUSED
        self.paused_reason = reason
        self.updated_at = occurred_at

    def resume(self, *, actor: str, occurred_at: datetime, now: datetime) -> None:
        """Deliver again, starting with the event it stopped at."""
        self._check(occurred_at, now)
        if self.status != PAUSED:
            raise RuleViolation("the webhook is not paused", details={"status": self.status})
        self._resumed(actor=actor, occurred_at=occurred_at)

    @event(E.WEBHOOK_RESUMED)
    def _resumed(self, actor: str, occurred_at: datetime) -> None:
        self.status = ACTIVE
        self.paused_reason = None
        self.updated_at = occurred_at

    def rotate_secret(self, *, actor: str, occurred_at: datetime, now: datetime) -> None:
        """Say that the signing secret changed (the secret itself is never an event)."""
        self._check(occurred_at, now)
        self._secret_rotated(actor=actor, occurred_at=occurred_at)

    @event(E.WEBHOOK_SECRET_ROTATED)
    def _secret_rotated(self, actor: str, occurred_at: datetime) -> None:
        self.secret_rotated_at = occurred_at
        self.updated_at = occurred_at

    def delete(self, *, actor: str, occurred_at: datetime, now: datetime) -> None:
        """Stop for good; the webhook is gone from every answer."""
        self._check(occurred_at, now)
        self._deleted(actor=actor, occurred_at=occurred_at)

    @event(E.WEBHOOK_DELETED)
    def _deleted(self, actor: str, occurred_at: datetime) -> None:
        self.deleted = True
        self.updated_at = occurred_at

    # --- what it says ------------------------------------------------------------------

    def wants(self, event_type: str) -> bool:
        """Whether events of this type go out to it (its pipeline is checked apart)."""
        return ALL_EVENTS in self.event_types or event_type in self.event_types

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "url": self.url,
            "event_types": list(self.event_types),
            "pipeline_id": self.pipeline_id,
            "description": self.description,
            "status": self.status,
            "paused_reason": self.paused_reason,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "updated_at": self.updated_at.isoformat(),
            "secret_rotated_at": (
                self.secret_rotated_at.isoformat() if self.secret_rotated_at else None
            ),
        }
