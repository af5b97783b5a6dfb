"""``dealtrail import crm-opportunities DIR``: the CRM sales-opportunities format.

The directory holds ``sales_pipeline.csv`` (one opportunity a row), ``sales_teams.csv``
(agent, manager, regional office), ``products.csv`` (product, series, sales price) and,
optionally, ``accounts.csv``. The mapping (documented in docs/import-demo-export.md):

- one pipeline, "CRM opportunities" (USD), with the stages Prospecting and Engaging;
  Won and Lost are outcomes, not stages;
- each agent becomes an owner whose team is their manager and whose region is their
  regional office;
- each opportunity becomes a deal with external id ``opportunity_id``, owner
  ``sales_agent``, its ``account`` and ``product``, created at ``engage_date`` in
  Engaging, or - Prospecting rows have no date - at the undated-row date in Prospecting;
  won or lost at ``close_date``; lost deals get the lost reason "Unknown (imported)";
- value: ``close_value`` for won deals, the product's ``sales_price`` for the others.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path

from libs.application.app import DealtrailApplication
from libs.application.importing import (
    DEFAULT_BATCH_SIZE,
    IMPORT_ACTOR,
    DealImporter,
    ImportReport,
)
from libs.domain.actors import Actor
from libs.domain.deal import LOST, OPEN, WON
from libs.domain.imports import DealRow
from libs.domain.pipeline import DEFAULT_LOST_REASONS, Pipeline
from services.importer.common import (
    CsvTable,
    RowProblem,
    check_row_shape,
    parse_time,
    read_csv_file,
)

PIPELINE_NAME = "CRM opportunities"
CURRENCY = "USD"
PROSPECTING, ENGAGING = "Prospecting", "Engaging"
STAGES = [
    {"name": PROSPECTING, "probability": 10},
    {"name": ENGAGING, "probability": 40},
]
IMPORTED_LOST_REASON = "Unknown (imported)"
LOST_REASONS = [IMPORTED_LOST_REASON, *DEFAULT_LOST_REASONS]

PIPELINE_FILE = "sales_pipeline.csv"
TEAMS_FILE = "sales_teams.csv"
PRODUCTS_FILE = "products.csv"
ACCOUNTS_FILE = "accounts.csv"
PIPELINE_COLUMNS = (
    "opportunity_id",
    "sales_agent",
    "product",
    "account",
    "deal_stage",
    "engage_date",
    "close_date",
    "close_value",
)
TEAMS_COLUMNS = ("sales_agent", "manager", "regional_office")
PRODUCTS_COLUMNS = ("product", "sales_price")

_NOT_WORD = re.compile(r"[^0-9a-z]+")


def _key(name: str) -> str:
    """Names compared without case, spaces or punctuation ("GTXPro" is "GTX Pro")."""
    return _NOT_WORD.sub("", name.casefold())


@dataclass(frozen=True)
class Product:
    name: str
    price: Decimal


@dataclass(frozen=True)
class CrmData:
    """The directory's files, read and indexed."""

    opportunities: CsvTable
    teams: CsvTable
    products: dict[str, Product]
    accounts: dict[str, str]
    earliest: datetime | None
    latest: datetime | None


def load(directory: Path) -> CrmData:
    """Read the files (an unreadable or incomplete directory aborts the import)."""
    opportunities = read_csv_file(directory / PIPELINE_FILE)
    opportunities.require(PIPELINE_COLUMNS)
    teams = read_csv_file(directory / TEAMS_FILE)
    teams.require(TEAMS_COLUMNS)
    product_table = read_csv_file(directory / PRODUCTS_FILE)
    product_table.require(PRODUCTS_COLUMNS)
    products: dict[str, Product] = {}
    for _, row in product_table.rows:
        try:
            price = Decimal(row["sales_price"])
        except InvalidOperation:
            continue  # a product without a usable price: its open deals get rejected
        if row["product"]:
            products.setdefault(_key(row["product"]), Product(row["product"], price))
    accounts: dict[str, str] = {}
    if (directory / ACCOUNTS_FILE).exists():
        for _, row in read_csv_file(directory / ACCOUNTS_FILE).rows:
            if row.get("account"):
                accounts.setdefault(_key(row["account"]), row["account"])
    dates: list[datetime] = []
    for _, row in opportunities.rows:
        for column in ("engage_date", "close_date"):
            if row[column]:
                with contextlib.suppress(RowProblem):  # a bad date rejects its row later
                    dates.append(parse_time(row[column], column))
    return CrmData(
        opportunities=opportunities,
        teams=teams,
        products=products,
        accounts=accounts,
        earliest=min(dates) if dates else None,
        latest=max(dates) if dates else None,
    )


def undated_default(data: CrmData, now: datetime) -> datetime:
    """The date of rows without one: the latest date in the file (its as-of date)."""
    if data.latest is not None:
        return data.latest
    return datetime.combine(now.date(), time(0), tzinfo=UTC)


def _deal_row(
    line: int,
    row: dict[str, str],
    *,
    data: CrmData,
    pipeline: Pipeline,
    undated: datetime,
) -> DealRow:
    check_row_shape(row)
    opportunity = row["opportunity_id"]
    if not opportunity:
        raise RowProblem("opportunity_id is empty")
    agent = row["sales_agent"]
    if not agent:
        raise RowProblem("sales_agent is empty")
    stage = row["deal_stage"].casefold()
    if stage not in ("prospecting", "engaging", "won", "lost"):
        raise RowProblem(
            f"deal_stage {row['deal_stage']!r} is not Prospecting, Engaging, Won or Lost"
        )
    if not row["product"]:
        raise RowProblem("product is empty")
    product = data.products.get(_key(row["product"]))
    product_name = product.name if product else row["product"]
    account = data.accounts.get(_key(row["account"]), row["account"]) or None
    engaged = parse_time(row["engage_date"], "engage_date") if row["engage_date"] else None
    closed = parse_time(row["close_date"], "close_date") if row["close_date"] else None

    status = {"won": WON, "lost": LOST}.get(stage, OPEN)
    if status != OPEN:
        if engaged is None or closed is None:
            raise RowProblem(f"a {row['deal_stage']} row needs engage_date and close_date")
        if closed < engaged:
            raise RowProblem(
                f"close_date {row['close_date']} is before engage_date {row['engage_date']}"
            )
    else:
        closed = None
    if status == WON:
        try:
            value = Decimal(row["close_value"])
        except InvalidOperation:
            raise RowProblem(
                f"close_value {row['close_value']!r} of a won deal is not a number"
            ) from None
    elif product is not None:
        value = product.price
    else:
        raise RowProblem(
            f"product {row['product']!r} is not in {PRODUCTS_FILE}, so the "
            f"{row['deal_stage']} deal has no value"
        )
    title = f"{account} - {product_name}" if account else f"{product_name} ({opportunity})"
    return DealRow(
        file=data.opportunities.name,
        line=line,
        pipeline=pipeline,
        external_id=opportunity,
        title=title,
        value=value,
        owner=agent,
        created_at=engaged or undated,
        stage=PROSPECTING if stage == "prospecting" else ENGAGING,
        status=status,
        stage_entered_at=engaged,
        closed_at=closed,
        lost_reason=IMPORTED_LOST_REASON if status == LOST else None,
        account=account,
        product=product_name,
    )


def import_crm(
    app: DealtrailApplication,
    data: CrmData,
    *,
    actor: Actor = IMPORT_ACTOR,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    pipeline_name: str = PIPELINE_NAME,
    undated: datetime | None = None,
) -> ImportReport:
    """Import the CRM data through the domain; see the module docstring for the mapping."""
    now = app.clock()
    undated = undated or undated_default(data, now)
    since = min(data.earliest or undated, undated)
    importer = DealImporter(
        app, actor=actor, strict=strict, batch_size=batch_size, progress=progress
    )
    pipeline = importer.ensure_pipeline(
        name=pipeline_name,
        currency=CURRENCY,
        stages=STAGES,
        lost_reasons=LOST_REASONS,
        occurred_at=since,
        required_stages=(PROSPECTING, ENGAGING),
        required_lost_reasons=(IMPORTED_LOST_REASON,),
    )
    seen_agents: dict[str, int] = {}
    for line, row in data.teams.rows:
        agent = row["sales_agent"]
        if not agent:
            importer.reject(data.teams.name, line, "sales_agent is empty", counts=False)
            continue
        if agent in seen_agents:
            importer.reject(
                data.teams.name,
                line,
                f"agent {agent!r} is listed twice (first on line {seen_agents[agent]})",
                counts=False,
            )
            continue
        seen_agents[agent] = line
        importer.ensure_owner(
            name=agent,
            team=row["manager"] or None,
            region=row["regional_office"] or None,
            occurred_at=since,
            changed_at=data.latest or undated,
            file=data.teams.name,
            line=line,
        )
    for line, row in data.opportunities.rows:
        try:
            deal_row = _deal_row(line, row, data=data, pipeline=pipeline, undated=undated)
        except RowProblem as exc:
            importer.reject(data.opportunities.name, line, str(exc))
            continue
        importer.add(deal_row)
    return importer.finish()
