"""Writing many deals through the domain: imports of existing records and generated history.

Every deal goes through the same aggregate methods as the API (``Deal.create``,
``advance``, ``win``, ``lose``, ``reopen``, ``update``; ``Owner.register`` and
``assign``), so every rule applies, with backdated ``occurred_at``. What makes it fast
is batching: the events of many deals are stored by one ``save`` call (one transaction,
one table lock on PostgreSQL).

A source row describes a deal as it is *now*. The importer compares it with the stored
deal and appends only the difference, so importing the same data twice appends
nothing. A row's events are built in memory and stored together with its batch, or
not at all: no deal is ever half-written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError
from eventsourcing.postgres import PostgresApplicationRecorder

from libs.application.app import DealtrailApplication
from libs.domain.actors import Actor, Role
from libs.domain.deal import LOST, OPEN, WON, Deal, check_optional_name, check_owner, deal_id_for
from libs.domain.errors import DomainError, InvalidInput, RuleViolation
from libs.domain.owner import Owner, owner_id_for
from libs.domain.pipeline import Pipeline
from libs.domain.values import MAX_TITLE_LENGTH, check_money, check_text

IMPORT_ACTOR = Actor(name="import", role=Role.ADMIN)
DEFAULT_BATCH_SIZE = 200
# Stored deals are read one query each. On PostgreSQL most of that time is waiting for
# the server, so a few threads overlap the round trips; SQLite reads are CPU-bound
# (and serialised), where extra threads only add overhead.
POSTGRES_LOAD_WORKERS = 4
STATUSES = (OPEN, WON, LOST)

Progress = Callable[[int], None]


class ImportAborted(Exception):
    """The import cannot start or go on at all (not one bad row: the whole run)."""


@dataclass(frozen=True)
class RowError:
    """A source row that was not imported, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason}


@dataclass(frozen=True)
class DealRow:
    """One deal as the source holds it now.

    ``stage`` names the stage the deal is in (or closed in); ``None`` means the
    pipeline's first stage. ``stage_entered_at`` is when it entered that stage, if the
    source knows. Changes the source does not date (a new value, owner or title, a
    reopening) are dated at the row's latest known time; every change is dated no
    earlier than the deal's previous event.
    """

    file: str
    line: int
    pipeline: Pipeline
    external_id: str
    title: str
    value: Any
    owner: str
    created_at: datetime
    stage: str | None = None
    status: str = OPEN
    stage_entered_at: datetime | None = None
    closed_at: datetime | None = None
    lost_reason: str | None = None
    lost_note: str | None = None
    account: str | None = None
    product: str | None = None

    @cached_property
    def deal_id(self) -> UUID:
        return deal_id_for(self.pipeline.id, self.external_id)

    @property
    def latest(self) -> datetime:
        """The latest time the row names: when its undated changes are recorded."""
        times = [t for t in (self.created_at, self.stage_entered_at, self.closed_at) if t]
        return max(times)


@dataclass
class ImportReport:
    """What an import did: deals created, changed, left alone, and rows rejected."""

    created: int = 0
    changed: int = 0
    unchanged: int = 0
    rejected: list[RowError] = field(default_factory=list)
    events: int = 0
    written: bool = True
    pipelines: dict[str, UUID] = field(default_factory=dict)

    @property
    def imported(self) -> int:
        return self.created + self.changed

    @property
    def rows(self) -> int:
        return self.imported + self.unchanged + len(self.rejected)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "imported": self.imported,
            "created": self.created,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "rejected": [e.as_dict() for e in sorted(self.rejected, key=_error_order)],
            "events": self.events,
            "written": self.written,
            "pipelines": {name: str(pid) for name, pid in self.pipelines.items()},
        }


def _error_order(error: RowError) -> tuple[str, int]:
    return error.file, error.line


def find_pipeline(app: DealtrailApplication, name: str) -> Pipeline | None:
    """The oldest pipeline with this name (ignoring case), if there is one."""
    wanted = name.strip().casefold()
    for pipeline_id in app.pipeline_ids():
        pipeline = app.get_pipeline(pipeline_id)
        if pipeline.name.casefold() == wanted:
            return pipeline
    return None


def define_pipeline_with_id(
    pipeline_id: UUID,
    *,
    name: str,
    currency: str,
    stages: list[dict[str, Any]],
    lost_reasons: list[str],
    actor: Actor,
    occurred_at: datetime,
    now: datetime,
) -> Pipeline:
    """Like ``Pipeline.define`` (same checks, same event), but with a chosen id.

    Generated data uses it so that the same seed gives the same ids.
    """
    actor.check_may_manage_pipelines()
    checked = Pipeline.define(
        name=name,
        currency=currency,
        stages=stages,
        lost_reasons=lost_reasons,
        actor=actor.name,
        occurred_at=occurred_at,
        now=now,
    )
    defined = checked.pending_events[0]
    fields = {k: v for k, v in vars(defined).items() if k not in _ENVELOPE_FIELDS}
    defined_event = Pipeline.PipelineDefined  # type: ignore[attr-defined]
    pipeline: Pipeline = Pipeline._create(defined_event, id=pipeline_id, **fields)
    return pipeline


_ENVELOPE_FIELDS = frozenset(
    {"originator_id", "originator_version", "originator_topic", "timestamp"}
)


def _later(when: datetime, previous: datetime) -> datetime:
    return when if when >= previous else previous


def plan_deal(deal: Deal | None, row: DealRow, *, actor: Actor, now: datetime) -> Deal | None:
    """Bring ``deal`` (or a new one) to the row's state with domain commands, in memory.

    Returns the aggregate with its new pending events, or ``None`` when the stored deal
    already matches the row. Raises :class:`DomainError` when a rule refuses the row;
    the aggregate is then discarded (nothing of it is stored).
    """
    pipeline = row.pipeline
    name = actor.name
    status = row.status
    if status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", field="status")
    target = pipeline.first_stage if row.stage is None else pipeline.stage(row.stage)
    if deal is None:
        actor.check_may_assign(row.owner)
        deal = Deal.create(
            pipeline=pipeline,
            title=row.title,
            value=row.value,
            owner=row.owner,
            stage=target.id,
            external_id=row.external_id,
            account=row.account,
            product=row.product,
            actor=name,
            occurred_at=row.created_at,
            now=now,
        )
        _close(deal, row, actor=actor, now=now, clamp=False)
        return deal

    actor.check_may_change_deal(deal.owner)
    if deal.pipeline_id != pipeline.id:
        raise RuleViolation(
            "the deal has been moved to another pipeline since it was imported; "
            "the import leaves it there"
        )
    changes = _changed_fields(deal, row)
    if "owner" in changes:
        actor.check_may_assign(changes["owner"])
    lost_changed = (
        status == LOST
        and deal.status == LOST
        and (
            pipeline.check_lost_reason(row.lost_reason) != deal.lost_reason
            or (row.lost_note or None) != deal.lost_note
        )
    )
    differs = bool(changes) or target.id != deal.stage_id or status != deal.status or lost_changed
    if not differs:
        return None
    if deal.status != OPEN:
        deal.reopen(
            pipeline,
            target.id,
            actor=name,
            occurred_at=_later(row.latest, deal.last_occurred_at),
            now=now,
        )
    if target.id != deal.stage_id:
        deal.advance(
            pipeline,
            target.id,
            actor=name,
            occurred_at=_later(row.stage_entered_at or row.latest, deal.last_occurred_at),
            now=now,
        )
    if changes:
        deal.update(
            **changes,
            actor=name,
            occurred_at=_later(row.latest, deal.last_occurred_at),
            now=now,
        )
    _close(deal, row, actor=actor, now=now, clamp=True)
    return deal


def _changed_fields(deal: Deal, row: DealRow) -> dict[str, Any]:
    """The row's fields whose checked value differs from the deal's (as update() sees it)."""
    wanted: dict[str, Any] = {
        "title": check_text(row.title, "title", max_length=MAX_TITLE_LENGTH),
        "value": check_money(row.value),
        "owner": check_owner(row.owner),
        "account": check_optional_name(row.account, "account"),
        "product": check_optional_name(row.product, "product"),
    }
    return {key: val for key, val in wanted.items() if getattr(deal, key) != val}


def _close(deal: Deal, row: DealRow, *, actor: Actor, now: datetime, clamp: bool) -> None:
    # A new deal closed before it was created is a bad row; a stored deal whose last
    # event is later than the row's close date is closed at that last event instead.
    if row.status == OPEN or deal.status == row.status:
        return
    when = row.closed_at or row.latest
    if clamp:
        when = _later(when, deal.last_occurred_at)
    if row.status == WON:
        deal.win(row.pipeline, actor=actor.name, occurred_at=when, now=now)
    else:
        deal.lose(
            row.pipeline,
            row.lost_reason,
            row.lost_note,
            actor=actor.name,
            occurred_at=when,
            now=now,
        )


class DealImporter:
    """Imports deal rows in batches through the domain; see the module docstring.

    Call :meth:`ensure_pipeline` and :meth:`ensure_owner` first, then :meth:`add` for
    each row (and :meth:`reject` for rows the reader could not even parse), then
    :meth:`finish`. With ``strict`` nothing is stored unless every row is good.
    """

    def __init__(
        self,
        app: DealtrailApplication,
        *,
        actor: Actor = IMPORT_ACTOR,
        strict: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Progress | None = None,
        load_workers: int | None = None,
    ) -> None:
        self.app = app
        self.load_workers = load_workers if load_workers is not None else _load_workers(app)
        self.actor = actor
        self.strict = strict
        self.batch_size = max(1, batch_size)
        self.progress = progress
        self.report = ImportReport()
        self._setup: list[Aggregate] = []
        self._new_pipelines: set[UUID] = set()
        self._batch: list[DealRow] = []
        self._planned: list[_Planned] = []
        self._seen: dict[UUID, tuple[str, int]] = {}
        self._finished = False

    # --- pipelines and owners -----------------------------------------------------------

    def ensure_pipeline(
        self,
        *,
        name: str,
        currency: str,
        stages: list[dict[str, Any]],
        lost_reasons: list[str],
        occurred_at: datetime,
        required_stages: Sequence[str] = (),
        required_lost_reasons: Sequence[str] = (),
    ) -> Pipeline:
        """The pipeline with this name, defined now if there is none yet.

        An existing pipeline must have ``required_stages`` (or the import is aborted);
        ``required_lost_reasons`` it lacks are added to it.
        """
        existing = find_pipeline(self.app, name)
        if existing is not None:
            for stage in required_stages:
                try:
                    existing.stage(stage)
                except DomainError:
                    raise ImportAborted(
                        f"pipeline {existing.name!r} exists but has no stage {stage!r}"
                    ) from None
            for reason in required_lost_reasons:
                try:
                    existing.check_lost_reason(reason)
                except DomainError:
                    self._add_lost_reason(existing, reason, occurred_at)
            self.report.pipelines[existing.name] = existing.id
            return existing
        self.actor.check_may_manage_pipelines()
        try:
            pipeline = Pipeline.define(
                name=name,
                currency=currency,
                stages=stages,
                lost_reasons=lost_reasons,
                actor=self.actor.name,
                occurred_at=occurred_at,
                now=self.app.clock(),
            )
        except DomainError as exc:
            raise ImportAborted(f"cannot define pipeline {name!r}: {exc.message}") from None
        self._setup.append(pipeline)
        self._new_pipelines.add(pipeline.id)
        self.report.pipelines[pipeline.name] = pipeline.id
        return pipeline

    def _add_lost_reason(self, pipeline: Pipeline, reason: str, occurred_at: datetime) -> None:
        try:
            self.actor.check_may_manage_pipelines()
            pipeline.add_lost_reason(
                reason,
                actor=self.actor.name,
                occurred_at=_later(occurred_at, pipeline.last_occurred_at),
                now=self.app.clock(),
            )
        except DomainError as exc:
            raise ImportAborted(
                f"cannot add lost reason {reason!r} to pipeline {pipeline.name!r}: {exc.message}"
            ) from None
        if pipeline not in self._setup:
            self._setup.append(pipeline)

    def ensure_owner(
        self,
        *,
        name: str,
        team: str | None,
        region: str | None,
        occurred_at: datetime,
        changed_at: datetime | None = None,
        file: str = "",
        line: int = 0,
    ) -> bool:
        """Register the owner, or move them to this team and region; False if refused.

        A new owner is registered at ``occurred_at``; a move of a known owner is dated
        ``changed_at`` (default ``occurred_at``), never before the owner's last event.
        """
        try:
            self.actor.check_may_manage_teams()
            now = self.app.clock()
            existing = self._owner(name)
            if existing is None:
                owner = Owner.register(
                    name=name,
                    team=team,
                    region=region,
                    actor=self.actor.name,
                    occurred_at=occurred_at,
                    now=now,
                )
                self._setup.append(owner)
            elif (existing.team, existing.region) != (team or None, region or None):
                existing.assign(
                    team=team,
                    region=region,
                    actor=self.actor.name,
                    occurred_at=_later(changed_at or occurred_at, existing.last_occurred_at),
                    now=now,
                )
                if existing not in self._setup:
                    self._setup.append(existing)
        except DomainError as exc:
            self.report.rejected.append(RowError(file, line, exc.message))
            return False
        return True

    def _owner(self, name: str) -> Owner | None:
        for aggregate in self._setup:
            if isinstance(aggregate, Owner) and aggregate.name == name.strip():
                return aggregate
        try:
            owner: Aggregate = self.app.repository.get(owner_id_for(name.strip()))
        except AggregateNotFoundError:
            return None
        return owner if isinstance(owner, Owner) else None

    # --- rows ---------------------------------------------------------------------------

    def reject(self, file: str, line: int, reason: str, *, counts: bool = True) -> None:
        """Record a row the reader could not turn into a :class:`DealRow`.

        ``counts`` says whether the row is one of the deal rows progress is counted in.
        """
        self.report.rejected.append(RowError(file, line, reason))
        if counts:
            self._tick(1)

    def add(self, row: DealRow) -> None:
        """Queue one row; a full batch is planned (and, unless strict, stored)."""
        deal_id = row.deal_id
        first = self._seen.get(deal_id)
        if first is not None:
            self.reject(
                row.file,
                row.line,
                f"external id {row.external_id!r} appears more than once "
                f"in pipeline {row.pipeline.name!r} (first on line {first[1]})",
            )
            return
        self._seen[deal_id] = (row.file, row.line)
        self._batch.append(row)
        if len(self._batch) >= self.batch_size:
            self._flush()

    def add_all(self, rows: Iterable[DealRow]) -> None:
        for row in rows:
            self.add(row)

    def finish(self) -> ImportReport:
        """Plan and store what is left; in strict mode store everything or nothing."""
        if self._finished:
            return self.report
        self._finished = True
        self._flush()
        if self.strict:
            if self.report.rejected:
                self.report.written = False
                self._planned.clear()
                return self.report
            self._save_setup()
            for start in range(0, len(self._planned), self.batch_size):
                self._store(self._planned[start : start + self.batch_size], retry=False)
            self._planned.clear()
        else:
            self._save_setup()
        return self.report

    # --- internals ----------------------------------------------------------------------

    def _tick(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress(n)

    def _save_setup(self) -> None:
        if not self._setup:
            return
        try:
            recordings = self.app.save(*self._setup)
        except IntegrityError:
            raise ImportAborted(
                "a pipeline or owner changed while the import was starting; run it again"
            ) from None
        self.report.events += len(recordings)
        self._setup.clear()

    def _load(self, deal_id: UUID, pipeline: Pipeline) -> Deal | None:
        if pipeline.id in self._new_pipelines:
            return None  # a pipeline defined by this import has no deals yet
        try:
            deal: Aggregate = self.app.repository.get(deal_id)
        except AggregateNotFoundError:
            return None
        if not isinstance(deal, Deal):
            raise InvalidInput(f"id {deal_id} belongs to something that is not a deal")
        return deal

    def _load_many(self, rows: list[DealRow]) -> dict[UUID, Deal | DomainError | None]:
        """The stored deals of these rows, read by a few threads (each read is a query)."""

        def load(row: DealRow) -> Deal | DomainError | None:
            try:
                return self._load(row.deal_id, row.pipeline)
            except DomainError as exc:
                return exc

        wanted = [row for row in rows if row.pipeline.id not in self._new_pipelines]
        if len(wanted) < 2 or self.load_workers < 2:
            return {row.deal_id: load(row) for row in wanted}
        with ThreadPoolExecutor(max_workers=self.load_workers) as pool:
            return {
                row.deal_id: found
                for row, found in zip(wanted, pool.map(load, wanted), strict=True)
            }

    def _plan(
        self, row: DealRow, now: datetime, loaded: Deal | DomainError | None = None
    ) -> tuple[Deal | None, bool]:
        """(aggregate with pending events or None, whether the deal is new)."""
        if isinstance(loaded, DomainError):
            raise loaded
        existing = loaded
        return plan_deal(existing, row, actor=self.actor, now=now), existing is None

    def _flush(self) -> None:
        rows, self._batch = self._batch, []
        if not rows:
            return
        now = self.app.clock()
        loaded = self._load_many(rows)
        planned: list[_Planned] = []
        for row in rows:
            try:
                deal, new = self._plan(row, now, loaded.get(row.deal_id))
            except DomainError as exc:
                self.report.rejected.append(RowError(row.file, row.line, exc.message))
                continue
            if deal is None:
                self.report.unchanged += 1
                continue
            planned.append(_Planned(deal, row, new))
        if self.strict:
            self._planned.extend(planned)
        elif planned:
            self._save_setup()
            self._store(planned, retry=True)
        self._tick(len(rows))

    def _count(self, planned: Iterable[_Planned]) -> None:
        for item in planned:
            if item.new:
                self.report.created += 1
            else:
                self.report.changed += 1

    def _store(self, planned: list[_Planned], *, retry: bool) -> None:
        if not planned:
            return
        try:
            recordings = self.app.save(*(item.deal for item in planned))
        except IntegrityError:
            if not retry:
                raise ImportAborted(
                    "deals changed while the import was storing them; the rest was not "
                    "stored; run the import again (it appends only what is missing)"
                ) from None
            self._store_one_by_one([item.row for item in planned])
            return
        self.report.events += len(recordings)
        self._count(planned)

    def _store_one_by_one(self, rows: list[DealRow]) -> None:
        """After a batch lost a race with another writer: re-plan each row on fresh state."""
        for row in rows:
            try:
                deal, new = self._plan(row, self.app.clock(), self._load(row.deal_id, row.pipeline))
            except DomainError as exc:
                self.report.rejected.append(RowError(row.file, row.line, exc.message))
                continue
            if deal is None:
                self.report.unchanged += 1
                continue
            try:
                recordings = self.app.save(deal)
            except IntegrityError:
                self.report.rejected.append(
                    RowError(row.file, row.line, "the deal changed during the import; run again")
                )
                continue
            self.report.events += len(recordings)
            self._count([_Planned(deal, row, new)])


def _load_workers(app: DealtrailApplication) -> int:
    on_postgres = isinstance(app.recorder, PostgresApplicationRecorder)
    return POSTGRES_LOAD_WORKERS if on_postgres else 1


@dataclass(frozen=True)
class _Planned:
    deal: Deal
    row: DealRow
    new: bool
