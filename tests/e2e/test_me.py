"""GET /v1/me: who a token belongs to and what the role may do."""

from __future__ import annotations

import httpx

from tests.conftest import PRINCIPALS, auth


async def test_me_names_the_principal_and_what_its_role_may_do(api: httpx.AsyncClient) -> None:
    expected = {
        "admin": (True, True, True, True),
        "manager": (True, True, False, True),
        "rep": (True, False, False, False),
        "auditor": (False, False, True, False),
    }
    for who, (commands, pipelines, audit, waive) in expected.items():
        r = await api.get("/v1/me", headers=auth(who))
        assert r.status_code == 200, r.text
        name, role = PRINCIPALS[who]
        assert r.json() == {
            "name": name,
            "role": role,
            "may_run_commands": commands,
            "may_manage_pipelines": pipelines,
            "may_read_audit": audit,
            "may_waive_checklists": waive,
        }


async def test_me_without_a_known_token_is_401_in_the_error_shape(api: httpx.AsyncClient) -> None:
    missing = await api.get("/v1/me")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthorized"
    unknown = await api.get("/v1/me", headers={"Authorization": "Bearer not-a-token\x00"})
    assert unknown.status_code == 401
    assert unknown.json()["error"]["message"] == "unknown API token"
