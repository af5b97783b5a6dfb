"""Commands: what a caller asks the service to do, as it was given.

One frozen dataclass per command. Each carries the caller's input unchanged (checking it
is the aggregates' job), the ``actor`` who asks, ``occurred_at`` (business time; None
means now) and, where the caller may ask for optimistic concurrency, the
``expected_version`` of the aggregate (None: decide on whatever state is current, and
re-decide after a lost race). ``UNSET`` marks a field the caller did not give, as
distinct from None, which clears it. ``libs.application.handlers`` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from libs.domain.actors import Actor
from libs.domain.deal import Deal
from libs.domain.imports import DealRow
from libs.domain.values import UNSET

R = TypeVar("R")


@dataclass(frozen=True)
class CommandResult:
    """What a command returns: the aggregate's new state, version and log position.

    ``id`` names what the command created or changed: the aggregate, or for a command on
    one of a deal's activities, the activity (``state`` is then the activity's)."""

    id: UUID
    version: int
    position: int
    state: dict[str, Any] = field(default_factory=dict)
    created: bool = False
    events: int = 1


@dataclass(frozen=True, kw_only=True)
class Command(Generic[R]):
    """Every command: who asks, and when it happened in business time."""

    actor: Actor
    occurred_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Change(Command[R]):
    """A command on an existing aggregate, optionally only at the version the caller saw."""

    expected_version: int | None = None


@dataclass(frozen=True, kw_only=True)
class PipelineChange(Change[CommandResult]):
    """A change of one pipeline (admins and managers)."""

    pipeline_id: UUID | str


@dataclass(frozen=True, kw_only=True)
class DealChange(Change[CommandResult]):
    """A command on one deal (admins, managers and its owner)."""

    deal_id: UUID | str


# --- pipelines ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DefinePipeline(Command[CommandResult]):
    """Define a pipeline; stages and lost reasons default to the B2B template."""

    name: Any
    currency: Any
    stages: Any = None
    lost_reasons: Any = None
    allow_skipping_stages: Any = True
    allow_moving_back: Any = True
    stale_after_days: Any = None
    require_checklist_before_leaving: Any = False
    pipeline_id: UUID | None = None  # a chosen id (generated data); random without


@dataclass(frozen=True, kw_only=True)
class ChangePipeline(PipelineChange):
    """Rename a pipeline and/or change its rules; an empty change is refused."""

    name: Any = UNSET
    allow_skipping_stages: Any = UNSET
    allow_moving_back: Any = UNSET
    stale_after_days: Any = UNSET
    require_checklist_before_leaving: Any = UNSET


@dataclass(frozen=True, kw_only=True)
class AddStage(PipelineChange):
    """Insert a stage at ``position`` (default last)."""

    name: Any
    probability: Any
    rotting_days: Any = None
    requires: Any = None
    checklist: Any = None
    position: Any = None
    stage_id: Any = None


@dataclass(frozen=True, kw_only=True)
class ChangeStage(PipelineChange):
    """Rename a stage and/or change its probability, rotting threshold, requirements or
    checklist."""

    stage: Any
    name: Any = UNSET
    probability: Any = UNSET
    rotting_days: Any = UNSET
    requires: Any = UNSET
    checklist: Any = UNSET


@dataclass(frozen=True, kw_only=True)
class ReorderStages(PipelineChange):
    """Put the stages in a new order (every current stage id once)."""

    stage_order: Any


@dataclass(frozen=True, kw_only=True)
class RemoveStage(PipelineChange):
    """Remove a stage; its open deals move to ``move_open_deals_to`` in the same change."""

    stage: Any
    move_open_deals_to: Any = None


@dataclass(frozen=True, kw_only=True)
class AddLostReason(PipelineChange):
    """Add a lost reason, or bring a retired one back."""

    reason: Any


@dataclass(frozen=True, kw_only=True)
class RetireLostReason(PipelineChange):
    """Retire a lost reason: new losses may not choose it; past losses keep it."""

    reason: Any


# --- deals ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CreateDeal(Command[CommandResult]):
    """Open a deal; the owner defaults to the actor."""

    pipeline_id: UUID | str
    title: Any
    value: Any
    owner: Any = None
    stage: Any = None
    expected_close_date: Any = None
    external_id: Any = None
    account: Any = None
    product: Any = None
    note: Any = None


@dataclass(frozen=True, kw_only=True)
class AdvanceDeal(DealChange):
    """Move a deal to another stage of its pipeline."""

    stage: Any
    note: Any = None


@dataclass(frozen=True, kw_only=True)
class WinDeal(DealChange):
    """Close a deal as won."""


@dataclass(frozen=True, kw_only=True)
class LoseDeal(DealChange):
    """Close a deal as lost, with one of the pipeline's active reasons."""

    reason: Any
    note: Any = None


@dataclass(frozen=True, kw_only=True)
class ReopenDeal(DealChange):
    """Reopen a closed deal (in the stage it closed in, or ``stage``)."""

    stage: Any = None
    note: Any = None


@dataclass(frozen=True, kw_only=True)
class UpdateDeal(DealChange):
    """Change any of a deal's fields; only those given change."""

    title: Any = UNSET
    value: Any = UNSET
    expected_close_date: Any = UNSET
    account: Any = UNSET
    product: Any = UNSET
    owner: Any = UNSET
    probability_override: Any = UNSET


@dataclass(frozen=True, kw_only=True)
class MoveDeal(DealChange):
    """Move a deal into another pipeline of the same currency, keeping its history."""

    pipeline_id: UUID | str
    stage: Any = None
    note: Any = None


@dataclass(frozen=True, kw_only=True)
class SnoozeDeal(DealChange):
    """Keep a deal off the stale list until ``until``."""

    until: Any
    reason: Any


# --- a deal's activities and its stage's checklist -------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScheduleActivity(DealChange):
    """Plan a call, meeting, email, task or deadline on a deal (assignee: its owner)."""

    type: Any
    subject: Any
    due_at: Any
    duration_minutes: Any = None
    assignee: Any = None
    note: Any = None


@dataclass(frozen=True, kw_only=True)
class UpdateActivity(DealChange):
    """Reschedule, reassign or edit an open activity; only the fields given change."""

    activity_id: Any
    type: Any = UNSET
    subject: Any = UNSET
    due_at: Any = UNSET
    duration_minutes: Any = UNSET
    assignee: Any = UNSET
    note: Any = UNSET


@dataclass(frozen=True, kw_only=True)
class CompleteActivity(DealChange):
    """Mark an open activity done, with an optional outcome."""

    activity_id: Any
    outcome: Any = None


@dataclass(frozen=True, kw_only=True)
class CancelActivity(DealChange):
    """Cancel an open activity, with an optional reason."""

    activity_id: Any
    reason: Any = None


@dataclass(frozen=True, kw_only=True)
class WaiveChecklist(DealChange):
    """Waive the open checklist items of the deal's stage (admins and managers)."""

    reason: Any


# --- owners ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AssignTeam(Command[CommandResult]):
    """Set an owner's team and region (registering the owner on first use)."""

    owner: Any
    team: Any
    region: Any


# --- webhooks -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CreateWebhook(Command[CommandResult]):
    """Subscribe an endpoint to event types (admins); its secret is kept apart."""

    url: Any
    event_types: Any
    pipeline_id: Any = None
    description: Any = None
    webhook_id: UUID | None = None  # chosen by the caller, who stores its secret first


@dataclass(frozen=True, kw_only=True)
class WebhookChange(Change[CommandResult]):
    """A command on one webhook (admins)."""

    webhook_id: UUID | str


@dataclass(frozen=True, kw_only=True)
class ChangeWebhook(WebhookChange):
    """Change a webhook's url, event types, pipeline or description."""

    url: Any = UNSET
    event_types: Any = UNSET
    pipeline_id: Any = UNSET
    description: Any = UNSET


@dataclass(frozen=True, kw_only=True)
class PauseWebhook(WebhookChange):
    """Stop a webhook's deliveries until it is resumed (``failing`` or ``manual``)."""

    reason: Any = "manual"


@dataclass(frozen=True, kw_only=True)
class ResumeWebhook(WebhookChange):
    """Deliver again from the event it stopped at."""


@dataclass(frozen=True, kw_only=True)
class RotateWebhookSecret(WebhookChange):
    """Record that the webhook's signing secret was replaced (the secret is not an event)."""


@dataclass(frozen=True, kw_only=True)
class DeleteWebhook(WebhookChange):
    """Remove a webhook for good."""


# --- automations ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CreateAutomation(Command[CommandResult]):
    """Define an automation rule on a pipeline: a trigger and its actions."""

    name: Any
    pipeline_id: UUID | str
    trigger: Any
    actions: Any
    description: Any = None


@dataclass(frozen=True, kw_only=True)
class AutomationChange(Change[CommandResult]):
    """A change of one automation rule (admins and managers)."""

    automation_id: UUID | str


@dataclass(frozen=True, kw_only=True)
class ChangeAutomation(AutomationChange):
    """Change a rule's name, description, trigger and/or actions; only those given."""

    name: Any = UNSET
    description: Any = UNSET
    trigger: Any = UNSET
    actions: Any = UNSET


@dataclass(frozen=True, kw_only=True)
class PauseAutomation(AutomationChange):
    """Stop a rule from firing until it is resumed."""


@dataclass(frozen=True, kw_only=True)
class ResumeAutomation(AutomationChange):
    """Let a paused rule fire again (a schedule does not catch up on what it missed)."""


@dataclass(frozen=True, kw_only=True)
class DeleteAutomation(AutomationChange):
    """Delete a rule: it never fires again; its firings stay in the log."""


@dataclass(frozen=True)
class FiringResult:
    """What firing one occurrence did: ``fired`` (with each action's result),
    ``already_fired`` (another evaluator, or an earlier run, recorded it), or ``skipped``
    (the rule no longer fires, or the deal is no longer in that occurrence)."""

    outcome: str
    firing_id: UUID
    position: int | None = None
    actions: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, kw_only=True)
class FireAutomation(Command[FiringResult]):
    """Record one occurrence of a rule and run its actions, all in one write.

    For a time trigger on a deal the occurrence is confirmed on the deal's own state;
    ``digest`` is the report a digest action sends (made by the caller's query layer)."""

    automation_id: UUID | str
    occurrence: str
    reason: str
    deal_id: UUID | str | None = None
    digest: dict[str, Any] | None = None


# --- imports and generated history ----------------------------------------------------


@dataclass(frozen=True)
class RowOutcome:
    """What importing one row did: ``created``, ``changed``, ``unchanged`` or
    ``rejected`` (with the reason)."""

    row: DealRow
    outcome: str
    reason: str = ""


@dataclass(frozen=True)
class BatchResult:
    """What a batch command stored: each row's outcome, events appended, last position."""

    rows: tuple[RowOutcome, ...] = ()
    events: int = 0
    position: int | None = None


@dataclass(frozen=True, kw_only=True)
class ImportDeals(Command[BatchResult]):
    """Bring the deals of these rows to the state each row describes, in one transaction.

    ``fresh_pipelines`` are pipelines defined by the same import: they have no stored
    deals to compare with. With ``dry_run`` nothing is stored (every row is still
    checked). After a lost race the batch is re-planned row by row on fresh state when
    ``retry`` is set; otherwise the race is reported (ConcurrentModification).
    """

    rows: tuple[DealRow, ...]
    fresh_pipelines: frozenset[UUID] = frozenset()
    dry_run: bool = False
    retry: bool = True


@dataclass(frozen=True, kw_only=True)
class ImportSetup(Command[BatchResult]):
    """The pipelines, lost reasons and owners' teams an import (or generated history)
    starts with, each decided on the state the ones before it left, and stored together
    in one transaction: all of them or none."""

    commands: tuple[DefinePipeline | AddLostReason | AssignTeam, ...]


@dataclass(frozen=True, kw_only=True)
class RecordHistory(Command[BatchResult]):
    """Store deals whose events were decided in memory by the Deal's own commands
    (generated demo history), in one transaction."""

    deals: tuple[Deal, ...]
