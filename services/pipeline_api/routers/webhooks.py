"""Webhooks (admins only, for reads too: they show where the log goes): subscribe, change,
pause and resume, rotate the signing secret, delete; each delivery's outcome; replay
from a position. Configuration changes are commands on the webhook; the secret is kept
apart from the events and shown only when it is made."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Depends, Query, Response, status
from starlette.concurrency import run_in_threadpool

from libs.domain.actors import Actor
from libs.domain.commands import (
    ChangeWebhook,
    CreateWebhook,
    DeleteWebhook,
    PauseWebhook,
    ResumeWebhook,
    RotateWebhookSecret,
)
from libs.domain.errors import InvalidInput, RuleViolation
from libs.domain.webhook import check_url
from services.feeds.webhooks import store
from services.feeds.webhooks.guard import resolve
from services.feeds.webhooks.registry import MAX_WEBHOOKS, count_webhooks, webhooks_after
from services.feeds.webhooks.signing import new_secret
from services.pipeline_api.deps import CurrentPrincipal, ReachableRuntime
from services.pipeline_api.dispatch import SendChange, SendCommand
from services.pipeline_api.openapi import raises
from services.pipeline_api.schemas import (
    WebhookCommandResponse,
    WebhookCreate,
    WebhookDeliveriesPage,
    WebhookPatch,
    WebhookPublic,
    WebhookReplay,
    WebhooksPage,
    WebhookWithSecret,
)
from services.queries.cursors import MAX_POSITION, encode_cursor, position_cursor
from services.runtime.bootstrap import Runtime

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
WEBHOOK = "/{webhook_id}"
MAX_PAGE = 100  # webhooks or deliveries per page


@raises(403)
async def webhook_admin(principal: CurrentPrincipal) -> Actor:
    principal.check_may_manage_webhooks()
    return principal


WebhookAdmin = Annotated[Actor, Depends(webhook_admin)]
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


async def _checked_target(runtime: Runtime, url: str) -> str:
    """The URL, if it is well formed and resolves only to addresses webhooks may reach."""
    checked = check_url(url)
    await resolve(checked, allow_private=runtime.settings.webhook_allow_private)
    return checked


def _poke(runtime: Runtime) -> None:
    if runtime.webhooks is not None:
        runtime.webhooks.poke()


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookWithSecret)
async def create_webhook(
    body: WebhookCreate, send: SendCommand, admin: WebhookAdmin, runtime: ReachableRuntime
) -> dict[str, Any]:
    """Subscribe an endpoint; the answer carries its signing `secret`, shown only this once."""
    url = await _checked_target(runtime, body.url)
    if await run_in_threadpool(count_webhooks, runtime.application) >= MAX_WEBHOOKS:
        raise RuleViolation(
            f"there are {MAX_WEBHOOKS} webhooks already; delete one first",
            details={"limit": MAX_WEBHOOKS},
        )
    webhook_id, secret = uuid4(), new_secret()
    # The secret first: delivery never finds a webhook without one.
    await store.put_secret(runtime.engine, str(webhook_id), secret, runtime.clock())
    try:
        answer = await send.state(
            CreateWebhook,
            location=router.prefix,
            webhook_id=webhook_id,
            **{**body.model_dump(), "url": url},
        )
    except BaseException:
        await store.forget_secret(runtime.engine, str(webhook_id))
        raise
    _poke(runtime)
    return {**answer, "secret": secret}


@router.get("", response_model=WebhooksPage)
async def list_webhooks(
    admin: WebhookAdmin,
    runtime: ReachableRuntime,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: PageLimit = 50,
) -> dict[str, Any]:
    """Every webhook, oldest first."""
    after = position_cursor(cursor)
    items, next_after = await run_in_threadpool(webhooks_after, runtime.application, after, limit)
    return {"data": items, "next_cursor": encode_cursor(next_after) if next_after else None}


@router.get(WEBHOOK, response_model=WebhookPublic)
@raises(404)
async def get_webhook(
    webhook_id: UUID, admin: WebhookAdmin, runtime: ReachableRuntime, response: Response
) -> dict[str, Any]:
    """One webhook as it is now (not its secret)."""
    webhook = await run_in_threadpool(runtime.application.get_webhook, webhook_id)
    response.headers["ETag"] = f'"{webhook.version}"'
    return webhook.as_dict()


@router.patch(WEBHOOK, response_model=WebhookCommandResponse)
async def update_webhook(
    webhook_id: UUID,
    body: WebhookPatch,
    send: SendChange,
    admin: WebhookAdmin,
    runtime: ReachableRuntime,
) -> Response:
    """Change the url, event types, pipeline or description; fields left out stay."""
    fields = body.changed_fields()
    if "url" in fields:
        if fields["url"] is None:
            raise InvalidInput("url cannot be removed", field="url")
        fields["url"] = await _checked_target(runtime, fields["url"])
    answer = await send(ChangeWebhook, webhook_id=webhook_id, **fields)
    _poke(runtime)
    return answer


@router.delete(WEBHOOK, status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_webhook(
    webhook_id: UUID, send: SendChange, admin: WebhookAdmin, runtime: ReachableRuntime
) -> Response:
    """Remove a webhook for good (its secret too)."""
    await send.state(DeleteWebhook, webhook_id=webhook_id)
    await store.forget_secret(runtime.engine, str(webhook_id))
    _poke(runtime)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(f"{WEBHOOK}/rotate-secret", response_model=WebhookWithSecret)
async def rotate_webhook_secret(
    webhook_id: UUID, send: SendChange, admin: WebhookAdmin, runtime: ReachableRuntime
) -> dict[str, Any]:
    """Replace the signing secret; the new one is in the answer, shown only this once.
    Deliveries from now on are signed with it."""
    await run_in_threadpool(runtime.application.get_webhook, webhook_id)  # 404 first
    secret = new_secret()
    await store.put_secret(runtime.engine, str(webhook_id), secret, runtime.clock())
    answer = await send.state(RotateWebhookSecret, webhook_id=webhook_id)
    return {**answer, "secret": secret}


@router.post(f"{WEBHOOK}/pause", response_model=WebhookCommandResponse)
async def pause_webhook(
    webhook_id: UUID, send: SendChange, admin: WebhookAdmin, runtime: ReachableRuntime
) -> Response:
    """Stop deliveries until resumed (reason `manual`)."""
    answer = await send(PauseWebhook, webhook_id=webhook_id, reason="manual")
    _poke(runtime)
    return answer


@router.post(f"{WEBHOOK}/resume", response_model=WebhookCommandResponse)
async def resume_webhook(
    webhook_id: UUID, send: SendChange, admin: WebhookAdmin, runtime: ReachableRuntime
) -> Response:
    """Deliver again, starting with the event it stopped at, its attempts counted afresh."""
    answer = await send(ResumeWebhook, webhook_id=webhook_id)
    await store.restart_at(runtime.engine, str(webhook_id), None)
    _poke(runtime)
    return answer


@router.get(f"{WEBHOOK}/deliveries", response_model=WebhookDeliveriesPage)
@raises(404)
async def list_webhook_deliveries(
    webhook_id: UUID,
    admin: WebhookAdmin,
    runtime: ReachableRuntime,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: PageLimit = 50,
) -> dict[str, Any]:
    """The events sent to this webhook, newest first: status, attempts, response code,
    latency, last error and when the next attempt is due."""
    await run_in_threadpool(runtime.application.get_webhook, webhook_id)
    return await store.list_deliveries(runtime.engine, str(webhook_id), cursor, limit)


@router.post(
    f"{WEBHOOK}/replay", status_code=status.HTTP_202_ACCEPTED, response_model=WebhookReplay
)
@raises(404)
async def replay_webhook(
    webhook_id: UUID,
    admin: WebhookAdmin,
    runtime: ReachableRuntime,
    from_position: Annotated[int, Query(ge=1, le=MAX_POSITION)],
) -> dict[str, Any]:
    """Send the history again from `from_position` on (at most the log's head + 1): the
    webhook's position goes back, and every event for it after that is delivered again,
    in order, with the same `webhook-id` as the first time."""
    await run_in_threadpool(runtime.application.get_webhook, webhook_id)
    head = await run_in_threadpool(runtime.application.head_position)
    if from_position > head + 1:
        raise InvalidInput(
            f"from_position {from_position} is beyond the log's head ({head})",
            field="from_position",
            details={"head": head},
        )
    await store.restart_at(runtime.engine, str(webhook_id), from_position - 1)
    _poke(runtime)
    return {"id": webhook_id, "from_position": from_position, "head": head}
