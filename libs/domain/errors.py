"""Errors raised by the domain when a command breaks a rule.

Each error knows its kind, so that one place in the API can map it to an HTTP status
without the domain knowing about HTTP: ``invalid`` means the input itself is wrong
(naming the field), ``conflict`` means the input is fine but the deal's or pipeline's
current state refuses it, ``stale`` means the caller acted on an old version.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

ErrorKind = Literal["invalid", "conflict", "stale", "not_found", "forbidden"]


class DomainError(Exception):
    """Base class of every rule violation the domain reports."""

    code: ClassVar[str] = "domain_error"
    kind: ClassVar[ErrorKind] = "conflict"
    default_field: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field if field is not None else self.default_field
        self.details: dict[str, Any] = dict(details or {})
        if self.field is not None:
            self.details.setdefault("field", self.field)


# --- invalid input (the request names something impossible) -------------------------


class InvalidInput(DomainError):
    """The command's input is malformed or out of range."""

    code = "invalid_input"
    kind = "invalid"


class InvalidPipeline(InvalidInput):
    """A pipeline definition breaks a structural rule (names, probabilities, currency)."""

    code = "invalid_pipeline"


class NegativeValue(InvalidInput):
    """A deal's value is below zero."""

    code = "negative_value"
    default_field = "value"


class UnknownStage(InvalidInput):
    """The named stage does not exist in the deal's pipeline."""

    code = "unknown_stage"
    default_field = "stage"


class UnknownLostReason(InvalidInput):
    """A loss names a reason that is not in the pipeline's list."""

    code = "unknown_lost_reason"
    default_field = "reason"


class OccurredInFuture(InvalidInput):
    """``occurred_at`` lies after the service's clock."""

    code = "occurred_in_future"
    default_field = "occurred_at"


class OccurredBeforePrevious(InvalidInput):
    """``occurred_at`` lies before the aggregate's previous event."""

    code = "occurred_before_previous_event"
    default_field = "occurred_at"


class TimeOutOfRange(InvalidInput):
    """A moment or date lies outside the window the service accepts."""

    code = "time_out_of_range"


class NothingToChange(InvalidInput):
    """An update names no field whose value differs from the current one."""

    code = "nothing_to_change"


# --- conflicts (the input is well-formed but the current state refuses it) ------------


class RuleViolation(DomainError):
    """The command is well-formed but the aggregate's state does not allow it."""

    code = "rule_violated"
    kind = "conflict"


class DealClosed(RuleViolation):
    """Only ``reopen`` is accepted by a won or lost deal."""

    code = "deal_closed"


class AlreadyInStage(RuleViolation):
    """The deal already sits in the stage it is asked to advance to."""

    code = "already_in_stage"
    default_field = "stage"


class AlreadyWon(RuleViolation):
    """A won deal cannot be won again."""

    code = "already_won"


class AlreadyLost(RuleViolation):
    """A lost deal cannot be lost again."""

    code = "already_lost"


class DealNotClosed(RuleViolation):
    """Only a won or lost deal can be reopened."""

    code = "deal_not_closed"


class DuplicateExternalId(RuleViolation):
    """A deal with this external id already exists in the pipeline."""

    code = "duplicate_external_id"
    default_field = "external_id"


class StaleVersion(DomainError):
    """The caller's expected version is not the aggregate's current version."""

    code = "stale_version"
    kind = "stale"


class NotFound(DomainError):
    """No aggregate of that kind has the given id."""

    code = "not_found"
    kind = "not_found"


class Forbidden(DomainError):
    """The actor's role does not allow this command on this aggregate."""

    code = "forbidden"
    kind = "forbidden"


class StageHasOpenDeals(RuleViolation):
    """A stage with open deals cannot be removed unless they are moved elsewhere."""

    code = "stage_has_open_deals"
    default_field = "move_open_deals_to"


class EntryRequirementsNotMet(RuleViolation):
    """The target stage requires fields the deal does not have."""

    code = "entry_requirements_not_met"


class SkippingStagesNotAllowed(RuleViolation):
    """The pipeline only lets deals advance to the next stage."""

    code = "skipping_stages_not_allowed"
    default_field = "stage"


class MovingBackNotAllowed(RuleViolation):
    """The pipeline does not let deals move back to an earlier stage."""

    code = "moving_back_not_allowed"
    default_field = "stage"


class PipelineMismatch(RuleViolation):
    """A deal cannot move between these pipelines (same pipeline, or another currency)."""

    code = "pipeline_mismatch"
    default_field = "pipeline_id"


class ConcurrentModification(RuleViolation):
    """Other commands kept changing the aggregate while this one was retried."""

    code = "concurrent_modification"


class ActivityNotFound(DomainError):
    """The deal has no activity with the given id."""

    code = "activity_not_found"
    kind = "not_found"
    default_field = "activity_id"


class ActivityNotOpen(RuleViolation):
    """A done or cancelled activity cannot be changed, completed or cancelled again."""

    code = "activity_not_open"


class TooManyActivities(RuleViolation):
    """A deal holds at most so many activities (of every status)."""

    code = "too_many_activities"


class ChecklistIncomplete(RuleViolation):
    """The pipeline requires the stage's checklist done before a deal leaves the stage."""

    code = "checklist_incomplete"
    default_field = "stage"


class NoOpenChecklistItems(RuleViolation):
    """A waiver needs open checklist items of the deal's current stage."""

    code = "no_open_checklist_items"
