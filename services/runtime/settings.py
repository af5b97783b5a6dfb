"""Configuration, read from the environment in one place."""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.application.integrity import CheckpointPolicy, Signer
from libs.application.store import StoreLocation
from libs.domain.actors import Actor, Role

MIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Every setting of the service; see the README's "Configuration" table."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    database_url: str = Field(default="sqlite:///data/dealtrail.db", alias="DATABASE_URL")
    database_schema: str = Field(default="", alias="DEALTRAIL_DB_SCHEMA")
    api_keys: str = Field(default="", alias="DEALTRAIL_API_KEYS")
    environment: Literal["development", "production"] = Field(
        default="development", alias="DEALTRAIL_ENV"
    )
    data_dir: Path = Field(default=Path("data"), alias="DEALTRAIL_DATA_DIR")
    max_body_bytes: int = Field(default=64 * 1024, alias="DEALTRAIL_MAX_BODY_BYTES", ge=1024)
    read_wait_seconds: float = Field(default=5.0, alias="DEALTRAIL_READ_WAIT_SECONDS", gt=0, le=60)
    max_read_waiters: int = Field(default=256, alias="DEALTRAIL_MAX_READ_WAITERS", ge=1)
    embedded_worker: bool = Field(default=True, alias="DEALTRAIL_EMBEDDED_WORKER")
    idempotency_ttl_hours: int = Field(default=24, alias="DEALTRAIL_IDEMPOTENCY_TTL_HOURS", ge=1)
    store_pool_size: int = Field(default=8, alias="DEALTRAIL_STORE_POOL_SIZE", ge=1)
    signing_key: SecretStr | None = Field(default=None, alias="DEALTRAIL_SIGNING_KEY")
    checkpoint_every: int = Field(default=1000, alias="DEALTRAIL_CHECKPOINT_EVERY", ge=1)
    checkpoint_minutes: float = Field(
        default=5.0, alias="DEALTRAIL_CHECKPOINT_MINUTES", gt=0, le=7 * 24 * 60
    )
    # `dealtrail serve --workers` checks the value (at least 1, above 1 only on PostgreSQL).
    web_workers: int = Field(default=1, alias="DEALTRAIL_WEB_WORKERS")

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        StoreLocation.parse(value)
        return value

    @field_validator("signing_key")
    @classmethod
    def _readable_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        try:
            Signer.from_text(value.get_secret_value())
        except ValueError as exc:
            raise ValueError(f"DEALTRAIL_SIGNING_KEY: {exc}") from None
        return value

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> Settings:
        if self.environment == "production":
            if not self.api_keys.strip():
                raise ValueError("DEALTRAIL_API_KEYS must be set when DEALTRAIL_ENV=production")
            for token in parse_api_keys(self.api_keys):
                if len(token) < MIN_TOKEN_LENGTH:
                    raise ValueError(
                        f"API tokens must be at least {MIN_TOKEN_LENGTH} characters in production"
                    )
        else:
            parse_api_keys(self.api_keys)
        return self

    @cached_property
    def store(self) -> StoreLocation:
        return StoreLocation.parse(self.database_url, self.database_schema)

    @cached_property
    def signer(self) -> Signer | None:
        """Signs checkpoints; None without ``DEALTRAIL_SIGNING_KEY`` (unsigned checkpoints)."""
        if self.signing_key is None:
            return None
        return Signer.from_text(self.signing_key.get_secret_value())

    @property
    def checkpoint_policy(self) -> CheckpointPolicy:
        return CheckpointPolicy(self.checkpoint_every, timedelta(minutes=self.checkpoint_minutes))

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin-token"


def parse_api_keys(raw: str) -> dict[str, Actor]:
    """``token:principal:role,...`` into a map from token to the actor it authenticates."""
    keys: dict[str, Actor] = {}
    for n, entry in enumerate(filter(None, (e.strip() for e in raw.split(","))), start=1):
        parts = entry.split(":")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ValueError(f"DEALTRAIL_API_KEYS entry {n} must look like token:principal:role")
        token, principal, role = (p.strip() for p in parts)
        try:
            keys[token] = Actor(name=principal, role=Role(role))
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise ValueError(
                f"DEALTRAIL_API_KEYS entry {n} has role {role!r}; roles are {roles}"
            ) from None
    return keys
