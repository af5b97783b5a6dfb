"""Two delivering processes on one PostgreSQL database: only the holder of the webhooks
lock delivers; when it stops, the other takes over from the position it left."""

from __future__ import annotations

import asyncio
from pathlib import Path
from uuid import uuid4

from libs.application.handlers import handle
from libs.domain.actors import Actor, Role
from libs.domain.commands import CreateWebhook, DefinePipeline
from services.feeds.webhooks.delivery import Dispatcher
from services.feeds.webhooks.signing import new_secret
from services.feeds.webhooks.store import create_webhook_tables, put_secret
from services.runtime.stores import open_stores
from tests.conftest import Backend, TestClock
from tests.receiver import Receiver, until

ADMIN = Actor("ann", Role.ADMIN)


async def test_only_the_lock_holder_delivers_and_the_standby_takes_over(
    postgres_backend: Backend, tmp_path: Path, clock: TestClock
) -> None:
    settings = postgres_backend.settings(tmp_path / "data", DEALTRAIL_WEBHOOK_ALLOW_PRIVATE=True)
    receiver = await Receiver().start()
    async with open_stores(settings, clock) as one, open_stores(settings, clock) as two:
        await create_webhook_tables(one.engine)
        webhook_id, secret = uuid4(), new_secret()
        await put_secret(one.engine, str(webhook_id), secret, clock())
        handle(
            one.application,
            CreateWebhook(actor=ADMIN, url=receiver.url, event_types=["*"], webhook_id=webhook_id),
        )
        first = Dispatcher(
            one.application, one.engine, settings.store, settings.webhook_policy, clock
        )
        second = Dispatcher(
            two.application, two.engine, settings.store, settings.webhook_policy, clock
        )
        tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
        try:
            await until(lambda: first.active or second.active, what="a lock holder")
            for n in range(3):
                handle(one.application, DefinePipeline(actor=ADMIN, name=f"P{n}", currency="EUR"))
            await until(lambda: len(receiver.ok()) == 3, what="three deliveries")
            holder, standby = (first, second) if first.active else (second, first)
            assert not standby.active
            holder.stop()
            await tasks[0 if holder is first else 1]
            handle(
                one.application if standby is second else two.application,
                DefinePipeline(actor=ADMIN, name="after", currency="EUR"),
            )
            await until(lambda: standby.active, what="the standby taking over")
            await until(lambda: len(receiver.ok()) == 4, what="the fourth delivery")
            got = [r.event["position"] for r in receiver.ok(secret)]
            assert got == sorted(set(got)) and len(got) == 4  # once each, in order
        finally:
            first.stop()
            second.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await receiver.stop()
