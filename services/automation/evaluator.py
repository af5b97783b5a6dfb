"""The automation evaluator: finds the occurrences of every active rule and fires each once.

Event triggers (a deal enters a stage, is won, is lost) follow the log from a tracked
position; time triggers (stale, rotting, an activity overdue, a schedule) are evaluated
every ``interval`` seconds on business time, the runtime's clock. Firing goes through the
``FireAutomation`` command: the firing event and its actions' events are stored in one
write, on a firing aggregate whose id derives from the rule and the occurrence, so a
replay after a crash, or a second evaluator, finds it there and fires nothing twice. The
tracked position only saves work: it is written after the firings it covers, and a
position lost in a crash replays events whose firings exist already.

On PostgreSQL the evaluator runs where it holds an advisory lock (one at a time, the
others standing by), like the projection worker; correctness does not depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import Column, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.application.app import DealtrailApplication
from libs.application.failures import is_unavailable
from libs.application.handlers import handle
from libs.application.records import EventRecord
from libs.application.sql import advisory_key, connect_raw
from libs.application.store import StoreLocation
from libs.domain.actors import SYSTEM
from libs.domain.automation import (
    EVENT_TRIGGERS,
    AutomationRule,
    firing_id_for,
    moment_key,
    schedule_occurrences,
)
from libs.domain.commands import FireAutomation, FiringResult
from libs.domain.deal import Deal
from libs.domain.events import CLOSES, ENTERS_STAGE, EventType
from libs.domain.times import parse_moment
from services.projections.read_models import ReadModels
from services.projections.source import EventSource
from services.projections.sql import Position
from services.queries.reports import ReportContext, ReportParams
from services.queries.reports.catalog import REPORTS
from services.queries.staleness import occurrences_in_pipeline

log = logging.getLogger("dealtrail.automation")

DEFAULT_INTERVAL_SECONDS = 10.0
EVENT_BATCH = 500  # log events read per step of the event triggers
MAX_DIGEST_BYTES = 256 * 1024  # a digest's report JSON, at most
LOCK_NAME = "automation"
WATCHED = ENTERS_STAGE | CLOSES

metadata = MetaData()
automation_state = Table(
    "automation_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", Position, nullable=False),
)


@dataclass(frozen=True)
class Rule:
    """An active rule and the position of its creation (it fires only after that)."""

    aggregate: AutomationRule
    created_position: int

    @property
    def id(self) -> UUID:
        return self.aggregate.id

    @property
    def trigger(self) -> dict[str, Any]:
        return self.aggregate.trigger


@dataclass
class Evaluator:
    """Evaluates every active rule until stopped (see the module's docstring)."""

    application: DealtrailApplication
    engine: AsyncEngine
    models: ReadModels
    location: StoreLocation
    clock: Callable[[], datetime]
    interval: float = DEFAULT_INTERVAL_SECONDS
    use_advisory_lock: bool = True
    fired: int = 0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _lock_conn: Any = None

    # --- control ----------------------------------------------------------------------

    async def setup(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    @property
    def active(self) -> bool:
        """Whether this evaluator works now (a standby on PostgreSQL does not)."""
        return not self._locking or self._lock_conn is not None

    @property
    def _locking(self) -> bool:
        return self.location.is_postgres and self.use_advisory_lock

    async def run(self) -> None:
        """Evaluate every ``interval`` seconds until :meth:`stop`; survives outages."""
        try:
            while not self._stopping.is_set():
                # one interval first: a process starting up has the projections to catch up
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                try:
                    if await self._hold_lock():
                        await self.run_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the evaluator outlives outages and its own bugs
                    if is_unavailable(exc):
                        log.warning("automation evaluator: %s; retrying", exc)
                    else:
                        log.exception("automation evaluator failed; retrying", exc_info=exc)
                    await self._drop_lock()
        finally:
            await self._drop_lock()

    async def _hold_lock(self) -> bool:
        if not self._locking:
            return True
        conn = self._lock_conn
        if conn is not None and not conn.is_closed():
            return True
        conn = await connect_raw(self.location)
        key = advisory_key(self.location, LOCK_NAME)
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            self._lock_conn = conn
            log.info("automation evaluator: this worker took the lock")
            return True
        await conn.close()
        return False

    async def _drop_lock(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)

    # --- one evaluation ---------------------------------------------------------------

    async def run_once(self) -> int:
        """Fire what the log and the clock say is due now; how many firings were stored."""
        before = self.fired
        rules = await asyncio.to_thread(self._active_rules)
        await self._follow_log([r for r in rules if r.trigger["type"] in EVENT_TRIGGERS])
        now = self.clock()
        for rule in rules:
            if rule.trigger["type"] not in EVENT_TRIGGERS:
                await self._evaluate_time(rule, now)
        return self.fired - before

    def _active_rules(self) -> list[Rule]:
        return [
            Rule(rule, position) for rule, position in self.application.automations() if rule.fires
        ]

    async def _fire(
        self,
        rule: Rule,
        occurrence: str,
        reason: str,
        *,
        deal_id: UUID | str | None = None,
        digest: dict[str, Any] | None = None,
    ) -> FiringResult:
        command = FireAutomation(
            actor=SYSTEM,
            automation_id=rule.id,
            occurrence=occurrence,
            reason=reason,
            deal_id=deal_id,
            digest=digest,
        )
        result = await asyncio.to_thread(handle, self.application, command)
        if result.outcome == "fired":
            self.fired += 1
            log.info(
                "automation %s fired (%s) at position %s", rule.id, occurrence, result.position
            )
        return result

    # --- event triggers -----------------------------------------------------------------

    async def _position(self) -> int:
        query = select(automation_state.c.position).where(automation_state.c.name == LOCK_NAME)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is not None:
            return int(row[0])
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(automation_state).values(name=LOCK_NAME, position=0))
        except IntegrityError:  # another evaluator made the row a moment ago
            pass
        return 0

    async def _save_position(self, position: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(automation_state)
                .where(automation_state.c.name == LOCK_NAME)
                .values(position=position)
            )

    async def _follow_log(self, rules: list[Rule]) -> None:
        """Fire the event-triggered rules for the events after the tracked position."""
        position = await self._position()
        source = EventSource(self.application)
        if not rules:
            # A rule created later fires only for events after its creation: nothing
            # before the head can concern it.
            head = await asyncio.to_thread(source.head)
            if head > position:
                await self._save_position(head)
            return
        while not self._stopping.is_set():
            records = await asyncio.to_thread(source.read, position, EVENT_BATCH)
            if not records:
                return
            for record in records:
                if record.event_type in WATCHED:
                    await self._on_event(record, rules)
            position = records[-1].position
            await self._save_position(position)

    async def _on_event(self, record: EventRecord, rules: list[Rule]) -> None:
        kind = {
            EventType.DEAL_WON: "won",
            EventType.DEAL_LOST: "lost",
        }.get(EventType(record.event_type), "enters_stage")
        matching = [
            r for r in rules if r.trigger["type"] == kind and r.created_position < record.position
        ]
        if not matching:
            return
        deal = await asyncio.to_thread(self._deal_at, record)
        if deal is None:
            return
        for rule in matching:
            if deal.pipeline_id != rule.aggregate.pipeline_id:
                continue
            if kind == "enters_stage" and deal.stage_id != rule.trigger["stage"]:
                continue
            reason = {
                "won": "the deal was won",
                "lost": f"the deal was lost ({deal.lost_reason})",
            }.get(kind, f"the deal entered stage {rule.trigger.get('stage')!r}")
            await self._fire(rule, str(record.position), reason, deal_id=record.aggregate_id)

    def _deal_at(self, record: EventRecord) -> Deal | None:
        """The deal as it was right after this event of it."""
        deal: object = self.application.repository.get(record.aggregate_id, version=record.version)
        return deal if isinstance(deal, Deal) else None

    # --- time triggers ------------------------------------------------------------------

    async def _evaluate_time(self, rule: Rule, now: datetime) -> None:
        if rule.trigger["type"] == "schedule":
            for moment in schedule_occurrences(rule.trigger, rule.aggregate.schedule_since, now):
                occurrence = moment_key(moment)
                if await asyncio.to_thread(self._has_fired, rule, occurrence):
                    continue
                digest = await self._digest(rule)
                await self._fire(rule, occurrence, f"scheduled for {occurrence}", digest=digest)
            return
        found = await occurrences_in_pipeline(
            self.models, rule.aggregate.pipeline_id, rule.trigger, now
        )
        for deal_id, occurrence, reason in found:
            if await asyncio.to_thread(self._has_fired, rule, occurrence):
                continue
            await self._fire(rule, occurrence, reason, deal_id=deal_id)

    def _has_fired(self, rule: Rule, occurrence: str) -> bool:
        return self.application.has_aggregate(firing_id_for(rule.id, occurrence))

    async def _digest(self, rule: Rule) -> dict[str, Any] | None:
        """The report a digest action names, with its parameters (None: it failed)."""
        action = next((a for a in rule.aggregate.actions if a["type"] == "digest"), None)
        if action is None:
            return None
        params = action.get("params") or {}
        report = REPORTS.get(action["report"])
        if report is None:
            return None
        try:
            answer = await report(
                ReportContext(self.models, self.clock),
                ReportParams(
                    pipeline_id=UUID(params.get("pipeline_id") or str(rule.aggregate.pipeline_id)),
                    start=parse_moment(params["from"], "from") if params.get("from") else None,
                    end=parse_moment(params["to"], "to") if params.get("to") else None,
                    owner=params.get("owner"),
                    team=params.get("team"),
                ),
            )
        except Exception as exc:
            if is_unavailable(exc):
                raise
            log.warning("automation %s: report %s failed: %s", rule.id, action["report"], exc)
            return None
        body = answer.as_json()
        if len(orjson.dumps(body)) > MAX_DIGEST_BYTES:
            log.warning(
                "automation %s: report %s over %d bytes",
                rule.id,
                action["report"],
                MAX_DIGEST_BYTES,
            )
            return None
        return body
