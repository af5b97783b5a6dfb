"""Who may do what: roles are part of the domain so every writer obeys the same rules."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from libs.domain.errors import Forbidden


class Role(StrEnum):
    """What a principal may do: admin and manager change anything, reps their own deals."""

    ADMIN = "admin"
    MANAGER = "manager"
    REP = "rep"
    AUDITOR = "auditor"


@dataclass(frozen=True)
class Actor:
    """The principal behind a command; its name is stamped on every event as ``actor``."""

    name: str
    role: Role

    def check_may_command(self) -> None:
        if self.role == Role.AUDITOR:
            raise Forbidden("auditors may read but not run commands")

    def check_may_manage_pipelines(self) -> None:
        if self.role not in (Role.ADMIN, Role.MANAGER):
            raise Forbidden("only admins and managers may define or change pipelines")

    def check_may_change_deal(self, owner: str) -> None:
        self.check_may_command()
        if self.role == Role.REP and owner != self.name:
            raise Forbidden(
                f"reps may only change their own deals; this deal belongs to {owner!r}",
                details={"owner": owner},
            )

    def check_may_assign(self, owner: str) -> None:
        """Who may be made a deal's owner: anyone by admins and managers, only themselves
        by reps (creating a deal, or handing one over)."""
        self.check_may_command()
        if self.role == Role.REP and owner != self.name:
            raise Forbidden(
                f"reps may only own deals themselves; {owner!r} cannot be made the owner",
                details={"owner": owner},
            )

    def check_may_assign_activity(self, assignee: str) -> None:
        """Who may be given an activity: anyone by admins and managers, only themselves by
        reps."""
        self.check_may_command()
        if self.role == Role.REP and assignee != self.name:
            raise Forbidden(
                f"reps may only assign activities to themselves, not to {assignee!r}",
                details={"assignee": assignee},
            )

    def check_may_manage_automations(self) -> None:
        if self.role not in (Role.ADMIN, Role.MANAGER):
            raise Forbidden("only admins and managers may create or change automations")

    def check_may_waive_checklist(self) -> None:
        if self.role not in (Role.ADMIN, Role.MANAGER):
            raise Forbidden("only admins and managers may waive a stage's checklist")

    def check_may_manage_teams(self) -> None:
        if self.role != Role.ADMIN:
            raise Forbidden("only admins may set owners' teams and regions")

    def check_may_manage_webhooks(self) -> None:
        """Webhooks name where the log goes: only admins see or change them."""
        if self.role != Role.ADMIN:
            raise Forbidden("only admins may read or change webhooks")

    def check_may_read_audit(self) -> None:
        if self.role not in (Role.ADMIN, Role.AUDITOR):
            raise Forbidden("only auditors and admins may read the audit log")

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


SYSTEM = Actor(name="system", role=Role.ADMIN)
