"""The settings: secrets stay secret, keys come from the environment or a file, rate
limits per role, and a bad environment is named without its values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from libs.domain.actors import Actor, Role
from services.cli import main as cli
from services.runtime.settings import (
    PRODUCTION_RATE_LIMITS,
    ConfigurationError,
    Settings,
    load_settings,
    parse_rate_limits,
)

LONG = "k" * 20


def make(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def test_keys_and_the_database_password_never_show_in_a_repr() -> None:
    settings = make(
        DATABASE_URL="postgresql://app:url-pass-1234@db:5432/dealtrail",
        DEALTRAIL_API_KEYS=f"{LONG}:ann:admin",
        DEALTRAIL_DATABASE_PASSWORD="env-pass-5678",
    )
    shown = repr(settings) + str(settings) + repr(settings.store)
    for secret in (LONG, "url-pass-1234", "env-pass-5678"):
        assert secret not in shown
    # DEALTRAIL_DATABASE_PASSWORD replaces the URL's password
    assert settings.store.password == "env-pass-5678"
    assert "://app:env-pass-5678@db:5432/" in settings.store.sqlalchemy_url()
    assert set(settings.secrets) == {LONG, "env-pass-5678"}


def test_api_keys_come_from_a_mounted_file(tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(f"# admins\n{LONG}:ann:admin\n\n{'r' * 20}:rita:rep, {'m' * 20}:max:manager\n")
    settings = make(DEALTRAIL_API_KEYS_FILE=str(keys), DEALTRAIL_ENV="production")
    assert settings.api_key_map == {
        LONG: Actor("ann", Role.ADMIN),
        "r" * 20: Actor("rita", Role.REP),
        "m" * 20: Actor("max", Role.MANAGER),
    }


def test_a_keys_file_that_is_missing_or_wrong_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"DEALTRAIL_API_KEYS_FILE .*cannot read it"):
        make(DEALTRAIL_API_KEYS_FILE=str(tmp_path / "absent"))
    bad = tmp_path / "bad"
    bad.write_text(f"{LONG}:ann:admin\n{LONG}:ann\n")
    with pytest.raises(ValidationError, match="DEALTRAIL_API_KEYS_FILE entry 2 must look like"):
        make(DEALTRAIL_API_KEYS_FILE=str(bad))
    good = tmp_path / "good"
    good.write_text(f"{LONG}:ann:admin\n")
    with pytest.raises(ValidationError, match="not both"):
        make(DEALTRAIL_API_KEYS_FILE=str(good), DEALTRAIL_API_KEYS=f"{LONG}:bob:admin")


def test_production_needs_keys_from_either_place(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must give keys"):
        make(DEALTRAIL_ENV="production")
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(ValidationError, match="must give keys"):
        make(DEALTRAIL_ENV="production", DEALTRAIL_API_KEYS_FILE=str(empty))


def test_rate_limits_per_role_with_a_default_for_the_others() -> None:
    rules = parse_rate_limits("rep=10/second;600/minute *=100/minute")
    assert [str(item) for item in rules[Role.REP]] == ["10 per 1 second", "600 per 1 minute"]
    assert [str(item) for item in rules[Role.ADMIN]] == ["100 per 1 minute"]
    assert set(rules) == set(Role)
    assert set(parse_rate_limits("auditor=5/minute")) == {Role.AUDITOR}
    assert parse_rate_limits("off") == {}
    assert parse_rate_limits("  ") == {}


@pytest.mark.parametrize(
    "raw", ["rep", "boss=1/minute", "rep=ten/minute", "rep=10/fortnight", "rep:1/minute"]
)
def test_unreadable_rate_limits_are_refused(raw: str) -> None:
    with pytest.raises(ValidationError, match="DEALTRAIL_RATE_LIMITS entry"):
        make(DEALTRAIL_RATE_LIMITS=raw)


def test_rate_limits_are_off_in_development_and_on_in_production_unless_said() -> None:
    assert make().rate_limit_rules == {}
    production = make(DEALTRAIL_ENV="production", DEALTRAIL_API_KEYS=f"{LONG}:ann:admin")
    assert production.rate_limit_rules == parse_rate_limits(PRODUCTION_RATE_LIMITS)
    assert set(production.rate_limit_rules) == set(Role)
    off = make(
        DEALTRAIL_ENV="production",
        DEALTRAIL_API_KEYS=f"{LONG}:ann:admin",
        DEALTRAIL_RATE_LIMITS="off",
    )
    assert off.rate_limit_rules == {}
    assert make(DEALTRAIL_RATE_LIMITS="rep=2/second").rate_limit_rules[Role.REP]


def test_web_workers_is_a_checked_setting() -> None:
    assert make(DEALTRAIL_WEB_WORKERS="3").web_workers == 3
    with pytest.raises(ValidationError, match="DEALTRAIL_WEB_WORKERS"):
        make(DEALTRAIL_WEB_WORKERS="0")


def test_a_bad_environment_is_named_without_its_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("DEALTRAIL_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw-in-url-999@db:5432/")
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    assert "DATABASE_URL" in str(refused.value)
    assert "pw-in-url-999" not in str(refused.value)

    monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
    monkeypatch.setenv("DEALTRAIL_API_KEYS", "leaky-token-value-000:ann")
    assert cli(["projections", "status"]) == 2
    err = capsys.readouterr().err
    assert "DEALTRAIL_API_KEYS entry 1 must look like token:principal:role" in err
    assert "leaky-token-value-000" not in err
