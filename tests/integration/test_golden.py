"""The read models and answers of a fixed 2,000-deal demo history equal the golden files.

The files (``tests/golden``) were written before the read side was reorganised; this test
rebuilds the same history on each backend and compares every table row and every answer,
so behaviour cannot drift while code moves. ``python -m tests.golden`` rewrites them when
a change is meant to alter what the read models hold or answer.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import Backend
from tests.golden.build import build, read


def first_difference(got: Any, expected: Any, where: str = "") -> str | None:
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(set(expected) | set(got)):
            if key not in got or key not in expected:
                return f"{where}.{key}: only in {'expected' if key in expected else 'got'}"
            found = first_difference(got[key], expected[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(got, list):
        if len(got) != len(expected):
            return f"{where}: {len(got)} items, expected {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            found = first_difference(g, e, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if got == expected else f"{where}: got {got!r}, expected {expected!r}"


async def test_read_models_and_answers_equal_the_golden_files(backend: Backend) -> None:
    golden = await build(backend)
    for kind in ("tables", "answers"):
        expected = read(kind)
        assert sorted(golden[kind]) == sorted(expected), kind
        for name in expected:
            assert not first_difference(golden[kind][name], expected[name], name)
