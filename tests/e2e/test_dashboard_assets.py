"""The dashboard is served by the API process: the page at /, its files under /dashboard/,
all shipped in the package, none from elsewhere."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.pipeline_api.dashboard.router import STATIC_DIR
from tests.conftest import Backend, TestClock, client_for

# Module imports and the files the page links: './x.js', '../x.js' or '/dashboard/...'.
IMPORT = re.compile(r"""(?:import|from)\s*\(?\s*['"]([^'"]+\.js)['"]""")
LINKED = re.compile(r"""(?:src|href)=["'](/[^"']*)["']""")


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'dealtrail.db'}")
    async with client_for(backend.settings(tmp_path / "data"), TestClock()) as client:
        yield client


def resolve(base: str, ref: str) -> str:
    if ref.startswith("/"):
        return ref
    parts = base.rsplit("/", 1)[0].split("/")
    for piece in ref.split("/"):
        if piece == "..":
            parts.pop()
        elif piece != ".":
            parts.append(piece)
    return "/".join(parts)


async def test_the_page_and_every_file_it_loads_are_served_from_the_package(
    site: httpx.AsyncClient,
) -> None:
    page = await site.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy

    todo = LINKED.findall(page.text)
    assert "/dashboard/js/main.js" in todo
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        r = await site.get(path)
        assert r.status_code == 200, path
        assert r.headers["x-content-type-options"] == "nosniff"
        if path.endswith(".js"):
            assert r.headers["content-type"].startswith("text/javascript")
            todo += [resolve(path, ref) for ref in IMPORT.findall(r.text)]
    # Every view module is reached from the entry point, and the lazily loaded chart library.
    views = {f"/dashboard/js/views/{p.name}" for p in (STATIC_DIR / "js" / "views").glob("*.js")}
    assert views <= seen
    assert (await site.get("/dashboard/vendor/chart.umd.min.js")).status_code == 200


def test_no_file_of_the_dashboard_refers_to_another_host() -> None:
    own = [p for p in STATIC_DIR.rglob("*") if p.is_file() and "vendor" not in p.parts]
    assert own
    for path in own:
        text = re.sub(r'xmlns="[^"]*"', "", path.read_text())  # a namespace name, not a load
        assert not re.search(r"https?://", text), f"{path.name} names another host"


async def test_unchanged_files_answer_304_and_unknown_ones_404(site: httpx.AsyncClient) -> None:
    first = await site.get("/dashboard/app.css")
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-cache"
    again = await site.get("/dashboard/app.css", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    for path in (
        "/dashboard/nope.js",
        "/dashboard/../router.py",
        "/dashboard/%2e%2e/router.py",
        "/dashboard/js/../../router.py",
        "/dashboard/js/%00.js",
        "/dashboard/",
    ):
        r = await site.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
