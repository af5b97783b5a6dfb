"""The one outbound shape of a stored event (webhook bodies, stream messages).

It is the event's line of the JSON Lines export (``EventRecord.as_json_dict()``) and, for
a deal's event, the deal as it stood right after that event under ``"deal"``, rendered
by the same view as every answer of the API (``libs/domain/views.py``).
"""

from __future__ import annotations

from typing import Any

from eventsourcing.application import AggregateNotFoundError

from libs.application.app import DealtrailApplication
from libs.application.records import EventRecord
from libs.domain.deal import Deal
from libs.domain.errors import NotFound
from libs.domain.events import DEAL_EVENTS


def envelope(application: DealtrailApplication, record: EventRecord) -> dict[str, Any]:
    """The event as consumers receive it (a blocking call: it may load the deal).

    The deal is loaded at the event's version; its stage names are the pipeline's as they
    are now, and its staleness is measured at the event's business time.
    """
    body = record.as_json_dict()
    if record.event_type not in DEAL_EVENTS:
        return body
    try:
        deal: Any = application.repository.get(record.aggregate_id, version=record.version)
    except AggregateNotFoundError:
        return body
    if not isinstance(deal, Deal):
        return body
    try:
        pipeline = application.get_pipeline(deal.pipeline_id)
    except NotFound:
        pipeline = None
    body["deal"] = deal.as_dict(pipeline)
    return body
