"""Every operation of ``/openapi.json`` fuzzed over real HTTP: no input gives a server error.

Schemathesis generates requests from the OpenAPI document (valid and invalid ones) for a
started service on each backend. Path ids are mostly replaced by ids of a seeded history
(a pipeline with open, won and lost deals), so that commands reach the domain and writes
succeed instead of ending in 404. The only 5xx allowed is 503 ``projection_behind`` (a
generated ``min_position`` beyond the log). Every error status an operation answers
must be one the document lists for it. Runs derandomised, so CI sees the same requests
each time; ``DEALTRAIL_FUZZ_RANDOM=1`` explores new ones.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import Backend, auth
from tests.started import started_service

EXAMPLES_PER_OPERATION = int(os.environ.get("DEALTRAIL_FUZZ_EXAMPLES", "30"))
ALLOWED_5XX = {"projection_behind"}
# Fields whose generated value is mostly replaced by a seeded one of this kind.
SAME_AS = {"stage": "stage_id", "move_open_deals_to": "stage_id"}


class Seeded:
    """Ids of the seeded history, which generated path parameters are replaced with."""

    def __init__(self) -> None:
        self.values: dict[str, list[str]] = {}
        self.statuses: dict[int, int] = {}
        self.document: dict[str, Any] = {}
        self.undocumented: set[str] = set()  # "METHOD /path -> status" not in the document

    def add(self, name: str, value: str) -> None:
        self.values.setdefault(name, []).append(value)


def seed(base_url: str) -> Seeded:
    seeded = Seeded()
    with httpx.Client(base_url=base_url, timeout=30, headers=auth("admin")) as api:
        for name, currency in (("Fuzz", "EUR"), ("Fuzz USD", "USD")):
            r = api.post("/v1/pipelines", json={"name": name, "currency": currency})
            assert r.status_code == 201, r.text
            pipeline = r.json()
            seeded.add("pipeline_id", pipeline["id"])
            for stage in pipeline["stages"]:
                seeded.add("stage_id", stage["id"])
            for reason in pipeline["lost_reasons"]:
                seeded.add("reason", reason)
        pipeline_id = seeded.values["pipeline_id"][0]
        for i, then in enumerate(("open", "open", "won", "lost", "open")):
            r = api.post(
                "/v1/deals",
                json={"pipeline_id": pipeline_id, "title": f"Deal {i}", "value": "100"},
            )
            assert r.status_code == 201, r.text
            deal_id = r.json()["id"]
            seeded.add("deal_id", deal_id)
            if then == "won":
                assert api.post(f"/v1/deals/{deal_id}/win").status_code == 200
            elif then == "lost":
                r = api.post(f"/v1/deals/{deal_id}/lose", json={"reason": "Price"})
                assert r.status_code == 200, r.text
            if then == "open":
                r = api.post(
                    f"/v1/deals/{deal_id}/activities",
                    json={"type": "call", "subject": f"Call {i}", "due_at": "2026-01-01T09:00:00Z"},
                )
                assert r.status_code == 201, r.text
                seeded.add("activity_id", r.json()["id"])
        for owner in ("rita", "raj", "max"):
            seeded.add("owner", owner)
            seeded.add("assignee", owner)
    return seeded


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Seeded]]:
    from tests.conftest import PG_URL, need_postgres

    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    if request.param == "sqlite":
        backend = Backend("sqlite", f"sqlite:///{tmp / 'dealtrail.db'}")
    else:
        need_postgres()
        backend = Backend("postgres", PG_URL, f"t_fuzz_{random.randrange(1 << 40):x}")
    try:
        # a generated min_position beyond the log waits this long before its 503, and an
        # event stream ends after 0.3 s rather than following the log
        with started_service(
            backend, tmp, DEALTRAIL_READ_WAIT_SECONDS="0.1", DEALTRAIL_SSE_MAX_MINUTES="0.005"
        ) as started:
            yield started.base_url, seed(started.base_url)
            log = started.log_text()
            assert "Traceback" not in log, log[-5000:]
    finally:
        if backend.schema:
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{backend.schema}" CASCADE')


def check(case: Any, seeded: Seeded) -> None:
    """Call the service with ``case`` (ids mostly from the seeded history) as an admin."""
    chooser = random.Random(repr(case.path_parameters) + repr(case.body) + case.path)
    for params in (case.path_parameters, case.query, case.body):
        if not isinstance(params, dict):
            continue
        for name in list(params):
            known = seeded.values.get(SAME_AS.get(name, name))
            if known and chooser.random() < 0.8:
                params[name] = chooser.choice(known)
    case.headers = {**(case.headers or {}), "Authorization": auth("admin")["Authorization"]}
    response = case.call(timeout=30)
    seeded.statuses[response.status_code] = seeded.statuses.get(response.status_code, 0) + 1
    listed = seeded.document["paths"][case.operation.path][case.method.lower()]["responses"]
    if response.status_code >= 400 and str(response.status_code) not in listed:
        seeded.undocumented.add(f"{case.method} {case.operation.path} -> {response.status_code}")
    if response.status_code >= 500:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        assert response.status_code == 503 and code in ALLOWED_5XX, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: "
            f"{response.text[:500]}\n{case.as_curl_command()}"
        )


def test_no_generated_request_gets_a_server_error(service: tuple[str, Seeded]) -> None:
    base_url, seeded = service
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    seeded.document = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode, examples in (
            (GenerationMode.POSITIVE, EXAMPLES_PER_OPERATION),
            (GenerationMode.NEGATIVE, EXAMPLES_PER_OPERATION // 2),
        ):

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=os.environ.get("DEALTRAIL_FUZZ_RANDOM") != "1",
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def fuzz(case: Any) -> None:
                check(case, seeded)

            try:
                fuzz()
            except Unsatisfiable:
                pass  # nothing to make invalid (an operation without parameters or body)
            except AssertionError as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    print(f"{operations} operations, answers by status: {dict(sorted(seeded.statuses.items()))}")
    assert operations > 30
    assert any(200 <= status < 300 for status in seeded.statuses), "nothing succeeded"
    assert not failures, "\n\n".join(failures)
    assert not seeded.undocumented, sorted(seeded.undocumented)
