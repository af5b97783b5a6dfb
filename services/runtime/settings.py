"""Configuration, read from the environment in one place."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from limits import RateLimitItem, parse_many
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.application.integrity import CheckpointPolicy, Signer
from libs.application.store import BadDatabaseUrl, StoreLocation
from libs.domain.actors import Actor, Role
from services.feeds.webhooks.delivery import DeliveryPolicy

MIN_TOKEN_LENGTH = 16
# DEALTRAIL_RATE_LIMITS when it is unset in production (development: no limits).
PRODUCTION_RATE_LIMITS = "admin=1200/minute manager=1200/minute rep=600/minute auditor=300/minute"


class Settings(BaseSettings):
    """Every setting of the service; see the README's "Configuration" table."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///data/dealtrail.db"), alias="DATABASE_URL"
    )
    # Replaces the password of DATABASE_URL, so that the URL can live in plain
    # configuration and the password in a secret store.
    database_password: SecretStr | None = Field(default=None, alias="DEALTRAIL_DATABASE_PASSWORD")
    database_schema: str = Field(default="", alias="DEALTRAIL_DB_SCHEMA")
    # Queries only: a PostgreSQL replica of DATABASE_URL (same tables, kept in step by it).
    read_database_url: SecretStr = Field(default=SecretStr(""), alias="DEALTRAIL_READ_DATABASE_URL")
    api_keys: SecretStr = Field(default=SecretStr(""), alias="DEALTRAIL_API_KEYS")
    api_keys_file: Path | None = Field(default=None, alias="DEALTRAIL_API_KEYS_FILE")
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
    # `dealtrail serve --workers` overrides it; above 1 only on PostgreSQL (checked there).
    web_workers: int = Field(default=1, alias="DEALTRAIL_WEB_WORKERS", ge=1, le=64)
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", alias="DEALTRAIL_LOG_FORMAT"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", alias="DEALTRAIL_LOG_LEVEL"
    )
    ready_max_lag: int = Field(default=1000, alias="DEALTRAIL_READY_MAX_LAG", ge=0, le=1_000_000)
    rate_limits: str = Field(default="", alias="DEALTRAIL_RATE_LIMITS")
    rate_limit_storage: str = Field(default="memory://", alias="DEALTRAIL_RATE_LIMIT_STORAGE")
    otel_endpoint: str | None = Field(default=None, alias="DEALTRAIL_OTEL_ENDPOINT")
    otel_service_name: str = Field(default="dealtrail", alias="DEALTRAIL_OTEL_SERVICE_NAME")
    worker_metrics_port: int = Field(
        default=0, alias="DEALTRAIL_WORKER_METRICS_PORT", ge=0, le=65535
    )
    worker_metrics_host: str = Field(default="127.0.0.1", alias="DEALTRAIL_WORKER_METRICS_HOST")
    # Webhook delivery, run beside the projection worker (embedded or `projections run`).
    webhooks: bool = Field(default=True, alias="DEALTRAIL_WEBHOOKS")
    webhook_retry_base_seconds: float = Field(
        default=10.0, alias="DEALTRAIL_WEBHOOK_RETRY_BASE_SECONDS", gt=0, le=3600
    )
    webhook_retry_cap_seconds: float = Field(
        default=3 * 3600.0, alias="DEALTRAIL_WEBHOOK_RETRY_CAP_SECONDS", gt=0, le=86400
    )
    webhook_max_attempts: int = Field(
        default=18, alias="DEALTRAIL_WEBHOOK_MAX_ATTEMPTS", ge=1, le=100
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, alias="DEALTRAIL_WEBHOOK_TIMEOUT_SECONDS", gt=0, le=60
    )
    webhook_allow_private: bool = Field(default=False, alias="DEALTRAIL_WEBHOOK_ALLOW_PRIVATE")
    # The change feed: the NATS JetStream relay and the server-sent event stream.
    nats_relay: bool = Field(default=False, alias="DEALTRAIL_NATS_RELAY")
    nats_url: str = Field(default="nats://127.0.0.1:4222", alias="DEALTRAIL_NATS_URL")
    nats_stream: str = Field(
        default="DEALTRAIL", alias="DEALTRAIL_NATS_STREAM", pattern=r"^[A-Za-z0-9_-]{1,64}$"
    )
    nats_subject_prefix: str = Field(
        default="dealtrail",
        alias="DEALTRAIL_NATS_SUBJECT_PREFIX",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
    )
    sse_max_streams: int = Field(default=100, alias="DEALTRAIL_SSE_MAX_STREAMS", ge=1, le=10_000)
    sse_max_minutes: float = Field(
        default=60.0, alias="DEALTRAIL_SSE_MAX_MINUTES", gt=0, le=24 * 60
    )
    # The automation evaluator runs beside the projection worker (embedded or not).
    automation: bool = Field(default=True, alias="DEALTRAIL_AUTOMATION")
    automation_interval_seconds: float = Field(
        default=10.0, alias="DEALTRAIL_AUTOMATION_INTERVAL_SECONDS", ge=0.1, le=3600
    )

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: SecretStr) -> SecretStr:
        StoreLocation.parse(value.get_secret_value())
        return value

    @field_validator("signing_key", "database_password")
    @classmethod
    def _blank_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @model_validator(mode="after")
    def _replica_of_postgres(self) -> Settings:
        if self.read_database_url.get_secret_value():
            try:
                replica = StoreLocation.parse(self.read_database_url.get_secret_value())
            except BadDatabaseUrl as exc:
                raise ValueError(f"DEALTRAIL_READ_DATABASE_URL: {exc}") from None
            if not (replica.is_postgres and self.store.is_postgres):
                raise ValueError(
                    "DEALTRAIL_READ_DATABASE_URL names a PostgreSQL replica of a PostgreSQL "
                    "DATABASE_URL; SQLite has no replicas"
                )
        return self

    @field_validator("signing_key")
    @classmethod
    def _readable_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            Signer.from_text(value.get_secret_value())
        except ValueError as exc:
            raise ValueError(f"DEALTRAIL_SIGNING_KEY: {exc}") from None
        return value

    @field_validator("otel_endpoint")
    @classmethod
    def _blank_endpoint_is_unset(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("DEALTRAIL_OTEL_ENDPOINT must be an http:// or https:// URL")
        return value.strip().rstrip("/")

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls or not all(u.startswith(("nats://", "tls://")) for u in urls):
            raise ValueError(
                "DEALTRAIL_NATS_URL must be one or more nats:// or tls:// URLs, separated by commas"
            )
        return ",".join(urls)

    @field_validator("rate_limits")
    @classmethod
    def _readable_rate_limits(cls, value: str) -> str:
        parse_rate_limits(value)
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(
                "DEALTRAIL_RATE_LIMIT_STORAGE must be a storage URI such as memory:// "
                "or redis://host:6379"
            )
        return value

    @model_validator(mode="after")
    def _keys_and_production_rules(self) -> Settings:
        if self.api_keys.get_secret_value().strip() and self.api_keys_file is not None:
            raise ValueError("set DEALTRAIL_API_KEYS or DEALTRAIL_API_KEYS_FILE, not both")
        keys = self.api_key_map  # reads and checks the keys (and the file)
        if self.environment == "production":
            if not keys:
                raise ValueError(
                    "DEALTRAIL_API_KEYS or DEALTRAIL_API_KEYS_FILE must give keys when "
                    "DEALTRAIL_ENV=production"
                )
            for token in keys:
                if len(token) < MIN_TOKEN_LENGTH:
                    raise ValueError(
                        f"API tokens must be at least {MIN_TOKEN_LENGTH} characters in production"
                    )
        return self

    @cached_property
    def api_key_map(self) -> dict[str, Actor]:
        """Token -> actor, from ``DEALTRAIL_API_KEYS`` or the file it names."""
        if self.api_keys_file is None:
            return parse_api_keys(self.api_keys.get_secret_value())
        try:
            text = self.api_keys_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"DEALTRAIL_API_KEYS_FILE {self.api_keys_file}: cannot read it ({exc})"
            ) from None
        return parse_api_keys(text, source="DEALTRAIL_API_KEYS_FILE")

    @property
    def rate_limit_rules(self) -> dict[Role, tuple[RateLimitItem, ...]]:
        """Each role's rate limits per token (empty: not limited)."""
        raw = self.rate_limits
        if not raw.strip() and self.environment == "production":
            raw = PRODUCTION_RATE_LIMITS
        return parse_rate_limits(raw)

    @property
    def secrets(self) -> list[str]:
        """Every secret value configured (tokens, passwords, keys), to keep out of logs."""
        values = list(self.api_key_map)
        for location in (self.store, self.read_store):
            if location.password:
                values.append(location.password)
        for secret in (self.signing_key, self.database_password):
            if secret is not None:
                values.append(secret.get_secret_value().strip())
        values.extend(nats_credentials(self.nats_url))
        return values

    @cached_property
    def store(self) -> StoreLocation:
        location = StoreLocation.parse(self.database_url.get_secret_value(), self.database_schema)
        if self.database_password is not None and location.is_postgres:
            location = replace(location, password=self.database_password.get_secret_value())
        return location

    @cached_property
    def read_store(self) -> StoreLocation:
        """Where queries read: the replica of ``DEALTRAIL_READ_DATABASE_URL`` (in the schema
        its ``?schema=`` names, else ``DEALTRAIL_DB_SCHEMA``; with the password of
        ``DEALTRAIL_DATABASE_PASSWORD`` unless it names one), else the store itself."""
        url = self.read_database_url.get_secret_value()
        if not url:
            return self.store
        replica = StoreLocation.parse(url)
        if not replica.schema:
            replica = replace(replica, schema=self.database_schema)
        if not replica.password and self.database_password is not None:
            replica = replace(replica, password=self.database_password.get_secret_value())
        return replica

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
    def webhook_policy(self) -> DeliveryPolicy:
        return DeliveryPolicy(
            retry_base_seconds=self.webhook_retry_base_seconds,
            retry_cap_seconds=self.webhook_retry_cap_seconds,
            max_attempts=self.webhook_max_attempts,
            timeout_seconds=self.webhook_timeout_seconds,
            allow_private=self.webhook_allow_private,
        )

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin-token"


class ConfigurationError(Exception):
    """The environment does not make valid settings; the message says which and why,
    without the values (they may be secrets)."""


def load_settings() -> Settings:
    """The settings from the environment, or :class:`ConfigurationError`."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            problems.append(f"  {where}: {error['msg']}")
        raise ConfigurationError("\n".join(problems)) from None


def nats_credentials(urls: str) -> list[str]:
    """The passwords and tokens in ``DEALTRAIL_NATS_URL`` (``nats://user:password@host``,
    ``nats://token@host``), to keep out of logs."""
    found = []
    for url in urls.split(","):
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
        elif parts.username:
            found.append(parts.username)
    return found


def parse_api_keys(raw: str, source: str = "DEALTRAIL_API_KEYS") -> dict[str, Actor]:
    """``token:principal:role`` entries (separated by commas or lines; ``#`` starts a
    comment line) into a map from token to the actor it authenticates."""
    keys: dict[str, Actor] = {}
    lines = (line for line in raw.splitlines() if not line.lstrip().startswith("#"))
    entries = (e.strip() for line in lines for e in line.split(","))
    for n, entry in enumerate(filter(None, entries), start=1):
        parts = entry.split(":")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ValueError(f"{source} entry {n} must look like token:principal:role")
        token, principal, role = (p.strip() for p in parts)
        try:
            keys[token] = Actor(name=principal, role=Role(role))
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise ValueError(f"{source} entry {n} has role {role!r}; roles are {roles}") from None
    return keys


def parse_rate_limits(raw: str) -> dict[Role, tuple[RateLimitItem, ...]]:
    """``role=LIMITS ...`` (``*`` for every role not named; LIMITS as the ``limits``
    package writes them, ``10/second;600/minute``) into each role's limits; ``off`` or
    nothing: no limits."""
    text = raw.strip()
    if not text or text.lower() == "off":
        return {}
    named: dict[str, tuple[RateLimitItem, ...]] = {}
    for entry in text.split():
        role, sep, limits_text = entry.partition("=")
        if not sep or role not in {"*", *(r.value for r in Role)}:
            roles = ", ".join(r.value for r in Role)
            raise ValueError(
                f"DEALTRAIL_RATE_LIMITS entry {entry!r} must look like ROLE=LIMITS "
                f"(ROLE one of {roles} or *; e.g. rep=10/second;600/minute)"
            )
        try:
            named[role] = tuple(parse_many(limits_text))
        except ValueError as exc:
            raise ValueError(f"DEALTRAIL_RATE_LIMITS entry {entry!r}: {exc}") from None
    default = named.get("*", ())
    return {r: named.get(r.value, default) for r in Role if named.get(r.value, default)}
