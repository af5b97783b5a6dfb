"""The one path of every command route: build the command, run it, answer.

A route parses its input and names the command; ``SendChange`` (commands on an existing
aggregate, which honour ``If-Match``) or ``SendCommand`` (commands that create) fill in
the caller as actor and the expected version, run the command through the handlers off
the event loop, and answer with the new state, its ``position``, ``ETag`` and, for
what a command created, ``Location``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any
from uuid import UUID

import anyio.from_thread
from fastapi import Depends, Response
from starlette.concurrency import run_in_threadpool

from libs.application.handlers import handle
from libs.domain.actors import Actor
from libs.domain.commands import Change, Command, CommandResult
from services.pipeline_api.deps import CurrentPrincipal, ExpectedVersion, ReachableRuntime
from services.pipeline_api.openapi import raises
from services.queries.deals import open_deals_in_stage
from services.queries.reports.catalog import REPORTS
from services.runtime.bootstrap import Runtime

# What a digest action may name: the query layer's reports.
REPORT_NAMES = frozenset(REPORTS)


class Sender:
    """Runs one request's commands as its principal and shapes their answers."""

    def __init__(
        self, runtime: Runtime, actor: Actor, expected_version: int | None, response: Response
    ) -> None:
        self.runtime = runtime
        self.actor = actor
        self.expected_version = expected_version
        self.response = response

    def _open_deals(self, pipeline_id: UUID, stage_id: str, at_least: int) -> Sequence[str]:
        # Called by a handler in a worker thread; the read model is read on the loop, on
        # the primary (a command looks at the log's head, which a replica may lag behind).
        models = self.runtime.primary_reads
        return anyio.from_thread.run(open_deals_in_stage, models, pipeline_id, stage_id, at_least)

    async def __call__(
        self,
        command_type: type[Command[CommandResult]],
        /,
        *,
        location: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Run ``command_type(**fields)``; ``location``: where what it creates is read."""
        if issubclass(command_type, Change):
            fields["expected_version"] = self.expected_version
        command = command_type(actor=self.actor, **fields)
        result = await run_in_threadpool(
            lambda: handle(
                self.runtime.application,
                command,
                open_deals_in_stage=self._open_deals,
                report_names=REPORT_NAMES,
            )
        )
        if result.created and location is not None:
            self.response.headers["Location"] = f"{location}/{result.id}"
        self.response.headers["ETag"] = f'"{result.version}"'
        return {**result.state, "position": result.position}


# What the domain may refuse: 403 (role), 404 (the aggregate), 409 (its state, or a race
# lost too often), 412 (If-Match), 422 (input); a creation has no aggregate to miss yet.
@raises(403, 404, 409, 412, 422)
async def change_sender(
    runtime: ReachableRuntime,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    response: Response,
) -> Sender:
    return Sender(runtime, principal, version, response)


@raises(403, 409, 422)
async def command_sender(
    runtime: ReachableRuntime, principal: CurrentPrincipal, response: Response
) -> Sender:
    return Sender(runtime, principal, None, response)


SendChange = Annotated[Sender, Depends(change_sender)]
"""Commands on an existing aggregate: ``If-Match`` names the version they expect."""
SendCommand = Annotated[Sender, Depends(command_sender)]
"""Commands that create (a pipeline, a deal, an owner's membership): no ``If-Match``."""
