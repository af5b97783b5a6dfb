"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import unicodedata
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from libs.domain.errors import InvalidInput
from libs.domain.times import EARLIEST, LATEST, parse_moment


def _moment(value: Any) -> datetime:
    try:
        return parse_moment(value, "")
    except InvalidInput as exc:
        raise PydanticCustomError(exc.code, exc.message) from None


MAX_FILTER_LENGTH = 200


def _filter_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; no name the service stores has control characters.
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise PydanticCustomError(
            "invalid_input", "must not contain control characters (such as NUL)"
        )
    return value


FilterText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_FILTER_LENGTH),
    AfterValidator(_filter_text),
]
"""A text filter of a query (owner, team, actor, stage, event type)."""


def _day(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise PydanticCustomError("invalid_input", "must be a date (YYYY-MM-DD)")


Day = Annotated[date, BeforeValidator(_day), WithJsonSchema({"type": "string", "format": "date"})]
"""A calendar date as ``YYYY-MM-DD`` text (numbers are refused)."""

Moment = Annotated[
    datetime,
    BeforeValidator(_moment),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": f"ISO 8601 with a zone, from {EARLIEST.isoformat()} to before "
            f"{LATEST.isoformat()}",
        }
    ),
]
"""A moment in a body or query: ISO 8601 text with a zone inside the service's window
(numbers are refused, not read as Unix times), given to handlers in UTC."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


OccurredAt = Field(
    default=None,
    description=(
        "Business time of the change (ISO 8601 with a zone). Defaults to now; may be "
        "backdated, but never into the future nor before the deal's previous event."
    ),
)


Requirement = Literal["value", "expected_close_date", "note"]
ActivityType = Literal["call", "meeting", "email", "task", "deadline"]


class ChecklistItemIn(_Body):
    """One item of a stage's checklist: an open activity on every deal entering it."""

    title: str = Field(max_length=200)
    type: ActivityType = "task"
    due_in_days: int | None = Field(
        default=None,
        description="Due this many days after the deal enters (0-365); none: no due date",
    )


Checklist = Field(
    default=None,
    max_length=20,
    description="Items that become open activities on each deal entering the stage",
)


class StageIn(_Body):
    """One stage of a pipeline definition."""

    name: str = Field(max_length=100)
    probability: int = Field(description="Win probability, 0 to 100")
    rotting_days: int | None = Field(
        default=None, description="Days in this stage after which an open deal is stale"
    )
    id: str | None = Field(
        default=None, max_length=100, description="Stable id; made from the name if omitted"
    )
    requires: list[Requirement] | None = Field(
        default=None,
        description="Fields a deal must have to enter: value (> 0), expected_close_date, note",
    )
    checklist: list[ChecklistItemIn] | None = Checklist


class PipelineCreate(_Body):
    """Define a pipeline; stages and lost reasons default to the B2B template."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "New business", "currency": "EUR", "stale_after_days": 30},
                {
                    "name": "Renewals",
                    "currency": "USD",
                    "stages": [
                        {"name": "Due", "probability": 60, "rotting_days": 30},
                        {"name": "Quoted", "probability": 80, "requires": ["value"]},
                    ],
                    "lost_reasons": ["Price", "Churned"],
                    "allow_skipping_stages": False,
                },
            ]
        }
    )

    name: str = Field(max_length=100)
    currency: str = Field(description="ISO 4217 code, e.g. EUR")
    stages: list[StageIn] | None = Field(default=None, max_length=30)
    lost_reasons: list[str] | None = Field(default=None, max_length=50)
    allow_skipping_stages: bool = True
    allow_moving_back: bool = True
    stale_after_days: int | None = Field(
        default=None, description="An open deal untouched this many days is stale"
    )
    require_checklist_before_leaving: bool = Field(
        default=False,
        description="A deal leaves a stage (except when lost) only with its checklist done",
    )
    occurred_at: Moment | None = OccurredAt


class PipelinePatch(_Body):
    """Rename a pipeline or change its rules; only fields present change."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "New business (EMEA)", "stale_after_days": 21}]}
    )

    name: str | None = Field(default=None, max_length=100)
    allow_skipping_stages: bool | None = None
    allow_moving_back: bool | None = None
    stale_after_days: int | None = Field(default=None, description="null switches it off")
    require_checklist_before_leaving: bool | None = None
    occurred_at: Moment | None = OccurredAt


class StageCreate(StageIn):
    """Add a stage at a position (0 = first; default last)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Proposal review",
                    "probability": 60,
                    "rotting_days": 14,
                    "position": 3,
                    "requires": ["value", "expected_close_date"],
                }
            ]
        }
    )

    position: int | None = Field(default=None, ge=0, le=30)
    occurred_at: Moment | None = OccurredAt


class StagePatch(_Body):
    """Rename a stage or change its probability, rotting threshold or requirements."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"probability": 55, "rotting_days": 10}]}
    )

    name: str | None = Field(default=None, max_length=100)
    probability: int | None = None
    rotting_days: int | None = None
    requires: list[Requirement] | None = None
    checklist: list[ChecklistItemIn] | None = Field(
        default=None, max_length=20, description="A new checklist (its next version); [] clears"
    )
    occurred_at: Moment | None = OccurredAt


class StageOrder(_Body):
    """Every current stage id, in the new order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"stage_order": ["deal-created", "demo-or-meeting", "quote-sent", "negotiation"]}
            ]
        }
    )

    stage_order: list[str] = Field(max_length=30)
    occurred_at: Moment | None = OccurredAt


class LostReasonIn(_Body):
    """A lost reason to add (or bring back from retirement)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "No budget"}]})

    reason: str = Field(max_length=100)
    occurred_at: Moment | None = OccurredAt


class ChecklistItemPublic(BaseModel):
    """An item of a stage's checklist."""

    title: str
    type: str
    due_in_days: int | None = None


class StagePublic(BaseModel):
    """A stage as it is now."""

    id: str
    name: str
    probability: int
    rotting_days: int | None = None
    requires: list[str] = []
    checklist: list[ChecklistItemPublic] = []
    checklist_version: int = Field(default=0, description="Changes of its checklist so far")


class PipelinePublic(BaseModel):
    """A pipeline and its current definition."""

    id: UUID
    name: str
    currency: str
    stages: list[StagePublic]
    removed_stages: list[StagePublic] = []
    lost_reasons: list[str]
    retired_lost_reasons: list[str] = []
    allow_skipping_stages: bool = True
    allow_moving_back: bool = True
    stale_after_days: int | None = None
    require_checklist_before_leaving: bool = False
    version: int
    created_at: str
    position: int | None = Field(
        default=None, description="Log position of the command's last event"
    )
    moved_deals: list[str] | None = Field(
        default=None, description="After removing a stage: the deals moved out of it"
    )


class PipelinesPublic(BaseModel):
    """All pipelines."""

    data: list[PipelinePublic]
    position: int | None = Field(default=None, description="Log position the answer reflects")


class DealCreate(_Body):
    """Open a deal in a pipeline."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "pipeline_id": "0f8e2c1a-4b6d-4e2f-9a3b-5c7d9e1f2a4b",
                    "title": "ACME renewal",
                    "value": "12000.00",
                    "owner": "rita",
                    "expected_close_date": "2026-09-30",
                    "account": "ACME",
                    "product": "GTX Pro",
                }
            ]
        }
    )

    pipeline_id: UUID
    title: str = Field(max_length=200)
    value: Decimal = Field(description="Amount in the pipeline's currency; a string keeps it exact")
    owner: str | None = Field(default=None, max_length=100, description="Defaults to the caller")
    stage: str | None = Field(default=None, description="Stage id or name; defaults to the first")
    expected_close_date: Day | None = None
    external_id: str | None = Field(
        default=None, max_length=200, description="Id in another system; unique per pipeline"
    )
    account: str | None = Field(default=None, max_length=100, description="Customer account")
    product: str | None = Field(default=None, max_length=100)
    note: str | None = Field(
        default=None, max_length=2000, description="Satisfies a stage's note requirement"
    )
    occurred_at: Moment | None = OccurredAt


class DealAdvance(_Body):
    """Move a deal to another stage (forwards or backwards)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"stage": "Quote sent", "note": "pricing sent on Monday"}]}
    )

    stage: str = Field(description="Stage id or name")
    note: str | None = Field(default=None, max_length=2000)
    occurred_at: Moment | None = OccurredAt


class DealWin(_Body):
    """Close a deal as won."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"occurred_at": "2026-05-28T16:00:00Z"}]}
    )

    occurred_at: Moment | None = OccurredAt


class DealLose(_Body):
    """Close a deal as lost, for one of the pipeline's lost reasons."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"reason": "Price", "note": "went with a cheaper offer"}]}
    )

    reason: str = Field(description="One of the pipeline's lost reasons")
    note: str | None = Field(default=None, max_length=2000, description="Free text")
    occurred_at: Moment | None = OccurredAt


class DealReopen(_Body):
    """Bring a won or lost deal back into the pipeline."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"stage": "negotiation", "note": "they came back with a budget"}]
        }
    )

    stage: str | None = Field(default=None, description="Defaults to the stage it closed in")
    note: str | None = Field(default=None, max_length=2000)
    occurred_at: Moment | None = OccurredAt


class DealPatch(_Body):
    """Change some of a deal's fields; only fields present in the body change."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"value": "15000.00", "expected_close_date": "2026-10-15"},
                {"probability_override": None},
            ]
        }
    )

    title: str | None = Field(default=None, max_length=200)
    value: Decimal | None = None
    expected_close_date: Day | None = Field(default=None, description="null clears it")
    owner: str | None = Field(default=None, max_length=100)
    account: str | None = Field(default=None, max_length=100, description="null clears it")
    product: str | None = Field(default=None, max_length=100, description="null clears it")
    probability_override: int | None = Field(
        default=None, description="0-100, beats the stage's probability; null clears it"
    )
    occurred_at: Moment | None = OccurredAt

    def changed_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set if k != "occurred_at"}


class DealMove(_Body):
    """Move a deal into another pipeline (same currency); its history stays."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "pipeline_id": "7d1c5e2b-9a4f-4c3e-8b6a-2f1e0d9c8b7a",
                    "stage": "quote-sent",
                    "note": "handled by renewals now",
                }
            ]
        }
    )

    pipeline_id: UUID
    stage: str | None = Field(default=None, description="Defaults to the first stage")
    note: str | None = Field(default=None, max_length=2000)
    occurred_at: Moment | None = OccurredAt


class DealSnooze(_Body):
    """Keep a deal off the stale list until a moment, for a reason."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"until": "2026-07-01T00:00:00Z", "reason": "customer on holiday until July"}
            ]
        }
    )

    until: Moment
    reason: str = Field(max_length=2000)
    occurred_at: Moment | None = OccurredAt


class ActivityCreate(_Body):
    """Plan a call, meeting, email, task or deadline on a deal."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "call",
                    "subject": "Discovery call with ACME",
                    "due_at": "2026-06-03T09:30:00Z",
                    "duration_minutes": 30,
                    "assignee": "rita",
                    "note": "ask about the budget",
                }
            ]
        }
    )

    type: ActivityType
    subject: str = Field(max_length=200)
    due_at: Moment
    duration_minutes: int | None = Field(default=None, description="1 to 1440 minutes")
    assignee: str | None = Field(
        default=None, max_length=100, description="Defaults to the deal's owner"
    )
    note: str | None = Field(default=None, max_length=2000)
    occurred_at: Moment | None = OccurredAt


class ActivityPatch(_Body):
    """Reschedule, reassign or edit an open activity; only fields present change."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"due_at": "2026-06-04T14:00:00Z", "assignee": "raj"}]}
    )

    type: ActivityType | None = None
    subject: str | None = Field(default=None, max_length=200)
    due_at: Moment | None = None
    duration_minutes: int | None = Field(default=None, description="null clears it")
    assignee: str | None = Field(default=None, max_length=100)
    note: str | None = Field(default=None, max_length=2000, description="null clears it")
    occurred_at: Moment | None = OccurredAt

    def changed_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set if k != "occurred_at"}


class ActivityComplete(_Body):
    """Mark an activity done."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"outcome": "budget confirmed; quote next week"}]}
    )

    outcome: str | None = Field(default=None, max_length=2000, description="What came of it")
    occurred_at: Moment | None = OccurredAt


class ActivityCancel(_Body):
    """Cancel an activity."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"reason": "the customer cancelled the meeting"}]}
    )

    reason: str | None = Field(default=None, max_length=2000)
    occurred_at: Moment | None = OccurredAt


class ChecklistWaive(_Body):
    """Waive the open checklist items of the deal's stage."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"reason": "signed contract received by post"}]}
    )

    reason: str = Field(max_length=2000)
    occurred_at: Moment | None = OccurredAt


class OwnerTeam(_Body):
    """An owner's team and region from ``occurred_at`` on (null leaves them unset)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"team": "Enterprise", "region": "EMEA", "occurred_at": "2026-01-01T00:00:00Z"}
            ]
        }
    )

    team: str | None = Field(default=None, max_length=100)
    region: str | None = Field(default=None, max_length=100)
    occurred_at: Moment | None = OccurredAt


class StageRef(BaseModel):
    """A stage's id and its name (now, or at the moment asked about)."""

    id: str
    name: str


class ActivityBrief(BaseModel):
    """An activity in brief, as a deal's answer shows its next and last completed one."""

    id: UUID
    type: str
    subject: str
    due_at: str | None
    assignee: str
    status: str
    completed_at: str | None


class NextActivity(ActivityBrief):
    """A deal's next open activity (soonest due)."""

    overdue: bool = Field(description="Due before now (the service clock)")


class ChecklistOrigin(BaseModel):
    """Where a checklist item came from: the stage and its checklist's version."""

    pipeline_id: UUID
    stage_id: str
    version: int


class ActivityPublic(BaseModel):
    """An activity on a deal."""

    id: UUID
    deal_id: UUID
    pipeline_id: UUID
    type: str = Field(description="call, meeting, email, task or deadline")
    subject: str
    due_at: str | None = Field(description="None only for a checklist item without a due date")
    duration_minutes: int | None
    assignee: str
    note: str | None
    status: str = Field(description="open, done or cancelled")
    overdue: bool = Field(description="Open and due before now (the service clock)")
    created_at: str
    changed_at: str = Field(description="Business time of its last change")
    completed_at: str | None
    outcome: str | None
    cancelled_at: str | None
    cancel_reason: str | None
    waived: bool = Field(description="Cancelled by a waiver of its stage's checklist")
    checklist: ChecklistOrigin | None


class ActivityCommandResponse(ActivityPublic):
    """An activity after a command, its deal's new version and the command's position."""

    deal_version: int = Field(description="The deal's version (also the ETag)")
    position: int


class ActivityNow(ActivityPublic):
    """An activity from the read model, with the position it reflects."""

    position: int


class ActivitiesPage(BaseModel):
    """A page of activities, soonest due first (those without a due date last)."""

    data: list[ActivityPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")
    position: int


class DealPublic(BaseModel):
    """A deal as every answer shows it (``libs/domain/views.py``): stage names as they are
    now, probability and weighted value, time in stage and staleness at the service clock."""

    id: UUID
    pipeline_id: UUID
    title: str
    value: str = Field(description="Decimal amount as a string")
    currency: str | None
    owner: str
    stage: StageRef
    status: str = Field(description="open, won or lost")
    probability: int = Field(description="Win probability: the override, else the stage's")
    probability_override: int | None = None
    weighted_value: str = Field(description="value x probability, four decimals")
    expected_close_date: date | None
    external_id: str | None
    account: str | None = None
    product: str | None = None
    lost_reason: str | None
    lost_note: str | None
    created_at: str
    closed_at: str | None
    entered_current_stage_at: str
    time_in_current_stage_seconds: float | None = Field(description="None once closed")
    last_activity_at: str = Field(description="Last sales activity (a snooze is none)")
    stale: bool
    stale_reasons: list[str] = Field(description="rotting_in_stage, no_activity")
    days_stale: float
    snoozed_until: str | None = None
    snooze_reason: str | None = None
    open_activities: int = Field(description="Activities not yet done or cancelled")
    overdue_activities: int = Field(description="Open activities due before now")
    next_activity: NextActivity | None
    last_completed_activity: ActivityBrief | None
    updated_at: str | None = Field(description="When the last event was recorded")
    version: int


class DealCommandResponse(DealPublic):
    """A deal after a command, with the log position of the command's last event."""

    position: int


class ChecklistWaived(DealCommandResponse):
    """A deal after a waiver of its stage's checklist."""

    waived: list[UUID] = Field(description="The checklist items waived (now cancelled)")


class DealNow(DealPublic):
    """A deal from the read model, with the position it reflects."""

    position: int


class DealAsOf(BaseModel):
    """A deal at a past moment: what the history keeps of it then."""

    id: UUID
    pipeline_id: UUID
    stage: StageRef
    status: str
    value: str
    owner: str
    probability: int
    weighted_value: str
    expected_close_date: date | None
    created_at: str
    state_since: str = Field(description="When the state shown began (business time)")


class DealAsOfAnswer(DealAsOf):
    """A deal at a past moment, with its activities then, the moment and the position it
    reflects."""

    activities: list[ActivityPublic] = Field(
        description="Its activities as they were then (overdue: at that moment)"
    )
    as_of: str
    position: int


class DealsPage(BaseModel):
    """A page of deals in (creation time, id) order."""

    data: list[DealPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")
    position: int


class Change(BaseModel):
    """One field's value before and after an event."""

    before: Any = None
    after: Any = None


class HistoryEntry(BaseModel):
    """One event: who, what, when (business and recorded time) and what changed."""

    position: int
    aggregate_id: UUID
    aggregate_type: str
    event_type: str
    version: int
    actor: str | None
    occurred_at: str | None
    recorded_at: str | None
    changes: dict[str, Change]


class HistoryPage(BaseModel):
    """A page of events in log order."""

    data: list[HistoryEntry]
    next_cursor: str | None
    position: int


class PipelineRef(BaseModel):
    """A pipeline's id, name and currency."""

    id: UUID
    name: str
    currency: str


class Totals(BaseModel):
    """Open deals' count, total value and weighted value."""

    count: int
    total_value: str
    weighted_value: str


class BoardStage(Totals):
    """One column of the board: a stage, its open deals' totals and the first deals."""

    id: str
    name: str
    probability: int
    rotting_days: int | None
    stale_count: int
    deals: list[DealPublic]
    next_cursor: str | None = Field(description="`cursor` of GET /v1/deals for the stage's rest")


class Board(BaseModel):
    """The board now."""

    pipeline: PipelineRef
    stages: list[BoardStage]
    totals: Totals
    position: int


class BoardStageAsOf(Totals):
    """One column of a past board."""

    id: str
    name: str
    probability: int
    deals: list[DealAsOf]


class BoardAsOf(BaseModel):
    """The board at a past moment (stages as defined then, deals as they were)."""

    pipeline: PipelineRef
    as_of: str
    stages: list[BoardStageAsOf]
    totals: Totals
    position: int


class ReportAnswer(BaseModel):
    """A report: its parameters, summary figures, rows (also its CSV) and notes."""

    report: str
    params: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    notes: str
    position: int


class Membership(BaseModel):
    """An owner's team and region from a moment on."""

    from_: str = Field(alias="from")
    team: str | None
    region: str | None


class OwnerPublic(BaseModel):
    """An owner's team and region now, and since when each held."""

    owner: str
    team: str | None
    region: str | None
    history: list[Membership]


class OwnersPublic(BaseModel):
    """Every owner with a team or region."""

    data: list[OwnerPublic]
    position: int


class MePublic(BaseModel):
    """The signed-in principal, as the domain's role rules see it."""

    name: str
    role: str
    may_run_commands: bool
    may_manage_pipelines: bool
    may_read_audit: bool
    may_waive_checklists: bool


# --- webhooks ---------------------------------------------------------------------------


class WebhookCreate(_Body):
    """Subscribe an endpoint to event types (every type with `["*"]`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/dealtrail",
                    "event_types": ["DealWon", "DealLost"],
                    "description": "closed deals to the billing system",
                },
                {"url": "https://hooks.example.com/all", "event_types": ["*"]},
            ]
        },
    )

    url: str = Field(max_length=2000, description="https:// (or http://) URL to POST to")
    event_types: list[str] = Field(
        max_length=64, description='Event type names (e.g. "DealWon"), or ["*"] for all'
    )
    pipeline_id: UUID | None = Field(
        default=None, description="Only events of this pipeline and its deals"
    )
    description: str | None = Field(default=None, max_length=2000)


class WebhookPatch(_Body):
    """Change some of a webhook's fields; only fields present in the body change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"event_types": ["*"]},
                {"url": "https://hooks.example.com/v2", "pipeline_id": None},
            ]
        },
    )

    url: str | None = Field(default=None, max_length=2000)
    event_types: list[str] | None = Field(default=None, max_length=64)
    pipeline_id: UUID | None = Field(default=None, description="null: every pipeline")
    description: str | None = Field(default=None, max_length=2000, description="null clears it")

    def changed_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set}


class WebhookPublic(BaseModel):
    """A webhook subscription (its signing secret is never shown again after it is made)."""

    id: UUID
    url: str
    event_types: list[str]
    pipeline_id: UUID | None
    description: str | None
    status: Literal["active", "paused"]
    paused_reason: Literal["failing", "manual"] | None
    version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    secret_rotated_at: datetime | None


# --- automations -------------------------------------------------------------------------

TRIGGER_DESCRIPTION = (
    "`type` and its fields: `enters_stage` (`stage`), `rotting` (optional `stage`, optional "
    "`days`: default the stage's `rotting_days`), `stale` (the pipeline's "
    "`stale_after_days`), `activity_overdue`, `won`, `lost`, `schedule` (`cron`: five "
    "fields, `timezone`: an IANA name)"
)
ACTIONS_DESCRIPTION = (
    "1 to 10 actions, each by `type`: `create_activity` (`activity_type`, `subject`, "
    "`due_in_days`, `assignee`: null for the deal's owner), `notify`, `reassign` "
    "(`owner`), `digest` (`report`, `params`, `webhook_id` of a webhook that exists; "
    "schedule triggers only)"
)
EXAMPLE_AUTOMATION: dict[str, Any] = {
    "name": "Negotiation stuck two weeks",
    "pipeline_id": "6f1c1c9e-8a53-4a8e-9d0e-0b8f1f0a2c11",
    "trigger": {"type": "rotting", "stage": "negotiation", "days": 14},
    "actions": [
        {
            "type": "create_activity",
            "activity_type": "call",
            "subject": "Call the customer",
            "due_in_days": 1,
            "assignee": None,
        },
        {"type": "notify"},
    ],
    "description": "a call task for the owner, and a webhook notification",
}


class AutomationCreate(_Body):
    """Define an automation rule: when its trigger happens, its actions run."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                EXAMPLE_AUTOMATION,
                {
                    "name": "Monday funnel",
                    "pipeline_id": "6f1c1c9e-8a53-4a8e-9d0e-0b8f1f0a2c11",
                    "trigger": {
                        "type": "schedule",
                        "cron": "0 8 * * MON",
                        "timezone": "Europe/Berlin",
                    },
                    "actions": [
                        {
                            "type": "digest",
                            "report": "funnel",
                            "params": {},
                            "webhook_id": "0d9e7a56-3d5b-4c1e-9a4f-2b7c8e1d6f30",
                        }
                    ],
                },
            ]
        }
    )

    name: str = Field(max_length=100)
    pipeline_id: UUID
    trigger: dict[str, Any] = Field(description=TRIGGER_DESCRIPTION)
    actions: list[dict[str, Any]] = Field(description=ACTIONS_DESCRIPTION, max_length=10)
    description: str | None = Field(default=None, max_length=2000)


class AutomationPatch(_Body):
    """Change a rule's name, description, trigger or actions; fields left out stay."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Negotiation stuck ten days",
                    "trigger": {**EXAMPLE_AUTOMATION["trigger"], "days": 10},
                }
            ]
        }
    )

    name: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=2000)
    trigger: dict[str, Any] | None = Field(default=None, description=TRIGGER_DESCRIPTION)
    actions: list[dict[str, Any]] | None = Field(
        default=None, description=ACTIONS_DESCRIPTION, max_length=10
    )

    def changed_fields(self) -> dict[str, Any]:
        """The fields present in the request (a null description clears it)."""
        return {k: getattr(self, k) for k in self.model_fields_set}


class AutomationPublic(BaseModel):
    """An automation rule as it is now."""

    id: UUID
    name: str
    description: str | None
    pipeline_id: UUID
    trigger: dict[str, Any]
    actions: list[dict[str, Any]]
    status: Literal["active", "paused"]
    version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    last_fired_at: datetime | None
    fired_count: int
    position: int | None = Field(default=None, description="The log position of a command")


class WebhookCommandResponse(WebhookPublic):
    """A webhook after a command, with the log position of its event."""

    position: int


class WebhookWithSecret(WebhookCommandResponse):
    """A webhook just made, or its secret just replaced: the secret is shown this once."""

    secret: str = Field(description="whsec_ + base64 key: verify each delivery's signature")


class WebhooksPage(BaseModel):
    """Webhooks, oldest first."""

    data: list[WebhookPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class WebhookDelivery(BaseModel):
    """One event sent (or being sent) to a webhook."""

    position: int
    event_type: str
    status: Literal["delivered", "retrying", "failed"]
    attempts: int
    response_code: int | None
    latency_ms: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    updated_at: datetime


class WebhookDeliveriesPage(BaseModel):
    """A webhook's deliveries, newest event first."""

    data: list[WebhookDelivery]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class WebhookReplay(BaseModel):
    """A replay accepted: deliveries start again after `from_position` - 1."""

    id: UUID
    from_position: int
    head: int


class AutomationsPage(BaseModel):
    """A page of rules, oldest first."""

    items: list[AutomationPublic]
    next_cursor: str | None


class FiringPublic(BaseModel):
    """One firing of a rule: what triggered it and what each action did."""

    position: int
    occurred_at: datetime
    deal_id: UUID | None
    reason: str
    occurrence: str
    actions: list[dict[str, Any]]


class FiringsPage(BaseModel):
    """A page of a rule's firings, in log order."""

    items: list[FiringPublic]
    next_cursor: str | None
