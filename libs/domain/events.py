"""The domain's event vocabulary: every event type by name, in one place.

The aggregates record events under these names, the state fold (``state.py``) applies
them, and every projector and consumer of the log dispatches on them. An event's name is
also the last part of its stored topic (``libs.domain.deal:Deal.DealCreated``).
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """Every event the domain records."""

    # a pipeline's definition
    PIPELINE_DEFINED = "PipelineDefined"
    PIPELINE_RENAMED = "PipelineRenamed"
    PIPELINE_RULES_CHANGED = "PipelineRulesChanged"
    STAGE_ADDED = "StageAdded"
    STAGE_RENAMED = "StageRenamed"
    STAGE_UPDATED = "StageUpdated"
    STAGES_REORDERED = "StagesReordered"
    STAGE_REMOVED = "StageRemoved"
    LOST_REASON_ADDED = "LostReasonAdded"
    LOST_REASON_RETIRED = "LostReasonRetired"
    # a deal's life
    DEAL_CREATED = "DealCreated"
    STAGE_ADVANCED = "StageAdvanced"
    DEAL_WON = "DealWon"
    DEAL_LOST = "DealLost"
    DEAL_REOPENED = "DealReopened"
    DEAL_UPDATED = "DealUpdated"
    OWNER_CHANGED = "OwnerChanged"
    DEAL_MOVED = "DealMoved"
    DEAL_SNOOZED = "DealSnoozed"
    # a deal's activities (calls, meetings, tasks) and its stages' checklists
    ACTIVITY_SCHEDULED = "ActivityScheduled"
    ACTIVITY_UPDATED = "ActivityUpdated"
    ACTIVITY_COMPLETED = "ActivityCompleted"
    ACTIVITY_CANCELLED = "ActivityCancelled"
    CHECKLIST_APPLIED = "ChecklistApplied"
    CHECKLIST_WAIVED = "ChecklistWaived"
    # owners' teams and regions
    OWNER_REGISTERED = "OwnerRegistered"
    TEAM_ASSIGNED = "TeamAssigned"
    # webhook subscriptions (the signing secret is never part of an event)
    WEBHOOK_CREATED = "WebhookCreated"
    WEBHOOK_CHANGED = "WebhookChanged"
    WEBHOOK_PAUSED = "WebhookPaused"
    WEBHOOK_RESUMED = "WebhookResumed"
    WEBHOOK_DELETED = "WebhookDeleted"
    WEBHOOK_SECRET_ROTATED = "WebhookSecretRotated"  # noqa: S105 - an event name
    # automation rules and their firings
    AUTOMATION_CREATED = "AutomationCreated"
    AUTOMATION_CHANGED = "AutomationChanged"
    AUTOMATION_PAUSED = "AutomationPaused"
    AUTOMATION_RESUMED = "AutomationResumed"
    AUTOMATION_DELETED = "AutomationDeleted"
    AUTOMATION_FIRED = "AutomationFired"


E = EventType

PIPELINE_EVENTS = frozenset(
    {
        E.PIPELINE_DEFINED,
        E.PIPELINE_RENAMED,
        E.PIPELINE_RULES_CHANGED,
        E.STAGE_ADDED,
        E.STAGE_RENAMED,
        E.STAGE_UPDATED,
        E.STAGES_REORDERED,
        E.STAGE_REMOVED,
        E.LOST_REASON_ADDED,
        E.LOST_REASON_RETIRED,
    }
)
DEAL_EVENTS = frozenset(
    {
        E.DEAL_CREATED,
        E.STAGE_ADVANCED,
        E.DEAL_WON,
        E.DEAL_LOST,
        E.DEAL_REOPENED,
        E.DEAL_UPDATED,
        E.OWNER_CHANGED,
        E.DEAL_MOVED,
        E.DEAL_SNOOZED,
        E.ACTIVITY_SCHEDULED,
        E.ACTIVITY_UPDATED,
        E.ACTIVITY_COMPLETED,
        E.ACTIVITY_CANCELLED,
        E.CHECKLIST_APPLIED,
        E.CHECKLIST_WAIVED,
    }
)
OWNER_EVENTS = frozenset({E.OWNER_REGISTERED, E.TEAM_ASSIGNED})
WEBHOOK_EVENTS = frozenset(
    {
        E.WEBHOOK_CREATED,
        E.WEBHOOK_CHANGED,
        E.WEBHOOK_PAUSED,
        E.WEBHOOK_RESUMED,
        E.WEBHOOK_DELETED,
        E.WEBHOOK_SECRET_ROTATED,
    }
)
AUTOMATION_RULE_EVENTS = frozenset(
    {
        E.AUTOMATION_CREATED,
        E.AUTOMATION_CHANGED,
        E.AUTOMATION_PAUSED,
        E.AUTOMATION_RESUMED,
        E.AUTOMATION_DELETED,
    }
)
AUTOMATION_EVENTS = AUTOMATION_RULE_EVENTS | {E.AUTOMATION_FIRED}

# Deal events that put the deal into a stage (a new visit, a stage reached).
ENTERS_STAGE = frozenset({E.DEAL_CREATED, E.STAGE_ADVANCED, E.DEAL_REOPENED, E.DEAL_MOVED})
# Deal events that close it.
CLOSES = frozenset({E.DEAL_WON, E.DEAL_LOST})
# Deal events that create or change the deal's activities (and nothing else of it but
# its "last activity" time).
ACTIVITY_EVENTS = frozenset(
    {
        E.ACTIVITY_SCHEDULED,
        E.ACTIVITY_UPDATED,
        E.ACTIVITY_COMPLETED,
        E.ACTIVITY_CANCELLED,
        E.CHECKLIST_APPLIED,
        E.CHECKLIST_WAIVED,
    }
)
# Deal events that are not sales activity: they leave the "no activity" clock alone.
NOT_ACTIVITY = frozenset({E.DEAL_SNOOZED})
