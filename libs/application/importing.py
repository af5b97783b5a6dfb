"""Writing many deals through the domain: imports of existing records.

Every deal goes through the same handlers as the API: the setup (pipelines, lost
reasons, owners' teams) as ``DefinePipeline``, ``AddLostReason`` and ``AssignTeam``,
and the rows as batched ``ImportDeals`` commands, whose handler brings each deal to its
row's state with the Deal's own methods (``libs.domain.imports.plan_deal``), so every
rule applies, with backdated ``occurred_at``. What makes it fast is batching: the events
of many deals are stored in one transaction (one table lock on PostgreSQL).

A source row describes a deal as it is *now*. The importer compares it with the stored
deal and appends only the difference, so importing the same data twice appends
nothing. A row's events are stored together with its batch, or not at all: no deal is
ever half-written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast
from uuid import UUID, uuid4

from libs.application.app import DealtrailApplication
from libs.application.handlers import handle, pipeline_defined_by
from libs.domain.actors import Actor, Role
from libs.domain.commands import (
    AddLostReason,
    AssignTeam,
    BatchResult,
    DefinePipeline,
    ImportDeals,
    ImportSetup,
)
from libs.domain.errors import ConcurrentModification, DomainError
from libs.domain.imports import DealRow, RowError, later
from libs.domain.owner import Owner
from libs.domain.pipeline import Pipeline

IMPORT_ACTOR = Actor(name="import", role=Role.ADMIN)
DEFAULT_BATCH_SIZE = 200

Progress = Callable[[int], None]


class ImportAborted(Exception):
    """The import cannot start or go on at all (not one bad row: the whole run)."""


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


class DealImporter:
    """Imports deal rows in batches through the handlers; see the module docstring.

    Call :meth:`ensure_pipeline` and :meth:`ensure_owner` first, then :meth:`add` for
    each row (and :meth:`reject` for rows the reader could not even parse), then
    :meth:`finish`. With ``strict`` nothing is stored unless every row is good: every
    batch is checked first (a dry run), and stored only when none was rejected.
    """

    def __init__(
        self,
        app: DealtrailApplication,
        *,
        actor: Actor = IMPORT_ACTOR,
        strict: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Progress | None = None,
    ) -> None:
        self.app = app
        self.actor = actor
        self.strict = strict
        self.batch_size = max(1, batch_size)
        self.progress = progress
        self.report = ImportReport()
        # Setup commands, sent before the first batch; the pipelines and owners as they
        # will be once it is stored (rows are planned against them).
        self._setup: list[DefinePipeline | AddLostReason | AssignTeam] = []
        self._owners: dict[str, Owner] = {}
        self._new_pipelines: set[UUID] = set()
        self._batch: list[DealRow] = []
        self._checked: list[DealRow] = []
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
        definition = DefinePipeline(
            actor=self.actor,
            name=name,
            currency=currency,
            stages=stages,
            lost_reasons=lost_reasons,
            occurred_at=occurred_at,
            pipeline_id=uuid4(),
        )
        try:
            pipeline = pipeline_defined_by(definition, occurred_at, self.app.clock())
        except DomainError as exc:
            raise ImportAborted(f"cannot define pipeline {name!r}: {exc.message}") from None
        self._setup.append(definition)
        self._new_pipelines.add(pipeline.id)
        self.report.pipelines[pipeline.name] = pipeline.id
        return pipeline

    def _add_lost_reason(self, pipeline: Pipeline, reason: str, occurred_at: datetime) -> None:
        command = AddLostReason(
            actor=self.actor,
            pipeline_id=pipeline.id,
            reason=reason,
            occurred_at=later(occurred_at, pipeline.last_occurred_at),
            expected_version=pipeline.version,
        )
        try:
            self.actor.check_may_manage_pipelines()
            pipeline.add_lost_reason(
                reason,
                actor=self.actor.name,
                occurred_at=cast(datetime, command.occurred_at),
                now=self.app.clock(),
            )
        except DomainError as exc:
            raise ImportAborted(
                f"cannot add lost reason {reason!r} to pipeline {pipeline.name!r}: {exc.message}"
            ) from None
        self._setup.append(command)

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
                when = occurred_at
                owner = Owner.register(
                    name=name,
                    team=team,
                    region=region,
                    actor=self.actor.name,
                    occurred_at=when,
                    now=now,
                )
            elif (existing.team, existing.region) != (team or None, region or None):
                owner = existing
                when = later(changed_at or occurred_at, existing.last_occurred_at)
                owner.assign(
                    team=team, region=region, actor=self.actor.name, occurred_at=when, now=now
                )
            else:
                return True
        except DomainError as exc:
            self.report.rejected.append(RowError(file, line, exc.message))
            return False
        self._owners[owner.name] = owner
        self._setup.append(
            AssignTeam(actor=self.actor, owner=name, team=team, region=region, occurred_at=when)
        )
        return True

    def _owner(self, name: str) -> Owner | None:
        """The owner as this import leaves it (its queued changes included)."""
        key = name.strip()
        if key not in self._owners:
            stored = self.app.get_owner(key)
            if stored is None:
                return None
            self._owners[key] = stored
        return self._owners[key]

    # --- rows ---------------------------------------------------------------------------

    def reject(self, file: str, line: int, reason: str, *, counts: bool = True) -> None:
        """Record a row the reader could not turn into a :class:`DealRow`.

        ``counts`` says whether the row is one of the deal rows progress is counted in.
        """
        self.report.rejected.append(RowError(file, line, reason))
        if counts:
            self._tick(1)

    def add(self, row: DealRow) -> None:
        """Queue one row; a full batch is checked (and, unless strict, stored)."""
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
        """Store what is left; in strict mode store everything or nothing."""
        if self._finished:
            return self.report
        self._finished = True
        self._flush()
        if self.strict:
            if self.report.rejected:
                self.report.written = False
                self._checked.clear()
                return self.report
            self._save_setup()
            for start in range(0, len(self._checked), self.batch_size):
                self._send(self._checked[start : start + self.batch_size], all_or_nothing=True)
            self._checked.clear()
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
        setup = ImportSetup(actor=self.actor, commands=tuple(self._setup))
        self._setup = []
        try:
            result = handle(self.app, setup)
        except DomainError:
            raise ImportAborted(
                "a pipeline or owner changed while the import was starting; run it again"
            ) from None
        self.report.events += result.events

    def _flush(self) -> None:
        rows, self._batch = self._batch, []
        if not rows:
            return
        if self.strict:
            checked = self._send(rows, dry_run=True)
            self._checked.extend(o.row for o in checked.rows if o.outcome in CHANGES)
        else:
            self._save_setup()
            self._send(rows)
        self._tick(len(rows))

    def _send(
        self, rows: list[DealRow], *, dry_run: bool = False, all_or_nothing: bool = False
    ) -> BatchResult:
        """One ``ImportDeals`` batch; its outcomes counted into the report (a dry run
        counts only what it settles: rejections and unchanged rows)."""
        command = ImportDeals(
            actor=self.actor,
            rows=tuple(rows),
            fresh_pipelines=frozenset(self._new_pipelines),
            dry_run=dry_run,
            retry=not all_or_nothing,
        )
        try:
            result = handle(self.app, command)
        except ConcurrentModification:
            raise ImportAborted(
                "deals changed while the import was storing them; the rest was not "
                "stored; run the import again (it appends only what is missing)"
            ) from None
        for outcome in result.rows:
            if outcome.outcome == "rejected":
                row = outcome.row
                self.report.rejected.append(RowError(row.file, row.line, outcome.reason))
            elif outcome.outcome == "unchanged":
                self.report.unchanged += 1
            elif not dry_run:
                setattr(self.report, outcome.outcome, getattr(self.report, outcome.outcome) + 1)
        self.report.events += result.events
        return result


CHANGES = ("created", "changed")
