"""Automations in the dashboard, in Chromium: a manager creates a rule with the form and
sees it in words, pauses, resumes and deletes it; a rule's page shows its firings; reps
and auditors read without any control that changes a rule."""

from __future__ import annotations

import time
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import Session, head, new_deal, new_pipeline, read

FIRING_WAIT_SECONDS = 120.0  # the evaluator fires beside the projection worker


def rules_of(session: Session, pipeline_id: str) -> list[dict[str, Any]]:
    with session.api("auditor") as api:
        answer = read(api, "/v1/automations", head(session.service), pipeline_id=pipeline_id)
    return list(answer["items"])


def firings(session: Session, api: httpx.Client, rule_id: str) -> list[dict[str, Any]]:
    """The rule's firings once there is one (the evaluator runs on its own)."""
    deadline = time.monotonic() + FIRING_WAIT_SECONDS
    while True:
        path = f"/v1/automations/{rule_id}/firings"
        items = read(api, path, head(session.service))["items"]
        if items or time.monotonic() > deadline:
            return list(items)
        time.sleep(0.5)


def test_a_manager_creates_pauses_resumes_and_deletes_a_rule(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = new_pipeline(api)
    session.sign_in("manager", f"#/automations?pipeline={pipeline['id']}")
    expect(session.page.locator(".empty")).to_have_text("No rules on this pipeline yet.")
    toggle = session.page.get_by_role("button", name="New rule…")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    form = session.page.locator("#rule-form")
    form.get_by_label("Name", exact=True).fill("Stuck in negotiation")
    form.get_by_label("Trigger").select_option("rotting")
    form.get_by_label("In stage").select_option("negotiation")
    form.get_by_label("Days (optional)").fill("14")
    first = form.locator("fieldset.rule-action").nth(0)
    first.get_by_label("Do").select_option("create_activity")
    first.get_by_label("Activity type").select_option("call")
    first.get_by_label("Subject").fill("Call the customer")
    first.get_by_label("Due after (days)").fill("1")
    form.get_by_role("button", name="Add an action").click()
    second = form.locator("fieldset.rule-action").nth(1)
    expect(second.get_by_label("Do")).to_be_focused()
    second.get_by_label("Do").select_option("notify")
    session.screenshot("automation-form")
    session.assert_accessible()
    form.get_by_role("button", name="Create the rule").click()
    expect(session.page.locator("#notices")).to_contain_text(
        "Created the rule “Stuck in negotiation”."
    )

    row = session.page.locator("#table-automations tbody tr", has_text="Stuck in negotiation")
    expect(row).to_contain_text("A deal stays in Negotiation longer than 14 days")
    expect(row).to_contain_text(
        "Plan a call “Call the customer” due 1 day later, for the deal\u2019s owner"
    )
    expect(row).to_contain_text("Notify the webhook subscribers")
    expect(row.locator(".status")).to_have_text("Active")
    (stored,) = rules_of(session, pipeline["id"])
    assert stored["trigger"] == {"type": "rotting", "stage": "negotiation", "days": 14}
    assert [a["type"] for a in stored["actions"]] == ["create_activity", "notify"]
    assert stored["actions"][0]["assignee"] is None
    assert stored["created_by"] == "max"
    session.screenshot("automations")
    session.assert_accessible()

    row.get_by_role("button", name="Pause Stuck in negotiation").click()
    expect(row.locator(".status")).to_have_text("Paused")
    assert rules_of(session, pipeline["id"])[0]["status"] == "paused"
    row.get_by_role("button", name="Resume Stuck in negotiation").click()
    expect(row.locator(".status")).to_have_text("Active")

    row.get_by_role("button", name="Delete Stuck in negotiation").click()
    dialog = session.page.get_by_role("dialog", name="Delete the rule “Stuck in negotiation”")
    dialog.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert rules_of(session, pipeline["id"]) == []


def test_a_refused_rule_is_explained_in_the_apis_words(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = new_pipeline(api)
    session.sign_in("admin", f"#/automations?pipeline={pipeline['id']}")
    session.page.get_by_role("button", name="New rule…").click()
    form = session.page.locator("#rule-form")
    form.get_by_label("Name", exact=True).fill("No owner named")
    form.get_by_label("Trigger").select_option("won")
    first = form.locator("fieldset.rule-action").nth(0)
    first.get_by_label("Do").select_option("reassign")
    form.get_by_role("button", name="Create the rule").click()
    with session.api("admin") as api:
        refused = api.post(
            "/v1/automations",
            json={
                "name": "No owner named",
                "pipeline_id": pipeline["id"],
                "trigger": {"type": "won"},
                "actions": [{"type": "reassign", "owner": ""}],
                "description": None,
            },
        )
    assert refused.status_code == 422, refused.text
    expect(form.locator("#rule-error")).to_have_text(refused.json()["error"]["message"])
    assert rules_of(session, pipeline["id"]) == []


def test_a_rules_page_shows_its_firings_and_readers_get_no_write_controls(
    session: Session,
) -> None:
    with session.api("manager") as api:
        pipeline = new_pipeline(api)
        created = api.post(
            "/v1/automations",
            json={
                "name": "Quote follow-up",
                "pipeline_id": pipeline["id"],
                "trigger": {"type": "enters_stage", "stage": "quote-sent"},
                "actions": [
                    {
                        "type": "create_activity",
                        "activity_type": "call",
                        "subject": "Follow up the quote",
                        "due_in_days": 2,
                        "assignee": None,
                    }
                ],
                "description": "a call two days after the quote",
            },
        )
        assert created.status_code == 201, created.text
        rule = created.json()
        deal = new_deal(api, pipeline["id"], "Quoted deal")
        moved = api.post(f"/v1/deals/{deal['id']}/advance", json={"stage": "quote-sent"})
        assert moved.status_code == 200, moved.text
        (fired,) = firings(session, api, rule["id"])
    assert fired["deal_id"] == deal["id"]

    session.sign_in("auditor", f"#/automations/{rule['id']}")
    expect(session.page.get_by_role("heading", level=1)).to_contain_text("Quote follow-up")
    row = session.page.locator("#table-firings tbody tr")
    expect(row).to_have_count(1)
    expect(row.get_by_role("link")).to_have_text("Quoted deal")
    expect(row).to_contain_text("Planned an activity for max")
    expect(session.page.locator("[data-field=fired]")).to_have_attribute("data-value", "1")
    expect(session.page.get_by_role("button", name="Pause Quote follow-up")).to_have_count(0)
    session.screenshot("automation-firings")
    session.assert_accessible()

    session.go(f"#/automations?pipeline={pipeline['id']}")
    listed = session.page.locator("#table-automations tbody tr", has_text="Quote follow-up")
    expect(listed).to_contain_text("A deal enters Quote sent")
    expect(listed.get_by_role("button")).to_have_count(0)
    expect(session.page.get_by_role("button", name="New rule…")).to_have_count(0)
    expect(session.page.locator(".read-only-note")).to_contain_text("only admins and managers")
    assert session.posts == [], "an auditor's page sent a command"

    session.page.get_by_role("button", name="Sign out").click()
    session.sign_in("rep", f"#/automations?pipeline={pipeline['id']}")
    expect(listed).to_be_visible()
    expect(listed.get_by_role("button")).to_have_count(0)
    expect(session.page.get_by_role("button", name="New rule…")).to_have_count(0)
    assert session.posts == [], "a rep's page sent a command"
