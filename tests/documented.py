"""Whether an answer's status is one the OpenAPI document lists for its operation.

Every request the end-to-end tests send through ``client_for`` (and every one the fuzz
test generates) is checked: an error status the document does not list for the
operation fails the test that received it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import httpx

_PARAM = re.compile(r"\{[^/}]+\}")


@lru_cache(maxsize=8)
def _templates(paths: tuple[str, ...]) -> list[tuple[re.Pattern[str], str]]:
    # Literal paths before templated ones, as the app matches them (/v1/audit/export is
    # not /v1/audit/{x}); among equals, fewer parameters first.
    ordered = sorted(paths, key=lambda p: len(_PARAM.findall(p)))
    out = []
    for path in ordered:
        literal = [re.escape(part) for part in _PARAM.split(path)]
        out.append((re.compile("^" + "[^/]+".join(literal) + "$"), path))
    return out


def operation_of(document: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    """The operation of the document that answers ``method path`` (None if none does)."""
    for pattern, template in _templates(tuple(document["paths"])):
        if pattern.match(path):
            operation: dict[str, Any] | None = document["paths"][template].get(method.lower())
            if operation is not None:
                return operation
    return None


def undocumented(document: dict[str, Any], method: str, path: str, status: int) -> str | None:
    """Why an error ``status`` for ``method path`` is not in the document (None if it is,
    or if no operation answers the path and method: 404 and 405 of the framework). A 500
    is a bug, which no operation lists: the tests that meet one fail on it themselves."""
    if status < 400 or status == 500:
        return None
    operation = operation_of(document, method, path)
    if operation is None:
        return None
    listed = sorted(operation["responses"])
    if str(status) in operation["responses"]:
        return None
    return f"{method} {path} answered {status}, not among {operation['operationId']}'s {listed}"


def checking_hook(document_of: Any) -> Any:
    """An httpx response hook that fails on an undocumented error status; ``document_of()``
    gives the OpenAPI document."""

    async def check(response: httpx.Response) -> None:
        if response.status_code < 400 or response.status_code == 500:
            return  # the document is built only for the first error an app answers
        request = response.request
        problem = undocumented(
            document_of(), request.method, request.url.path, response.status_code
        )
        assert problem is None, problem

    return check
