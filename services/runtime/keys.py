"""Bearer API keys: each token maps to a principal and a role."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from libs.domain.actors import Actor, Role
from services.runtime.settings import Settings

GENERATED_ADMIN = "admin"


class KeyRing:
    """Looks up the actor behind a bearer token in constant time per key."""

    def __init__(self, keys: dict[str, Actor]) -> None:
        self._keys = dict(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def actor_for(self, token: str) -> Actor | None:
        found = None
        for known, actor in self._keys.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = actor
        return found


def load_or_create_admin_token(path: Path) -> tuple[str, bool]:
    """Read the generated admin token, creating it (mode 0600) on first start."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def build_keyring(settings: Settings) -> tuple[KeyRing, str | None]:
    """The configured keys; with none configured, a generated admin key (also returned)."""
    keys = settings.api_key_map
    if keys:
        return KeyRing(keys), None
    token, _ = load_or_create_admin_token(settings.admin_key_file)
    return KeyRing({token: Actor(name=GENERATED_ADMIN, role=Role.ADMIN)}), token
