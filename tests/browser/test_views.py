"""The dashboard's reports, stale deals and time travel in Chromium, against the API's
own answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
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


def test_the_funnel_chart_and_table_show_the_apis_numbers(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = demo_pipeline(api)
        funnel = read(api, "/v1/reports/funnel", head(session.service), pipeline_id=pipeline["id"])
    session.sign_in("manager", f"#/reports?pipeline={pipeline['id']}")
    rows = session.page.locator("#table-funnel tbody tr")
    expect(rows).to_have_count(len(funnel["rows"]))
    chart = session.page.wait_for_function(
        """() => { const c = window.Chart && Chart.getChart('chart-funnel');
                   return c && { labels: c.data.labels, entered: c.data.datasets[0].data,
                                 won: c.data.datasets[1].data }; }"""
    ).json_value()
    assert chart["labels"] == [r["stage_name"] for r in funnel["rows"]]
    assert chart["entered"] == [r["entered"] for r in funnel["rows"]]
    assert chart["won"] == [r["won"] for r in funnel["rows"]]
    for row, expected in zip(rows.all(), funnel["rows"], strict=True):
        cells = row.locator("th, td").all_inner_texts()
        assert cells[0] == expected["stage_name"]
        assert cells[1] == f"{expected['entered']:,}"
        assert cells[4] == f"{expected['won']:,}"
        conversion = expected["conversion_to_won"]
        if conversion is None:
            assert cells[6] == "—"
        else:
            assert abs(float(cells[6].rstrip("%")) - conversion * 100) <= 0.051, cells
    for report in ("stage-durations", "forecast", "lost-reasons", "win-rate", "owners"):
        expect(session.page.locator(f"#report-{report} .report-body")).to_have_attribute(
            "aria-busy", "false"
        )
    expect(session.page.locator("#report-funnel .problem")).to_have_count(0)
    session.screenshot("reports")
    session.assert_accessible()


def test_a_report_downloads_as_the_apis_csv(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = demo_pipeline(api)
        position = head(session.service)
        csv = api.get(
            "/v1/reports/stage-durations",
            params={"pipeline_id": pipeline["id"], "min_position": position},
            headers={"Accept": "text/csv"},
        )
        assert csv.status_code == 200, csv.text
    session.sign_in("manager", f"#/reports?pipeline={pipeline['id']}")
    with session.page.expect_download() as download:
        session.page.get_by_role("button", name="Download CSV: Stage durations").click()
    assert download.value.suggested_filename == "stage-durations.csv"
    saved = download.value.path()
    assert saved is not None
    assert saved.read_text() == csv.text
    expect(session.page.locator("#notices")).to_contain_text("Downloaded stage-durations.csv")


def test_a_period_and_an_owner_narrow_the_reports(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = demo_pipeline(api)
        owner = read(api, "/v1/owners")["data"][1]["owner"]
        since = (datetime.now(UTC) - timedelta(days=90)).date()
        win_rate = read(
            api,
            "/v1/reports/win-rate",
            head(session.service),
            pipeline_id=pipeline["id"],
            owner=owner,
            **{"from": f"{since.isoformat()}T00:00:00Z"},
        )
    session.sign_in("manager", f"#/reports?pipeline={pipeline['id']}")
    session.navigating(lambda: session.page.get_by_label("Owner", exact=True).select_option(owner))
    session.page.get_by_label("From").fill(since.isoformat())
    session.navigating(lambda: session.page.get_by_role("button", name="Apply period").click())
    assert f"owner={owner.replace(' ', '+')}" in session.page.url
    assert f"from={since.isoformat()}" in session.page.url
    won = session.page.locator("#report-win-rate .facts dd").first
    expect(won).to_have_text(f"{win_rate['summary']['won']:,}")
    expect(session.page.locator("#report-win-rate .facts dd").nth(1)).to_have_text(
        f"{win_rate['summary']['lost']:,}"
    )


SYMBOLS = {"EUR": "€", "USD": "$"}  # as Chromium writes them in the en-US locale


def shown(amount: str | None, currency: str) -> str:
    """An amount as the page writes it: its currency's symbol, two decimals, half up."""
    if amount is None:
        return "—"
    cents = Decimal(amount).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{SYMBOLS[currency]}{cents:,}"


def per_currency(amounts: dict[str, str]) -> str:
    return " · ".join(shown(amount, code) for code, amount in amounts.items()) or "—"


def test_report_money_is_shown_in_each_rows_and_summarys_own_currency(session: Session) -> None:
    with session.api("manager") as api:
        pipeline = demo_pipeline(api, "Partners")
        position = head(session.service)
        answers: dict[str, Any] = {
            name: read(api, f"/v1/reports/{name}", position, pipeline_id=pipeline["id"])
            for name in ("forecast", "lost-reasons", "owners")
        }
    forecast, lost, owners = answers["forecast"], answers["lost-reasons"], answers["owners"]
    assert pipeline["currency"] == "USD"
    assert set(forecast["summary"]["open_value"]) == {"USD"}  # kept per currency
    assert forecast["rows"] and lost["rows"] and owners["rows"]
    session.sign_in("manager", f"#/reports?pipeline={pipeline['id']}")

    facts = session.page.locator("#report-forecast .facts dd")
    expect(facts).to_have_text(
        [
            per_currency(forecast["summary"][k])
            for k in ("open_value", "weighted_value", "won_value")
        ]
    )
    chart = session.page.wait_for_function(
        """() => { const c = window.Chart && Chart.getChart('chart-forecast-USD');
                   return c && { labels: c.data.labels, open: c.data.datasets[0].data }; }"""
    ).json_value()
    assert len(chart["labels"]) == len(forecast["rows"])
    assert chart["open"] == [float(r["open_value"]) for r in forecast["rows"]]
    rows = session.page.locator("#table-forecast tbody tr")
    expect(rows).to_have_count(len(forecast["rows"]))
    for row, expected in zip(rows.all(), forecast["rows"], strict=True):
        cells = row.locator("th, td").all_inner_texts()
        assert cells[2] == shown(expected["open_value"], expected["currency"])
        assert cells[5] == shown(expected["won_value"], expected["currency"])

    expect(session.page.locator("#report-lost-reasons .facts dd")).to_have_text(
        [f"{lost['summary']['lost']:,}", per_currency(lost["summary"]["lost_value"])]
    )
    reasons = [r for r in lost["rows"] if r["dimension"] == "reason"]
    cells = session.page.locator("#table-lost-reasons tbody tr td:nth-child(3)")
    expect(cells).to_have_text([shown(r["value"], r["currency"]) for r in reasons])

    cells = session.page.locator("#table-owners tbody tr td:nth-child(4)")
    expect(cells).to_have_text([shown(r["open_value"], r["currency"]) for r in owners["rows"]])

    # Several currencies stand side by side, each in its own, never added.
    side_by_side = session.page.evaluate(
        """async () => (await import('/dashboard/js/format.js'))
            .moneyPerCurrency({ EUR: '1200.50', USD: '40' })"""
    )
    assert side_by_side == "€1,200.50 · $40.00"


def test_stale_deals_are_listed_and_snoozed(session: Session) -> None:
    with session.api("manager") as api:
        demo = demo_pipeline(api)
        stale = read(api, "/v1/reports/stale-deals", head(session.service), pipeline_id=demo["id"])
    session.sign_in("manager", f"#/stale?pipeline={demo['id']}")
    expect(session.page.locator(".summary")).to_contain_text(
        f"{stale['summary']['stale']:,} stale deals"
    )
    expect(session.page.locator("#table-stale tbody tr")).to_have_count(len(stale["rows"]))
    first = session.page.locator("#table-stale tbody tr").first
    expect(first.get_by_role("link")).to_have_text(stale["rows"][0]["title"])
    session.screenshot("stale-deals")
    session.assert_accessible()

    long_ago = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    with session.api("manager") as api:
        pipeline = new_pipeline(
            api,
            stages=[
                {"name": "Talk", "probability": 20, "rotting_days": 7},
                {"name": "Sign", "probability": 80},
            ],
        )
        deal = new_deal(api, pipeline["id"], "Forgotten", occurred_at=long_ago)
    session.go(f"#/stale?pipeline={pipeline['id']}")
    row = session.page.locator("#table-stale tbody tr", has_text="Forgotten")
    expect(row).to_be_visible()
    row.get_by_role("button", name="Snooze Forgotten").click()
    dialog = session.page.get_by_role("dialog", name="Snooze “Forgotten”")
    dialog.get_by_label("Reason").fill("customer on holiday")
    dialog.get_by_role("button", name="Snooze").click()
    expect(row).to_have_count(0)
    expect(session.page.locator(".summary")).to_have_text("0 stale deals.")
    with session.api("auditor") as api:
        stored = read(api, f"/v1/deals/{deal['id']}", head(session.service))
    assert stored["snoozed_until"] is not None
    assert stored["snooze_reason"] == "customer on holiday"


def test_time_travel_shows_an_earlier_state_marked_as_the_past(session: Session) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with session.api("manager") as api:
        pipeline = new_pipeline(api)
        deal = new_deal(
            api, pipeline["id"], "Went far", occurred_at=(now - timedelta(days=20)).isoformat()
        )
        moved = api.post(
            f"/v1/deals/{deal['id']}/advance",
            json={"stage": "negotiation", "occurred_at": (now - timedelta(days=5)).isoformat()},
        )
        assert moved.status_code == 200, moved.text
        then = now - timedelta(days=10)
        past = read(
            api,
            f"/v1/pipelines/{pipeline['id']}/board",
            moved.json()["position"],
            as_of=then.isoformat(),
        )
    assert [s["count"] for s in past["stages"]] == [1, 0, 0, 0]

    session.sign_in("manager", f"#/board?pipeline={pipeline['id']}")
    expect(session.column("negotiation").locator(f'[data-deal-id="{deal["id"]}"]')).to_be_visible()
    session.page.get_by_role("link", name="Time travel").click()
    session.ready()
    session.page.get_by_label("Moment (your time zone)").fill(then.strftime("%Y-%m-%dT%H:%M"))
    session.navigating(
        lambda: session.page.get_by_role("button", name="Show the board then").click()
    )
    banner = session.page.locator(".past-banner")
    expect(banner).to_contain_text("The past, read-only.")
    minute = then.replace(second=0).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    expect(banner.locator("time")).to_have_attribute("datetime", minute)
    card = session.column("deal-created").locator(f'[data-deal-id="{deal["id"]}"]')
    expect(card).to_be_visible()
    expect(card.locator(".card-title")).to_have_text("Went far")
    expect(card.locator("button")).to_have_count(0)
    expect(card).not_to_have_attribute("draggable", "true")
    expect(session.column("negotiation").locator(".card")).to_have_count(0)
    expect(session.page.locator(".board-status [data-field=total]")).to_have_attribute(
        "data-value", past["totals"]["total_value"]
    )


def test_time_travel_on_the_demo_board_matches_the_apis_past_board(session: Session) -> None:
    moment = (datetime.now(UTC) - timedelta(days=120)).replace(second=0, microsecond=0)
    with session.api("auditor") as api:
        pipeline = demo_pipeline(api)
        past = read(
            api,
            f"/v1/pipelines/{pipeline['id']}/board",
            head(session.service),
            as_of=moment.isoformat(),
        )
        now = read(api, f"/v1/pipelines/{pipeline['id']}/board", head(session.service))
    assert past["totals"] != now["totals"]
    session.sign_in(
        "auditor",
        f"#/time-travel?pipeline={pipeline['id']}&at={moment.isoformat().replace('+00:00', 'Z')}",
    )
    expect(session.page.locator("body")).to_have_class("in-past")
    totals = session.page.locator(".board-status .totals")
    expect(totals.locator("[data-field=count]")).to_have_attribute(
        "data-value", str(past["totals"]["count"])
    )
    expect(totals.locator("[data-field=weighted]")).to_have_attribute(
        "data-value", past["totals"]["weighted_value"]
    )
    for stage in past["stages"]:
        expect(session.column(stage["id"]).locator("[data-field=count]")).to_have_attribute(
            "data-value", str(stage["count"])
        )
    expect(session.page.locator(".card-title", has_text="loading its title")).to_have_count(0)
    session.screenshot("time-travel")
    session.assert_accessible()
