"""Changing a pipeline over HTTP, and what the change does to its deals and read models.

Every route runs on SQLite and PostgreSQL through the real app with its embedded
projection worker; reads pass the command's ``position`` as ``min_position``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote
from uuid import UUID

import anyio.to_thread
import httpx

from libs.application.handlers import handle
from libs.domain.actors import Actor, Role
from libs.domain.commands import AdvanceDeal, RemoveStage
from services.queries.deals import open_deals_in_stage
from tests.conftest import TestClock, auth

STAGE_IDS = ["deal-created", "demo-or-meeting", "quote-sent", "negotiation"]


# --- helpers ----------------------------------------------------------------------------------


def head(api: httpx.AsyncClient) -> int:
    """The newest position in the event log."""
    return int(api.app.state.runtime.application.head_position())  # type: ignore[attr-defined]


async def define_pipeline(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body = {"name": "New business", "currency": "EUR", **body}
    r = await api.post("/v1/pipelines", json=body, headers=auth("admin"))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def create_deal(
    api: httpx.AsyncClient, pipeline_id: str, value: str = "1000.00", **body: Any
) -> dict[str, Any]:
    body = {"pipeline_id": pipeline_id, "title": "ACME", "value": value, **body}
    r = await api.post("/v1/deals", json=body, headers=auth("rep"))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def pipeline_now(api: httpx.AsyncClient, pipeline_id: str) -> dict[str, Any]:
    r = await api.get(
        f"/v1/pipelines/{pipeline_id}", params={"min_position": head(api)}, headers=auth("auditor")
    )
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == f'"{r.json()["version"]}"'
    return dict(r.json())


async def board(api: httpx.AsyncClient, pipeline_id: str, position: int) -> dict[str, Any]:
    r = await api.get(
        f"/v1/pipelines/{pipeline_id}/board",
        params={"min_position": position},
        headers=auth("rep"),
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def stage_totals(answer: dict[str, Any]) -> dict[str, tuple[int, str, str]]:
    """Per stage on the board: (count, total value, weighted value)."""
    return {s["id"]: (s["count"], s["total_value"], s["weighted_value"]) for s in answer["stages"]}


def board_deals(answer: dict[str, Any]) -> dict[str, list[str]]:
    return {s["id"]: [d["id"] for d in s["deals"]] for s in answer["stages"]}


async def history(api: httpx.AsyncClient, deal_id: str, position: int) -> list[dict[str, Any]]:
    r = await api.get(
        f"/v1/deals/{deal_id}/history", params={"min_position": position}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


async def durations(
    api: httpx.AsyncClient, pipeline_id: str, position: int
) -> dict[str, dict[str, Any]]:
    """The stage-durations report's rows per stage id."""
    r = await api.get(
        "/v1/reports/stage-durations",
        params={"pipeline_id": pipeline_id, "min_position": position},
        headers=auth("manager"),
    )
    assert r.status_code == 200, r.text
    return {s["stage_id"]: s for s in r.json()["rows"]}


async def deal_now(api: httpx.AsyncClient, deal_id: str, position: int) -> dict[str, Any]:
    r = await api.get(
        f"/v1/deals/{deal_id}", params={"min_position": position}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def assert_error(
    r: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert error["details"].get("field") == field, error
    return dict(error)


def pipeline_routes(pipeline_id: str, step: int) -> list[tuple[str, str, dict[str, Any], int]]:
    """Each pipeline-change route once: (method, path, request kwargs, success status).

    ``step`` 0 and 1 give two different changes, so that the same route can succeed twice.
    The stage order is left empty: it depends on the stages at the time (see reversed_order).
    """
    base = f"/v1/pipelines/{pipeline_id}"
    return [
        ("PATCH", base, {"json": [{"name": "Renamed"}, {"allow_moving_back": False}][step]}, 200),
        (
            "POST",
            f"{base}/stages",
            {
                "json": [
                    {"name": "Proof", "probability": 40, "position": 2},
                    {"name": "Contract", "probability": 90},
                ][step]
            },
            201,
        ),
        (
            "PATCH",
            f"{base}/stages/quote-sent",
            {"json": [{"name": "Proposal"}, {"probability": 55, "requires": ["note"]}][step]},
            200,
        ),
        ("PUT", f"{base}/stage-order", {"json": {"stage_order": []}}, 200),
        ("POST", f"{base}/lost-reasons", {"json": {"reason": ["Went dark", "Legal"][step]}}, 201),
        ("DELETE", f"{base}/lost-reasons/{quote(['Timing', 'No decision'][step])}", {}, 200),
        ("DELETE", f"{base}/stages/{['proof', 'contract'][step]}", {}, 200),
    ]


async def reversed_order(api: httpx.AsyncClient, pipeline_id: str) -> dict[str, Any]:
    """A stage-order body that reverses the pipeline's current stages."""
    current = [s["id"] for s in (await pipeline_now(api, pipeline_id))["stages"]]
    return {"json": {"stage_order": list(reversed(current))}}


# --- who may change a pipeline ----------------------------------------------------------------


async def test_every_pipeline_change_works_for_admins_and_managers_and_is_403_for_reps_and_auditors(
    api: httpx.AsyncClient,
) -> None:
    pipeline = await define_pipeline(api)
    pid, version, position = pipeline["id"], pipeline["version"], pipeline["position"]

    for step, who in ((0, "admin"), (1, "manager")):
        for method, path, kwargs, status in pipeline_routes(pid, step):
            if path.endswith("stage-order"):
                kwargs = await reversed_order(api, pid)
            if step == 0:
                for refused in ("rep", "auditor"):
                    r = await api.request(method, path, headers=auth(refused), **kwargs)
                    assert_error(r, 403, "forbidden")
                assert head(api) == position, (method, path)  # nothing was recorded

            r = await api.request(method, path, headers=auth(who), **kwargs)

            assert r.status_code == status, (method, path, r.text)
            version += 1
            assert r.json()["version"] == version
            assert r.headers["ETag"] == f'"{version}"'
            position = head(api)
            assert r.json()["position"] == position

    final = await pipeline_now(api, pid)
    assert final["name"] == "Renamed"
    assert final["allow_moving_back"] is False
    assert [s["id"] for s in final["stages"]] == STAGE_IDS
    assert final["stages"][2] == {
        "id": "quote-sent",
        "name": "Proposal",
        "probability": 55,
        "rotting_days": None,
        "requires": ["note"],
        "checklist": [],
        "checklist_version": 0,
    }
    assert [s["id"] for s in final["removed_stages"]] == ["proof", "contract"]
    assert final["lost_reasons"][-2:] == ["Went dark", "Legal"]
    assert final["retired_lost_reasons"] == ["Timing", "No decision"]


async def test_a_pipeline_change_with_a_stale_if_match_is_412_and_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    pipeline = await define_pipeline(api)
    pid = pipeline["id"]
    r = await api.patch(f"/v1/pipelines/{pid}", json={"name": "v2"}, headers=auth("admin"))
    assert r.status_code == 200, r.text

    for method, path, kwargs, status in pipeline_routes(pid, 0):
        current = await pipeline_now(api, pid)
        if path.endswith("stage-order"):
            kwargs = await reversed_order(api, pid)
        stale = {**auth("manager"), "If-Match": f'"{current["version"] - 1}"'}

        r = await api.request(method, path, headers=stale, **kwargs)

        assert_error(r, 412, "stale_version")
        assert await pipeline_now(api, pid) == current, (method, path)
        fresh = {**auth("manager"), "If-Match": f'"{current["version"]}"'}
        r = await api.request(method, path, headers=fresh, **kwargs)
        assert r.status_code == status, (method, path, r.text)
        assert r.json()["version"] == current["version"] + 1


# --- removing a stage with open deals ---------------------------------------------------------


async def test_removing_a_stage_with_open_deals_is_409_naming_the_count_unless_they_are_moved(
    api: httpx.AsyncClient,
) -> None:
    pipeline = await define_pipeline(api)
    pid = pipeline["id"]
    first = await create_deal(api, pid, "1000.00", stage="quote-sent")
    second = await create_deal(api, pid, "3000.00", stage="Quote sent")
    won = await create_deal(api, pid, "500.00", stage="quote-sent")
    r = await api.post(f"/v1/deals/{won['id']}/win", headers=auth("rep"))
    assert r.status_code == 200, r.text
    elsewhere = await create_deal(api, pid, "2000.00", stage="negotiation")

    r = await api.delete(f"/v1/pipelines/{pid}/stages/quote-sent", headers=auth("manager"))

    error = assert_error(r, 409, "stage_has_open_deals", field="move_open_deals_to")
    assert "2 open deal" in error["message"]
    assert error["details"]["open_deals"] == 2
    assert [s["id"] for s in (await pipeline_now(api, pid))["stages"]] == STAGE_IDS

    r = await api.delete(
        f"/v1/pipelines/{pid}/stages/quote-sent",
        params={"move_open_deals_to": "Negotiation"},
        headers={**auth("manager"), "If-Match": '"1"'},
    )

    assert r.status_code == 200, r.text
    answer = r.json()
    position = answer["position"]
    assert sorted(answer["moved_deals"]) == sorted([first["id"], second["id"]])
    assert [s["id"] for s in answer["stages"]] == ["deal-created", "demo-or-meeting", "negotiation"]
    assert [s["id"] for s in answer["removed_stages"]] == ["quote-sent"]
    assert answer["version"] == 2
    cause = {
        "type": "StageRemoved",
        "pipeline_id": pid,
        "pipeline_version": 2,
        "stage_id": "quote-sent",
        "direction": "forward",  # Negotiation comes after the removed Quote sent
    }
    for deal in (first, second):
        events = await history(api, deal["id"], position)
        assert [e["event_type"] for e in events] == ["DealCreated", "StageAdvanced"]
        moved = events[-1]
        assert moved["actor"] == "max"
        assert moved["changes"]["stage"] == {"before": "Quote sent", "after": "Negotiation"}
        assert moved["changes"]["stage_id"] == {"before": "quote-sent", "after": "negotiation"}
        assert moved["changes"]["cause"] == {"before": None, "after": cause}
        assert (await deal_now(api, deal["id"], position))["stage"] == {
            "id": "negotiation",
            "name": "Negotiation",
        }
    for untouched in (won, elsewhere):
        events = await history(api, untouched["id"], position)
        assert "StageAdvanced" not in [e["event_type"] for e in events]
    assert (await deal_now(api, won["id"], position))["stage"]["id"] == "quote-sent"

    after = await board(api, pid, position)
    assert stage_totals(after) == {
        "deal-created": (0, "0.00", "0.00"),
        "demo-or-meeting": (0, "0.00", "0.00"),
        "negotiation": (3, "6000.00", "4500.00"),
    }
    assert sorted(board_deals(after)["negotiation"]) == sorted(
        [first["id"], second["id"], elsewhere["id"]]
    )
    assert after["totals"] == {"count": 3, "total_value": "6000.00", "weighted_value": "4500.00"}

    report = await durations(api, pid, position)
    assert report["quote-sent"]["removed"] is True
    assert report["quote-sent"]["stage_name"] == "Quote sent"
    assert (report["quote-sent"]["visits"], report["quote-sent"]["open"]) == (3, 0)
    assert report["negotiation"]["removed"] is False
    assert report["negotiation"]["open"] == 3


# --- probabilities and weighted values --------------------------------------------------------


async def test_weighted_values_on_the_board_use_the_override_and_the_stages_probability_otherwise(
    api: httpx.AsyncClient,
) -> None:
    pipeline = await define_pipeline(api)
    pid = pipeline["id"]
    deal = await create_deal(api, pid, "1000.00", stage="quote-sent")
    other = await create_deal(api, pid, "3000.00", stage="quote-sent")
    await create_deal(api, pid, "2000.00", stage="negotiation")
    closed = await create_deal(api, pid, "7000.00", stage="quote-sent")
    r = await api.post(
        f"/v1/deals/{closed['id']}/lose", json={"reason": "Price"}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    before = stage_totals(await board(api, pid, r.json()["position"]))
    assert before["quote-sent"] == (2, "4000.00", "2000.00")
    assert before["negotiation"] == (1, "2000.00", "1500.00")

    # An override beats the stage's probability.
    r = await api.patch(
        f"/v1/deals/{deal['id']}", json={"probability_override": 90}, headers=auth("rep")
    )

    assert r.status_code == 200, r.text
    assert (r.json()["probability_override"], r.json()["probability"]) == (90, 90)
    position = r.json()["position"]
    assert stage_totals(await board(api, pid, position))["quote-sent"] == (
        2,
        "4000.00",
        "2400.00",  # 90% of 1000, 50% of 3000
    )
    shown = await deal_now(api, deal["id"], position)
    assert (shown["probability"], shown["weighted_value"]) == (90, "900.00")
    [*_, updated] = await history(api, deal["id"], position)
    assert updated["event_type"] == "DealUpdated"
    assert updated["changes"] == {"probability_override": {"before": None, "after": 90}}

    # A new stage probability re-weights the stage's open deals, except the overridden one.
    r = await api.patch(
        f"/v1/pipelines/{pid}/stages/quote-sent", json={"probability": 80}, headers=auth("admin")
    )

    assert r.status_code == 200, r.text
    position = r.json()["position"]
    after = await board(api, pid, position)
    assert stage_totals(after) == {
        **before,
        "quote-sent": (2, "4000.00", "3300.00"),  # 90% of 1000, 80% of 3000
    }
    assert after["stages"][2]["probability"] == 80
    assert after["totals"]["weighted_value"] == "4800.00"
    assert (await deal_now(api, other["id"], position))["weighted_value"] == "2400.00"
    assert (await deal_now(api, deal["id"], position))["weighted_value"] == "900.00"
    assert (await deal_now(api, closed["id"], position))["weighted_value"] == "0.00"

    # An override of 0 counts as 0; clearing it returns to the stage's probability.
    r = await api.patch(
        f"/v1/deals/{deal['id']}", json={"probability_override": 0}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    assert stage_totals(await board(api, pid, r.json()["position"]))["quote-sent"][2] == "2400.00"

    r = await api.patch(
        f"/v1/deals/{deal['id']}", json={"probability_override": None}, headers=auth("rep")
    )

    assert r.status_code == 200, r.text
    assert (r.json()["probability_override"], r.json()["probability"]) == (None, 80)
    position = r.json()["position"]
    assert stage_totals(await board(api, pid, position))["quote-sent"] == (
        2,
        "4000.00",
        "3200.00",  # 80% of 1000, 80% of 3000
    )
    shown = await deal_now(api, deal["id"], position)
    assert (shown["probability"], shown["weighted_value"]) == (80, "800.00")


# --- moving a deal to another pipeline --------------------------------------------------------


async def test_a_deal_moved_to_another_pipeline_keeps_its_history_and_its_old_stage_durations(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    old = await define_pipeline(api)
    new = await define_pipeline(
        api,
        name="Renewals",
        stages=[{"name": "Intake", "probability": 30}, {"name": "Offer", "probability": 60}],
    )
    dollars = await define_pipeline(api, name="US", currency="USD")
    deal = await create_deal(api, old["id"], "1000.00")
    clock.advance(hours=1)
    r = await api.post(
        f"/v1/deals/{deal['id']}/advance", json={"stage": "demo-or-meeting"}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    clock.advance(hours=2)

    r = await api.post(
        f"/v1/deals/{deal['id']}/move",
        json={"pipeline_id": new["id"], "stage": "Offer", "note": "renewal, not new business"},
        headers=auth("rep"),
    )

    assert r.status_code == 200, r.text
    moved = r.json()
    position = moved["position"]
    assert moved["pipeline_id"] == new["id"]
    assert moved["stage"] == {"id": "offer", "name": "Offer"}
    assert (moved["version"], moved["probability"]) == (3, 60)
    events = await history(api, deal["id"], position)
    assert [e["event_type"] for e in events] == ["DealCreated", "StageAdvanced", "DealMoved"]
    assert events[-1]["changes"]["pipeline_id"] == {"before": old["id"], "after": new["id"]}
    assert events[-1]["changes"]["stage"] == {"before": "Demo or meeting", "after": "Offer"}

    old_report = await durations(api, old["id"], position)
    assert old_report["deal-created"]["visits"] == 1
    assert old_report["deal-created"]["mean_seconds"] == 3600
    assert old_report["demo-or-meeting"]["visits"] == 1
    assert old_report["demo-or-meeting"]["mean_seconds"] == 7200
    assert old_report["demo-or-meeting"]["open"] == 0
    new_report = await durations(api, new["id"], position)
    assert (new_report["offer"]["visits"], new_report["offer"]["open"]) == (1, 1)
    assert new_report["intake"]["visits"] == 0

    new_board = await board(api, new["id"], position)
    assert board_deals(new_board) == {"intake": [], "offer": [deal["id"]]}
    assert stage_totals(new_board)["offer"] == (1, "1000.00", "600.00")
    assert (await board(api, old["id"], position))["totals"]["count"] == 0

    r = await api.post(
        f"/v1/deals/{deal['id']}/move", json={"pipeline_id": new["id"]}, headers=auth("rep")
    )
    assert_error(r, 409, "pipeline_mismatch", field="pipeline_id")
    r = await api.post(
        f"/v1/deals/{deal['id']}/move", json={"pipeline_id": dollars["id"]}, headers=auth("rep")
    )
    assert_error(r, 409, "pipeline_mismatch", field="pipeline_id")
    r = await api.post(
        f"/v1/deals/{deal['id']}/move", json={"pipeline_id": old["id"]}, headers=auth("auditor")
    )
    assert_error(r, 403, "forbidden")
    assert (await deal_now(api, deal["id"], position))["version"] == 3


# --- lost reasons -----------------------------------------------------------------------------


async def test_a_retired_lost_reason_is_refused_with_422_naming_reason_until_it_is_added_again(
    api: httpx.AsyncClient,
) -> None:
    pipeline = await define_pipeline(api)
    pid = pipeline["id"]
    lost_earlier = await create_deal(api, pid)
    r = await api.post(
        f"/v1/deals/{lost_earlier['id']}/lose", json={"reason": "Timing"}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    deal = await create_deal(api, pid)

    r = await api.delete(f"/v1/pipelines/{pid}/lost-reasons/timing", headers=auth("manager"))

    assert r.status_code == 200, r.text
    assert "Timing" not in r.json()["lost_reasons"]
    assert r.json()["retired_lost_reasons"] == ["Timing"]
    position = r.json()["position"]
    r = await api.post(
        f"/v1/deals/{deal['id']}/lose", json={"reason": "Timing"}, headers=auth("rep")
    )
    error = assert_error(r, 422, "unknown_lost_reason", field="reason")
    assert "retired" in error["message"]
    assert (await deal_now(api, deal["id"], position))["status"] == "open"
    assert (await deal_now(api, lost_earlier["id"], position))["lost_reason"] == "Timing"

    r = await api.post(
        f"/v1/pipelines/{pid}/lost-reasons", json={"reason": "timing"}, headers=auth("manager")
    )

    assert r.status_code == 201, r.text
    assert "Timing" in r.json()["lost_reasons"]
    assert r.json()["retired_lost_reasons"] == []
    r = await api.post(
        f"/v1/deals/{deal['id']}/lose", json={"reason": "Timing"}, headers=auth("rep")
    )
    assert r.status_code == 200, r.text
    assert r.json()["lost_reason"] == "Timing"


# --- invalid input ----------------------------------------------------------------------------


async def test_invalid_pipeline_changes_are_422_naming_the_field_and_change_nothing(
    api: httpx.AsyncClient,
) -> None:
    pipeline = await define_pipeline(api)
    pid = pipeline["id"]
    deal = await create_deal(api, pid)
    base = f"/v1/pipelines/{pid}"
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("PATCH", f"{base}/stages/quote-sent", {"json": {"probability": 101}}, "probability"),
        ("POST", f"{base}/stages", {"json": {"name": "X", "probability": 101}}, "probability"),
        ("PATCH", f"{base}/stages/quote-sent", {"json": {"rotting_days": 0}}, "rotting_days"),
        (
            "PATCH",
            f"{base}/stages/quote-sent",
            {"json": {"requires": ["signature"]}},
            "requires[0]",
        ),
        (
            "POST",
            f"{base}/stages",
            {"json": {"name": "X", "probability": 5, "requires": ["note", "signature"]}},
            "requires[1]",
        ),
        (
            "POST",
            f"{base}/stages",
            {"json": {"name": "X", "probability": 5, "position": 9}},
            "position",
        ),
        (
            "PUT",
            f"{base}/stage-order",
            {"json": {"stage_order": STAGE_IDS[:3]}},
            "stage_order",
        ),
        (
            "PUT",
            f"{base}/stage-order",
            {"json": {"stage_order": [*STAGE_IDS[:3], STAGE_IDS[2]]}},
            "stage_order",
        ),
        (
            "DELETE",
            f"{base}/stages/quote-sent",
            {"params": {"move_open_deals_to": "Closing"}},
            "move_open_deals_to",
        ),
        (
            "PATCH",
            f"/v1/deals/{deal['id']}",
            {"json": {"probability_override": 101}},
            "probability_override",
        ),
        ("PATCH", base, {"json": {"allow_moving_back": "sometimes"}}, "allow_moving_back"),
        ("POST", f"{base}/lost-reasons", {"json": {"reason": " "}}, "reason"),
    ]
    before = await pipeline_now(api, pid)

    for method, path, kwargs, field in cases:
        r = await api.request(method, path, headers=auth("admin"), **kwargs)

        assert r.status_code == 422, (method, path, kwargs, r.text)
        assert r.json()["error"]["details"]["field"] == field, (method, path, kwargs, r.text)

    assert await pipeline_now(api, pid) == before
    r = await api.get(
        f"/v1/deals/{deal['id']}/history",
        params={"min_position": deal["position"]},
        headers=auth("rep"),
    )
    assert [e["event_type"] for e in r.json()["data"]] == ["DealCreated"]


# --- pipeline rules over HTTP -----------------------------------------------------------------


async def test_pipeline_rules_hold_over_http_for_backdated_commands_too(
    api: httpx.AsyncClient, clock: TestClock
) -> None:
    pipeline = await define_pipeline(api, occurred_at=(clock.now - timedelta(days=30)).isoformat())
    pid = pipeline["id"]
    r = await api.patch(
        f"/v1/pipelines/{pid}",
        json={"allow_skipping_stages": False, "allow_moving_back": False},
        headers=auth("manager"),
    )
    assert r.status_code == 200, r.text
    r = await api.patch(
        f"/v1/pipelines/{pid}/stages/negotiation",
        json={"requires": ["expected_close_date", "note"]},
        headers=auth("manager"),
    )
    assert r.status_code == 200, r.text

    def days_ago(n: int) -> str:
        return (clock.now - timedelta(days=n)).isoformat()

    r = await api.post(
        "/v1/deals",
        json={"pipeline_id": pid, "title": "A", "value": "10", "stage": "quote-sent"},
        headers=auth("rep"),
    )
    assert_error(r, 409, "skipping_stages_not_allowed", field="stage")
    deal = await create_deal(api, pid, occurred_at=days_ago(10))
    url = f"/v1/deals/{deal['id']}"

    r = await api.post(
        f"{url}/advance",
        json={"stage": "quote-sent", "occurred_at": days_ago(9)},
        headers=auth("rep"),
    )
    error = assert_error(r, 409, "skipping_stages_not_allowed", field="stage")
    assert error["details"]["next_stage"] == "demo-or-meeting"
    for n, stage in ((9, "demo-or-meeting"), (8, "quote-sent")):
        r = await api.post(
            f"{url}/advance", json={"stage": stage, "occurred_at": days_ago(n)}, headers=auth("rep")
        )
        assert r.status_code == 200, r.text
    r = await api.post(
        f"{url}/advance",
        json={"stage": "deal-created", "occurred_at": days_ago(7)},
        headers=auth("rep"),
    )
    assert_error(r, 409, "moving_back_not_allowed", field="stage")
    r = await api.post(
        f"{url}/advance",
        json={"stage": "negotiation", "occurred_at": days_ago(7)},
        headers=auth("rep"),
    )
    error = assert_error(r, 409, "entry_requirements_not_met", field="expected_close_date")
    assert error["details"]["missing_fields"] == ["expected_close_date", "note"]
    assert "expected_close_date, note" in error["message"]

    r = await api.patch(
        url,
        json={"expected_close_date": "2026-09-30", "occurred_at": days_ago(6)},
        headers=auth("rep"),
    )
    assert r.status_code == 200, r.text
    r = await api.post(
        f"{url}/advance",
        json={"stage": "negotiation", "occurred_at": days_ago(5)},
        headers=auth("rep"),
    )
    error = assert_error(r, 409, "entry_requirements_not_met", field="note")
    assert error["details"]["missing_fields"] == ["note"]

    r = await api.post(
        f"{url}/advance",
        json={"stage": "negotiation", "note": "budget signed off", "occurred_at": days_ago(5)},
        headers=auth("rep"),
    )

    assert r.status_code == 200, r.text
    assert r.json()["stage"]["id"] == "negotiation"
    assert r.json()["version"] == 5
    [*_, advanced] = await history(api, deal["id"], r.json()["position"])
    assert advanced["occurred_at"] == days_ago(5)
    assert advanced["changes"]["note"] == {"before": None, "after": "budget signed off"}


# --- the stranded-deal policy -----------------------------------------------------------------


async def test_a_deal_that_enters_a_stage_while_it_is_removed_is_moved_after_it_by_the_policy(
    api: httpx.AsyncClient,
) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    app, models = runtime.application, runtime.read_models
    pipeline = await define_pipeline(api)
    pid = pipeline["id"]
    early = await create_deal(api, pid, "1000.00", stage="quote-sent")
    late = await create_deal(api, pid, "2000.00", stage="demo-or-meeting")
    manager = Actor(name="max", role=Role.MANAGER)
    lookups: list[list[str]] = []

    def open_deals(pipeline_id: UUID, stage_id: str, at_least: int) -> list[str]:
        """The real read model; right after the removal's own look-up, another writer
        moves ``late`` into the stage (the race the policy is there for)."""
        found = anyio.from_thread.run(open_deals_in_stage, models, pipeline_id, stage_id, at_least)
        lookups.append(sorted(found))
        if len(lookups) == 1:
            handle(app, AdvanceDeal(actor=manager, deal_id=late["id"], stage="quote-sent"))
        return found

    removal = RemoveStage(
        actor=manager, pipeline_id=pid, stage="Quote sent", move_open_deals_to="negotiation"
    )
    result = await anyio.to_thread.run_sync(
        lambda: handle(app, removal, open_deals_in_stage=open_deals)
    )

    assert lookups[0] == [early["id"]]  # the removal itself saw only the early deal
    assert lookups[1] == [late["id"]]  # the policy found the late one at the new head
    assert lookups[2:] == [[]]  # and looked again until none was left
    assert result.state["moved_deals"] == [early["id"]]
    assert result.position == head(api)  # the answer's position covers the policy's move
    assert result.events == 3  # StageRemoved, the early deal's move, the late deal's move
    for deal in (early, late):
        assert (await deal_now(api, deal["id"], result.position))["stage"]["id"] == "negotiation"
    moved = (await history(api, late["id"], result.position))[-1]
    assert moved["changes"]["stage_id"] == {"before": "quote-sent", "after": "negotiation"}
    assert moved["changes"]["cause"]["after"] == {
        "type": "StageRemoved",
        "pipeline_id": pid,
        "pipeline_version": 2,
        "stage_id": "quote-sent",
    }
    after = await board(api, pid, result.position)
    assert stage_totals(after)["negotiation"] == (2, "3000.00", "2250.00")


async def test_removing_a_stage_without_moving_its_deals_runs_no_sweep(
    api: httpx.AsyncClient,
) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    pipeline = await define_pipeline(api)
    looked: list[str] = []

    def open_deals(pipeline_id: UUID, stage_id: str, at_least: int) -> list[str]:
        looked.append(stage_id)
        return []

    removal = RemoveStage(
        actor=Actor(name="max", role=Role.MANAGER), pipeline_id=pipeline["id"], stage="quote-sent"
    )
    result = await anyio.to_thread.run_sync(
        lambda: handle(runtime.application, removal, open_deals_in_stage=open_deals)
    )

    assert looked == ["quote-sent"]  # the removal's own look-up, no policy round
    assert result.events == 1
    assert result.position == head(api)
