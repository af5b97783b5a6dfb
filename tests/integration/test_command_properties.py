"""Property: any sequence of commands, with any inputs, is refused or projected cleanly.

Hypothesis draws sequences of commands of every kind (deals, their activities and stage
checklists, pipeline changes, owners' teams) by every role, with arguments from
plausible to absurd: moments from year 1 to 9999 in any offset, amounts that are
negative, huge or not numbers, text with NUL, control characters and lone surrogates,
unknown stages, reasons and activities. Each command either
succeeds or is refused with a :class:`DomainError`; nothing else may escape. Then every
projection must reach the head of the log, and a rebuild from position 0 must give
exactly the tables the incremental worker built.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.application.app import DealtrailApplication
from libs.application.handlers import handle
from libs.domain.actors import Actor, Role
from libs.domain.commands import (
    AddLostReason,
    AddStage,
    AdvanceDeal,
    AssignTeam,
    CancelActivity,
    ChangePipeline,
    ChangeStage,
    Command,
    CommandResult,
    CompleteActivity,
    CreateDeal,
    DefinePipeline,
    LoseDeal,
    MoveDeal,
    RemoveStage,
    ReopenDeal,
    RetireLostReason,
    ScheduleActivity,
    SnoozeDeal,
    UpdateActivity,
    UpdateDeal,
    WaiveChecklist,
    WinDeal,
)
from libs.domain.errors import DomainError
from libs.domain.pipeline import default_template
from services.projections.catalog import all_projections
from services.projections.parking import list_parked
from services.projections.rebuild import rebuild
from services.projections.source import EventSource
from tests.conftest import PG_URL, Backend, TestClock, need_postgres
from tests.integration.test_read_models import Stores, close_stores, open_stores, states
from tests.integration.test_rebuild import assert_same_tables, snapshot

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ACTORS = [
    Actor("ann", Role.ADMIN),
    Actor("max", Role.MANAGER),
    Actor("rita", Role.REP),
    Actor("audrey", Role.AUDITOR),
]
EXAMPLES = {"sqlite": 30, "postgres": 12}
# The seeded deals of the first pipeline start with these open items.
CHECKLIST = [{"title": "Qualify", "type": "call", "due_in_days": 1}, {"title": "Agenda"}]

# --- inputs, from plausible to absurd -----------------------------------------------------

offsets = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=1)),
        timezone(timedelta(hours=23, minutes=59)),
        timezone(-timedelta(hours=23, minutes=59)),
    ]
)
absurd_moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
)


def mostly(plausible: st.SearchStrategy[Any], absurd: st.SearchStrategy[Any]) -> Any:
    """Plausible values about nine times in ten, absurd ones the rest of the time (a
    command has several arguments; most commands should get past their checks)."""
    return st.integers(min_value=0, max_value=9).flatmap(
        lambda roll: absurd if roll == 0 else plausible
    )


# Business time: now (None), a little earlier (after the deal's last event, mostly), or
# anything at all.
moments = mostly(
    st.one_of(
        st.none(),
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=1)).map(
            lambda d: ("ago", d)
        ),
    ),
    st.one_of(
        absurd_moments,
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)).map(
            lambda d: ("ago", d)
        ),
    ),
)
ahead = mostly(
    st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=4000)).map(
        lambda d: ("ahead", d)
    ),
    st.one_of(absurd_moments, st.datetimes()),  # the latter naive
)
days = mostly(
    st.one_of(st.none(), st.dates(min_value=date(2020, 1, 1), max_value=date(2036, 1, 1))),
    st.one_of(st.dates(), st.just("2026-01-01"), st.integers()),
)
texts = mostly(
    st.sampled_from(["ACME renewal", "Globex", "  padded  ", "=SUM(A1)", "Ünïcode ☃"]),
    st.one_of(st.sampled_from(["", "x" * 201]), st.text(max_size=30)),
)
amounts = mostly(
    st.sampled_from(["0", "100", "12000.50", "999999999999999.9999", "0.0001"]),
    st.one_of(
        st.sampled_from(["-1", "1e20", "NaN", "Infinity", "0.00001", "abc"]),
        st.decimals(allow_nan=True, allow_infinity=True),
        st.floats(),
        st.integers(),
        st.booleans(),
    ),
)
stage_refs = mostly(
    st.sampled_from(
        ["deal-created", "Demo or meeting", "quote-sent", "negotiation", "lead", "offer", None]
    ),
    st.one_of(st.sampled_from(["contract", "Closing", "nope"]), st.text(max_size=10)),
)
reasons = mostly(st.sampled_from(["Price", "Timing", "Other"]), texts)
small_ints = mostly(st.one_of(st.integers(min_value=0, max_value=100), st.none()), st.integers())
indexes = st.integers(min_value=0, max_value=1000)
activity_types = mostly(
    st.sampled_from(["call", "meeting", "email", "task", "deadline", "Call "]),
    st.one_of(st.sampled_from(["lunch", ""]), st.text(max_size=8), st.integers()),
)
durations = mostly(
    st.one_of(st.none(), st.integers(min_value=1, max_value=1440)),
    st.one_of(st.integers(), st.booleans(), st.floats()),
)
due_times = st.one_of(ahead, moments.map(lambda m: ("ago", timedelta(days=3)) if m is None else m))
checklists = mostly(
    st.one_of(
        st.none(),
        st.lists(
            st.fixed_dictionaries(
                {"title": texts, "type": activity_types},
                optional={"due_in_days": small_ints},
            ),
            max_size=4,
        ),
    ),
    st.one_of(
        st.text(max_size=5),
        st.lists(st.dictionaries(st.text(max_size=5), texts, max_size=3), max_size=3),
        st.lists(st.just({"title": "same"}), min_size=2, max_size=2),
    ),
)

commands = st.one_of(
    st.tuples(
        st.just("create"),
        indexes,
        texts,
        amounts,
        st.sampled_from(["rita", "raj", ""]),
        stage_refs,
        days,
        moments,
    ),
    st.tuples(st.just("advance"), indexes, stage_refs, texts, moments),
    st.tuples(st.just("win"), indexes, moments),
    st.tuples(st.just("lose"), indexes, reasons, texts, moments),
    st.tuples(st.just("reopen"), indexes, stage_refs, moments),
    st.tuples(
        st.just("update"),
        indexes,
        texts,
        amounts,
        days,
        st.sampled_from(["rita", "raj"]),
        small_ints,
        moments,
    ),
    st.tuples(st.just("snooze"), indexes, ahead, texts, moments),
    st.tuples(st.just("move"), indexes, indexes, stage_refs, moments),
    st.tuples(st.just("team"), st.sampled_from(["rita", "raj", "ra\x00j"]), texts, texts, moments),
    st.tuples(st.just("add_stage"), indexes, texts, small_ints, small_ints, checklists, moments),
    st.tuples(
        st.just("update_stage"), indexes, stage_refs, small_ints, small_ints, checklists, moments
    ),
    st.tuples(st.just("remove_stage"), indexes, stage_refs, stage_refs, moments),
    st.tuples(st.just("reason"), indexes, reasons, st.booleans(), moments),
    st.tuples(st.just("rules"), indexes, small_ints, mostly(st.booleans(), texts), moments),
    st.tuples(
        st.just("schedule"),
        indexes,
        activity_types,
        texts,
        due_times,
        durations,
        st.sampled_from([None, "rita", "raj", " "]),
        moments,
    ),
    st.tuples(
        st.just("update_activity"), indexes, indexes, activity_types, due_times, texts, moments
    ),
    st.tuples(st.just("complete"), indexes, indexes, texts, moments),
    st.tuples(st.just("cancel"), indexes, indexes, texts, moments),
    st.tuples(st.just("waive"), indexes, texts, moments),
)
steps = st.lists(
    st.tuples(st.sampled_from([0, 0, 1, 1, 2, 3]), st.integers(0, 3 * 86400), commands),
    min_size=3,
    max_size=30,
)


# --- running them -------------------------------------------------------------------------


def when(value: Any, now: datetime) -> Any:
    """A drawn moment: ``("ago", d)`` is now - d, ``("ahead", d)`` now + d, else as drawn."""
    if isinstance(value, tuple):
        kind, delta = value
        return now - delta if kind == "ago" else now + delta
    return value


def run_command(
    app: DealtrailApplication,
    actor: Actor,
    pipelines: list[Any],
    deals: list[Any],
    command: tuple[Any, ...],
    now: datetime,
) -> None:
    kind, *args = command

    def pick(items: list[Any], index: int) -> Any:
        return items[index % len(items)] if items else uuid.uuid4()

    if kind == "create":
        index, title, value, owner, stage, close, at = args
        result = handle(
            app,
            CreateDeal(
                actor=actor,
                pipeline_id=pick(pipelines, index),
                title=title,
                value=value,
                owner=owner or None,
                stage=stage,
                expected_close_date=close,
                occurred_at=when(at, now),
            ),
        )
        deals.append(result.id)
        return
    if kind in ("add_stage", "update_stage", "remove_stage", "reason", "rules"):
        run_pipeline_change(app, actor, pick(pipelines, args[0]), deals, kind, args[1:], now)
        return
    if kind == "team":
        owner, team, region, at = args
        handle(
            app,
            AssignTeam(
                actor=actor, owner=owner, team=team, region=region, occurred_at=when(at, now)
            ),
        )
        return
    deal = pick(deals, args[0])
    rest = args[1:]
    if kind in ("update_activity", "complete", "cancel"):
        run_activity_change(app, actor, deal, kind, rest, now)
        return
    calls: dict[str, Callable[[], Any]] = {
        "advance": lambda: handle(
            app,
            AdvanceDeal(
                deal_id=deal,
                actor=actor,
                stage=rest[0],
                note=rest[1],
                occurred_at=when(rest[2], now),
            ),
        ),
        "win": lambda: handle(
            app, WinDeal(deal_id=deal, actor=actor, occurred_at=when(rest[0], now))
        ),
        "lose": lambda: handle(
            app,
            LoseDeal(
                deal_id=deal,
                actor=actor,
                reason=rest[0],
                note=rest[1],
                occurred_at=when(rest[2], now),
            ),
        ),
        "reopen": lambda: handle(
            app,
            ReopenDeal(deal_id=deal, actor=actor, stage=rest[0], occurred_at=when(rest[1], now)),
        ),
        "update": lambda: handle(
            app,
            UpdateDeal(
                deal_id=deal,
                actor=actor,
                title=rest[0],
                value=rest[1],
                expected_close_date=rest[2],
                owner=rest[3],
                probability_override=rest[4],
                occurred_at=when(rest[5], now),
            ),
        ),
        "snooze": lambda: handle(
            app,
            SnoozeDeal(
                deal_id=deal,
                actor=actor,
                until=when(rest[0], now),
                reason=rest[1],
                occurred_at=when(rest[2], now),
            ),
        ),
        "schedule": lambda: handle(
            app,
            ScheduleActivity(
                deal_id=deal,
                actor=actor,
                type=rest[0],
                subject=rest[1],
                due_at=when(rest[2], now),
                duration_minutes=rest[3],
                assignee=rest[4],
                occurred_at=when(rest[5], now),
            ),
        ),
        "waive": lambda: handle(
            app,
            WaiveChecklist(
                deal_id=deal, actor=actor, reason=rest[0], occurred_at=when(rest[1], now)
            ),
        ),
        "move": lambda: handle(
            app,
            MoveDeal(
                deal_id=deal,
                actor=actor,
                pipeline_id=pick(pipelines, rest[0]),
                stage=rest[1],
                occurred_at=when(rest[2], now),
            ),
        ),
    }
    calls[kind]()


def run_activity_change(
    app: DealtrailApplication,
    actor: Actor,
    deal: Any,
    kind: str,
    args: tuple[Any, ...],
    now: datetime,
) -> None:
    """An activity command on one of the deal's activities (its checklist items included),
    or on an unknown one when it has none."""
    try:
        known = [a.id for a in app.get_deal(deal).activities]
    except DomainError:
        known = []
    activity = known[args[0] % len(known)] if known else str(uuid.uuid4())
    common: dict[str, Any] = {"deal_id": deal, "actor": actor, "activity_id": activity}
    at = when(args[-1], now)
    if kind == "update_activity":
        command: Command[CommandResult] = UpdateActivity(
            type=args[1], due_at=when(args[2], now), subject=args[3], occurred_at=at, **common
        )
    elif kind == "complete":
        command = CompleteActivity(outcome=args[1], occurred_at=at, **common)
    else:
        command = CancelActivity(reason=args[1], occurred_at=at, **common)
    handle(app, command)


def run_pipeline_change(
    app: DealtrailApplication,
    actor: Actor,
    pipeline_id: Any,
    deals: list[Any],
    kind: str,
    args: tuple[Any, ...],
    now: datetime,
) -> None:
    at = when(args[-1], now)
    if kind == "remove_stage":
        handle(
            app,
            RemoveStage(
                pipeline_id=pipeline_id,
                stage=args[0],
                actor=actor,
                move_open_deals_to=args[1],
                occurred_at=at,
            ),
            open_deals_in_stage=lambda *_: list(deals),
        )
        return

    common: dict[str, Any] = {"actor": actor, "pipeline_id": pipeline_id, "occurred_at": at}
    command: Command[CommandResult]
    if kind == "add_stage":
        command = AddStage(
            name=args[0], probability=args[1], rotting_days=args[2], checklist=args[3], **common
        )
    elif kind == "update_stage":
        command = ChangeStage(
            stage=args[0], probability=args[1], rotting_days=args[2], checklist=args[3], **common
        )
    elif kind == "reason" and args[1]:
        command = AddLostReason(reason=args[0], **common)
    elif kind == "reason":
        command = RetireLostReason(reason=args[0], **common)
    else:
        command = ChangePipeline(
            stale_after_days=args[0], require_checklist_before_leaving=args[1], **common
        )
    handle(app, command)


# Commands that succeeded, by kind, and refusals, over every example of a run.
outcomes: dict[str, int] = {}


async def check_history(backend: Backend, history: list[tuple[int, int, tuple[Any, ...]]]) -> None:
    with tempfile.TemporaryDirectory() as data:
        clock = TestClock(START)
        stores = await open_stores(backend, Path(data), clock, batch_size=5)
        try:
            app = stores.app
            template = default_template()
            first, *rest = template["stages"]
            pipelines = [
                handle(
                    app,
                    DefinePipeline(
                        actor=ACTORS[0],
                        name=name,
                        currency=currency,
                        stages=stages,
                        lost_reasons=template["lost_reasons"],
                        occurred_at=START - timedelta(days=500),
                    ),
                ).id
                for name, currency, stages in (
                    ("New business", "EUR", [{**first, "checklist": CHECKLIST}, *rest]),
                    ("Partners", "EUR", [{"name": "Lead", "probability": 20}]),
                    ("Dollars", "USD", [{"name": "Offer", "probability": 50}]),
                )
            ]
            deals = [
                handle(
                    app,
                    CreateDeal(
                        actor=ACTORS[1],
                        pipeline_id=pipelines[n % 3],
                        title=f"Seed {n}",
                        value="1000",
                        owner=("rita", "raj")[n % 2],
                        occurred_at=START - timedelta(days=100 - n),
                    ),
                ).id
                for n in range(4)
            ]
            for who, seconds, command in history:
                clock.advance(seconds=seconds)
                try:
                    run_command(app, ACTORS[who], pipelines, deals, command, clock.now)
                    outcomes[command[0]] = outcomes.get(command[0], 0) + 1
                except DomainError as exc:
                    outcomes["refused"] = outcomes.get("refused", 0) + 1
                    key = f"{command[0]}:{exc.code}:{exc.field}"
                    outcomes[key] = outcomes.get(key, 0) + 1
            await stores.worker.catch_up()
            head = stores.head()
            assert {s.position for s in (await states(stores.engine)).values()} == {head}
            assert await parked_events(stores) == []  # applied, not merely parked
            incremental = await snapshot(stores.engine)
            await rebuild(stores.engine, EventSource(app), all_projections(), batch_size=7)
            assert_same_tables(await snapshot(stores.engine), incremental)
            assert await parked_events(stores) == []
        finally:
            await close_stores(stores)


async def parked_events(stores: Stores) -> list[tuple[str, int, str, str]]:
    async with stores.engine.connect() as conn:
        return [(p.name, p.position, p.event_type, p.error) for p in await list_parked(conn)]


@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"])
def test_any_command_sequence_is_refused_or_projected_and_rebuilt_identically(
    backend_name: str,
) -> None:
    if backend_name == "postgres":
        need_postgres()

    @settings(
        max_examples=EXAMPLES[backend_name],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
        derandomize=True,
    )
    @given(history=steps)
    def check(history: list[tuple[int, int, tuple[Any, ...]]]) -> None:
        if backend_name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                backend = Backend("sqlite", f"sqlite:///{tmp}/dealtrail.db")
                asyncio.run(check_history(backend, history))
            return
        schema = f"t_prop_{uuid.uuid4().hex[:12]}"
        try:
            asyncio.run(check_history(Backend("postgres", PG_URL, schema), history))
        finally:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    outcomes.clear()
    check()
    # the draws reach the domain: commands of several kinds succeed (about one per example
    # at least), many others are refused
    succeeded = {kind: n for kind, n in outcomes.items() if kind != "refused" and ":" not in kind}
    print(backend_name, outcomes)
    assert outcomes.get("refused", 0) > 10
    assert len(succeeded) >= 5, outcomes
    assert sum(succeeded.values()) >= EXAMPLES[backend_name], outcomes
