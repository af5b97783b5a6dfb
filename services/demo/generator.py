"""A deterministic generator of realistic pipeline history, written through the domain.

``generate(app, deals=N, seed=S)`` defines three pipelines ("New business", "Renewals",
"Partners"), registers owners in five teams across three regions (a few move team
along the way), and then walks each deal through its pipeline over months of
backdated business time: forward moves, moves back, value and close-date changes,
owner hand-overs, wins, losses with reasons (and notes), reopenings, and stale deals
that nobody touched for a long time. Along the way reps hold calls and meetings
(planned, then completed), and open deals end with a next step planned, some of it
overdue. "Renewals" has stage checklists that must be done before a deal leaves a
stage: the reps complete them (or, now and then, a manager waives them). Every change
is a domain command (rules apply).

Activities draw from a random stream of their own per deal, so the deals' own
histories are those they would be without them.

The same seed and end date give the same events: the same aggregate ids, versions,
types, actors, ``occurred_at`` and payloads, in the same order (only ``recorded_at``,
the server time, differs). The end defaults to the start of the current UTC day, so
two runs on the same day agree; pass ``end`` to pin it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError

from libs.application.app import DealtrailApplication
from libs.application.handlers import handle, pipeline_defined_by
from libs.application.importing import DEFAULT_BATCH_SIZE
from libs.domain.actors import Actor, Role
from libs.domain.commands import AssignTeam, DefinePipeline, ImportSetup, RecordHistory
from libs.domain.deal import OPEN, Deal
from libs.domain.pipeline import DEFAULT_LOST_REASONS, Pipeline

DEMO_NAMESPACE: Final = UUID("3d0b8f7e-9c41-4a55-b2f3-51c0a7e9d2c6")
SETUP_ACTOR = Actor(name="demo-admin", role=Role.ADMIN)
DEFAULT_MONTHS = 12


class DemoError(Exception):
    """The generator cannot run (for example: this seed's data is already there)."""


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    currency: str
    stages: tuple[tuple[str, int, int | None], ...]  # name, probability, rotting days
    lost_reasons: tuple[str, ...]
    weight: float
    values: tuple[int, int]
    products: tuple[str, ...]
    mean_gap_days: float
    # per stage (by name): its checklist items (title, type, due in days)
    checklists: tuple[tuple[str, tuple[tuple[str, str, int], ...]], ...] = ()
    require_checklist_before_leaving: bool = False

    def stage_definitions(self) -> list[dict[str, Any]]:
        checklists = dict(self.checklists)
        return [
            {
                "name": n,
                "probability": p,
                "rotting_days": r,
                "checklist": [
                    {"title": title, "type": kind, "due_in_days": days}
                    for title, kind, days in checklists.get(n, ())
                ],
            }
            for n, p, r in self.stages
        ]


PIPELINES: Final = (
    PipelineSpec(
        name="New business",
        currency="EUR",
        stages=(
            ("Deal created", 10, 14),
            ("Demo or meeting", 25, 21),
            ("Quote sent", 50, 21),
            ("Negotiation", 75, 30),
        ),
        lost_reasons=DEFAULT_LOST_REASONS,
        weight=0.55,
        values=(2_000, 90_000),
        products=("Starter plan", "Team plan", "Enterprise plan", "Onboarding package"),
        mean_gap_days=8.0,
    ),
    PipelineSpec(
        name="Renewals",
        currency="EUR",
        stages=(("Renewal due", 40, 30), ("Proposal sent", 60, 21), ("Contract sent", 85, 14)),
        lost_reasons=(
            "Price",
            "Switched vendor",
            "No budget",
            "Out of business",
            "Product fit",
            "Other",
        ),
        weight=0.30,
        values=(1_000, 40_000),
        products=("Team plan renewal", "Enterprise renewal", "Support renewal"),
        mean_gap_days=10.0,
        checklists=(
            (
                "Renewal due",
                (("Review usage and health", "task", 5), ("Call the account owner", "call", 7)),
            ),
            ("Proposal sent", (("Send the renewal proposal", "email", 2),)),
            ("Contract sent", (("Confirm the signatory", "call", 3),)),
        ),
        require_checklist_before_leaving=True,
    ),
    PipelineSpec(
        name="Partners",
        currency="USD",
        stages=(
            ("Introduced", 10, 30),
            ("Qualified", 30, 30),
            ("Joint pitch", 55, 21),
            ("Commit", 80, 14),
        ),
        lost_reasons=(
            "Lost to competitor",
            "No budget",
            "No decision",
            "Timing",
            "Partner withdrew",
            "Other",
        ),
        weight=0.15,
        values=(5_000, 150_000),
        products=("Reseller programme", "Referral programme", "OEM licence"),
        mean_gap_days=12.0,
    ),
)

# (team, region, manager)
TEAMS: Final = (
    ("Falcons", "EMEA", "Greta Lindqvist"),
    ("Ravens", "EMEA", "Tomasz Nowak"),
    ("Lynx", "Americas", "Maria Alvarez"),
    ("Otters", "Americas", "Jamal Carter"),
    ("Koalas", "APAC", "Aiko Tanaka"),
)
FIRST_NAMES: Final = (
    "Ada", "Bruno", "Chloe", "Dev", "Elif", "Farid", "Gwen", "Hugo", "Ines", "Jonas",
    "Kira", "Luca", "Mina", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tess",
    "Umar", "Vera", "Wen", "Ximena", "Yusuf", "Zoe",
)  # fmt: skip
LAST_NAMES: Final = (
    "Adler", "Banerjee", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad",
    "Ito", "Jensen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Park",
    "Rossi", "Schmidt", "Tanaka", "Ueda", "Varga", "Weber", "Yilmaz", "Zhang",
)  # fmt: skip
ACCOUNT_STEMS: Final = (
    "Acme", "Aurora", "Bluebird", "Cobalt", "Delta", "Evergreen", "Falcon", "Granite",
    "Harbor", "Iris", "Juniper", "Keystone", "Lumen", "Meridian", "Northwind", "Orchid",
    "Pinnacle", "Quartz", "Redwood", "Summit", "Tidewater", "Umbra", "Vertex", "Willow",
)  # fmt: skip
ACCOUNT_KINDS: Final = (
    "Logistics", "Health", "Foods", "Systems", "Bank", "Energy", "Retail", "Labs",
    "Media", "Motors", "Insurance", "Hotels",
)  # fmt: skip
CALL_SUBJECTS: Final = (
    "Discovery call",
    "Follow-up call",
    "Pricing questions",
    "Check-in with the champion",
    "Call about next steps",
)
MEETING_SUBJECTS: Final = (
    "Product demo",
    "On-site meeting",
    "Workshop with the buyer's team",
    "Review meeting",
)
NEXT_STEPS: Final = (
    ("task", "Send the updated quote"),
    ("call", "Follow up on the proposal"),
    ("meeting", "Meet the decision makers"),
    ("email", "Send the case study"),
    ("deadline", "Quote expires"),
)
OUTCOMES: Final = (
    "interested, wants a proposal",
    "needs approval from finance",
    "asked for references",
    None,
)
LOSS_NOTES: Final = (
    "went with a cheaper offer",
    "budget moved to next year",
    "champion left the company",
    "chose to build it in-house",
    "no reply after three follow-ups",
    "procurement froze all new vendors",
)


@dataclass
class DemoResult:
    """What :func:`generate` wrote."""

    deals: int = 0
    events: int = 0
    seconds: float = 0.0
    pipelines: dict[str, UUID] = field(default_factory=dict)
    owners: list[str] = field(default_factory=list)
    showcase_deal: UUID | None = None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def demo_pipeline_id(seed: int, name: str) -> UUID:
    return uuid5(DEMO_NAMESPACE, f"{seed}:{name}")


def default_end(now: datetime) -> datetime:
    """The start of the current UTC day: the generated history ends there."""
    day = now.astimezone(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass
class _Rep:
    name: str
    team: int  # index into TEAMS


class _World:
    """The fixed cast of one run: pipelines, reps, managers, accounts."""

    def __init__(self, rng: random.Random, seed: int, start: datetime, now: datetime) -> None:
        self.rng = rng
        self.pipelines: list[tuple[PipelineSpec, Pipeline]] = []
        self.definitions: list[DefinePipeline] = []
        for spec in PIPELINES:
            definition = DefinePipeline(
                actor=SETUP_ACTOR,
                pipeline_id=demo_pipeline_id(seed, spec.name),
                name=spec.name,
                currency=spec.currency,
                stages=spec.stage_definitions(),
                lost_reasons=list(spec.lost_reasons),
                require_checklist_before_leaving=spec.require_checklist_before_leaving,
                occurred_at=start - timedelta(days=7),
            )
            # The deals walk through the pipeline as the definition will store it.
            pipeline = pipeline_defined_by(definition, start - timedelta(days=7), now)
            self.definitions.append(definition)
            self.pipelines.append((spec, pipeline))
        self.weights = [spec.weight for spec in PIPELINES]
        names = [f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES]
        picked = rng.sample(names, 5 * len(TEAMS))
        self.reps = [_Rep(name, i % len(TEAMS)) for i, name in enumerate(picked)]
        self.managers = [Actor(name=manager, role=Role.MANAGER) for _, _, manager in TEAMS]
        accounts = [f"{s} {k}" for s in ACCOUNT_STEMS for k in ACCOUNT_KINDS]
        self.accounts = rng.sample(accounts, 180)

        self.rep_by_name = {rep.name: rep for rep in self.reps}

    def teammates(self, rep: _Rep) -> list[_Rep]:
        return [r for r in self.reps if r.team == rep.team and r.name != rep.name]


def _setup_owners(
    app: DealtrailApplication,
    world: _World,
    rng: random.Random,
    start: datetime,
    end: datetime,
) -> list[AssignTeam]:
    """Register the reps; three of them move to another team during the period."""
    commands: list[AssignTeam] = []
    movers = rng.sample(world.reps, 3)
    moves = []
    for rep in movers:
        target = (rep.team + 1 + rng.randrange(len(TEAMS) - 1)) % len(TEAMS)
        when = start + (end - start) * (0.3 + 0.4 * rng.random())
        moves.append((rep, target, when))
    for rep in world.reps:
        if app.get_owner(rep.name) is not None:
            continue  # already known (another seed's demo data): leave as it is
        # Registered a week before the history starts; movers change team later on.
        changes = [(rep.team, start - timedelta(days=7))]
        changes += [(target, when) for mover, target, when in moves if mover is rep]
        for team_index, when in changes:
            team, region, _ = TEAMS[team_index]
            commands.append(
                AssignTeam(
                    actor=SETUP_ACTOR, owner=rep.name, team=team, region=region, occurred_at=when
                )
            )
    return commands


def _business_time(rng: random.Random, day_start: datetime) -> datetime:
    """A moment on that day between 08:00 and 18:00 UTC, to the second."""
    return day_start.replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(
        seconds=rng.randrange(10 * 3600)
    )


class _DealWalk:
    """One deal's life: created, then moved step by step until closed, stale or the end."""

    def __init__(
        self, world: _World, rng: random.Random, start: datetime, end: datetime, now: datetime
    ) -> None:
        self.world = world
        self.rng = rng
        self.start = start
        self.end = end
        self.now = now
        self.span = (end - start).total_seconds()

    def run(self, number: int, seed: int = 0) -> Deal:
        rng, world = self.rng, self.world
        self.arng = random.Random(f"{seed}:{number}:activities")
        spec, pipeline = rng.choices(world.pipelines, weights=world.weights)[0]
        rep = rng.choice(world.reps)
        actor = Actor(name=rep.name, role=Role.REP)
        created = _business_time(
            rng, self.start + timedelta(seconds=rng.random() * self.span * 0.97)
        )
        account = rng.choice(world.accounts)
        product = rng.choice(spec.products)
        low, high = spec.values
        value = Decimal(int(rng.triangular(low, high, low + (high - low) * 0.2)) // 50 * 50)
        first = 1 if rng.random() < 0.15 else 0
        actor.check_may_change_deal(rep.name)
        deal = Deal.create(
            pipeline=pipeline,
            title=f"{account} - {product}",
            value=value,
            owner=rep.name,
            stage=pipeline.stages[first].id,
            expected_close_date=(created + timedelta(days=rng.randint(21, 120))).date(),
            external_id=f"demo-{number:07d}",
            account=account,
            product=product,
            actor=actor.name,
            occurred_at=created,
            now=self.now,
        )
        stale = rng.random() < 0.08
        steps = rng.randint(0, 2) if stale else 40
        when = created
        reopens = 0
        for _ in range(steps):
            gap_days = max(rng.expovariate(1 / spec.mean_gap_days), 0.1)
            when = max(
                _business_time(rng, when + timedelta(days=gap_days)),
                when + timedelta(minutes=10),
            )
            if when >= self.end:
                break
            if deal.status != OPEN:
                if reopens < 2 and rng.random() < 0.12:
                    reopens += 1
                    self._reopen(deal, pipeline, when)
                    continue
                break
            self._held_activity(deal, when)
            self._step(deal, pipeline, spec, when)
        if deal.status == OPEN and not stale:
            self._next_step(deal)
        return deal

    # --- activities (their own random stream: the deal's history stays as it was) ----

    def _between(self, deal: Deal, until: datetime, share: float) -> datetime:
        """A moment ``share`` of the way from the deal's last event to ``until``."""
        last: datetime = deal.last_occurred_at
        return last + (until - last) * share

    def _held_activity(self, deal: Deal, until: datetime) -> None:
        """Now and then a call or meeting held before ``until``: planned, then done."""
        arng = self.arng
        if arng.random() >= 0.3:
            return
        meeting = arng.random() < 0.35
        planned = self._between(deal, until, 0.2)
        held = self._between(deal, until, 0.7)
        rep = Actor(name=deal.owner, role=Role.REP)
        activity_id = deal.schedule_activity(
            type="meeting" if meeting else "call",
            subject=arng.choice(MEETING_SUBJECTS if meeting else CALL_SUBJECTS),
            due_at=held,
            duration_minutes=arng.choice((30, 45, 60)) if meeting else arng.choice((15, 30)),
            actor=rep.name,
            occurred_at=planned,
            now=self.now,
        )
        deal.complete_activity(
            activity_id, arng.choice(OUTCOMES), actor=rep.name, occurred_at=held, now=self.now
        )

    def _clear_checklist(self, deal: Deal, pipeline: Pipeline, until: datetime) -> None:
        """Before the deal leaves its stage: its checklist items done (now and then a
        manager waives them instead), all before ``until``."""
        if not pipeline.require_checklist_before_leaving:
            return
        items = deal.open_checklist_items()
        if not items:
            return
        arng = self.arng
        rep = self.world.rep_by_name.get(deal.owner)
        if rep is not None and arng.random() < 0.1:
            manager = self.world.managers[rep.team]
            deal.waive_checklist(
                pipeline,
                "customer confirmed by phone; not needed",
                actor=manager.name,
                occurred_at=self._between(deal, until, 0.5),
                now=self.now,
            )
            return
        for item in items:
            deal.complete_activity(
                item.id,
                actor=deal.owner,
                occurred_at=self._between(deal, until, 0.5),
                now=self.now,
            )

    def _next_step(self, deal: Deal) -> None:
        """An open deal's next step at the end of the history, due around the end (so
        some of it is overdue by now)."""
        arng = self.arng
        if arng.random() >= 0.7:
            return
        kind, subject = arng.choice(NEXT_STEPS)
        due = self.end + timedelta(days=arng.uniform(-12, 14))
        deal.schedule_activity(
            type=kind,
            subject=subject,
            due_at=due.replace(microsecond=0),
            actor=deal.owner,
            occurred_at=self._between(deal, self.end, 0.5),
            now=self.now,
        )

    def _actor_for(self, deal: Deal) -> Actor:
        """Mostly the owner; now and then their team's manager."""
        if self.rng.random() < 0.1:
            rep = self.world.rep_by_name.get(deal.owner)
            if rep is not None:
                return self.world.managers[rep.team]
        return Actor(name=deal.owner, role=Role.REP)

    def _reopen(self, deal: Deal, pipeline: Pipeline, when: datetime) -> None:
        actor = self._actor_for(deal)
        actor.check_may_change_deal(deal.owner)
        position = pipeline.position_of(deal.stage_id)
        target = pipeline.stages[max(0, position - self.rng.randint(0, 1))]
        deal.reopen(pipeline, target.id, actor=actor.name, occurred_at=when, now=self.now)

    def _step(self, deal: Deal, pipeline: Pipeline, spec: PipelineSpec, when: datetime) -> None:
        rng = self.rng
        actor = self._actor_for(deal)
        actor.check_may_change_deal(deal.owner)
        position = pipeline.position_of(deal.stage_id)
        last = len(pipeline.stages) - 1
        progress = position / last if last else 1.0
        p_win = 0.01 + 0.09 * progress * progress
        p_lose = 0.09 - 0.03 * progress
        p_back = 0.08 if position > 0 else 0.0
        p_update = 0.3 if position < last else 0.5
        p_hand_over = 0.012
        roll = rng.random()
        name = actor.name
        if roll < p_win:
            self._clear_checklist(deal, pipeline, when)
            deal.win(pipeline, actor=name, occurred_at=when, now=self.now)
        elif roll < p_win + p_lose:
            reason = rng.choice(spec.lost_reasons)
            note = rng.choice(LOSS_NOTES) if rng.random() < 0.3 else None
            deal.lose(pipeline, reason, note, actor=name, occurred_at=when, now=self.now)
        elif roll < p_win + p_lose + p_back:
            target = pipeline.stages[position - 1]
            self._clear_checklist(deal, pipeline, when)
            deal.advance(pipeline, target.id, actor=name, occurred_at=when, now=self.now)
        elif roll < p_win + p_lose + p_back + p_hand_over:
            rep = self.world.rep_by_name.get(deal.owner)
            others = self.world.teammates(rep) if rep else []
            if rep is None or not others:
                return
            manager = self.world.managers[rep.team]
            deal.update(
                owner=rng.choice(others).name,
                actor=manager.name,
                occurred_at=when,
                now=self.now,
            )
        elif roll < p_win + p_lose + p_back + p_hand_over + p_update:
            if rng.random() < 0.6:
                new_value = Decimal(int(deal.value * Decimal(rng.uniform(0.7, 1.3))) // 50 * 50)
                if new_value == deal.value or new_value <= 0:
                    new_value = deal.value + 50
                deal.update(value=new_value, actor=name, occurred_at=when, now=self.now)
            else:
                current = deal.expected_close_date or when.date()
                pushed: date = current + timedelta(days=rng.randint(7, 45))
                deal.update(expected_close_date=pushed, actor=name, occurred_at=when, now=self.now)
        elif position < last:
            target = pipeline.stages[position + 1]
            self._clear_checklist(deal, pipeline, when)
            deal.advance(pipeline, target.id, actor=name, occurred_at=when, now=self.now)


def generate(
    app: DealtrailApplication,
    *,
    deals: int,
    seed: int,
    end: datetime | None = None,
    months: int = DEFAULT_MONTHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> DemoResult:
    """Write ``deals`` generated deals (and their pipelines and owners) into ``app``."""
    if deals < 0:
        raise DemoError("the number of deals must not be negative")
    if months < 1:
        raise DemoError("the history must span at least one month")
    started = time.perf_counter()
    now = app.clock()
    end = default_end(now) if end is None else end.astimezone(UTC)
    if end > now:
        raise DemoError(f"the history must end in the past, not at {end.isoformat()}")
    start = end - timedelta(days=30 * months)
    rng = random.Random(seed)
    for spec in PIPELINES:
        try:
            app.repository.get(demo_pipeline_id(seed, spec.name))
        except AggregateNotFoundError:
            continue
        raise DemoError(f"this database already holds the demo data of seed {seed}")

    world = _World(rng, seed, start, now)
    owners = _setup_owners(app, world, rng, start, end)
    result = DemoResult(
        pipelines={p.name: p.id for _, p in world.pipelines},
        owners=[rep.name for rep in world.reps],
    )
    setup = ImportSetup(actor=SETUP_ACTOR, commands=(*world.definitions, *owners))
    result.events += handle(app, setup).events

    walk = _DealWalk(world, rng, start, end, now)
    most_events = 0
    batch: list[Deal] = []
    for number in range(1, deals + 1):
        deal = walk.run(number, seed)
        if len(deal.pending_events) > most_events:
            most_events, result.showcase_deal = len(deal.pending_events), deal.id
        batch.append(deal)
        if len(batch) >= batch_size or number == deals:
            stored = handle(app, RecordHistory(actor=SETUP_ACTOR, deals=tuple(batch)))
            result.events += stored.events
            result.deals += len(batch)
            if progress is not None:
                progress(len(batch))
            batch = []
    result.seconds = time.perf_counter() - started
    return result
