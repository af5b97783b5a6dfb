"""The dashboard's sign-in and board in Chromium: totals, moving cards by mouse and by
keyboard, stale cards, losing, read-only auditors, live updates and filters."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import (
    Session,
    demo_pipeline,
    head,
    new_deal,
    new_pipeline,
    read,
)
from tests.conftest import TOKENS

FIRST_LOAD_LIMIT = 500 * 1024  # bytes the first load of the board may transfer


def test_sign_in_names_the_user_and_a_wrong_token_is_refused_in_words(session: Session) -> None:
    session.open()
    expect(session.page.get_by_role("heading", name="Sign in to Dealtrail")).to_be_visible()
    session.screenshot("sign-in")
    session.assert_accessible()
    session.page.get_by_label("API token").fill("not-a-token")
    session.page.get_by_role("button", name="Sign in").click()
    expect(session.page.locator("#signin-error")).to_have_text("unknown API token")

    session.page.get_by_label("API token").fill(TOKENS["manager"])
    session.page.get_by_role("button", name="Sign in").click()
    session.ready()
    expect(session.page.locator("#who-name")).to_have_text("max")
    expect(session.page.locator("#who-role")).to_have_text("(manager)")
    assert (
        session.page.evaluate("() => sessionStorage.getItem('dealtrail.token')")
        == TOKENS["manager"]
    )

    session.page.get_by_role("button", name="Sign out").click()
    expect(session.page.get_by_label("API token")).to_be_visible()
    assert session.page.evaluate("() => sessionStorage.getItem('dealtrail.token')") is None


def test_a_token_the_api_refuses_returns_to_sign_in_with_its_message(session: Session) -> None:
    session.sign_in("rep")
    session.page.evaluate("() => sessionStorage.setItem('dealtrail.token', 'revoked-token')")
    session.page.reload()
    expect(session.page.locator("#signin-error")).to_contain_text("unknown API token")
    expect(session.page.locator("#nav a")).to_have_count(0)


def test_board_totals_are_the_apis_totals(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = demo_pipeline(api)
        board = read(api, f"/v1/pipelines/{pipeline['id']}/board", head(session.service))
    session.sign_in("manager", f"#/board?pipeline={pipeline['id']}")
    page = session.page
    totals = page.locator(".board-status .totals")
    expect(totals.locator("[data-field=count]")).to_have_attribute(
        "data-value", str(board["totals"]["count"])
    )
    expect(totals.locator("[data-field=total]")).to_have_attribute(
        "data-value", board["totals"]["total_value"]
    )
    expect(totals.locator("[data-field=weighted]")).to_have_attribute(
        "data-value", board["totals"]["weighted_value"]
    )
    euros = f"€{Decimal(board['totals']['total_value']):,.2f}"
    expect(totals.locator("[data-field=total]")).to_have_text(euros)
    for stage in board["stages"]:
        column = session.column(stage["id"])
        expect(column.get_by_role("heading", level=2)).to_have_text(stage["name"])
        for name, key in (
            ("count", "count"),
            ("total", "total_value"),
            ("weighted", "weighted_value"),
        ):
            expect(column.locator(f"[data-field={name}]")).to_have_attribute(
                "data-value", str(stage[key])
            )
        expect(column.locator(".card")).to_have_count(len(stage["deals"]))
    session.screenshot("board")
    session.assert_accessible()


def test_the_first_load_of_the_board_stays_under_500_kb_and_on_this_host(session: Session) -> None:
    finished: list[Any] = []
    session.page.on("requestfinished", lambda request: finished.append(request))
    session.sign_in("manager")
    expect(session.page.locator(".card").first).to_be_visible()
    sizes = {}
    for request in finished:
        measured = request.sizes()
        sizes[request.url] = measured["responseBodySize"] + measured["responseHeadersSize"]
    assert all(url.startswith(session.service.base_url) for url in sizes), list(sizes)
    assert any("/board" in url for url in sizes)
    assert not any("chart.umd" in url for url in sizes), "Chart.js loads only with the reports"
    total = sum(sizes.values())
    assert 0 < total < FIRST_LOAD_LIMIT, f"{total} bytes: {sizes}"


def test_dragging_a_card_advances_the_deal_and_the_timeline_shows_it(session: Session) -> None:
    _, (deal,) = session.board_with_deals("manager", "Drag me")
    card = session.card(deal["id"])
    expect(session.column("deal-created").locator(".card")).to_have_count(1)
    card.drag_to(session.column("quote-sent"))
    expect(session.page.locator("#notices")).to_contain_text("Moved “Drag me” to Quote sent.")
    expect(session.column("quote-sent").locator(".card")).to_have_count(1)
    expect(session.column("quote-sent").locator("[data-field=count]")).to_have_attribute(
        "data-value", "1"
    )
    expect(session.column("deal-created").locator("[data-field=count]")).to_have_attribute(
        "data-value", "0"
    )
    with session.api("auditor") as api:
        stored = read(api, f"/v1/deals/{deal['id']}", head(session.service))
    assert stored["stage"]["id"] == "quote-sent"
    assert stored["version"] == deal["version"] + 1

    session.card(deal["id"]).get_by_role("link", name="Drag me").click()
    session.ready()
    advanced = session.page.locator('.event[data-event-type="StageAdvanced"]')
    expect(advanced).to_have_count(1)
    expect(advanced).to_contain_text("by max")
    expect(advanced.locator("tr", has_text="Stage").first).to_contain_text("Deal created")
    expect(advanced.locator("tr", has_text="Stage").first).to_contain_text("Quote sent")
    expect(session.page.locator("[data-field=stage]")).to_have_text("Quote sent")
    session.screenshot("deal")
    session.assert_accessible()


def test_the_keyboard_moves_a_card_and_the_timeline_shows_it(session: Session) -> None:
    _, (deal,) = session.board_with_deals("manager", "Keyboard deal")
    move = session.card(deal["id"]).get_by_role("button", name="Move Keyboard deal")
    move.focus()
    session.page.keyboard.press("Enter")
    expect(move).to_have_attribute("aria-pressed", "true")
    session.page.keyboard.press("ArrowRight")
    expect(session.column("demo-or-meeting")).to_have_class("column drop-target")
    session.page.keyboard.press("ArrowRight")
    session.page.keyboard.press("ArrowLeft")
    session.page.keyboard.press("ArrowRight")
    expect(session.column("quote-sent")).to_have_class("column drop-target")
    session.page.keyboard.press("Enter")
    expect(session.column("quote-sent").locator(f'[data-deal-id="{deal["id"]}"]')).to_have_count(1)
    expect(session.column("quote-sent").locator("[data-field=count]")).to_have_attribute(
        "data-value", "1"
    )
    # Focus stays with the card, so the next move needs no search.
    expect(
        session.card(deal["id"]).get_by_role("button", name="Move Keyboard deal")
    ).to_be_focused()

    session.go(f"#/deal/{deal['id']}")
    advanced = session.page.locator('.event[data-event-type="StageAdvanced"]')
    expect(advanced).to_have_count(1)
    expect(advanced).to_contain_text("Quote sent")


def test_escape_cancels_a_keyboard_move(session: Session) -> None:
    _, (deal,) = session.board_with_deals("manager", "Stays put")
    move = session.card(deal["id"]).get_by_role("button", name="Move Stays put")
    move.focus()
    session.page.keyboard.press("Enter")
    session.page.keyboard.press("ArrowRight")
    session.page.keyboard.press("Escape")
    expect(move).to_have_attribute("aria-pressed", "false")
    expect(session.page.locator(".column.drop-target")).to_have_count(0)
    assert session.posts == []


def test_a_card_changed_by_someone_else_gets_the_412_message_and_is_reloaded(
    session: Session,
) -> None:
    _, (deal,) = session.board_with_deals("manager", "Contested")
    expect(session.card(deal["id"])).to_be_visible()
    changed = session.change_behind_its_back(deal, value="2500")  # the board shows version 1
    expect(session.card(deal["id"]).locator(".card-value")).to_have_attribute(
        "data-value", "1000.00"
    )

    session.card(deal["id"]).drag_to(session.column("negotiation"))
    expect(session.alert()).to_contain_text(
        "Someone else changed “Contested” after this page loaded it"
    )
    # Reloaded: back in its stage, with the other change's value and version.
    card = session.column("deal-created").locator(f'[data-deal-id="{deal["id"]}"]')
    expect(card.locator(".card-value")).to_have_attribute("data-value", "2500.00")
    expect(card).to_have_attribute("data-version", str(changed["version"]))
    with session.api("auditor") as api:
        stored = read(api, f"/v1/deals/{deal['id']}", head(session.service))
    assert stored["stage"]["id"] == "deal-created"
    assert stored["version"] == changed["version"]


def test_losing_a_deal_asks_for_one_of_the_pipelines_reasons(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = new_pipeline(api)
        deal = new_deal(api, pipeline["id"], "Lost cause")
        keep = new_deal(api, pipeline["id"], "Still open")
    session.sign_in("manager", f"#/board?pipeline={pipeline['id']}")
    session.card(deal["id"]).get_by_role("button", name="Mark Lost cause as lost").click()
    dialog = session.page.get_by_role("dialog", name="Mark “Lost cause” as lost")
    expect(dialog).to_be_visible()
    reasons = dialog.get_by_label("Reason").locator("option")
    expect(reasons).to_have_text(["Choose a reason…", *pipeline["lost_reasons"]])
    session.assert_accessible()
    dialog.get_by_label("Reason").select_option("Timing")
    dialog.get_by_label("Note (optional)").fill("budget moves to next year")
    dialog.get_by_role("button", name="Mark as lost").click()
    expect(dialog).to_have_count(0)
    expect(session.card(deal["id"])).to_have_count(0)
    expect(session.card(keep["id"])).to_be_visible()
    expect(session.page.locator(".board-status [data-field=count]")).to_have_attribute(
        "data-value", "1"
    )
    with session.api("auditor") as api:
        stored = read(api, f"/v1/deals/{deal['id']}", head(session.service))
    assert (stored["status"], stored["lost_reason"]) == ("lost", "Timing")
    assert stored["lost_note"] == "budget moves to next year"


def test_an_auditor_sees_the_board_read_only_and_cannot_move_cards(session: Session) -> None:
    _, (deal,) = session.board_with_deals("auditor", "Look, don't touch")
    expect(session.page.locator("#who-role")).to_have_text("(auditor)")
    expect(session.page.locator(".who .badge.read-only")).to_have_text("Read-only")
    expect(session.page.locator(".read-only-note")).to_contain_text("Read-only")
    card = session.card(deal["id"])
    expect(card).to_be_visible()
    expect(card).not_to_have_attribute("draggable", "true")
    expect(card.locator("button")).to_have_count(0)
    card.drag_to(session.column("negotiation"))
    expect(session.column("deal-created").locator(".card")).to_have_count(1)

    session.go(f"#/deal/{deal['id']}")
    expect(session.page.locator(".read-only-note")).to_contain_text("Read-only")
    expect(session.page.get_by_role("button", name="Won")).to_have_count(0)
    assert session.posts == [], "an auditor's page sent a command"
    with session.api("auditor") as api:
        stored = read(api, f"/v1/deals/{deal['id']}", head(session.service))
    assert stored["version"] == deal["version"]


def test_a_refused_command_is_shown_in_the_apis_words(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = new_pipeline(api, allow_skipping_stages=False)
        mine = new_deal(api, pipeline["id"], "Rita's deal", owner="rita")
        theirs = new_deal(api, pipeline["id"], "Raj's deal", owner="raj")
        twin = new_deal(api, pipeline["id"], "Twin", owner="rita")
    with session.api("rep") as api:  # the same refusals, asked directly (nothing changes)
        foreign = api.post(f"/v1/deals/{theirs['id']}/advance", json={"stage": "demo-or-meeting"})
        skip = api.post(f"/v1/deals/{twin['id']}/advance", json={"stage": "quote-sent"})
    assert (foreign.status_code, skip.status_code) == (403, 409), (foreign.text, skip.text)

    session.sign_in("rep", f"#/board?pipeline={pipeline['id']}")
    session.card(theirs["id"]).drag_to(session.column("demo-or-meeting"))
    expect(session.alert()).to_have_text(foreign.json()["error"]["message"])
    expect(
        session.column("deal-created").locator(f'[data-deal-id="{theirs["id"]}"]')
    ).to_be_visible()

    session.card(mine["id"]).drag_to(session.column("quote-sent"))
    expect(session.alert()).to_have_text(skip.json()["error"]["message"])
    expect(session.column("deal-created").locator(".card")).to_have_count(3)


def test_the_board_follows_changes_made_elsewhere_without_reloading(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = new_pipeline(api)
    session.sign_in("manager", f"#/board?pipeline={pipeline['id']}")
    session.page.evaluate("() => { window.notReloaded = true; }")
    with session.api("rep") as api:
        deal = new_deal(api, pipeline["id"], "Arrives live", owner="rita")
    expect(session.card(deal["id"])).to_be_visible()
    with session.api("rep") as api:
        moved = api.post(f"/v1/deals/{deal['id']}/advance", json={"stage": "negotiation"})
        assert moved.status_code == 200, moved.text
    expect(session.column("negotiation").locator(f'[data-deal-id="{deal["id"]}"]')).to_be_visible()
    expect(session.column("negotiation").locator("[data-field=count]")).to_have_attribute(
        "data-value", "1"
    )
    assert session.page.evaluate("() => window.notReloaded") is True


def test_filters_by_owner_and_team_add_up_those_deals(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = demo_pipeline(api)
        owners = read(api, "/v1/owners")["data"]
        owner = owners[0]["owner"]
        team = owners[0]["team"]
        position = head(session.service)

        def open_deals_of(who: str) -> list[dict[str, Any]]:
            return list(
                read(
                    api,
                    "/v1/deals",
                    position,
                    pipeline_id=pipeline["id"],
                    status="open",
                    owner=who,
                    limit=500,
                )["data"]
            )

        theirs = open_deals_of(owner)
        team_owners = [o["owner"] for o in owners if o["team"] == team]
        team_deals = [d for o in team_owners for d in open_deals_of(o)]
    assert theirs and len(team_deals) > len(theirs)
    session.sign_in("manager", f"#/board?pipeline={pipeline['id']}")
    session.navigating(lambda: session.page.get_by_label("Owner", exact=True).select_option(owner))
    totals = session.page.locator(".board-status .totals")
    expect(totals.locator("[data-field=count]")).to_have_attribute("data-value", str(len(theirs)))
    expected = sum(Decimal(d["value"]) for d in theirs)
    shown = totals.locator("[data-field=total]")
    expect(shown).not_to_have_attribute("data-value", "")
    assert Decimal(shown.get_attribute("data-value") or "0") == expected
    owners_shown = session.page.locator(".card-owner").all_inner_texts()
    assert owners_shown and set(owners_shown) == {owner}

    session.navigating(lambda: session.page.get_by_label("Team", exact=True).select_option(team))
    expect(totals.locator("[data-field=count]")).to_have_attribute(
        "data-value", str(len(team_deals))
    )
    weighted = sum(Decimal(d["weighted_value"]) for d in team_deals)
    assert (
        Decimal(totals.locator("[data-field=weighted]").get_attribute("data-value") or "")
        == weighted
    )
    assert set(session.page.locator(".card-owner").all_inner_texts()) <= set(team_owners)


def test_winning_on_the_board_and_reopening_on_the_deal_page(session: Session) -> None:
    _, (deal,) = session.board_with_deals("manager", "Big win")
    session.card(deal["id"]).get_by_role("button", name="Mark Big win as won").click()
    expect(session.page.locator("#notices")).to_contain_text("“Big win” is won.")
    expect(session.card(deal["id"])).to_have_count(0)

    session.go(f"#/deal/{deal['id']}")
    expect(session.page.locator("h1 .status")).to_have_text("Won")
    expect(session.page.locator('.event[data-event-type="DealWon"]')).to_have_count(1)
    session.page.get_by_label("Reopen in").select_option("negotiation")
    session.page.get_by_role("button", name="Reopen").click()
    expect(session.page.locator("h1 .status")).to_have_text("Open")
    expect(session.page.locator("[data-field=stage]")).to_have_text("Negotiation")
    expect(session.page.locator('.event[data-event-type="DealReopened"]')).to_have_count(1)
    with session.api("auditor") as api:
        stored = read(api, f"/v1/deals/{deal['id']}", head(session.service))
    assert (stored["status"], stored["stage"]["id"]) == ("open", "negotiation")
