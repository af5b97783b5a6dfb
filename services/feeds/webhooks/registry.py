"""The webhooks there are, read from their aggregates in the event store.

Webhooks are few and only admins read them, so there is no read model: a page is the
``WebhookCreated`` events after a position (the page's cursor), each webhook loaded as
it is now, the deleted ones left out.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from libs.application.app import DealtrailApplication
from libs.domain.webhook import Webhook

MAX_WEBHOOKS = 100  # webhooks that exist (not deleted) at once
_CREATED = get_topic(Webhook.WebhookCreated)  # type: ignore[attr-defined]


def webhooks_after(
    application: DealtrailApplication, after: int, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` webhooks created after position ``after``, oldest first, and the
    position to continue after (None at the end). Blocking."""
    found: list[dict[str, Any]] = []
    start = after + 1
    while True:
        batch = application.recorder.select_notifications(start, limit, topics=[_CREATED])
        for n in batch:
            webhook: Any = application.repository.get(UUID(str(n.originator_id)))
            if isinstance(webhook, Webhook) and not webhook.deleted:
                found.append(webhook.as_dict())
                if len(found) == limit:
                    more = len(batch) == limit or n.id != batch[-1].id
                    return found, n.id if more else None
        if len(batch) < limit:
            return found, None
        start = batch[-1].id + 1


def count_webhooks(application: DealtrailApplication) -> int:
    """How many webhooks exist now (blocking)."""
    count, after = 0, 0
    while True:
        page, after_next = webhooks_after(application, after, 500)
        count += len(page)
        if after_next is None:
            return count
        after = after_next
