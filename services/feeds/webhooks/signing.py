"""Signing secrets and the Standard Webhooks headers of a delivery.

A secret is ``whsec_`` and the base64 of 32 random bytes; the signature is
``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")) with the decoded bytes as
the key, computed by the reference ``standardwebhooks`` package, so any receiver that
uses it (or follows the specification) verifies it.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook as Signer

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def message_id(position: int, webhook_id: str) -> str:
    """The ``webhook-id`` of an event for one subscription: the same on every retry and
    replay, so a receiver can drop what it already has."""
    return f"msg_{position}_{webhook_id.replace('-', '')[:12]}"


def signed_headers(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    """The three headers of a delivery of ``body`` sent at ``at``."""
    moment = at.astimezone(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Signer(secret).sign(msg_id, moment, body),
    }
