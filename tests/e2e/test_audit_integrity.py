"""Proving the record over HTTP: verify, the public key, and an export checked at home."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from libs.application.integrity import Signer
from libs.chain_verifier import load_public_key, verify_export
from services.runtime.settings import Settings
from tests.conftest import Backend, auth
from tests.e2e.test_concurrency import head, new_deal
from tests.integration.test_audit_chain import Raw

KEY = Signer.generate()


@pytest.fixture
def settings(backend: Backend, tmp_path: Path) -> Settings:
    return backend.settings(tmp_path / "data", DEALTRAIL_SIGNING_KEY=KEY)


async def some_history(api: httpx.AsyncClient, deals: int = 3) -> list[str]:
    ids = []
    for _ in range(deals):
        deal = await new_deal(api)
        r = await api.post(
            f"/v1/deals/{deal}/advance", json={"stage": "Quote sent"}, headers=auth("rep")
        )
        assert r.status_code == 200, r.text
        ids.append(deal)
    return ids


async def test_auditors_and_admins_verify_the_log_and_others_may_not(
    api: httpx.AsyncClient,
) -> None:
    await some_history(api)
    for who in ("auditor", "admin"):
        r = await api.get("/v1/audit/verify", headers=auth(who))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ok"] is True and body["first_break"] is None
        assert body["checked"] == head(api) == body["to_position"]
    for who in ("rep", "manager"):
        r = await api.get("/v1/audit/verify", headers=auth(who))
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden"
    assert (await api.get("/v1/audit/verify")).status_code == 401


async def test_verify_names_a_change_made_in_the_database(
    api: httpx.AsyncClient, backend: Backend
) -> None:
    await some_history(api)
    raw = Raw(backend, api.app.state.runtime.application)  # type: ignore[attr-defined]
    target = raw.positions()[4]
    # Off the event loop: the service's worker may be mid-transaction on it.
    await asyncio.to_thread(raw.change_payload, target)
    r = await api.get("/v1/audit/verify", headers=auth("auditor"))
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is False
    assert body["first_break"]["position"] == target
    assert body["first_break"]["kind"] == "changed"
    r = await api.get(
        "/v1/audit/verify", params={"to_position": target - 1}, headers=auth("auditor")
    )
    assert r.json()["ok"] is True and r.json()["checked"] == target - 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from_position": 0}, "from_position"),
        ({"from_position": 5, "to_position": 4}, "to_position"),
        ({"to_position": 2**70}, "to_position"),
        ({"from_position": "x"}, "from_position"),
    ],
)
async def test_verify_refuses_a_bad_range_naming_the_field(
    api: httpx.AsyncClient, params: dict[str, object], field: str
) -> None:
    r = await api.get("/v1/audit/verify", params=params, headers=auth("auditor"))
    assert r.status_code == 422, r.text
    assert field in str(r.json()["error"]["details"])


async def test_every_role_reads_the_public_key_and_it_verifies_an_export_taken_home(
    api: httpx.AsyncClient,
) -> None:
    await some_history(api, deals=4)
    r = await api.get("/v1/audit/public-key", headers=auth("rep"))
    assert r.status_code == 200
    published = r.json()
    assert published["algorithm"] == "Ed25519"
    assert published["public_key"] == Signer.from_text(KEY).public_key_text
    assert load_public_key(published["pem"]) == load_public_key(published["public_key"])

    r = await api.get("/v1/audit/export", headers=auth("auditor"))
    assert r.status_code == 200
    report = verify_export(r.text.splitlines(), [load_public_key(published["public_key"])])
    assert report.ok, report.finding
    assert report.events == head(api) and report.signed_up_to == head(api)

    # The same file with one payload edited is refused.
    lines = r.text.splitlines()
    lines[3] = lines[3].replace('"actor":"', '"actor":"x', 1)
    broken = verify_export(lines, [load_public_key(published["public_key"])])
    assert not broken.ok and broken.finding is not None


async def test_without_a_signing_key_there_is_no_public_key(
    backend: Backend, tmp_path: Path
) -> None:
    from services.pipeline_api.main import create_app

    app = create_app(backend.settings(tmp_path / "plain"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dealtrail") as client:
            r = await client.get("/v1/audit/public-key", headers=auth("auditor"))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "no_signing_key"


async def test_concurrent_commands_over_http_leave_one_unbroken_chain(
    api: httpx.AsyncClient,
) -> None:
    deals = await some_history(api, deals=2)

    async def update(deal: str, n: int) -> int:
        r = await api.patch(f"/v1/deals/{deal}", json={"title": f"t{n}"}, headers=auth("admin"))
        return r.status_code

    statuses = await asyncio.gather(*(update(deals[n % 2], n) for n in range(24)))
    assert statuses.count(200) >= 2
    r = await api.get("/v1/audit/verify", headers=auth("auditor"))
    recorder = api.app.state.runtime.application.recorder  # type: ignore[attr-defined]
    stored = recorder.select_notifications(1, 10_000)  # PostgreSQL: refused retries leave gaps
    body = r.json()
    assert body["ok"] is True, body
    assert body["checked"] == len(stored) and body["last_position"] == head(api)
