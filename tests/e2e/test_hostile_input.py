"""A hostile caller with the least-privileged token cannot break the service.

Each test is one way in which a single request used to stop the read side, answer 500,
pass a data error off as an outage, or store something it should not. The service clock
starts at 2026-06-01 12:00 UTC; every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from services.pipeline_api.idempotency_store import idempotency_keys
from services.projections.runner import Worker
from services.projections.source import EventSource
from tests.conftest import Backend, TestClock, auth, client_for
from tests.e2e.test_errors import assert_error, head

T = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TOO_EARLY = "0001-01-01T00:00:00+01:00"
TOO_LATE = "9999-12-31T23:59:59-01:00"
EXTREMES = (TOO_EARLY, TOO_LATE, "1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z")


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def runtime(api: httpx.AsyncClient) -> Any:
    return api.app.state.runtime  # type: ignore[attr-defined]


async def define_pipeline(api: httpx.AsyncClient, **body: Any) -> str:
    body = {"name": "New business", "currency": "EUR", **body}
    r = await api.post("/v1/pipelines", json=body, headers=auth("admin"))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def create_deal(
    api: httpx.AsyncClient, pipeline_id: str, who: str = "rep", **body: Any
) -> Any:
    body = {"pipeline_id": pipeline_id, "title": "ACME renewal", "value": "100", **body}
    r = await api.post("/v1/deals", json=body, headers=auth(who))
    assert r.status_code == 201, r.text
    return r.json()


async def assert_read_side_works(api: httpx.AsyncClient, pipeline_id: str) -> None:
    """A new deal can be read back at its own position: the projections keep going."""
    deal = await create_deal(api, pipeline_id, title="After the attempt")
    r = await api.get(
        f"/v1/deals/{deal['id']}", params={"min_position": deal["position"]}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    r = await api.get(
        f"/v1/pipelines/{pipeline_id}/board",
        params={"min_position": deal["position"]},
        headers=auth("manager"),
    )
    assert r.status_code == 200, r.text
    assert not runtime(api).breaker.tripped


# --- 1. a far-away snooze no longer reaches the projections ---------------------------------


async def test_a_snooze_beyond_ten_years_is_refused_and_the_read_side_keeps_going(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline_id = await define_pipeline(api)
    deal = await create_deal(api, pipeline_id)
    before = head(api)
    for until in (*EXTREMES, (T + timedelta(days=3654)).isoformat()):
        r = await api.post(
            f"/v1/deals/{deal['id']}/snooze",
            json={"until": until, "reason": "x"},
            headers=auth("rep"),
        )
        assert_error(r, 422, field="until", label=until)
    assert head(api) == before

    until = T + timedelta(days=3650)
    r = await api.post(
        f"/v1/deals/{deal['id']}/snooze",
        json={"until": until.isoformat(), "reason": "back in ten years"},
        headers=auth("rep"),
    )
    assert r.status_code == 200, r.text
    shown = await api.get(
        f"/v1/deals/{deal['id']}",
        params={"min_position": r.json()["position"]},
        headers=auth("rep"),
    )
    assert shown.status_code == 200, shown.text
    assert datetime.fromisoformat(shown.json()["snoozed_until"]) == until
    await assert_read_side_works(api, pipeline_id)


# --- 2. extreme moments everywhere -------------------------------------------------------


async def test_extreme_moments_are_422_naming_the_field_on_every_command_and_query(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    deal = await create_deal(api, pipeline_id)
    before = head(api)
    for moment in EXTREMES:
        commands = [
            ("POST", "/v1/deals", {"pipeline_id": pipeline_id, "title": "X", "value": "1"}),
            ("POST", f"/v1/deals/{deal['id']}/advance", {"stage": "Quote sent"}),
            ("PATCH", f"/v1/deals/{deal['id']}", {"title": "Y"}),
            ("PUT", "/v1/owners/rita", {"team": "North"}),
            ("POST", "/v1/pipelines", {"name": "P", "currency": "EUR"}),
        ]
        for method, path, body in commands:
            r = await api.request(
                method, path, json={**body, "occurred_at": moment}, headers=auth("admin")
            )
            assert_error(r, 422, field="occurred_at", label=f"{method} {path} {moment}")
        queries = [
            (f"/v1/deals/{deal['id']}", "as_of"),
            (f"/v1/pipelines/{pipeline_id}/board", "as_of"),
            ("/v1/deals", "updated_since"),
            ("/v1/audit", "from"),
            ("/v1/audit", "to"),
            ("/v1/reports/win-rate", "from"),
            ("/v1/reports/owners", "to"),
        ]
        for path, name in queries:
            r = await api.get(path, params={name: moment}, headers=auth("admin"))
            assert_error(r, 422, field=name, label=f"{path} {name}={moment}")
    assert head(api) == before


async def test_numbers_and_dates_without_a_time_are_not_moments(api: httpx.AsyncClient) -> None:
    pipeline_id = await define_pipeline(api)
    deal = await create_deal(api, pipeline_id)
    before = head(api)
    for value in (1700000000, 0.5, "1700000000", "2026-05-01", "2026-05-01T10:00:00", True):
        r = await api.post(
            f"/v1/deals/{deal['id']}/win", json={"occurred_at": value}, headers=auth("rep")
        )
        assert_error(r, 422, field="occurred_at", label=repr(value))
        r = await api.get("/v1/audit", params={"to": str(value)}, headers=auth("auditor"))
        assert_error(r, 422, field="to", label=repr(value))
    for value in (20260501, "2026-5-1", "9999-12-31", "1969-12-31"):
        r = await api.patch(
            f"/v1/deals/{deal['id']}", json={"expected_close_date": value}, headers=auth("rep")
        )
        assert_error(r, 422, field="expected_close_date", label=repr(value))
    assert head(api) == before


async def test_an_import_row_with_an_extreme_date_is_rejected_and_the_others_imported(
    api: httpx.AsyncClient,
) -> None:
    await define_pipeline(api, name="Imports")
    text = (
        "external_id,pipeline,title,value,owner,stage,status,created_at\n"
        "ok-1,Imports,Fine,10,rita,,open,2026-01-02\n"
        f"bad-1,Imports,Too late,10,rita,,open,{TOO_LATE}\n"
        f"bad-2,Imports,Too early,10,rita,,open,{TOO_EARLY}\n"
    )
    r = await api.post(
        "/v1/imports", content=text, headers={**auth("admin"), "Content-Type": "text/csv"}
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["imported"] == 1
    assert [row["line"] for row in report["rejected"]] == [3, 4]
    assert all("created_at" in row["reason"] for row in report["rejected"])


# --- 3. tampered cursors ---------------------------------------------------------------------


async def test_tampered_cursors_are_422_invalid_cursor_and_no_outage(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    deal = await create_deal(api, pipeline_id)
    deal_cursors = [
        b64(["2026-01-01", 1]),
        b64(b"[" * 3000),
        b64([TOO_LATE, str(uuid.uuid4())]),
        b64(["2026-01-01T00:00:00Z", "not-a-uuid"]),
        b64([1, 2, 3]),
        "!!not base64!!",
        "A" * 2000,
    ]
    for cursor in deal_cursors:
        r = await api.get("/v1/deals", params={"cursor": cursor}, headers=auth("rep"))
        assert_error(r, 422, field="cursor", label=cursor[:40])
    position_cursors = [b64(True), b64(99999999999999999999), b64(-1), b64("5"), b64(1.5)]
    for cursor in position_cursors:
        for path, who in ((f"/v1/deals/{deal['id']}/history", "rep"), ("/v1/audit", "auditor")):
            r = await api.get(path, params={"cursor": cursor}, headers=auth(who))
            assert_error(r, 422, "invalid_cursor", "cursor", label=f"{path} {cursor}")
    # a cursor beyond every position is valid and simply ends the list
    r = await api.get("/v1/audit", params={"cursor": b64(2**63 - 1)}, headers=auth("auditor"))
    assert r.status_code == 200, r.text
    assert r.json()["data"] == []
    await assert_read_side_works(api, pipeline_id)


# --- 4. text filters the database cannot hold -------------------------------------------------


async def test_filters_with_nul_or_control_characters_are_422_not_an_outage(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    probes = [
        ("/v1/deals", "owner", "rep"),
        ("/v1/deals", "stage", "rep"),
        ("/v1/audit", "actor", "auditor"),
        ("/v1/audit", "event_type", "auditor"),
        ("/v1/reports/owners", "owner", "rep"),
        ("/v1/reports/win-rate", "team", "rep"),
    ]
    for path, name, who in probes:
        for value in ("\x00", "ri\x00ta", "a\x1bb", "x" * 201):
            r = await api.get(path, params={name: value}, headers=auth(who))
            assert_error(r, 422, field=name, label=f"{path} {name}={value!r}")
    health = await api.get("/health")
    assert health.status_code == 200, health.text
    await assert_read_side_works(api, pipeline_id)


# --- 5. formula cells in CSV -----------------------------------------------------------------


async def test_report_csv_cells_that_look_like_formulas_are_escaped(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline_id = await define_pipeline(
        api,
        stages=[
            {"name": "Lead", "probability": 10, "rotting_days": 1},
            {"name": "Won soon", "probability": 90},
        ],
    )
    title, owner = "=cmd|' /C calc'!A0", '=HYPERLINK("http://evil")'
    await create_deal(api, pipeline_id, who="admin", title=title, owner=owner)
    await create_deal(api, pipeline_id, who="admin", title="@SUM(A1)", owner="+plus")
    last = await create_deal(api, pipeline_id, who="admin", title="-2+3", owner="@mention")
    clock.advance(days=3)
    params = {"pipeline_id": pipeline_id, "min_position": last["position"]}
    cells: list[str] = []
    for report in ("stale-deals", "owners"):
        r = await api.get(
            f"/v1/reports/{report}",
            params=params,
            headers={**auth("manager"), "Accept": "text/csv"},
        )
        assert r.status_code == 200, r.text
        cells += [cell for row in csv.reader(io.StringIO(r.text)) for cell in row]
    for text in (title, owner, "@SUM(A1)", "+plus", "-2+3", "@mention"):
        assert text not in cells, text
        assert "'" + text in cells, text
    assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r")]
    assert not [c for c in cells if c.startswith("-") and not c.lstrip("-")[:1].isdigit()]


# --- 6. waiting reads hold no connection ----------------------------------------------------


async def wait_for(condition: Any, what: str, seconds: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_reads_waiting_for_a_position_hold_no_connection_and_are_capped(
    backend: Backend, tmp_path: Path
) -> None:
    settings = backend.settings(
        tmp_path / "data",
        DEALTRAIL_READ_WAIT_SECONDS=60,
        DEALTRAIL_MAX_READ_WAITERS=20,
        DEALTRAIL_EMBEDDED_WORKER=False,
    )
    async with client_for(settings, TestClock()) as api:
        # the worker runs only when the test says, so every connection checked out of the
        # read side's pool below belongs to the queries
        wired = runtime(api)
        worker = Worker(
            engine=wired.engine,
            source=EventSource(wired.application),
            location=wired.settings.store,
        )
        pipeline_id = await define_pipeline(api)
        deal = await create_deal(api, pipeline_id)
        await worker.catch_up()
        target = deal["position"] + 3
        waiting = [
            asyncio.create_task(
                api.get(
                    f"/v1/deals/{deal['id']}", params={"min_position": target}, headers=auth("rep")
                )
            )
            for _ in range(20)
        ]
        await wait_for(lambda: wired.read_models.waiting == 20, "twenty waiting reads")
        # twenty waiting reads, more than the pool's connections, and none holds one (the
        # one poller of positions may, for a moment): a plain query answers at once, and
        # the next waiter is refused
        assert wired.engine.pool.checkedout() <= 1
        plain = await api.get(f"/v1/deals/{deal['id']}", headers=auth("rep"))
        assert plain.status_code == 200, plain.text
        refused = await api.get(
            f"/v1/deals/{deal['id']}", params={"min_position": target}, headers=auth("rep")
        )
        assert_error(refused, 503, "too_many_waiters")
        assert refused.headers["Retry-After"]
        for title in ("One", "Two", "Three"):
            await create_deal(api, pipeline_id, title=title)
        await worker.catch_up()
        answers = await asyncio.gather(*waiting)
        assert {a.status_code for a in answers} == {200}
        assert all(a.json()["position"] >= target for a in answers)


# --- 7 and 8. idempotency keys: stored before the answer leaves, only for real requests ---


async def test_an_idempotent_answer_is_stored_before_its_first_byte_is_sent(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    app = api.app  # type: ignore[attr-defined]
    engine = runtime(api).engine
    stored_at_start: list[Any] = []

    async def watching(scope: Any, receive: Any, send: Any) -> None:
        async def spy(message: Any) -> None:
            if message["type"] == "http.response.start":
                async with engine.connect() as conn:
                    row = (
                        await conn.execute(
                            select(idempotency_keys.c.status).where(
                                idempotency_keys.c.key == "store-first"
                            )
                        )
                    ).first()
                stored_at_start.append(row[0] if row else None)
            await send(message)

        await app(scope, receive, spy)

    transport = httpx.ASGITransport(app=watching)
    async with httpx.AsyncClient(transport=transport, base_url="http://dealtrail") as client:
        body = {"pipeline_id": pipeline_id, "title": "Keyed", "value": "5"}
        headers = {**auth("rep"), "Idempotency-Key": "store-first"}
        first = await client.post("/v1/deals", json=body, headers=headers)
        again = await client.post("/v1/deals", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert stored_at_start[0] == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == first.content


async def test_keys_are_claimed_only_by_routed_authenticated_requests(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    body = {"pipeline_id": pipeline_id, "title": "Keyed", "value": "5"}
    for method, path in (
        ("POST", "/v1/no-such-thing"),
        ("PUT", "/v1/deals"),
        ("DELETE", "/v1/deals"),
    ):
        key = f"k-{method}-{path}"
        r = await api.request(
            method, path, json=body, headers={**auth("rep"), "Idempotency-Key": key}
        )
        assert r.status_code in (404, 405), r.text
        real = await api.post(
            "/v1/deals", json=body, headers={**auth("rep"), "Idempotency-Key": key}
        )
        assert real.status_code == 201, (method, path, real.text)
        assert "idempotent-replayed" not in real.headers
    unknown = {"Authorization": "Bearer t-unknown-token-000", "Idempotency-Key": "k-401"}
    assert (await api.post("/v1/deals", json=body, headers=unknown)).status_code == 401
    real = await api.post(
        "/v1/deals", json=body, headers={**auth("rep"), "Idempotency-Key": "k-401"}
    )
    assert real.status_code == 201 and "idempotent-replayed" not in real.headers

    # with two Authorization headers, the key belongs to the principal that ran it (the first)
    two = [
        ("Authorization", auth("rep")["Authorization"]),
        ("Authorization", auth("rep2")["Authorization"]),
        ("Idempotency-Key", "k-two-headers"),
    ]
    first = await api.post("/v1/deals", json=body, headers=two)
    assert first.status_code == 201, first.text
    assert first.json()["owner"] == "rita"
    rita = await api.post(
        "/v1/deals", json=body, headers={**auth("rep"), "Idempotency-Key": "k-two-headers"}
    )
    assert rita.headers.get("Idempotent-Replayed") == "true"
    raj = await api.post(
        "/v1/deals", json=body, headers={**auth("rep2"), "Idempotency-Key": "k-two-headers"}
    )
    assert raj.status_code == 201 and raj.json()["owner"] == "raj"
    assert "idempotent-replayed" not in raj.headers


# --- 9. export bounds ------------------------------------------------------------------------


async def test_export_positions_beyond_the_log_are_refused_or_clamped(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    await create_deal(api, pipeline_id)
    last = head(api)
    r = await api.get(
        "/v1/audit/export", params={"to_position": "99999999999999999999"}, headers=auth("auditor")
    )
    assert_error(r, 422, field="to_position")
    r = await api.get(
        "/v1/audit/export", params={"to_position": 2**63 - 1}, headers=auth("auditor")
    )
    assert r.status_code == 200, r.text
    assert r.headers["Export-To-Position"] == str(last)
    assert [json.loads(line)["position"] for line in r.text.splitlines()][-1] == last


# --- 10. reps cannot hand deals away ----------------------------------------------------------


async def test_a_rep_cannot_hand_a_deal_to_someone_else_but_a_manager_can(
    api: httpx.AsyncClient,
) -> None:
    pipeline_id = await define_pipeline(api)
    deal = await create_deal(api, pipeline_id)
    before = head(api)
    for owner in ("raj", "nobody-at-all", " raj "):
        r = await api.patch(f"/v1/deals/{deal['id']}", json={"owner": owner}, headers=auth("rep"))
        assert_error(r, 403, "forbidden", label=owner)
    assert head(api) == before
    r = await api.patch(f"/v1/deals/{deal['id']}", json={"owner": "raj"}, headers=auth("manager"))
    assert r.status_code == 200, r.text
    assert r.json()["owner"] == "raj"


# --- 11. one status per kind of bad body ------------------------------------------------------


async def test_each_kind_of_bad_body_has_one_documented_status(api: httpx.AsyncClient) -> None:
    pipeline_id = await define_pipeline(api)
    before = head(api)
    json_type = {**auth("rep"), "Content-Type": "application/json"}
    for raw in (b'{"title": "x"', b"\xff\xfe\xfa", b"[" * 5000 + b"]" * 5000, b"{'a': 1}"):
        r = await api.post("/v1/deals", content=raw, headers=json_type)
        assert_error(r, 422, "invalid_json", "body", label=repr(raw[:20]))
    good = json.dumps({"pipeline_id": pipeline_id, "title": "x", "value": "1"}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/csv"):
        r = await api.post(
            "/v1/deals", content=good, headers={**auth("rep"), "Content-Type": content_type}
        )
        assert_error(r, 415, "unsupported_media_type", label=content_type)
    assert head(api) == before

    r = await api.get("/v1/reports/funnel", headers=auth("rep"))
    assert_error(r, 422, field="pipeline_id")
    spec = (await api.get("/openapi.json")).json()
    for name in ("funnel", "stage-durations"):
        params = spec["paths"][f"/v1/reports/{name}"]["get"]["parameters"]
        assert {p["name"]: p.get("required", False) for p in params}["pipeline_id"] is True

    r = await api.options("/v1/deals", headers=auth("rep"))
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}
