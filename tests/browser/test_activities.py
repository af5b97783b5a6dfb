"""Activities in the dashboard, in Chromium: planned on the deal page and shown as the
card's next activity, completed, rescheduled and cancelled, overdue and checklist marks,
a 412 on the deal page, My activities, deals with no next step, and read-only auditors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import Session, head, new_deal, new_pipeline, read


def plan(
    api: httpx.Client, deal: dict[str, Any], subject: str, due: datetime, **fields: Any
) -> Any:
    """An activity on the deal through the API (``due`` may lie in the past)."""
    r = api.post(
        f"/v1/deals/{deal['id']}/activities",
        json={"type": "task", "subject": subject, "due_at": due.isoformat(), **fields},
    )
    assert r.status_code == 201, r.text
    return r.json()


def activities_of(session: Session, deal_id: str) -> list[dict[str, Any]]:
    with session.api("auditor") as api:
        return list(read(api, f"/v1/deals/{deal_id}/activities", head(session.service))["data"])


def test_an_activity_planned_on_the_deal_page_is_the_cards_next_activity(
    session: Session,
) -> None:
    pipeline, (deal,) = session.board_with_deals("manager", "Plan me")
    expect(session.card(deal["id"]).locator(".card-next")).to_have_text("No next step planned")
    session.card(deal["id"]).get_by_role("link", name="Plan me").click()
    session.ready()
    expect(session.page.locator(".no-next-step")).to_be_visible()

    session.page.get_by_role("button", name="Plan an activity…").click()
    dialog = session.page.get_by_role("dialog", name="Plan an activity on “Plan me”")
    session.assert_accessible()
    dialog.get_by_label("Type").select_option("call")
    dialog.get_by_label("Subject").fill("Discovery call")
    due = (datetime.now(UTC) + timedelta(days=2)).replace(hour=9, minute=30)
    dialog.get_by_label("Due").fill(due.strftime("%Y-%m-%dT%H:%M"))
    expect(dialog.get_by_label("Assignee")).to_have_value("max")
    dialog.get_by_label("Note (optional)").fill("ask about the budget")
    dialog.get_by_role("button", name="Plan it").click()
    expect(dialog).to_have_count(0)
    row = session.page.locator("table.activities-open tbody tr", has_text="Discovery call")
    expect(row).to_contain_text("Call")
    expect(row).to_contain_text("ask about the budget")
    (stored,) = activities_of(session, deal["id"])
    assert (stored["type"], stored["subject"], stored["assignee"]) == (
        "call",
        "Discovery call",
        "max",
    )
    assert stored["due_at"].startswith(due.strftime("%Y-%m-%dT%H:%M"))
    session.screenshot("deal-activities")
    session.assert_accessible()

    session.go(f"#/board?pipeline={pipeline['id']}")
    next_line = session.card(deal["id"]).locator(".card-next")
    expect(next_line).to_contain_text("Call: Discovery call")
    expect(next_line).to_have_attribute("data-overdue", "false")
    expect(next_line.locator(".badge.overdue")).to_have_count(0)

    # Reschedule, complete with an outcome, and cancel another, on the deal page.
    session.go(f"#/deal/{deal['id']}")
    session.page.get_by_role("button", name="Reschedule Discovery call").click()
    dialog = session.page.get_by_role("dialog", name="Reschedule “Discovery call”")
    later = due + timedelta(days=1)
    dialog.get_by_label("Due").fill(later.strftime("%Y-%m-%dT%H:%M"))
    dialog.get_by_role("button", name="Save").click()
    expect(session.page.locator("#notices")).to_contain_text("“Discovery call” is rescheduled.")
    expect(row.locator("time")).to_have_attribute("title", later.strftime("%Y-%m-%dT%H:%M:00.000Z"))
    session.page.get_by_role("button", name="Complete Discovery call").click()
    dialog = session.page.get_by_role("dialog", name="Complete “Discovery call”")
    dialog.get_by_label("Outcome (optional)").fill("budget confirmed")
    dialog.get_by_role("button", name="Mark as done").click()
    done = session.page.locator("table.activities-done tbody tr", has_text="Discovery call")
    expect(done).to_contain_text("budget confirmed")
    expect(session.page.locator("table.activities-open")).to_have_count(0)
    (stored,) = activities_of(session, deal["id"])
    assert (stored["status"], stored["outcome"]) == ("done", "budget confirmed")
    assert stored["due_at"].startswith(later.strftime("%Y-%m-%dT%H:%M"))

    with session.api("manager") as api:
        plan(api, deal, "Send the quote", datetime.now(UTC) + timedelta(days=5))
    cancel = session.page.get_by_role("button", name="Cancel Send the quote")
    cancel.click()
    dialog = session.page.get_by_role("dialog", name="Cancel “Send the quote”")
    dialog.get_by_label("Reason (optional)").fill("they asked by phone")
    dialog.get_by_role("button", name="Cancel the activity").click()
    cancelled = session.page.locator("table.activities-cancelled tbody tr")
    expect(cancelled).to_contain_text("they asked by phone")


def test_an_overdue_activity_flags_the_card_and_checklist_items_are_marked(
    session: Session,
) -> None:
    with session.api("manager") as api:
        pipeline = new_pipeline(
            api,
            stages=[
                {
                    "name": "Qualify",
                    "probability": 10,
                    "checklist": [{"title": "Check the budget", "type": "task"}],
                },
                {"name": "Sign", "probability": 80},
            ],
        )
        deal = new_deal(api, pipeline["id"], "Running late")
        plan(api, deal, "Chase the signature", datetime.now(UTC) - timedelta(days=2), type="call")
    session.sign_in("manager", f"#/board?pipeline={pipeline['id']}")
    next_line = session.card(deal["id"]).locator(".card-next")
    expect(next_line).to_contain_text("Call: Chase the signature")
    expect(next_line).to_have_attribute("data-overdue", "true")
    expect(next_line.locator(".badge.overdue")).to_have_text("Overdue")
    session.assert_accessible()

    session.go(f"#/deal/{deal['id']}")
    overdue = session.page.locator("table.activities-open tbody tr", has_text="Chase the signature")
    expect(overdue.locator(".badge.overdue")).to_have_text("Overdue")
    item = session.page.locator("table.activities-open tbody tr", has_text="Check the budget")
    expect(item.locator(".badge.checklist")).to_have_text("Checklist: Qualify")
    expect(overdue.locator(".badge.checklist")).to_have_count(0)
    expect(
        session.page.get_by_role("heading", name="Activities (2 open, 1 overdue)")
    ).to_be_visible()


def test_an_activity_command_on_a_deal_changed_elsewhere_gets_the_412_message(
    session: Session,
) -> None:
    with session.api("manager") as api:
        pipeline = new_pipeline(api)
        deal = new_deal(api, pipeline["id"], "Busy deal")
    session.sign_in("manager", f"#/deal/{deal['id']}")
    session.change_behind_its_back(deal, value="2500")  # the page shows version 1

    session.page.get_by_role("button", name="Plan an activity…").click()
    dialog = session.page.get_by_role("dialog", name="Plan an activity on “Busy deal”")
    dialog.get_by_label("Subject").fill("Too late")
    dialog.get_by_role("button", name="Plan it").click()
    expect(dialog.locator(".dialog-error")).to_contain_text(
        "Someone else changed “Busy deal” after this page loaded it"
    )
    # Reloaded behind the dialog: a second try names the newer version and goes through.
    expect(session.page.locator("[data-field=value]")).to_have_attribute("data-value", "2500.00")
    dialog.get_by_role("button", name="Plan it").click()
    expect(dialog).to_have_count(0)
    rows = session.page.locator("table.activities-open tbody tr")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("Too late")
    assert [a["subject"] for a in activities_of(session, deal["id"])] == ["Too late"]


def test_my_activities_lists_todays_and_overdue_work_and_completes_from_the_list(
    session: Session,
) -> None:
    now = datetime.now(UTC)
    with session.api("manager") as api:
        pipeline = new_pipeline(api)
        deal = new_deal(api, pipeline["id"], "Rita's account", owner="rita")
        late = plan(api, deal, "Chase the signature", now - timedelta(days=2), type="call")
        plan(api, deal, "Prepare the demo", now + timedelta(days=3), type="meeting")
        plan(api, deal, "Raj's task", now - timedelta(days=1), assignee="raj")
    session.sign_in("rep", "#/activities")
    expect(session.page.get_by_role("heading", name="My activities", level=1)).to_be_visible()
    due_now = session.page.locator('table[data-list="Due today or overdue"]')
    upcoming = session.page.locator('table[data-list="Upcoming"]')
    late_row = due_now.locator("tbody tr", has_text="Chase the signature")
    expect(late_row.locator(".badge.overdue")).to_have_text("Overdue")
    expect(late_row.get_by_role("link")).to_have_text("Rita's account")
    expect(upcoming.locator("tbody tr", has_text="Prepare the demo")).to_be_visible()
    expect(due_now.locator("tbody tr", has_text="Prepare the demo")).to_have_count(0)
    expect(session.page.get_by_text("Raj's task")).to_have_count(0)
    session.screenshot("my-activities")
    session.assert_accessible()

    # Filters: by type, and the done list.
    session.navigating(lambda: session.page.get_by_label("Type").select_option("meeting"))
    assert "type=meeting" in session.page.url
    expect(session.page.get_by_text("Chase the signature")).to_have_count(0)
    expect(session.page.locator("tbody tr", has_text="Prepare the demo")).to_be_visible()
    session.navigating(lambda: session.page.get_by_label("Type").select_option(""))

    late_row.get_by_role("button", name="Complete Chase the signature").click()
    dialog = session.page.get_by_role("dialog", name="Complete “Chase the signature”")
    expect(dialog).to_contain_text("Call on “Rita's account”.")
    dialog.get_by_label("Outcome (optional)").fill("signed today")
    dialog.get_by_role("button", name="Mark as done").click()
    expect(session.page.locator("#notices")).to_contain_text("“Chase the signature” is done.")
    expect(late_row).to_have_count(0)
    stored = {a["id"]: a for a in activities_of(session, deal["id"])}
    assert (stored[late["id"]]["status"], stored[late["id"]]["outcome"]) == ("done", "signed today")

    session.navigating(lambda: session.page.get_by_label("Show").select_option("done"))
    done = session.page.locator('table[data-list="Done"] tbody tr', has_text="Chase the signature")
    expect(done).to_contain_text("Done")
    expect(done.get_by_role("button")).to_have_count(0)


def test_no_next_step_lists_the_deals_with_nothing_planned_and_plans_one(
    session: Session,
) -> None:
    with session.api("manager") as api:
        pipeline = new_pipeline(api)
        idle = new_deal(api, pipeline["id"], "Nothing planned")
        busy = new_deal(api, pipeline["id"], "Call booked")
        plan(api, busy, "Intro call", datetime.now(UTC) + timedelta(days=1), type="call")
    session.sign_in("manager", f"#/no-next-step?pipeline={pipeline['id']}")
    rows = session.page.locator("#table-no-next-step tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.get_by_role("link")).to_have_text("Nothing planned")
    expect(session.page.get_by_text("Call booked")).to_have_count(0)
    session.screenshot("no-next-step")
    session.assert_accessible()

    rows.get_by_role("button", name="Plan an activity on Nothing planned").click()
    dialog = session.page.get_by_role("dialog", name="Plan an activity on “Nothing planned”")
    dialog.get_by_label("Type").select_option("meeting")
    dialog.get_by_label("Subject").fill("Kick-off meeting")
    dialog.get_by_role("button", name="Plan it").click()
    expect(session.page.locator("#notices")).to_contain_text(
        "Planned “Kick-off meeting” on “Nothing planned”."
    )
    expect(rows).to_have_count(0)
    expect(session.page.locator(".empty")).to_have_text("Every open deal has something planned.")
    assert [a["subject"] for a in activities_of(session, idle["id"])] == ["Kick-off meeting"]


def test_an_auditor_sees_activities_without_any_control_that_changes_them(
    session: Session,
) -> None:
    with session.api("manager") as api:
        pipeline = new_pipeline(api)
        deal = new_deal(api, pipeline["id"], "Audited deal", owner="audrey")
        plan(api, deal, "Look at the books", datetime.now(UTC) - timedelta(days=1))
        new_deal(api, pipeline["id"], "Idle audited deal")
    session.sign_in("auditor", f"#/deal/{deal['id']}")
    row = session.page.locator("table.activities-open tbody tr", has_text="Look at the books")
    expect(row.locator(".badge.overdue")).to_be_visible()
    expect(session.page.locator(".read-only-note")).to_contain_text("and their activities")
    expect(session.page.get_by_role("button", name="Plan an activity…")).to_have_count(0)
    expect(session.page.locator("#activities button")).to_have_count(0)

    session.go("#/activities")
    listed = session.page.locator("tbody tr", has_text="Look at the books")
    expect(listed).to_be_visible()
    expect(listed.get_by_role("button")).to_have_count(0)
    expect(session.page.locator(".read-only-note")).to_contain_text("Read-only")

    session.go(f"#/no-next-step?pipeline={pipeline['id']}")
    idle = session.page.locator("#table-no-next-step tbody tr", has_text="Idle audited deal")
    expect(idle).to_be_visible()
    expect(session.page.locator("#table-no-next-step button")).to_have_count(0)
    session.assert_accessible()
    assert session.posts == [], "an auditor's page sent a command"
