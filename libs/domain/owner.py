"""The Owner aggregate: a sales rep's team and region, kept as they change over time."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from libs.domain.errors import NothingToChange
from libs.domain.times import check_occurred_at
from libs.domain.upcasting import versioned_events
from libs.domain.values import MAX_NAME_LENGTH, check_text

OWNER_ID_NAMESPACE: Final = UUID("0b7a9f52-2c1d-4d8e-8f3b-6a5e4c3d2b1a")


def owner_id_for(name: str) -> UUID:
    """Owners are known by name (the principal); their aggregate id derives from it."""
    return uuid5(OWNER_ID_NAMESPACE, name)


def _optional(value: Any, field: str) -> str | None:
    if value is None:
        return None
    return check_text(value, field, max_length=MAX_NAME_LENGTH, required=False) or None


@versioned_events
class Owner(Aggregate):
    """Who a deal owner is in the organisation: team and region, as of each moment."""

    @event("OwnerRegistered")
    def __init__(
        self, name: str, team: str | None, region: str | None, actor: str, occurred_at: datetime
    ) -> None:
        self.name = name
        self.team = team
        self.region = region
        self.last_occurred_at = occurred_at

    @staticmethod
    def create_id(name: str) -> UUID:
        return owner_id_for(name)

    @classmethod
    def register(
        cls,
        *,
        name: Any,
        team: Any,
        region: Any,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> Owner:
        checked = check_text(name, "owner", max_length=MAX_NAME_LENGTH)
        check_occurred_at(occurred_at, now=now, previous=None)
        return cls(
            name=checked,
            team=_optional(team, "team"),
            region=_optional(region, "region"),
            actor=actor,
            occurred_at=occurred_at,
        )

    def assign(
        self, *, team: Any, region: Any, actor: str, occurred_at: datetime, now: datetime
    ) -> None:
        """Move the owner to another team and/or region from ``occurred_at`` on."""
        new_team, new_region = _optional(team, "team"), _optional(region, "region")
        check_occurred_at(occurred_at, now=now, previous=self.last_occurred_at)
        if (new_team, new_region) == (self.team, self.region):
            raise NothingToChange("owner is already in that team and region", field="team")
        self._team_assigned(
            owner=self.name,
            team=new_team,
            region=new_region,
            previous_team=self.team,
            previous_region=self.region,
            actor=actor,
            occurred_at=occurred_at,
        )

    @event("TeamAssigned")
    def _team_assigned(
        self,
        owner: str,
        team: str | None,
        region: str | None,
        previous_team: str | None,
        previous_region: str | None,
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self.team = team
        self.region = region
        self.last_occurred_at = occurred_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "team": self.team,
            "region": self.region,
            "since": self.last_occurred_at.isoformat(),
            "version": self.version,
        }
