"""The handler table: every command type, the function that runs it, and ``handle``.

A handler loads the aggregates it needs, calls their methods (where every rule lives),
and stores the new events with one ``record`` call. Commands on an existing aggregate
follow one retry rule: with an expected version, a lost race is a StaleVersion (412);
without one, the command is decided again on the fresh state, up to ``MAX_ATTEMPTS``
times, then ConcurrentModification (409).

After a command, the policies react to the events it stored (``POLICIES``: event type
-> policies): removing a stage moves the open deals that entered it while it was being
removed. What a handler or policy needs from outside the event store (the read model's
open deals of a stage) is passed to ``handle``, so the application never imports the
read side.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import IntegrityError
from eventsourcing.postgres import PostgresApplicationRecorder

from libs.application import failures
from libs.application.app import DealtrailApplication
from libs.application.failures import ReadChanged
from libs.domain.actors import Actor, Role
from libs.domain.automation import (
    MAX_RULES,
    TIME_TRIGGERS,
    AutomationFiring,
    AutomationRule,
    automation_actor,
    deal_occurrences,
    firing_id_for,
)
from libs.domain.commands import (
    AddLostReason,
    AddStage,
    AdvanceDeal,
    AssignTeam,
    AutomationChange,
    BatchResult,
    CancelActivity,
    ChangeAutomation,
    ChangePipeline,
    ChangeStage,
    ChangeWebhook,
    Command,
    CommandResult,
    CompleteActivity,
    CreateAutomation,
    CreateDeal,
    CreateWebhook,
    DealChange,
    DefinePipeline,
    DeleteAutomation,
    DeleteWebhook,
    FireAutomation,
    FiringResult,
    ImportDeals,
    ImportSetup,
    LoseDeal,
    MoveDeal,
    PauseAutomation,
    PauseWebhook,
    PipelineChange,
    RecordHistory,
    RemoveStage,
    ReopenDeal,
    ReorderStages,
    ResumeAutomation,
    ResumeWebhook,
    RetireLostReason,
    RotateWebhookSecret,
    RowOutcome,
    ScheduleActivity,
    SnoozeDeal,
    UpdateActivity,
    UpdateDeal,
    WaiveChecklist,
    WebhookChange,
    WinDeal,
)
from libs.domain.deal import Deal, check_assignee, deal_id_for
from libs.domain.errors import (
    ConcurrentModification,
    DomainError,
    DuplicateExternalId,
    InvalidInput,
    NotFound,
    RuleViolation,
    StaleVersion,
)
from libs.domain.imports import DealRow, plan_deal
from libs.domain.owner import Owner, owner_id_for
from libs.domain.pipeline import Pipeline, default_template
from libs.domain.times import to_utc
from libs.domain.values import UNSET
from libs.domain.webhook import Webhook
from libs.observability import metrics, tracing

R = TypeVar("R")

# Without If-Match a command that loses a race is re-run on the fresh state (its rules
# are checked again); this many attempts before giving up with a 409.
MAX_ATTEMPTS = 5
# Deals may enter a stage while it is being removed; the policy looks this many times.
SWEEP_ROUNDS = 3
# Stored deals of an import batch are read one query each. On PostgreSQL most of that
# time is waiting for the server, so a few threads overlap the round trips; SQLite reads
# are CPU-bound (and serialised), where extra threads only add overhead.
POSTGRES_LOAD_WORKERS = 4

OpenDealsInStage = Callable[[UUID, str, int], Sequence[UUID | str]]
"""(pipeline id, stage id, log position) -> ids of the open deals the read model shows in
that stage once it has reached that position (candidates: each is checked again)."""


@dataclass
class Run:
    """One command's run: the application, what was given from outside, what it stored."""

    application: DealtrailApplication
    open_deals_in_stage: OpenDealsInStage | None = None
    # the names of the reports a digest may send (the query layer's catalog); None: any
    report_names: frozenset[str] | None = None
    events: list[DomainEventProtocol[UUID]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    position: int = 0

    def when(self, occurred_at: datetime | None) -> tuple[datetime, datetime]:
        """(business time, server time now): business time defaults to now."""
        now = self.application.clock()
        if occurred_at is None:
            return now, now
        return to_utc(occurred_at, "occurred_at"), now

    def store(self, *aggregates: Aggregate, read: Sequence[Aggregate] = ()) -> int:
        """Record the aggregates' new events in one transaction; the last position.
        ``read``: what the command decided on without changing (see ``record``)."""
        recordings = self.application.record(*aggregates, read=read)
        self.events.extend(r.domain_event for r in recordings)
        self.positions.extend(r.notification.id for r in recordings)
        self.position = max(self.position, recordings[-1].notification.id)
        return self.position

    def lookup_open_deals(self, pipeline_id: UUID, stage_id: str) -> Sequence[UUID | str]:
        """The read model's open deals in the stage, as of the log's head now."""
        if self.open_deals_in_stage is None:
            raise RuntimeError("removing a stage needs the read model's open deals")
        head = self.application.head_position()
        return self.open_deals_in_stage(pipeline_id, stage_id, head)


Stamp = dict[str, Any]  # actor, occurred_at and now, as every aggregate method takes them
Decision = tuple[Sequence[Aggregate], Sequence[Aggregate], Callable[[int], CommandResult]]
"""(aggregates to store, aggregates only read, the result once stored at a position)."""


def _stamp(run: Run, command: Command[Any]) -> Stamp:
    when, now = run.when(command.occurred_at)
    return {"actor": command.actor.name, "occurred_at": when, "now": now}


def _check_version(aggregate: Aggregate, expected_version: int | None, what: str) -> None:
    if expected_version is not None and aggregate.version != expected_version:
        raise StaleVersion(
            f"{what} is at version {aggregate.version}, not {expected_version}",
            details={"current_version": aggregate.version},
        )


def _retrying(
    run: Run,
    what: str,
    expected_version: int | None,
    attempt: Callable[[], Decision],
) -> CommandResult:
    """Run ``attempt`` (load, decide) and store; on a lost race retry or report stale.
    An attempt decided on a read aggregate that has changed since (a cached pipeline) is
    run again on a fresh copy, If-Match or not: the aggregate it changes did not move."""
    for n in range(1, MAX_ATTEMPTS + 1):
        try:
            aggregates, read, finish = attempt()
            position = run.store(*aggregates, read=read)
        except ReadChanged:
            if n == MAX_ATTEMPTS:
                raise ConcurrentModification(
                    f"the pipeline of this {what} is changing too often; try again"
                ) from None
            continue
        except IntegrityError:
            if expected_version is not None:
                raise StaleVersion(
                    f"{what} changed after version {expected_version}",
                    details={"expected_version": expected_version},
                ) from None
            if n == MAX_ATTEMPTS:
                raise ConcurrentModification(
                    f"{what} is changing too often to apply this command; try again"
                ) from None
            # Back off a little (with jitter) so that racing writers spread out.
            time.sleep(random.uniform(0, 0.005 * 2**n))
            continue
        return finish(position)
    raise AssertionError("unreachable")


# --- pipelines ------------------------------------------------------------------------


def pipeline_defined_by(c: DefinePipeline, occurred_at: datetime, now: datetime) -> Pipeline:
    """The pipeline a definition creates, in memory: every rule checked, nothing stored.

    (Importers and the generator plan their deals against it before it is stored.)
    """
    c.actor.check_may_manage_pipelines()
    template = default_template()
    return Pipeline.define(
        name=c.name,
        currency=c.currency,
        stages=template["stages"] if c.stages is None else c.stages,
        lost_reasons=template["lost_reasons"] if c.lost_reasons is None else c.lost_reasons,
        allow_skipping_stages=c.allow_skipping_stages,
        allow_moving_back=c.allow_moving_back,
        stale_after_days=c.stale_after_days,
        require_checklist_before_leaving=c.require_checklist_before_leaving,
        pipeline_id=c.pipeline_id,
        actor=c.actor.name,
        occurred_at=occurred_at,
        now=now,
    )


def define_pipeline(run: Run, c: DefinePipeline) -> CommandResult:
    pipeline = pipeline_defined_by(c, *run.when(c.occurred_at))
    position = run.store(pipeline)
    return CommandResult(pipeline.id, pipeline.version, position, pipeline.as_dict(), True)


ChangeOfPipeline = Callable[[Pipeline, Stamp], None]


def _on_pipeline(run: Run, c: PipelineChange, change: ChangeOfPipeline) -> CommandResult:
    """Apply ``change`` to a pipeline (admins and managers), with the retry rules."""
    c.actor.check_may_manage_pipelines()

    def attempt() -> Decision:
        pipeline = run.application.get_pipeline(c.pipeline_id)
        _check_version(pipeline, c.expected_version, "pipeline")
        change(pipeline, _stamp(run, c))
        return (
            [pipeline],
            (),
            lambda pos: CommandResult(pipeline.id, pipeline.version, pos, pipeline.as_dict()),
        )

    return _retrying(run, "pipeline", c.expected_version, attempt)


def _given(c: Any, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(c, name) for name in names}


PIPELINE_RULES = (
    "allow_skipping_stages",
    "allow_moving_back",
    "stale_after_days",
    "require_checklist_before_leaving",
)
STAGE_FIELDS = ("probability", "rotting_days", "requires", "checklist")


def change_pipeline(run: Run, c: ChangePipeline) -> CommandResult:
    rules = _given(c, PIPELINE_RULES)

    def change(p: Pipeline, stamp: Stamp) -> None:
        if c.name is not UNSET:
            p.rename(c.name, **stamp)
        if any(v is not UNSET for v in rules.values()) or c.name is UNSET:
            p.change_rules(**rules, **stamp)

    return _on_pipeline(run, c, change)


def add_stage(run: Run, c: AddStage) -> CommandResult:
    def change(p: Pipeline, stamp: Stamp) -> None:
        p.add_stage(
            name=c.name,
            index=c.position,
            stage_id=c.stage_id,
            **_given(c, STAGE_FIELDS),
            **stamp,
        )

    return _on_pipeline(run, c, change)


def change_stage(run: Run, c: ChangeStage) -> CommandResult:
    fields = _given(c, STAGE_FIELDS)

    def change(p: Pipeline, stamp: Stamp) -> None:
        if c.name is not UNSET:
            p.rename_stage(c.stage, name=c.name, **stamp)
        if any(v is not UNSET for v in fields.values()) or c.name is UNSET:
            p.update_stage(c.stage, **fields, **stamp)

    return _on_pipeline(run, c, change)


def reorder_stages(run: Run, c: ReorderStages) -> CommandResult:
    return _on_pipeline(run, c, lambda p, stamp: p.reorder_stages(c.stage_order, **stamp))


def add_lost_reason(run: Run, c: AddLostReason) -> CommandResult:
    return _on_pipeline(run, c, lambda p, stamp: p.add_lost_reason(c.reason, **stamp))


def retire_lost_reason(run: Run, c: RetireLostReason) -> CommandResult:
    return _on_pipeline(run, c, lambda p, stamp: p.retire_lost_reason(c.reason, **stamp))


def _removal_cause(pipeline: Pipeline, stage_id: str) -> dict[str, Any]:
    """What a deal moved by a stage removal records as the cause of its move."""
    return {
        "type": "StageRemoved",
        "pipeline_id": str(pipeline.id),
        "pipeline_version": pipeline.version,
        "stage_id": stage_id,
    }


def remove_stage(run: Run, c: RemoveStage) -> CommandResult:
    """Remove a stage; its open deals (candidates from the read model, each checked on
    its own aggregate) move to ``move_open_deals_to`` in the same transaction."""
    c.actor.check_may_manage_pipelines()
    app = run.application
    target_id = app.get_pipeline(c.pipeline_id).stage(c.stage).id
    candidates = run.lookup_open_deals(UUID(str(c.pipeline_id)), target_id)

    def attempt() -> Decision:
        pipeline = app.get_pipeline(c.pipeline_id)
        _check_version(pipeline, c.expected_version, "pipeline")
        target = pipeline.stage(target_id)
        stamp = _stamp(run, c)
        deals = [app.get_deal(d) for d in candidates]
        deals = [
            d
            for d in deals
            if d.status == "open" and d.stage_id == target.id and d.pipeline_id == pipeline.id
        ]
        order = [s.id for s in pipeline.stages]
        destination = pipeline.remove_stage(
            target.id,
            open_deals=len(deals),
            move_open_deals_to=c.move_open_deals_to,
            **stamp,
        )
        cause = _removal_cause(pipeline, target.id)
        if destination is not None:
            # Where the removed stage stood decides whether its deals moved back.
            back = order.index(destination.id) < order.index(target.id)
            cause["direction"] = "backward" if back else "forward"
        for deal in deals:
            assert destination is not None
            _move_for_removal(deal, pipeline, destination.id, cause, stamp)
        state = {**pipeline.as_dict(), "moved_deals": [str(d.id) for d in deals]}
        return (
            [pipeline, *deals],
            (),
            lambda pos: CommandResult(pipeline.id, pipeline.version, pos, state),
        )

    return _retrying(run, "pipeline", c.expected_version, attempt)


def _move_for_removal(
    deal: Deal, pipeline: Pipeline, destination: str, cause: dict[str, Any], stamp: Stamp
) -> None:
    """Move a deal out of a removed stage, never dated before its own last event."""
    deal.advance(
        pipeline,
        destination,
        actor=stamp["actor"],
        occurred_at=max(stamp["occurred_at"], deal.last_occurred_at),
        now=max(stamp["now"], deal.last_occurred_at),
        cause=cause,
    )


def sweep_stranded_deals(run: Run, removed: DomainEventProtocol[UUID]) -> None:
    """Policy on StageRemoved: open deals that entered the stage while it was being
    removed (the read model shows them there after the removal) follow the others."""
    destination: str | None = getattr(removed, "move_open_deals_to", None)
    if destination is None:
        return
    pipeline_id = UUID(str(removed.originator_id))
    stage_id = str(getattr(removed, "stage_id"))  # noqa: B009 (a field of this event type)
    actor = str(getattr(removed, "actor"))  # noqa: B009
    app = run.application
    for _ in range(SWEEP_ROUNDS):
        stranded = run.lookup_open_deals(pipeline_id, stage_id)
        if not stranded:
            return
        for _attempt in range(MAX_ATTEMPTS):
            pipeline = app.get_pipeline(pipeline_id)
            when, now = run.when(None)
            deals = [app.get_deal(d) for d in stranded]
            deals = [
                d
                for d in deals
                if d.status == "open" and d.stage_id == stage_id and d.pipeline_id == pipeline_id
            ]
            if not deals:
                break
            cause = _removal_cause(pipeline, stage_id)
            stamp = {"actor": actor, "occurred_at": when, "now": now}
            for deal in deals:
                _move_for_removal(deal, pipeline, destination, cause, stamp)
            try:
                run.store(*deals)
            except IntegrityError:
                continue
            break
        else:
            raise RuleViolation("deals are changing too often to move them; try again")


# --- deals ----------------------------------------------------------------------------


def _deciding_on(run: Run, pipeline: Pipeline, decide: Callable[[], R]) -> R:
    """``decide()`` on a pipeline from ``read_pipeline``; a rule's refusal is given only
    if the stored pipeline is still that one (else ReadChanged: decide again)."""
    try:
        return decide()
    except DomainError:
        run.application.check_read_pipeline(pipeline)
        raise


def _new_deal(run: Run, c: CreateDeal, owner: Any, pipeline: Pipeline) -> Deal:
    return Deal.create(
        pipeline=pipeline,
        title=c.title,
        value=c.value,
        owner=owner,
        stage=c.stage,
        expected_close_date=c.expected_close_date,
        external_id=c.external_id,
        account=c.account,
        product=c.product,
        note=c.note,
        **_stamp(run, c),
    )


def create_deal(run: Run, c: CreateDeal) -> CommandResult:
    actor = c.actor
    owner = actor.name if c.owner is None else c.owner
    if isinstance(owner, str):
        owner = owner.strip()
    actor.check_may_assign(owner if isinstance(owner, str) else "")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        pipeline = run.application.read_pipeline(c.pipeline_id)
        try:
            deal = _deciding_on(
                run, pipeline, functools.partial(_new_deal, run, c, owner, pipeline)
            )
            position = run.store(deal, read=[pipeline])
        except ReadChanged:
            if attempt == MAX_ATTEMPTS:
                raise ConcurrentModification(
                    "the pipeline is changing too often to open a deal in it; try again"
                ) from None
            continue
        except IntegrityError:
            raise DuplicateExternalId(
                f"a deal with external_id {deal.external_id!r} already exists in this pipeline",
                details={"deal_id": str(deal_id_for(pipeline.id, str(deal.external_id)))},
            ) from None
        return CommandResult(deal.id, deal.version, position, deal.as_dict(pipeline), True)
    raise AssertionError("unreachable")


ChangeOfDeal = Callable[[Deal, Pipeline, Stamp], Any]
Answer = Callable[[Deal, Pipeline, Any, datetime], tuple[UUID | str, dict[str, Any]]]
"""(deal, pipeline, what the change returned, now) -> (id, state) of the answer."""


def _deal_answer(
    deal: Deal, pipeline: Pipeline, _: Any, now: datetime
) -> tuple[UUID, dict[str, Any]]:
    return deal.id, deal.as_dict(pipeline)


def _on_deal(
    run: Run,
    c: DealChange,
    change: ChangeOfDeal,
    answer: Answer = _deal_answer,
    *,
    created: bool = False,
) -> CommandResult:
    """Load the deal, check who may act, apply ``change`` and store; retry lost races.
    The answer is the deal, or what ``answer`` makes of it and of what ``change``
    returned."""
    app = run.application

    def attempt() -> Decision:
        deal = app.get_deal(c.deal_id)
        c.actor.check_may_change_deal(deal.owner)
        _check_version(deal, c.expected_version, "deal")
        pipeline = app.read_pipeline(deal.pipeline_id)
        stamp = _stamp(run, c)
        outcome = _deciding_on(run, pipeline, lambda: change(deal, pipeline, stamp))
        read = [pipeline]
        if deal.pipeline_id != pipeline.id:  # moved: show it in its new pipeline
            pipeline = app.get_pipeline(deal.pipeline_id)
        key, state = answer(deal, pipeline, outcome, stamp["now"])
        return (
            [deal],
            read,
            lambda pos: CommandResult(UUID(str(key)), deal.version, pos, state, created),
        )

    return _retrying(run, "deal", c.expected_version, attempt)


def advance_deal(run: Run, c: AdvanceDeal) -> CommandResult:
    return _on_deal(run, c, lambda d, p, stamp: d.advance(p, c.stage, c.note, **stamp))


def win_deal(run: Run, c: WinDeal) -> CommandResult:
    return _on_deal(run, c, lambda d, p, stamp: d.win(p, **stamp))


def lose_deal(run: Run, c: LoseDeal) -> CommandResult:
    return _on_deal(run, c, lambda d, p, stamp: d.lose(p, c.reason, c.note, **stamp))


def reopen_deal(run: Run, c: ReopenDeal) -> CommandResult:
    return _on_deal(run, c, lambda d, p, stamp: d.reopen(p, c.stage, c.note, **stamp))


def snooze_deal(run: Run, c: SnoozeDeal) -> CommandResult:
    return _on_deal(run, c, lambda d, p, stamp: d.snooze(c.until, c.reason, **stamp))


DEAL_FIELDS = (
    "title",
    "value",
    "expected_close_date",
    "account",
    "product",
    "owner",
    "probability_override",
)


def update_deal(run: Run, c: UpdateDeal) -> CommandResult:
    """Change title, value, expected close date, account, product, owner or probability."""
    if isinstance(c.owner, str):
        c.actor.check_may_assign(c.owner.strip())
    fields = _given(c, DEAL_FIELDS)
    return _on_deal(run, c, lambda d, p, stamp: d.update(**fields, **stamp))


def move_deal(run: Run, c: MoveDeal) -> CommandResult:
    """Move a deal into another pipeline; its history stays with it."""
    target = run.application.get_pipeline(c.pipeline_id)
    return _on_deal(
        run,
        c,
        lambda d, p, stamp: d.move_to_pipeline(p, target, c.stage, c.note, **stamp),
    )


# --- activities and checklists ----------------------------------------------------------


def _activity_answer(
    deal: Deal, pipeline: Pipeline, activity_id: Any, now: datetime
) -> tuple[str, dict[str, Any]]:
    """An activity command's answer: the activity, and its deal's new version."""
    return str(activity_id), {
        **deal.activity_as_dict(activity_id, now),
        "deal_version": deal.version,
    }


ACTIVITY_FIELDS = ("type", "subject", "due_at", "duration_minutes", "assignee", "note")


def schedule_activity(run: Run, c: ScheduleActivity) -> CommandResult:
    """Plan an activity; reps only on their own deals, and only for themselves."""
    if c.assignee is not None and c.assignee is not UNSET:
        c.actor.check_may_assign_activity(check_assignee(c.assignee))
    fields = _given(c, ACTIVITY_FIELDS)

    def change(d: Deal, p: Pipeline, stamp: Stamp) -> str:
        return d.schedule_activity(**fields, **stamp)

    return _on_deal(run, c, change, _activity_answer, created=True)


def update_activity(run: Run, c: UpdateActivity) -> CommandResult:
    """Reschedule, reassign or edit an activity."""
    if c.assignee is not None and c.assignee is not UNSET:
        c.actor.check_may_assign_activity(check_assignee(c.assignee))
    fields = _given(c, ACTIVITY_FIELDS)

    def change(d: Deal, p: Pipeline, stamp: Stamp) -> Any:
        d.update_activity(c.activity_id, **fields, **stamp)
        return c.activity_id

    return _on_deal(run, c, change, _activity_answer)


def complete_activity(run: Run, c: CompleteActivity) -> CommandResult:
    def change(d: Deal, p: Pipeline, stamp: Stamp) -> Any:
        d.complete_activity(c.activity_id, c.outcome, **stamp)
        return c.activity_id

    return _on_deal(run, c, change, _activity_answer)


def cancel_activity(run: Run, c: CancelActivity) -> CommandResult:
    def change(d: Deal, p: Pipeline, stamp: Stamp) -> Any:
        d.cancel_activity(c.activity_id, c.reason, **stamp)
        return c.activity_id

    return _on_deal(run, c, change, _activity_answer)


def _waiver_answer(
    deal: Deal, pipeline: Pipeline, waived: list[str], now: datetime
) -> tuple[UUID, dict[str, Any]]:
    return deal.id, {**deal.as_dict(pipeline), "waived": waived}


def waive_checklist(run: Run, c: WaiveChecklist) -> CommandResult:
    """Waive the open checklist items of the deal's stage (admins and managers)."""
    c.actor.check_may_waive_checklist()
    return _on_deal(
        run, c, lambda d, p, stamp: d.waive_checklist(p, c.reason, **stamp), _waiver_answer
    )


# --- owners ---------------------------------------------------------------------------


def _team_assigned(run: Run, c: AssignTeam, known: Owner | None) -> Owner:
    """The owner registered in, or moved to, the command's team and region (in memory)."""
    stamp = _stamp(run, c)
    if known is None:
        return Owner.register(name=c.owner, team=c.team, region=c.region, **stamp)
    known.assign(team=c.team, region=c.region, **stamp)
    return known


def assign_team(run: Run, c: AssignTeam) -> CommandResult:
    """Set an owner's team and region (registering the owner on first use)."""
    c.actor.check_may_manage_teams()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        existing = run.application.get_owner(c.owner) if isinstance(c.owner, str) else None
        profile = _team_assigned(run, c, existing)
        try:
            position = run.store(profile)
        except IntegrityError:
            if attempt == MAX_ATTEMPTS:
                raise RuleViolation("owner is changing too often; try again") from None
            continue
        return CommandResult(
            profile.id, profile.version, position, profile.as_dict(), existing is None
        )
    raise AssertionError("unreachable")


# --- webhooks -------------------------------------------------------------------------


def create_webhook(run: Run, c: CreateWebhook) -> CommandResult:
    c.actor.check_may_manage_webhooks()
    when, now = run.when(c.occurred_at)
    webhook = Webhook.create(
        url=c.url,
        event_types=c.event_types,
        pipeline_id=c.pipeline_id,
        description=c.description,
        webhook_id=c.webhook_id,
        actor=c.actor.name,
        occurred_at=when,
        now=now,
    )
    try:
        position = run.store(webhook)
    except IntegrityError:
        raise ConcurrentModification(f"webhook {webhook.id} already exists") from None
    return CommandResult(webhook.id, webhook.version, position, webhook.as_dict(), True)


ChangeOfWebhook = Callable[[Webhook, Stamp], None]


def _on_webhook(run: Run, c: WebhookChange, change: ChangeOfWebhook) -> CommandResult:
    """Apply ``change`` to a webhook (admins), with the retry rules."""
    c.actor.check_may_manage_webhooks()

    def attempt() -> Decision:
        webhook = run.application.get_webhook(c.webhook_id)
        _check_version(webhook, c.expected_version, "webhook")
        change(webhook, _stamp(run, c))
        return (
            [webhook],
            (),
            lambda pos: CommandResult(webhook.id, webhook.version, pos, webhook.as_dict()),
        )

    return _retrying(run, "webhook", c.expected_version, attempt)


WEBHOOK_FIELDS = ("url", "event_types", "pipeline_id", "description")


def change_webhook(run: Run, c: ChangeWebhook) -> CommandResult:
    return _on_webhook(run, c, lambda w, stamp: w.change(**_given(c, WEBHOOK_FIELDS), **stamp))


def pause_webhook(run: Run, c: PauseWebhook) -> CommandResult:
    return _on_webhook(run, c, lambda w, stamp: w.pause(c.reason, **stamp))


def resume_webhook(run: Run, c: ResumeWebhook) -> CommandResult:
    return _on_webhook(run, c, lambda w, stamp: w.resume(**stamp))


def rotate_webhook_secret(run: Run, c: RotateWebhookSecret) -> CommandResult:
    return _on_webhook(run, c, lambda w, stamp: w.rotate_secret(**stamp))


def delete_webhook(run: Run, c: DeleteWebhook) -> CommandResult:
    return _on_webhook(run, c, lambda w, stamp: w.delete(**stamp))


# --- automations ----------------------------------------------------------------------


def _pipeline_of_rule(app: DealtrailApplication, pipeline_id: UUID | str) -> Pipeline:
    try:
        return app.get_pipeline(pipeline_id)
    except NotFound as exc:
        raise InvalidInput(exc.message, field="pipeline_id") from None


def _check_digest_webhooks(app: DealtrailApplication, actions: Sequence[dict[str, Any]]) -> None:
    """Each digest goes to a webhook that exists (not deleted)."""
    for i, action in enumerate(actions):
        if action["type"] == "digest":
            try:
                app.get_webhook(action["webhook_id"])
            except NotFound as exc:
                raise InvalidInput(exc.message, field=f"actions[{i}].webhook_id") from None


def create_automation(run: Run, c: CreateAutomation) -> CommandResult:
    """Define a rule on a pipeline (admins and managers), at most ``MAX_RULES`` at once."""
    c.actor.check_may_manage_automations()
    pipeline = _pipeline_of_rule(run.application, c.pipeline_id)
    rule = AutomationRule.create(
        name=c.name,
        description=c.description,
        pipeline=pipeline,
        trigger=c.trigger,
        actions=c.actions,
        report_names=run.report_names,
        **_stamp(run, c),
    )
    _check_digest_webhooks(run.application, rule.actions)
    if len(run.application.automations()) >= MAX_RULES:
        raise RuleViolation(
            f"there are {MAX_RULES} automation rules already; delete one first",
            details={"limit": MAX_RULES},
        )
    position = run.store(rule)
    return CommandResult(rule.id, rule.version, position, rule.as_dict(), True)


ChangeOfRule = Callable[[AutomationRule, Stamp], None]


def _on_automation(run: Run, c: AutomationChange, change: ChangeOfRule) -> CommandResult:
    """Apply ``change`` to a rule (admins and managers), with the retry rules."""
    c.actor.check_may_manage_automations()

    def attempt() -> Decision:
        rule = run.application.get_automation(c.automation_id)
        _check_version(rule, c.expected_version, "automation")
        change(rule, _stamp(run, c))
        return [rule], (), lambda pos: CommandResult(rule.id, rule.version, pos, rule.as_dict())

    return _retrying(run, "automation", c.expected_version, attempt)


AUTOMATION_FIELDS = ("name", "description", "trigger", "actions")


def change_automation(run: Run, c: ChangeAutomation) -> CommandResult:
    changes = {k: v for k, v in _given(c, AUTOMATION_FIELDS).items() if v is not UNSET}

    def change(rule: AutomationRule, stamp: Stamp) -> None:
        pipeline = run.application.get_pipeline(rule.pipeline_id)
        rule.change(pipeline=pipeline, changes=changes, report_names=run.report_names, **stamp)
        if "actions" in changes:
            _check_digest_webhooks(run.application, rule.actions)

    return _on_automation(run, c, change)


def pause_automation(run: Run, c: PauseAutomation) -> CommandResult:
    return _on_automation(run, c, lambda rule, stamp: rule.pause(**stamp))


def resume_automation(run: Run, c: ResumeAutomation) -> CommandResult:
    return _on_automation(run, c, lambda rule, stamp: rule.resume(**stamp))


def delete_automation(run: Run, c: DeleteAutomation) -> CommandResult:
    return _on_automation(run, c, lambda rule, stamp: rule.delete(**stamp))


def _action_result(action: dict[str, Any], run_it: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """An action's result: what it did, or the domain's refusal (recorded, not retried)."""
    result: dict[str, Any] = {"type": action["type"]}
    try:
        result.update(ok=True, **run_it())
    except DomainError as exc:
        result.update(ok=False, error=exc.code, message=exc.message)
    return result


def _run_actions(
    rule: AutomationRule, deal: Deal | None, c: FireAutomation, actor: Actor, stamp: Stamp
) -> list[dict[str, Any]]:
    """Each action of the rule through the deal's own commands (its rules and checklists
    hold), in order, on the one deal aggregate the firing is stored with."""
    results = []
    for action in rule.actions:
        kind = action["type"]

        def run_it(action: dict[str, Any] = action, kind: str = kind) -> dict[str, Any]:
            if kind == "notify":
                return {}
            if kind == "digest":
                if c.digest is None:
                    raise RuleViolation("the report could not be made", field="report")
                return {"report": action["report"], "webhook_id": action["webhook_id"]}
            assert deal is not None, "deal actions need a deal trigger (checked on the rule)"
            actor.check_may_change_deal(deal.owner)
            if kind == "create_activity":
                assignee = action["assignee"]
                activity_id = deal.schedule_activity(
                    type=action["activity_type"],
                    subject=action["subject"],
                    due_at=stamp["now"] + timedelta(days=action["due_in_days"]),
                    assignee=assignee,
                    **stamp,
                )
                return {"activity_id": activity_id, "assignee": deal.activity(activity_id).assignee}
            deal.update(owner=action["owner"], **stamp)
            return {"owner": deal.owner}

        results.append(_action_result(action, run_it))
    return results


def fire_automation(run: Run, c: FireAutomation) -> FiringResult:
    """Record one occurrence of a rule and its actions' effects in one write.

    The firing's aggregate id derives from the rule and the occurrence: if it exists, the
    occurrence has fired (``already_fired``); a lost race on it is found the same way. A
    time trigger's occurrence is confirmed on the deal's own state first; a rule that no
    longer fires, or a deal no longer in that occurrence, is ``skipped``."""
    app = run.application
    firing_id = firing_id_for(c.automation_id, c.occurrence)
    for _attempt in range(MAX_ATTEMPTS):
        if app.has_aggregate(firing_id):
            return _fired(c, FiringResult("already_fired", firing_id))
        try:
            rule = app.get_automation(c.automation_id)
            deal = app.get_deal(c.deal_id) if c.deal_id is not None else None
        except NotFound:
            return _fired(c, FiringResult("skipped", firing_id))
        if not rule.fires or (deal is not None and deal.pipeline_id != rule.pipeline_id):
            return _fired(c, FiringResult("skipped", firing_id))
        when, now = run.when(None)
        if deal is not None and rule.trigger["type"] in TIME_TRIGGERS:
            pipeline = app.get_pipeline(deal.pipeline_id)
            found = dict(deal_occurrences(rule.trigger, deal.state, deal.id, pipeline.state, now))
            if c.occurrence not in found:
                return _fired(c, FiringResult("skipped", firing_id))
        actor = Actor(automation_actor(rule.id), Role.MANAGER)
        stamp = {"actor": actor.name, "occurred_at": when, "now": now}
        results = _run_actions(rule, deal, c, actor, stamp)
        digest = next((a for a in rule.actions if a["type"] == "digest"), None)
        firing = AutomationFiring(
            rule_id=rule.id,
            rule_name=rule.name,
            trigger=dict(rule.trigger),
            deal_id=str(deal.id) if deal is not None else None,
            reason=c.reason,
            occurrence=c.occurrence,
            actions=results,
            digest=c.digest if digest is not None else None,
            webhook_id=digest["webhook_id"] if digest is not None else None,
            actor=actor.name,
            occurred_at=when,
        )
        try:
            position = run.store(firing, *([deal] if deal is not None else []))
        except IntegrityError:
            continue  # fired meanwhile (found above next time), or the deal changed
        return _fired(c, FiringResult("fired", firing_id, position, tuple(results)))
    raise ConcurrentModification("the deal is changing too often to fire the automation")


def _fired(c: FireAutomation, result: FiringResult) -> FiringResult:
    outcome = result.outcome
    if outcome == "fired" and not all(a["ok"] for a in result.actions):
        outcome = "action_failed"
    metrics.automation_fired(str(c.automation_id), outcome)
    return result


# --- imports and generated history ----------------------------------------------------


def _load_workers(app: DealtrailApplication) -> int:
    on_postgres = isinstance(app.recorder, PostgresApplicationRecorder)
    return POSTGRES_LOAD_WORKERS if on_postgres else 1


def _load(app: DealtrailApplication, row: DealRow) -> Deal | DomainError | None:
    """The stored deal of a row (None when there is none; the error when the id is
    taken by something else)."""
    try:
        deal: Aggregate = app.repository.get(row.deal_id)
    except AggregateNotFoundError:
        return None
    if not isinstance(deal, Deal):
        return InvalidInput(f"id {row.deal_id} belongs to something that is not a deal")
    return deal


def _load_many(
    app: DealtrailApplication, rows: Sequence[DealRow], fresh: frozenset[UUID]
) -> dict[UUID, Deal | DomainError | None]:
    """The stored deals of these rows, read by a few threads (each read is a query)."""
    wanted = [row for row in rows if row.pipeline.id not in fresh]
    workers = _load_workers(app)
    if len(wanted) < 2 or workers < 2:
        return {row.deal_id: _load(app, row) for row in wanted}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = pool.map(lambda row: _load(app, row), wanted)
        return {row.deal_id: deal for row, deal in zip(wanted, found, strict=True)}


def _plan_rows(
    run: Run, c: ImportDeals, rows: Sequence[DealRow], loaded: Mapping[UUID, Any]
) -> tuple[list[RowOutcome], list[tuple[Deal, RowOutcome]]]:
    """Each row's outcome; the planned ones with their aggregate (pending events)."""
    now = run.application.clock()
    settled: list[RowOutcome] = []
    planned: list[tuple[Deal, RowOutcome]] = []
    for row in rows:
        existing = loaded.get(row.deal_id)
        try:
            if isinstance(existing, DomainError):
                raise existing
            deal = plan_deal(existing, row, actor=c.actor, now=now)
        except DomainError as exc:
            settled.append(RowOutcome(row, "rejected", exc.message))
            continue
        if deal is None:
            settled.append(RowOutcome(row, "unchanged"))
        else:
            planned.append((deal, RowOutcome(row, "created" if existing is None else "changed")))
    return settled, planned


def import_deals(run: Run, c: ImportDeals) -> BatchResult:
    """Plan every row with the Deal's commands, then store the batch in one transaction."""
    app = run.application
    settled, planned = _plan_rows(run, c, c.rows, _load_many(app, c.rows, c.fresh_pipelines))
    outcomes = [*settled, *(outcome for _, outcome in planned)]
    if c.dry_run or not planned:
        return BatchResult(tuple(outcomes))
    if not c.retry and any(o.outcome == "rejected" for o in settled):
        raise ConcurrentModification("deals changed while the import was storing them")
    try:
        position = run.store(*(deal for deal, _ in planned))
    except IntegrityError:
        if not c.retry:
            raise ConcurrentModification(
                "deals changed while the import was storing them"
            ) from None
        return _import_one_by_one(run, c, settled, [o.row for _, o in planned])
    return BatchResult(tuple(outcomes), len(run.events), position)


def _import_one_by_one(
    run: Run, c: ImportDeals, settled: list[RowOutcome], rows: list[DealRow]
) -> BatchResult:
    """After a batch lost a race with another writer: re-plan each row on fresh state."""
    outcomes = list(settled)
    for row in rows:
        fresh = row.pipeline.id in c.fresh_pipelines
        stored = None if fresh else _load(run.application, row)
        done, planned = _plan_rows(run, c, [row], {row.deal_id: stored})
        outcomes += done
        for deal, outcome in planned:
            try:
                run.store(deal)
            except IntegrityError:
                outcome = RowOutcome(
                    row, "rejected", "the deal changed during the import; run again"
                )
            outcomes.append(outcome)
    return BatchResult(tuple(outcomes), len(run.events), run.position or None)


def import_setup(run: Run, c: ImportSetup) -> BatchResult:
    """Decide every setup command on the aggregates as the earlier ones left them, then
    store them all in one transaction (a lost race stores nothing)."""
    app = run.application
    touched: dict[UUID, Aggregate] = {}
    for command in c.commands:
        aggregate: Aggregate
        if isinstance(command, DefinePipeline):
            aggregate = pipeline_defined_by(command, *run.when(command.occurred_at))
        elif isinstance(command, AddLostReason):
            command.actor.check_may_manage_pipelines()
            known = touched.get(UUID(str(command.pipeline_id)))
            pipeline = (
                known if isinstance(known, Pipeline) else app.get_pipeline(command.pipeline_id)
            )
            _check_version(pipeline, command.expected_version, "pipeline")
            pipeline.add_lost_reason(command.reason, **_stamp(run, command))
            aggregate = pipeline
        else:
            command.actor.check_may_manage_teams()
            known = touched.get(owner_id_for(str(command.owner).strip()))
            owner = known if isinstance(known, Owner) else app.get_owner(command.owner)
            aggregate = _team_assigned(run, command, owner)
        touched.setdefault(aggregate.id, aggregate)
    try:
        position = run.store(*touched.values())
    except IntegrityError:
        raise ConcurrentModification(
            "a pipeline or owner changed while the import was starting; run it again"
        ) from None
    return BatchResult((), len(run.events), position)


def record_history(run: Run, c: RecordHistory) -> BatchResult:
    position = run.store(*c.deals)
    return BatchResult((), len(run.events), position)


# --- the tables and handle() ----------------------------------------------------------

HANDLERS: Mapping[type[Command[Any]], Callable[[Run, Any], Any]] = {
    DefinePipeline: define_pipeline,
    ChangePipeline: change_pipeline,
    AddStage: add_stage,
    ChangeStage: change_stage,
    ReorderStages: reorder_stages,
    RemoveStage: remove_stage,
    AddLostReason: add_lost_reason,
    RetireLostReason: retire_lost_reason,
    CreateDeal: create_deal,
    AdvanceDeal: advance_deal,
    WinDeal: win_deal,
    LoseDeal: lose_deal,
    ReopenDeal: reopen_deal,
    UpdateDeal: update_deal,
    MoveDeal: move_deal,
    SnoozeDeal: snooze_deal,
    ScheduleActivity: schedule_activity,
    UpdateActivity: update_activity,
    CompleteActivity: complete_activity,
    CancelActivity: cancel_activity,
    WaiveChecklist: waive_checklist,
    AssignTeam: assign_team,
    CreateWebhook: create_webhook,
    ChangeWebhook: change_webhook,
    PauseWebhook: pause_webhook,
    ResumeWebhook: resume_webhook,
    RotateWebhookSecret: rotate_webhook_secret,
    DeleteWebhook: delete_webhook,
    CreateAutomation: create_automation,
    ChangeAutomation: change_automation,
    PauseAutomation: pause_automation,
    ResumeAutomation: resume_automation,
    DeleteAutomation: delete_automation,
    FireAutomation: fire_automation,
    ImportDeals: import_deals,
    ImportSetup: import_setup,
    RecordHistory: record_history,
}

Policy = Callable[[Run, DomainEventProtocol[UUID]], None]
POLICIES: Mapping[type[DomainEventProtocol[UUID]], Sequence[Policy]] = {
    Pipeline.StageRemoved: (sweep_stranded_deals,),  # type: ignore[attr-defined]
}


def handle(
    application: DealtrailApplication,
    command: Command[R],
    *,
    open_deals_in_stage: OpenDealsInStage | None = None,
    report_names: frozenset[str] | None = None,
) -> R:
    """Run ``command`` and the policies reacting to what it stored; its result.

    A CommandResult's position is the last one this command (policies included)
    stored, and ``events`` how many events it stored. Each command is counted and timed
    by type and outcome (``metrics``) and, with tracing on, has a span carrying the log
    positions of its events.
    """
    name = type(command).__name__
    run = Run(application, open_deals_in_stage, report_names)
    started = time.perf_counter()
    ended = "ok"
    try:
        with tracing.command_span(name) as span:
            try:
                result = _run(run, command)
            finally:
                span.stored(run.positions)
    except BaseException as exc:
        ended = failures.outcome(exc)
        raise
    finally:
        metrics.command_done(name, ended, time.perf_counter() - started)
    return result


def _run(run: Run, command: Command[R]) -> R:
    result = HANDLERS[type(command)](run, command)
    seen = 0
    while seen < len(run.events):
        event = run.events[seen]
        seen += 1
        for policy in POLICIES.get(type(event), ()):
            policy(run, event)
    if isinstance(result, CommandResult):
        result = replace(result, position=max(result.position, run.position), events=seen)
    return cast(R, result)
