"""The eventsourcing Application: the event store, aggregates by id, and the one write.

Commands are run by ``libs.application.handlers`` (load, call the aggregate, ``record``);
this class only knows how to load and how to store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import JSONTranscoder, Recording, Transcoding
from eventsourcing.utils import get_topic

from libs.application.failures import ReadChanged
from libs.domain.automation import AutomationRule
from libs.domain.deal import Deal
from libs.domain.errors import NotFound, RuleViolation
from libs.domain.owner import Owner, owner_id_for
from libs.domain.pipeline import Pipeline
from libs.domain.webhook import Webhook
from libs.observability.metrics import timed_append

Clock = Callable[[], datetime]

# Pipelines kept by one process for deal commands (pipelines are few); past this many
# the cache starts over.
PIPELINE_CACHE_SIZE = 1_000


def utc_now() -> datetime:
    return datetime.now(UTC)


class DateAsISO(Transcoding):
    """Stores ``datetime.date`` values (expected close dates) as ``YYYY-MM-DD``."""

    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class DealtrailApplication(Application[UUID]):
    """Pipelines, deals and owners in the event store; the handlers decide, this stores."""

    name = "dealtrail"

    def __init__(self, env: dict[str, str] | None = None, clock: Clock = utc_now) -> None:
        super().__init__(env=env)
        self.clock = clock
        # Called with the last position after every save (e.g. to wake an in-process worker).
        self.on_saved: list[Callable[[int], None]] = []
        # Pipelines that deal commands read, by id (see read_pipeline); only when the
        # recorder checks the versions of what a command read.
        self._pipelines: dict[UUID, Pipeline] = {}
        self._checks_reads = bool(getattr(self.recorder, "checks_read_versions", False))

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    # --- the one write --------------------------------------------------------------

    def record(
        self, *aggregates: Aggregate, read: Sequence[Aggregate] = ()
    ) -> list[Recording[UUID]]:
        """Store the aggregates' new events in one transaction; tell ``on_saved``.

        ``read``: aggregates the command decided on without changing them (a pipeline
        from :meth:`read_pipeline`); the store refuses the events with ReadChanged if one
        of them changed since (and the cached copy is dropped). Raises IntegrityError
        when another writer got in first (the caller decides whether to re-decide), and
        RuleViolation when there is nothing to store.
        """
        versions = {a.id: a.version for a in read} if self._checks_reads else {}
        try:
            with timed_append() as stored:
                recordings = (
                    self.save(*aggregates, read=versions) if versions else self.save(*aggregates)
                )
                stored.append(len(recordings))
        except ReadChanged:
            for aggregate in read:
                self._pipelines.pop(aggregate.id, None)
            raise
        finally:
            for aggregate in aggregates:
                if isinstance(aggregate, Pipeline):
                    self._pipelines.pop(aggregate.id, None)
        if not recordings:
            raise RuleViolation("the command produced no events")
        position = recordings[-1].notification.id
        for callback in self.on_saved:
            callback(position)
        return recordings

    def head_position(self) -> int:
        """The position of the newest event in the log (0 when it is empty)."""
        return self.recorder.max_notification_id() or 0

    # --- loading --------------------------------------------------------------------------

    def get_pipeline(self, pipeline_id: UUID | str) -> Pipeline:
        try:
            pipeline: Aggregate = self.repository.get(_as_uuid(pipeline_id, "pipeline"))
        except AggregateNotFoundError:
            raise NotFound(f"pipeline {pipeline_id} does not exist") from None
        if not isinstance(pipeline, Pipeline):
            raise NotFound(f"pipeline {pipeline_id} does not exist")
        return pipeline

    def read_pipeline(self, pipeline_id: UUID | str) -> Pipeline:
        """A pipeline to decide on without changing it (a deal command's), from this
        process's cache when the store can check it: give it to ``record(..., read=)``,
        which stores nothing if the pipeline changed since (another process's change
        included), so a stale copy costs one retry and is never acted on. Never change
        the pipeline returned: it is shared."""
        if not self._checks_reads:
            return self.get_pipeline(pipeline_id)
        key = _as_uuid(pipeline_id, "pipeline")
        cached = self._pipelines.get(key)
        if cached is not None:
            return cached
        pipeline = self.get_pipeline(key)
        if len(self._pipelines) >= PIPELINE_CACHE_SIZE:
            self._pipelines.clear()
        self._pipelines[key] = pipeline
        return pipeline

    def check_read_pipeline(self, pipeline: Pipeline) -> None:
        """After a rule refused a command decided on ``pipeline`` (from
        :meth:`read_pipeline`): raise ReadChanged when the stored pipeline is newer (the
        refusal may come from the old copy; the command is decided again), else return."""
        if not self._checks_reads or self._pipelines.get(pipeline.id) is not pipeline:
            return
        fresh = self.get_pipeline(pipeline.id)
        if fresh.version == pipeline.version:
            return
        self._pipelines[pipeline.id] = fresh
        raise ReadChanged([str(pipeline.id)])

    def pipeline_ids(self) -> list[UUID]:
        """Ids of every pipeline, oldest first (pipelines are few; deals are not)."""
        return [i for i, _ in self._created(Pipeline.PipelineDefined)]  # type: ignore[attr-defined]

    def _created(self, creation: type[Any]) -> list[tuple[UUID, int]]:
        """(aggregate id, position) of every stored event of a creation event class."""
        topic = get_topic(creation)
        found: list[tuple[UUID, int]] = []
        start = 1
        while True:
            batch = self.recorder.select_notifications(start, 500, topics=[topic])
            found.extend((UUID(str(n.originator_id)), n.id) for n in batch)
            if len(batch) < 500:
                return found
            start = batch[-1].id + 1

    def get_automation(self, automation_id: UUID | str) -> AutomationRule:
        """A rule that exists (a deleted one raises NotFound like one never made)."""
        try:
            rule: Aggregate = self.repository.get(_as_uuid(automation_id, "automation"))
        except AggregateNotFoundError:
            raise NotFound(f"automation {automation_id} does not exist") from None
        if not isinstance(rule, AutomationRule):
            raise NotFound(f"automation {automation_id} does not exist")
        rule.check_exists()
        return rule

    def automation_ids(self) -> list[tuple[UUID, int]]:
        """(id, position of its creation) of every rule ever created, oldest first."""
        return self._created(AutomationRule.AutomationCreated)  # type: ignore[attr-defined]

    def automations(self) -> list[tuple[AutomationRule, int]]:
        """(rule, position of its creation) of every rule that exists (not deleted),
        oldest first."""
        found = []
        for rule_id, position in self.automation_ids():
            try:
                found.append((self.get_automation(rule_id), position))
            except NotFound:
                continue
        return found

    def has_aggregate(self, aggregate_id: UUID) -> bool:
        """Whether any event of this aggregate is stored (one indexed look-up)."""
        return bool(self.recorder.select_events(aggregate_id, limit=1))

    def get_deal(self, deal_id: UUID | str) -> Deal:
        try:
            deal: Aggregate = self.repository.get(_as_uuid(deal_id, "deal"))
        except AggregateNotFoundError:
            raise NotFound(f"deal {deal_id} does not exist") from None
        if not isinstance(deal, Deal):
            raise NotFound(f"deal {deal_id} does not exist")
        return deal

    def deal_state(self, deal_id: UUID | str) -> dict[str, Any]:
        deal = self.get_deal(deal_id)
        return deal.as_dict(self.get_pipeline(deal.pipeline_id))

    def get_webhook(self, webhook_id: UUID | str) -> Webhook:
        """A webhook that exists (a deleted one is NotFound)."""
        try:
            webhook: Aggregate = self.repository.get(_as_uuid(webhook_id, "webhook"))
        except AggregateNotFoundError:
            raise NotFound(f"webhook {webhook_id} does not exist") from None
        if not isinstance(webhook, Webhook):
            raise NotFound(f"webhook {webhook_id} does not exist")
        webhook.check_exists()
        return webhook

    def get_owner(self, name: str) -> Owner | None:
        try:
            owner: Aggregate = self.repository.get(owner_id_for(name))
        except AggregateNotFoundError:
            return None
        return owner if isinstance(owner, Owner) else None

    def iter_notifications(
        self, start: int = 1, stop: int | None = None, batch_size: int = 1000
    ) -> Iterator[Sequence[Any]]:
        """Batches of stored notifications from ``start`` up to ``stop`` inclusive."""
        while True:
            batch = self.recorder.select_notifications(start, batch_size, stop=stop)
            if not batch:
                return
            yield batch
            if len(batch) < batch_size:
                return
            start = batch[-1].id + 1


def _as_uuid(value: UUID | str, what: str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise NotFound(f"{what} {value} does not exist") from None
