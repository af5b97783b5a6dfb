"""Log lines: JSON or text, the request's context on each, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.observability import context
from services.runtime.logs import REDACTED, ContextFilter, JsonLines, TextLines, wants_json
from services.runtime.settings import Settings

TOKEN = "tok-admin-s3cr3t-value-0001"
PASSWORD = "pg-pa55word-xyz"
# An Ed25519 key (32 raw bytes, base64), as `dealtrail audit keygen` prints one.
SIGNING_KEY = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="


def settings(tmp_path: Path, **extra: str) -> Settings:
    values = {
        "DATABASE_URL": f"postgresql://dealtrail:{PASSWORD}@db.internal:5432/dealtrail",
        "DEALTRAIL_API_KEYS": f"{TOKEN}:ann:admin,short:bob:rep",
        "DEALTRAIL_SIGNING_KEY": SIGNING_KEY,
        "DEALTRAIL_DATA_DIR": str(tmp_path),
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def captured(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the formatter under test (``request.param``)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(request.param(settings(tmp_path).secrets))
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"test.logs.{request.param.__name__}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, out
    logger.removeHandler(handler)


both_formats = pytest.mark.parametrize("captured", [JsonLines, TextLines], indirect=True)


@both_formats
def test_configured_secrets_never_reach_a_log_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    logger.warning("token %s and password %s", TOKEN, PASSWORD)
    logger.info("the key is %r", SIGNING_KEY)
    logger.info("headers: {'authorization': 'Bearer %s'}", "a-token-nobody-configured")
    logger.info("connecting to postgresql://someone:hunter2-pw@10.0.0.1/db failed")
    try:
        raise RuntimeError(f"cannot connect with {PASSWORD} for {TOKEN}")
    except RuntimeError:
        logger.exception("failed")
    text = out.getvalue()
    for secret in (TOKEN, PASSWORD, SIGNING_KEY, "a-token-nobody-configured", "hunter2-pw"):
        assert secret not in text
    assert text.count(REDACTED) == 7
    assert "postgresql://someone:[redacted]@10.0.0.1/db" in text
    assert "RuntimeError" in text  # the traceback is kept, only the secrets go


def test_a_secret_escaped_inside_json_is_redacted_too() -> None:
    quoted = 'pw"with\\quotes'
    redact = JsonLines([quoted])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "pw is %s", (quoted,), None)
    line = redact.format(record)
    assert "quotes" not in line
    assert json.loads(line)["message"] == f"pw is {REDACTED}"


@both_formats
def test_short_secrets_are_not_searched_for(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    logger.info("a shortcut and a short word")  # "short" is a configured (too short) token
    assert "a shortcut and a short word" in out.getvalue()


@pytest.mark.parametrize("captured", [JsonLines], indirect=True)
def test_json_lines_carry_the_request_context_and_extra_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    logger.info("outside any request")
    seen = context.RequestContext(request_id="req-42", method="GET", principal="ann")
    token = context.bind(seen)
    try:
        seen.route = "/v1/deals/{deal_id}"
        logger.info("inside", extra={"status": 201, "duration_ms": 3.5})
    finally:
        context.unbind(token)
    outside, inside = (json.loads(line) for line in out.getvalue().splitlines())
    assert "request_id" not in outside
    assert outside["level"] == "INFO"
    assert outside["logger"] == "test.logs.JsonLines"
    assert outside["time"].endswith("Z")
    assert inside["request_id"] == "req-42"
    assert inside["principal"] == "ann"
    assert inside["route"] == "/v1/deals/{deal_id}"
    assert inside["status"] == 201
    assert inside["duration_ms"] == 3.5
    assert inside["message"] == "inside"


@pytest.mark.parametrize("captured", [TextLines], indirect=True)
def test_text_lines_read_well_and_name_the_request(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    token = context.bind(context.RequestContext(request_id="req-7", principal="rita"))
    try:
        logger.warning("slow board")
    finally:
        context.unbind(token)
    line = out.getvalue().strip()
    assert line.endswith("WARNING test.logs.TextLines: slow board  request_id=req-7 principal=rita")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_format_is_text_on_a_terminal_in_development_and_json_otherwise(
    tmp_path: Path,
) -> None:
    development = settings(tmp_path)
    production = settings(
        tmp_path, DEALTRAIL_ENV="production", DEALTRAIL_API_KEYS=f"{TOKEN}:a:admin"
    )
    assert not wants_json(development, Terminal())
    assert wants_json(development, io.StringIO())
    assert wants_json(production, Terminal())
    assert wants_json(settings(tmp_path, DEALTRAIL_LOG_FORMAT="json"), Terminal())
    assert not wants_json(settings(tmp_path, DEALTRAIL_LOG_FORMAT="text"), io.StringIO())


def test_request_ids_from_clients_are_kept_only_when_safe_to_log() -> None:
    assert context.request_id_from("abc-123_X.y:z") == "abc-123_X.y:z"
    for unsafe in ("", "two words", "line\nbreak", 'quote"', "x" * 129, "é"):
        generated = context.request_id_from(unsafe)
        assert generated != unsafe
        assert len(generated) == 32
    assert context.request_id_from(None) != context.request_id_from(None)
