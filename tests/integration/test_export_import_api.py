"""``GET /v1/audit/export`` and ``POST /v1/imports`` over HTTP, with their permissions."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import auth

CSV = {"Content-Type": "text/csv"}
HEADER = "external_id,title,pipeline,stage,status,value,owner,created_at,closed_at,lost_reason\n"


async def make_history(api: httpx.AsyncClient) -> str:
    r = await api.post(
        "/v1/pipelines", json={"name": "Sales", "currency": "EUR"}, headers=auth("admin")
    )
    assert r.status_code == 201, r.text
    pipeline_id: str = r.json()["id"]
    for n in range(3):
        r = await api.post(
            "/v1/deals",
            json={"pipeline_id": pipeline_id, "title": f"Deal {n}", "value": "100.50"},
            headers=auth("rep"),
        )
        assert r.status_code == 201, r.text
        r = await api.post(
            f"/v1/deals/{r.json()['id']}/advance", json={"stage": "Quote sent"}, headers=auth("rep")
        )
        assert r.status_code == 200, r.text
    return pipeline_id


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines()]


async def test_auditors_stream_the_event_log_as_json_lines_and_reps_may_not(
    api: httpx.AsyncClient,
) -> None:
    await make_history(api)

    r = await api.get("/v1/audit/export", headers=auth("auditor"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    events = lines(r)
    assert len(events) == 7  # a pipeline, three deals created and advanced
    positions = [e["position"] for e in events]
    assert positions == sorted(positions) and len(set(positions)) == 7
    assert r.headers["Export-To-Position"] == str(positions[-1])
    assert [e["type"] for e in events[:3]] == ["PipelineDefined", "DealCreated", "StageAdvanced"]
    assert events[1]["actor"] == "rita"

    r = await api.get(
        "/v1/audit/export",
        params={"from_position": positions[2], "to_position": positions[4]},
        headers=auth("admin"),
    )
    assert r.status_code == 200
    assert [e["position"] for e in lines(r)] == positions[2:5]

    r = await api.get("/v1/audit/export", headers=auth("rep"))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    r = await api.get("/v1/audit/export", params={"from_position": 0}, headers=auth("auditor"))
    assert r.status_code == 422


async def test_admins_import_a_csv_and_get_a_report_of_imported_unchanged_and_rejected_rows(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await make_history(api)
    body = HEADER + (
        "X-1,Imported one,Sales,,open,10,rita,2026-01-05,,\n"
        "X-2,Imported two,Sales,Quote sent,won,20,raj,2026-01-05,2026-02-01,\n"
        "X-3,Broken,Sales,Nowhere,open,10,rita,2026-01-05,,\n"
    )
    r = await api.post("/v1/imports", content=body, headers={**auth("admin"), **CSV})
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["imported"], report["created"], report["unchanged"]) == (2, 2, 0)
    assert report["rejected"] == [
        {"file": "upload.csv", "line": 4, "reason": report["rejected"][0]["reason"]}
    ]
    assert "Nowhere" in report["rejected"][0]["reason"]
    assert report["pipelines"] == {"Sales": pipeline_id}

    r = await api.post("/v1/imports", content=body, headers={**auth("admin"), **CSV})
    assert r.status_code == 200
    assert (r.json()["imported"], r.json()["unchanged"], r.json()["events"]) == (0, 2, 0)

    export = await api.get("/v1/audit/export", headers=auth("admin"))
    imported = [e for e in lines(export) if e["actor"] == "ann"]
    assert [e["type"] for e in imported] == [
        "PipelineDefined",
        "DealCreated",
        "DealCreated",
        "DealWon",
    ]


async def test_a_strict_import_with_a_bad_row_writes_nothing_and_answers_422(
    api: httpx.AsyncClient,
) -> None:
    await make_history(api)
    before = lines(await api.get("/v1/audit/export", headers=auth("admin")))
    body = HEADER + (
        "S-1,Fine,Sales,,open,10,rita,2026-01-05,,\nS-2,Bad,Sales,,open,-1,rita,2026-01-05,,\n"
    )
    r = await api.post(
        "/v1/imports", params={"strict": "true"}, content=body, headers={**auth("admin"), **CSV}
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "rows_rejected"
    assert error["details"]["rejected"][0]["line"] == 3
    assert error["details"]["written"] is False
    after = lines(await api.get("/v1/audit/export", headers=auth("admin")))
    assert after == before


async def test_only_admins_may_import_and_only_csv_bodies_are_accepted(
    api: httpx.AsyncClient,
) -> None:
    body = HEADER + "R-1,Rep try,Sales,,open,10,rita,2026-01-05,,\n"
    for who in ("rep", "manager", "auditor"):
        r = await api.post("/v1/imports", content=body, headers={**auth(who), **CSV})
        assert r.status_code == 403, who
    r = await api.post(
        "/v1/imports", content=body, headers={**auth("admin"), "Content-Type": "application/json"}
    )
    assert r.status_code == 415
    r = await api.post("/v1/imports", content="title\nx\n", headers={**auth("admin"), **CSV})
    assert r.status_code == 422
    assert "missing column" in r.json()["error"]["message"]
    r = await api.post(
        "/v1/imports", content=HEADER + "x" * 70_000, headers={**auth("admin"), **CSV}
    )
    assert r.status_code == 413
