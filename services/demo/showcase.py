"""What the demo shows first: a pipeline and one of its deals with a long history."""

from __future__ import annotations

from collections import Counter
from uuid import UUID

from libs.application.app import DealtrailApplication
from libs.application.records import decode, split_topic
from services.demo.generator import DemoError

# How far into the log to look for a deal with a long history to show.
SHOWCASE_SCAN = 20_000


def showcase(
    application: DealtrailApplication, pipeline_id: UUID | None
) -> tuple[UUID, UUID | None]:
    """A pipeline (``pipeline_id``, or the oldest) and its deal with the most events among
    the first :data:`SHOWCASE_SCAN` positions (None when it has none there)."""
    if pipeline_id is None:
        ids = application.pipeline_ids()
        if not ids:
            raise DemoError("the demo database holds no pipeline")
        pipeline_id = ids[0]
    counts: Counter[UUID] = Counter()
    created_in: dict[UUID, UUID] = {}
    for batch in application.iter_notifications(1, SHOWCASE_SCAN):
        for n in batch:
            aggregate_type, event_type = split_topic(n.topic)
            if aggregate_type != "Deal":
                continue
            deal_id = UUID(str(n.originator_id))
            if event_type == "DealCreated":
                created_in[deal_id] = UUID(
                    str(decode(application.mapper, n).payload["pipeline_id"])
                )
            counts[deal_id] += 1
    for deal_id, _ in counts.most_common():
        if created_in.get(deal_id) == pipeline_id:
            return pipeline_id, deal_id
    return pipeline_id, None
