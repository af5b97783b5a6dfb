"""The one path of every command route: build the command, run it, answer.

A route parses its input and names the command; ``SendChange`` (commands on an existing
aggregate, which honour ``If-Match``) or ``SendCommand`` (commands that create) fill in
the caller as actor and the expected version, run the command through the handlers off
the event loop, and answer with the new state, its ``position``, ``ETag`` and, for
what a command created, ``Location``.

The answer is rendered once, straight from the state the domain built (orjson), not
validated again against the route's response model: the model stays declared for the
OpenAPI document, and ``tests/e2e/test_command_answers.py`` checks that every command's
answer is exactly what the model would have made of it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated, Any
from uuid import UUID

import anyio.from_thread
import orjson
from fastapi import Depends, Request, Response
from pydantic import BaseModel
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


class CommandAnswer(Response):
    """A command's answer as JSON, rendered by orjson from the state as the domain built it."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Sender:
    """Runs one request's commands as its principal and shapes their answers."""

    def __init__(
        self,
        runtime: Runtime,
        actor: Actor,
        expected_version: int | None,
        request: Request,
        response: Response,
    ) -> None:
        self.runtime = runtime
        self.actor = actor
        self.expected_version = expected_version
        self.request = request
        self.response = response

    def _open_deals(self, pipeline_id: UUID, stage_id: str, at_least: int) -> Sequence[str]:
        # Called by a handler in a worker thread; the read model is read on the loop, on
        # the primary (a command looks at the log's head, which a replica may lag behind).
        models = self.runtime.primary_reads
        return anyio.from_thread.run(open_deals_in_stage, models, pipeline_id, stage_id, at_least)

    async def _run(
        self, command_type: type[Command[CommandResult]], location: str | None, fields: Any
    ) -> tuple[CommandResult, dict[str, str]]:
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
        headers = {"ETag": f'"{result.version}"'}
        if result.created and location is not None:
            headers["Location"] = f"{location}/{result.id}"
        return result, headers

    async def __call__(
        self,
        command_type: type[Command[CommandResult]],
        /,
        *,
        location: str | None = None,
        **fields: Any,
    ) -> Response:
        """Run ``command_type(**fields)``; ``location``: where what it creates is read.
        The answer, rendered once, has the route's status (``status_code``, else 200)."""
        result, headers = await self._run(command_type, location, fields)
        route = self.request.scope.get("route")
        answer = {**result.state, "position": result.position}
        for name, default in _defaults(getattr(route, "response_model", None)):
            answer.setdefault(name, default)
        return CommandAnswer(
            answer, status_code=getattr(route, "status_code", None) or 200, headers=headers
        )

    async def state(
        self,
        command_type: type[Command[CommandResult]],
        /,
        *,
        location: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """The same, for a route that adds to the answer: the new state and its position
        (the headers go on the route's response; the route's model renders the answer)."""
        result, headers = await self._run(command_type, location, fields)
        self.response.headers.update(headers)
        return {**result.state, "position": result.position}


@functools.cache
def _defaults(model: Any) -> tuple[tuple[str, Any], ...]:
    """The fields of a response model that an answer may leave out, with their value then
    (e.g. a pipeline's ``moved_deals``, only given by a stage's removal)."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ()
    return tuple(
        (name, field.get_default(call_default_factory=True))
        for name, field in model.model_fields.items()
        if not field.is_required()
    )


# What the domain may refuse: 403 (role), 404 (the aggregate), 409 (its state, or a race
# lost too often), 412 (If-Match), 422 (input); a creation has no aggregate to miss yet.
@raises(403, 404, 409, 412, 422)
async def change_sender(
    runtime: ReachableRuntime,
    principal: CurrentPrincipal,
    version: ExpectedVersion,
    request: Request,
    response: Response,
) -> Sender:
    return Sender(runtime, principal, version, request, response)


@raises(403, 409, 422)
async def command_sender(
    runtime: ReachableRuntime, principal: CurrentPrincipal, request: Request, response: Response
) -> Sender:
    return Sender(runtime, principal, None, request, response)


SendChange = Annotated[Sender, Depends(change_sender)]
"""Commands on an existing aggregate: ``If-Match`` names the version they expect."""
SendCommand = Annotated[Sender, Depends(command_sender)]
"""Commands that create (a pipeline, a deal, an owner's membership): no ``If-Match``."""
