"""Logging of every ``dealtrail`` process: JSON lines for machines, text for people.

``DEALTRAIL_LOG_FORMAT=json`` writes one JSON object per line to stderr (``time``,
``level``, ``logger``, ``message``, the request's ``request_id``, ``principal`` and
``route`` while a request is served, ``trace_id`` with tracing on, and the fields a line
adds: an access line has ``method``, ``status`` and ``duration_ms``); ``text`` writes
readable lines; ``auto`` (the default) is text on a terminal in development and JSON
everywhere else.

Secrets never reach the output: every configured token, password and key is replaced by
``[redacted]`` in the finished line (message, arguments and tracebacks alike), and so is
whatever follows ``Bearer``, the password of any ``scheme://user:password@`` URL and
any webhook signing secret (``whsec_...``, which a DEBUG line of a database driver may
show among a statement's parameters).
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from libs.observability import context, tracing
from services.runtime.settings import Settings

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 6  # shorter configured secrets are not searched for (too many false hits)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_WEBHOOK_SECRET = re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@\"']+:)[^\s@/\"']+@")
# Fields of a record that the text format shows after the message, when a line has them.
CONTEXT_FIELDS = ("request_id", "principal", "route", "trace_id")


class Redactor:
    """Replaces secrets in finished log lines."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_CHARS:
                found.add(secret)
                found.add(json.dumps(secret)[1:-1])  # as it appears inside a JSON string
        self._secrets = sorted(found, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        line = _BEARER.sub(rf"\g<1>{REDACTED}", line)
        line = _WEBHOOK_SECRET.sub(f"whsec_{REDACTED}", line)
        return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", line)


class ContextFilter(logging.Filter):
    """Adds the request being served (and the trace) to every record written meanwhile."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = context.current()
        if current is not None:
            for name, value in current.log_fields().items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        trace_id = tracing.current_trace_id()
        if trace_id is not None and not hasattr(record, "trace_id"):
            record.trace_id = trace_id
        return True


def _iso_time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLines(JsonFormatter):
    """One JSON object per record, secrets redacted."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, "color_message", "taskName"],
        )
        self._redact = Redactor(secrets)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_time(record)

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


class TextLines(logging.Formatter):
    """``time LEVEL logger: message  request_id=... principal=...``, secrets redacted."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._redact = Redactor(secrets)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_time(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if hasattr(record, n)]
        if extras:
            head, sep, rest = line.partition("\n")  # after the message, before a traceback
            line = f"{head}  {' '.join(extras)}{sep}{rest}"
        return self._redact(line)


def wants_json(settings: Settings, stream: Any = None) -> bool:
    if settings.log_format != "auto":
        return settings.log_format == "json"
    stream = stream if stream is not None else sys.stderr
    on_terminal = bool(getattr(stream, "isatty", lambda: False)())
    return not (settings.environment == "development" and on_terminal)


def log_config(settings: Settings) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of a dealtrail process (uvicorn's too)."""
    formatter = JsonLines if wants_json(settings) else TextLines
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"dealtrail": {"()": formatter, "secrets": settings.secrets}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "dealtrail",
                "filters": ["context"],
            }
        },
        "root": {"level": settings.log_level, "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's own lines go through the same handler; its access log is
            # replaced by the API's (one line per request, with the request id).
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
        },
    }


def configure_logging(settings: Settings) -> None:
    """Apply :func:`log_config` to this process."""
    logging.config.dictConfig(log_config(settings))
