"""Automation rules and their firings.

An :class:`AutomationRule` says "when this happens to a deal of this pipeline (or on this
schedule), do these things". Its trigger and actions are checked here, against the
pipeline, for every writer. Each time a rule fires, the firing is an
:class:`AutomationFiring` aggregate of its own whose id derives from the rule and the
occurrence (:func:`firing_id_for`), so a second evaluator, or one replaying after a crash,
conflicts on the firing's first version instead of firing twice.

Which occurrence a deal's state is at for a time trigger (stale, rotting, overdue) is
decided here too (:func:`deal_occurrences`), on the domain's one staleness rule, so that
the evaluator's candidates from the read model are confirmed on the deal itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from eventsourcing.domain import Aggregate, event

from libs.domain.errors import DomainError, InvalidInput, NotFound, NothingToChange, RuleViolation
from libs.domain.pipeline import Pipeline
from libs.domain.state import OPEN, DealState, PipelineState, staleness
from libs.domain.times import check_occurred_at, parse_moment
from libs.domain.upcasting import versioned_events
from libs.domain.values import MAX_NAME_LENGTH, MAX_NOTE_LENGTH, MAX_TITLE_LENGTH, check_text

ACTIVE: Final = "active"
PAUSED: Final = "paused"

DEAL_TRIGGERS: Final = ("enters_stage", "rotting", "stale", "activity_overdue", "won", "lost")
EVENT_TRIGGERS: Final = frozenset({"enters_stage", "won", "lost"})
TIME_TRIGGERS: Final = frozenset({"rotting", "stale", "activity_overdue", "schedule"})
TRIGGER_TYPES: Final = (*DEAL_TRIGGERS, "schedule")
ACTION_TYPES: Final = ("create_activity", "notify", "reassign", "digest")
DEAL_ACTIONS: Final = frozenset({"create_activity", "reassign"})
ACTIVITY_TYPES: Final = ("call", "meeting", "email", "task", "deadline")

MAX_ACTIONS: Final = 10  # actions per rule
MAX_RULES: Final = 200  # rules that exist (not deleted) at once, in all pipelines
MAX_DAYS: Final = 3650  # a rotting rule's days, an activity's due_in_days
MAX_CRON_LENGTH: Final = 100
DIGEST_PARAMS: Final = ("pipeline_id", "from", "to", "owner", "team")

ACTOR_PREFIX: Final = "automation:"


class AutomationDeleted(NotFound):
    """A deleted rule is gone for every command and query."""

    code = "not_found"


class AlreadyFired(RuleViolation):
    """This occurrence of the rule has fired already (its firing aggregate exists)."""

    code = "already_fired"


def automation_actor(rule_id: UUID | str) -> str:
    """The actor of everything a rule does: ``automation:<rule id>``."""
    return f"{ACTOR_PREFIX}{rule_id}"


def firing_id_for(rule_id: UUID | str, occurrence: str) -> UUID:
    """One firing per rule and occurrence: its aggregate id derives from both."""
    return uuid5(UUID(str(rule_id)), occurrence)


# --- checking triggers and actions ------------------------------------------------------------


def _object(value: Any, field: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{field} must be an object", field=field)
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise InvalidInput(
            f"{field} has unknown field(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})",
            field=f"{field}.{unknown[0]}",
        )
    return value


def _kind(value: Mapping[str, Any], field: str, kinds: Sequence[str]) -> str:
    kind = value.get("type")
    if kind not in kinds:
        raise InvalidInput(
            f"{field}.type must be one of: {', '.join(kinds)}", field=f"{field}.type"
        )
    return str(kind)


def _days(value: Any, field: str, *, required: bool) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAYS:
        raise InvalidInput(
            f"{field} must be a whole number of days from 1 to {MAX_DAYS}", field=field
        )
    return value


def check_timezone(value: Any, field: str) -> str:
    name = check_text(value, field, max_length=MAX_NAME_LENGTH)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"{field} {name!r} is not a known time zone", field=field) from None
    return name


def check_cron(value: Any, field: str) -> str:
    expression = check_text(value, field, max_length=MAX_CRON_LENGTH)
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise InvalidInput(
            f"{field} {expression!r} is not a cron expression of five fields "
            "(minute hour day-of-month month day-of-week)",
            field=field,
        )
    return expression


def check_trigger(value: Any, pipeline: Pipeline, field: str = "trigger") -> dict[str, Any]:
    """A trigger as stored: its type and the fields that type takes, checked."""
    shapes: dict[str, tuple[str, ...]] = {
        "enters_stage": ("type", "stage"),
        "rotting": ("type", "stage", "days"),
        "stale": ("type",),
        "activity_overdue": ("type",),
        "won": ("type",),
        "lost": ("type",),
        "schedule": ("type", "cron", "timezone"),
    }
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{field} must be an object", field=field)
    kind = _kind(value, field, TRIGGER_TYPES)
    _object(value, field, shapes[kind])
    trigger: dict[str, Any] = {"type": kind}
    if kind == "enters_stage" or (kind == "rotting" and value.get("stage") is not None):
        try:
            trigger["stage"] = pipeline.stage(value.get("stage")).id
        except DomainError as exc:
            details = {k: v for k, v in exc.details.items() if k != "field"}
            raise InvalidInput(exc.message, field=f"{field}.stage", details=details) from None
    if kind == "rotting":
        trigger.setdefault("stage", None)
        trigger["days"] = _days(value.get("days"), f"{field}.days", required=False)
        if trigger["days"] is None:
            stages = [s for s in pipeline.state.stages if trigger["stage"] in (None, s.id)]
            if not any(s.rotting_days for s in stages):
                raise InvalidInput(
                    f"{field}.days is needed: no stage it names has rotting_days",
                    field=f"{field}.days",
                )
    if kind == "stale" and not pipeline.state.stale_after_days:
        raise InvalidInput(
            "a stale trigger needs the pipeline's stale_after_days; set it first",
            field=f"{field}.type",
        )
    if kind == "schedule":
        trigger["cron"] = check_cron(value.get("cron"), f"{field}.cron")
        trigger["timezone"] = check_timezone(value.get("timezone", "UTC"), f"{field}.timezone")
    return trigger


def _check_action(
    value: Any, field: str, trigger: Mapping[str, Any], report_names: frozenset[str] | None
) -> dict[str, Any]:
    shapes: dict[str, tuple[str, ...]] = {
        "create_activity": ("type", "activity_type", "subject", "due_in_days", "assignee"),
        "notify": ("type",),
        "reassign": ("type", "owner"),
        "digest": ("type", "report", "params", "webhook_id"),
    }
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{field} must be an object", field=field)
    kind = _kind(value, field, ACTION_TYPES)
    _object(value, field, shapes[kind])
    schedule = trigger["type"] == "schedule"
    if kind in DEAL_ACTIONS and schedule:
        raise InvalidInput(
            f"{kind} acts on a deal; a schedule trigger has none", field=f"{field}.type"
        )
    if kind == "digest" and not schedule:
        raise InvalidInput("a digest needs a schedule trigger", field=f"{field}.type")
    action: dict[str, Any] = {"type": kind}
    if kind == "create_activity":
        activity_type = value.get("activity_type")
        if activity_type not in ACTIVITY_TYPES:
            raise InvalidInput(
                f"{field}.activity_type must be one of: {', '.join(ACTIVITY_TYPES)}",
                field=f"{field}.activity_type",
            )
        action["activity_type"] = activity_type
        action["subject"] = check_text(
            value.get("subject"), f"{field}.subject", max_length=MAX_TITLE_LENGTH
        )
        due = value.get("due_in_days", 0)
        if isinstance(due, bool) or not isinstance(due, int) or not 0 <= due <= MAX_DAYS:
            raise InvalidInput(
                f"{field}.due_in_days must be a whole number from 0 to {MAX_DAYS}",
                field=f"{field}.due_in_days",
            )
        action["due_in_days"] = due
        assignee = value.get("assignee")
        action["assignee"] = (
            None
            if assignee is None
            else check_text(assignee, f"{field}.assignee", max_length=MAX_NAME_LENGTH)
        )
    elif kind == "reassign":
        action["owner"] = check_text(
            value.get("owner"), f"{field}.owner", max_length=MAX_NAME_LENGTH
        )
    elif kind == "digest":
        report = check_text(value.get("report"), f"{field}.report", max_length=MAX_NAME_LENGTH)
        if report_names is not None and report not in report_names:
            raise InvalidInput(
                f"{field}.report {report!r} is not a report (reports: "
                f"{', '.join(sorted(report_names))})",
                field=f"{field}.report",
            )
        action["report"] = report
        action["params"] = _digest_params(value.get("params"), f"{field}.params")
        webhook = value.get("webhook_id")
        try:
            action["webhook_id"] = str(UUID(str(webhook))) if webhook is not None else None
        except ValueError:
            raise InvalidInput(
                f"{field}.webhook_id must be a webhook's id", field=f"{field}.webhook_id"
            ) from None
        if action["webhook_id"] is None:
            raise InvalidInput(
                f"{field}.webhook_id names the webhook the digest goes to",
                field=f"{field}.webhook_id",
            )
    return action


def _digest_params(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    params = _object(value, field, DIGEST_PARAMS)
    out: dict[str, str] = {}
    for key, raw in params.items():
        if raw is None:
            continue
        where = f"{field}.{key}"
        if key in ("from", "to"):
            out[key] = parse_moment(raw, where).isoformat()
        elif key == "pipeline_id":
            try:
                out[key] = str(UUID(str(raw)))
            except ValueError:
                raise InvalidInput(f"{where} must be a pipeline id", field=where) from None
        else:
            out[key] = check_text(raw, where, max_length=MAX_NAME_LENGTH)
    return out


def check_actions(
    value: Any,
    trigger: Mapping[str, Any],
    report_names: frozenset[str] | None,
    field: str = "actions",
) -> list[dict[str, Any]]:
    """The actions as stored: a non-empty list of at most ``MAX_ACTIONS``, each checked."""
    if not isinstance(value, list | tuple) or not value:
        raise InvalidInput(f"{field} must be a non-empty list", field=field)
    if len(value) > MAX_ACTIONS:
        raise InvalidInput(f"{field} may hold at most {MAX_ACTIONS} actions", field=field)
    return [_check_action(a, f"{field}[{i}]", trigger, report_names) for i, a in enumerate(value)]


def _description(value: Any) -> str | None:
    if value is None:
        return None
    return check_text(value, "description", max_length=MAX_NOTE_LENGTH, required=False) or None


# --- the rule ---------------------------------------------------------------------------------


@versioned_events
class AutomationRule(Aggregate):
    """When a trigger happens to a deal of a pipeline (or on a schedule), run actions."""

    @event("AutomationCreated")
    def __init__(
        self,
        name: str,
        description: str | None,
        pipeline_id: UUID,
        trigger: dict[str, Any],
        actions: list[dict[str, Any]],
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self.name = name
        self.description = description
        self.pipeline_id = pipeline_id
        self.trigger = trigger
        self.actions = actions
        self.status = ACTIVE
        self.deleted = False
        self.created_at = occurred_at
        self.created_by = actor
        self.last_occurred_at = occurred_at
        # since when a schedule counts its occurrences (creation, or its last change)
        self.schedule_since = occurred_at

    @classmethod
    def create(
        cls,
        *,
        name: Any,
        description: Any,
        pipeline: Pipeline,
        trigger: Any,
        actions: Any,
        report_names: frozenset[str] | None,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> AutomationRule:
        checked_name = check_text(name, "name", max_length=MAX_NAME_LENGTH)
        checked_trigger = check_trigger(trigger, pipeline)
        checked_actions = check_actions(actions, checked_trigger, report_names)
        check_occurred_at(occurred_at, now=now, previous=None)
        return cls(
            name=checked_name,
            description=_description(description),
            pipeline_id=pipeline.id,
            trigger=checked_trigger,
            actions=checked_actions,
            actor=actor,
            occurred_at=occurred_at,
        )

    def check_exists(self) -> None:
        if self.deleted:
            raise AutomationDeleted(f"automation {self.id} does not exist (it was deleted)")

    def _when(self, occurred_at: datetime, now: datetime) -> None:
        self.check_exists()
        check_occurred_at(occurred_at, now=now, previous=self.last_occurred_at)

    def change(
        self,
        *,
        pipeline: Pipeline,
        changes: Mapping[str, Any],
        report_names: frozenset[str] | None,
        actor: str,
        occurred_at: datetime,
        now: datetime,
    ) -> None:
        """Change name, description, trigger and/or actions; only real changes count."""
        self._when(occurred_at, now)
        new: dict[str, Any] = {}
        if "name" in changes:
            new["name"] = check_text(changes["name"], "name", max_length=MAX_NAME_LENGTH)
        if "description" in changes:
            new["description"] = _description(changes["description"])
        trigger = self.trigger
        if "trigger" in changes:
            trigger = new["trigger"] = check_trigger(changes["trigger"], pipeline)
        if "actions" in changes or "trigger" in changes:
            actions = changes.get("actions", self.actions)
            field = "actions" if "actions" in changes else "trigger"
            try:
                new["actions"] = check_actions(actions, trigger, report_names)
            except InvalidInput as exc:
                if field == "trigger":  # the new trigger does not fit the actions kept
                    raise InvalidInput(exc.message, field="trigger.type") from None
                raise
        new = {k: v for k, v in new.items() if getattr(self, k) != v}
        if not new:
            raise NothingToChange("the automation already is as given", field="name")
        self._changed(changes=new, actor=actor, occurred_at=occurred_at)

    @event("AutomationChanged")
    def _changed(self, changes: dict[str, Any], actor: str, occurred_at: datetime) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        if "trigger" in changes:
            self.schedule_since = occurred_at
        self.last_occurred_at = occurred_at

    def pause(self, *, actor: str, occurred_at: datetime, now: datetime) -> None:
        self._when(occurred_at, now)
        if self.status == PAUSED:
            raise RuleViolation("the automation is paused already", field="status")
        self._paused(actor=actor, occurred_at=occurred_at)

    @event("AutomationPaused")
    def _paused(self, actor: str, occurred_at: datetime) -> None:
        self.status = PAUSED
        self.last_occurred_at = occurred_at

    def resume(self, *, actor: str, occurred_at: datetime, now: datetime) -> None:
        self._when(occurred_at, now)
        if self.status == ACTIVE:
            raise RuleViolation("the automation is active already", field="status")
        self._resumed(actor=actor, occurred_at=occurred_at)

    @event("AutomationResumed")
    def _resumed(self, actor: str, occurred_at: datetime) -> None:
        self.status = ACTIVE
        self.last_occurred_at = occurred_at
        # a schedule does not catch up on what it missed while paused
        self.schedule_since = occurred_at

    def delete(self, *, actor: str, occurred_at: datetime, now: datetime) -> None:
        self._when(occurred_at, now)
        self._deleted(actor=actor, occurred_at=occurred_at)

    @event("AutomationDeleted")
    def _deleted(self, actor: str, occurred_at: datetime) -> None:
        self.deleted = True
        self.last_occurred_at = occurred_at

    @property
    def fires(self) -> bool:
        """Active and not deleted."""
        return self.status == ACTIVE and not self.deleted

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "description": self.description,
            "pipeline_id": str(self.pipeline_id),
            "trigger": dict(self.trigger),
            "actions": [dict(a) for a in self.actions],
            "status": self.status,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "updated_at": self.last_occurred_at.isoformat(),
        }


# --- firings ----------------------------------------------------------------------------------


@versioned_events
class AutomationFiring(Aggregate):
    """One occurrence of a rule firing: what triggered it, and what each action did."""

    @event("AutomationFired")
    def __init__(
        self,
        rule_id: UUID,
        rule_name: str,
        trigger: dict[str, Any],
        deal_id: str | None,
        reason: str,
        occurrence: str,
        actions: list[dict[str, Any]],
        digest: dict[str, Any] | None,
        webhook_id: str | None,
        actor: str,
        occurred_at: datetime,
    ) -> None:
        self.rule_id = rule_id
        self.occurrence = occurrence
        self.actions = actions

    @staticmethod
    def create_id(rule_id: UUID, occurrence: str) -> UUID:
        return firing_id_for(rule_id, occurrence)


# --- occurrences ------------------------------------------------------------------------------


def moment_key(moment: datetime) -> str:
    """A moment as an occurrence key writes it (UTC, ISO 8601)."""
    return moment.astimezone(UTC).isoformat()


def deal_occurrences(
    trigger: Mapping[str, Any],
    deal: DealState,
    deal_id: UUID | str,
    pipeline: PipelineState,
    now: datetime,
) -> list[tuple[str, str]]:
    """The (occurrence, reason) pairs a time trigger finds on a deal at ``now``.

    Stale: no sales activity for the pipeline's ``stale_after_days`` (once per last
    activity: new activity starts a new occurrence). Rotting: in its stage longer than the
    rule's ``days`` or the stage's ``rotting_days`` (once per entry into the stage). Both on
    the domain's staleness rule, snoozed deals excepted. Overdue: each open activity past
    its due time (once per due time)."""
    kind = trigger["type"]
    if kind == "activity_overdue":
        return [
            (
                f"overdue:{a.id}:{moment_key(a.due_at)}",
                f"activity {a.subject!r} was due {moment_key(a.due_at)}",
            )
            for a in deal.activities
            if a.due_at is not None and a.is_overdue(now)
        ]
    if deal.status != OPEN:
        return []
    if kind == "stale":
        stale = staleness(
            status=deal.status,
            rotting_days=None,
            stale_after_days=pipeline.stale_after_days,
            stage_entered_at=deal.stage_entered_at,
            last_activity_at=deal.last_activity_at,
            snoozed_until=deal.snoozed_until,
            now=now,
        )
        if not stale.stale:
            return []
        return [
            (
                f"stale:{deal_id}:{moment_key(deal.last_activity_at)}",
                f"no activity since {moment_key(deal.last_activity_at)} "
                f"(stale after {pipeline.stale_after_days} days)",
            )
        ]
    if kind == "rotting":
        if trigger.get("stage") not in (None, deal.stage_id):
            return []
        stage = pipeline.known_stage(deal.stage_id)
        days = trigger.get("days") or (stage.rotting_days if stage else None)
        rotting = staleness(
            status=deal.status,
            rotting_days=days,
            stale_after_days=None,
            stage_entered_at=deal.stage_entered_at,
            last_activity_at=deal.last_activity_at,
            snoozed_until=deal.snoozed_until,
            now=now,
        )
        if not rotting.stale:
            return []
        name = pipeline.stage_name(deal.stage_id)
        return [
            (
                f"rotting:{deal_id}:{moment_key(deal.stage_entered_at)}",
                f"in stage {name!r} since {moment_key(deal.stage_entered_at)} "
                f"(more than {days} days)",
            )
        ]
    return []


SCHEDULE_CATCH_UP: Final = timedelta(days=7)
MAX_SCHEDULE_OCCURRENCES: Final = 50


def schedule_occurrences(
    trigger: Mapping[str, Any], since: datetime, now: datetime
) -> list[datetime]:
    """The instants (UTC) a schedule trigger was due in ``(since, now]``, in the rule's
    time zone, looking back at most ``SCHEDULE_CATCH_UP`` and keeping the latest
    ``MAX_SCHEDULE_OCCURRENCES``."""
    zone = ZoneInfo(trigger["timezone"])
    start = max(since, now - SCHEDULE_CATCH_UP).astimezone(zone)
    found: list[datetime] = []
    it = croniter(trigger["cron"], start)
    while True:
        nxt: datetime = it.get_next(datetime)
        moment = nxt.astimezone(UTC)
        if moment > now:
            break
        found.append(moment)
    return found[-MAX_SCHEDULE_OCCURRENCES:]
