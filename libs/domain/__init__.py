"""Dealtrail's domain model: pipelines, deals, their rules and their events.

Imports only the standard library and ``eventsourcing.domain``.
"""

from libs.domain.deal import LOST, OPEN, WON, Deal, deal_id_for
from libs.domain.errors import DomainError
from libs.domain.pipeline import Pipeline, Stage, default_template
from libs.domain.values import UNSET

__all__ = [
    "LOST",
    "OPEN",
    "UNSET",
    "WON",
    "Deal",
    "DomainError",
    "Pipeline",
    "Stage",
    "deal_id_for",
    "default_template",
]
