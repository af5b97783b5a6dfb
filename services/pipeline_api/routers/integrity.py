"""``GET /v1/audit/verify`` and ``GET /v1/audit/public-key``: proving the record."""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from libs.application.integrity import chain_of, verify_store
from services.pipeline_api.deps import ApplicationDep, CurrentPrincipal, RuntimeDep
from services.pipeline_api.errors import ApiError
from services.pipeline_api.openapi import raises

router = APIRouter(prefix="/v1/audit", tags=["audit"])

MAX_POSITION = 2**62
# One verification at a time per API process: it reads the whole range, and a second
# caller gets 429 rather than queueing more full scans behind it.
_verifying = threading.Lock()


@router.get("/verify")
@raises(403, 429)
async def verify_audit_log(
    application: ApplicationDep,
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    from_position: Annotated[
        int, Query(ge=1, le=MAX_POSITION, description="First position to check")
    ] = 1,
    to_position: Annotated[
        int | None,
        Query(ge=1, le=MAX_POSITION, description="Last position (default: the newest event)"),
    ] = None,
) -> JSONResponse:
    """Recompute the hash chain and check the checkpoints; auditors and admins.

    Answers 200 with ``ok`` and, when broken, ``first_break`` (position, kind: changed,
    missing, reordered, unsealed, bad_signature; and a message).
    """
    principal.check_may_read_audit()
    if to_position is not None and to_position < from_position:
        raise ApiError(
            422,
            "to_position must not be below from_position",
            code="invalid_range",
            details={"field": "to_position"},
        )
    if not _verifying.acquire(blocking=False):
        raise ApiError(
            429,
            "a verification is already running; retry when it has finished",
            code="verify_running",
            headers={"Retry-After": "5"},
        )
    try:
        signer = runtime.settings.signer
        trusted = [signer.public_key] if signer is not None else []
        report = await run_in_threadpool(
            lambda: verify_store(
                chain_of(application.recorder),
                start=from_position,
                stop=to_position,
                trusted=trusted,
            )
        )
    finally:
        _verifying.release()
    return JSONResponse(report.as_json(), headers={"Cache-Control": "no-store"})


@router.get("/public-key")
@raises(404)
async def get_public_key(runtime: RuntimeDep, principal: CurrentPrincipal) -> dict[str, Any]:
    """The Ed25519 key that verifies checkpoint signatures; every role may read it."""
    signer = runtime.settings.signer
    if signer is None:
        raise ApiError(
            404,
            "no signing key is configured (DEALTRAIL_SIGNING_KEY): checkpoints are unsigned",
            code="no_signing_key",
        )
    return {
        "algorithm": "Ed25519",
        "public_key": signer.public_key_text,
        "encoding": "base64 of the 32-byte raw public key",
        "pem": signer.public_key_pem,
    }
