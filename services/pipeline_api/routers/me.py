"""Who a bearer token belongs to: the principal's name, role and what it may do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from libs.domain.actors import Actor
from libs.domain.errors import Forbidden
from services.pipeline_api.deps import CurrentPrincipal
from services.pipeline_api.schemas import MePublic

router = APIRouter(prefix="/v1/me", tags=["identity"])


def _allowed(check: Callable[[], None]) -> bool:
    try:
        check()
    except Forbidden:
        return False
    return True


def describe(actor: Actor) -> dict[str, Any]:
    """The actor's name and role, and the answers of the domain's own permission checks."""
    return {
        "name": actor.name,
        "role": actor.role.value,
        "may_run_commands": _allowed(actor.check_may_command),
        "may_manage_pipelines": _allowed(actor.check_may_manage_pipelines),
        "may_read_audit": _allowed(actor.check_may_read_audit),
        "may_waive_checklists": _allowed(actor.check_may_waive_checklist),
    }


@router.get("", response_model=MePublic)
async def get_me(principal: CurrentPrincipal) -> dict[str, Any]:
    """The principal behind the bearer token: name, role and what the role may do."""
    return describe(principal)
