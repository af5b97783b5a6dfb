"""Serves the dashboard page at ``/`` and its assets under ``/dashboard/``."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Response

from services.pipeline_api.errors import ApiError

STATIC_DIR = Path(__file__).with_name("static")
ASSET_PATH = "/dashboard"

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# The page runs only its own scripts and talks only to this origin: a token kept in
# sessionStorage is then out of reach of injected markup, and no third party is involved.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    # Revalidate on each load (a 304 when unchanged), so a new version is never stale.
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    """One file of the dashboard, held in memory with its content hash as ETag."""

    body: bytes
    media_type: str
    etag: str


@functools.cache
def assets() -> dict[str, Asset]:
    """Every servable file under ``static/`` by its relative path (read once: all are small)."""
    found: dict[str, Asset] = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        media_type = MEDIA_TYPES.get(path.suffix)
        if media_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = f'"{hashlib.sha256(body).hexdigest()[:24]}"'
        found[path.relative_to(STATIC_DIR).as_posix()] = Asset(body, media_type, etag)
    return found


def _answer(asset: Asset, if_none_match: str | None) -> Response:
    headers = {**HEADERS, "ETag": asset.etag}
    if if_none_match and asset.etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match")]

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def page(if_none_match: IfNoneMatch = None) -> Response:
    """The dashboard page; it signs in with an API token and then uses ``/v1``."""
    return _answer(assets()["index.html"], if_none_match)


@router.api_route(ASSET_PATH + "/{name:path}", methods=["GET", "HEAD"])
async def asset(name: str, if_none_match: IfNoneMatch = None) -> Response:
    """A script, stylesheet or image of the dashboard; only files shipped in the package."""
    found = assets().get(name)
    if found is None:
        raise ApiError(404, f"the dashboard has no file {name!r}")
    return _answer(found, if_none_match)
