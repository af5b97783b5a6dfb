"""Rate limits per token, by role: headers on every answer, 429 with ``Retry-After`` over
the limit, and nothing written by a refused command."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import TOKENS, Backend, TestClock, auth, client_for
from tests.e2e.test_metrics import scrape
from tests.scrape import moved

HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")


async def deals_seen(api: httpx.AsyncClient) -> int:
    r = await api.get("/v1/deals", headers=auth("admin"))
    assert r.status_code == 200
    return len(r.json()["data"])


async def test_a_token_over_its_roles_limit_gets_429_and_its_command_is_not_run(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    settings = backend.settings(tmp_path / "data", DEALTRAIL_RATE_LIMITS="rep=3/minute")
    async with client_for(settings, clock) as api:
        made = await api.post(
            "/v1/pipelines", json={"name": "Sales", "currency": "EUR"}, headers=auth("admin")
        )
        assert made.status_code == 201
        assert not any(h in made.headers for h in HEADERS)  # admins are not limited here
        before = await scrape(api)
        body = {"pipeline_id": made.json()["id"], "title": "A", "value": "1"}

        remaining = []
        for _ in range(3):
            r = await api.get("/v1/deals", headers=auth("rep"))
            assert r.status_code == 200
            assert r.headers["RateLimit-Limit"] == "3"
            assert r.headers["RateLimit-Policy"] == "3;w=60"
            assert 0 < int(r.headers["RateLimit-Reset"]) <= 60
            remaining.append(r.headers["RateLimit-Remaining"])
        assert remaining == ["2", "1", "0"]

        refused = await api.post("/v1/deals", json=body, headers=auth("rep"))
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "rate_limited"
        assert "at most 3 per minute" in error["message"]
        assert error["details"]["limit"] == "3 per 1 minute"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert error["details"]["request_id"] == refused.headers["X-Request-ID"]
        assert await deals_seen(api) == 0
        after = await scrape(api)
    assert moved(before, after, "dealtrail_rate_limited_total", role="rep") == 1


async def test_limits_count_per_token_and_unknown_tokens_are_not_counted(
    backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    settings = backend.settings(tmp_path / "data", DEALTRAIL_RATE_LIMITS="*=2/minute")
    async with client_for(settings, clock) as api:
        for _ in range(5):
            wrong = await api.get("/v1/deals", headers={"Authorization": "Bearer not-a-token"})
            assert wrong.status_code == 401
            assert "RateLimit-Remaining" not in wrong.headers
        assert TOKENS["rep"] != TOKENS["rep2"]  # two reps, two tokens, two counts
        for who in ("rep", "rep2", "auditor"):
            answers = [await api.get("/v1/deals", headers=auth(who)) for _ in range(3)]
            assert [r.status_code for r in answers] == [200, 200, 429], who


async def test_no_limits_in_development_unless_configured(api: httpx.AsyncClient) -> None:
    answers = [await api.get("/v1/deals", headers=auth("rep")) for _ in range(30)]
    assert {r.status_code for r in answers} == {200}
    assert not any(h in answers[-1].headers for h in HEADERS)
