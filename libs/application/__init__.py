"""The application layer: runs domain commands against the event store."""

from libs.application.app import DealtrailApplication, utc_now
from libs.application.store import StoreLocation

__all__ = ["DealtrailApplication", "StoreLocation", "utc_now"]
