"""A Python client generated from the service's own OpenAPI document drives the service.

openapi-python-client (a dev dependency, so it runs offline) generates the client from
``/openapi.json`` of a started ``dealtrail serve``; the test imports it and calls the
service through it: commands, queries, the CSV import, and errors parsed into the
documented ``ErrorResponse``. One backend is enough: the document does not depend on it.
"""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from services.pipeline_api.routers.imports import CSV_EXAMPLE
from tests.conftest import TOKENS, Backend
from tests.started import started_service

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
# The generator writes a typed body for binary media types only; the CSV import and the
# JSON Lines export are such bodies on the wire.
CONFIG = """\
post_hooks: []
content_type_overrides:
  text/csv: application/octet-stream
  application/x-ndjson: application/octet-stream
"""


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """(base URL of a started service, the client package generated from its document)."""
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'dealtrail.db'}")
    with started_service(backend, tmp_path) as started:
        document = httpx.get(f"{started.base_url}/openapi.json", timeout=30).json()
        (tmp_path / "openapi.json").write_text(json.dumps(document))
        (tmp_path / "config.yaml").write_text(CONFIG)
        target = tmp_path / "client" / "dealtrail_client"
        result = subprocess.run(
            [
                str(GENERATOR),
                "generate",
                "--path",
                str(tmp_path / "openapi.json"),
                "--output-path",
                str(target),
                "--meta",
                "none",
                "--config",
                str(tmp_path / "config.yaml"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
        sys.path.insert(0, str(target.parent))
        try:
            yield started.base_url, importlib.import_module("dealtrail_client")
        finally:
            sys.path.remove(str(target.parent))
            for name in [m for m in sys.modules if m.split(".")[0] == "dealtrail_client"]:
                del sys.modules[name]


def _module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def test_a_client_generated_from_the_document_drives_the_service(
    generated: tuple[str, Any],
) -> None:
    base_url, package = generated
    models = _module(package, "models")
    types = _module(package, "types")
    pipelines = {
        n: _module(package, f"api.pipelines.{n}") for n in ("create_pipeline", "get_board")
    }
    deals = {
        n: _module(package, f"api.deals.{n}")
        for n in ("create_deal", "advance_deal", "get_deal", "list_deals")
    }
    import_deals = _module(package, "api.imports.import_deals")
    client = package.AuthenticatedClient(base_url=base_url, token=TOKENS["admin"], timeout=30)

    pipeline = pipelines["create_pipeline"].sync(
        client=client, body=models.PipelineCreate(name="New business", currency="EUR")
    )
    assert isinstance(pipeline, models.PipelinePublic), pipeline
    assert [s.id for s in pipeline.stages][:3] == ["deal-created", "demo-or-meeting", "quote-sent"]

    deal = deals["create_deal"].sync(
        client=client,
        body=models.DealCreate(pipeline_id=pipeline.id, title="ACME renewal", value="12000.00"),
        idempotency_key="create-acme",
    )
    assert isinstance(deal, models.DealCommandResponse), deal
    moved = deals["advance_deal"].sync(
        deal_id=deal.id, client=client, body=models.DealAdvance(stage="Quote sent")
    )
    assert isinstance(moved, models.DealCommandResponse), moved
    assert moved.stage.id == "quote-sent"

    board = pipelines["get_board"].sync(pipeline.id, client=client, min_position=moved.position)
    assert isinstance(board, models.Board), board
    counts = {s.id: s.count for s in board.stages}
    assert counts["quote-sent"] == 1 and counts["deal-created"] == 0
    now = deals["get_deal"].sync(deal.id, client=client, min_position=moved.position)
    assert isinstance(now, models.DealNow), now
    assert (now.value, now.stage.name) == ("12000.00", "Quote sent")

    report = import_deals.sync(
        client=client, body=types.File(payload=io.BytesIO(CSV_EXAMPLE.encode()))
    )
    assert isinstance(report, models.ImportReportPublic), report
    assert (report.imported, report.rejected) == (2, [])
    page = deals["list_deals"].sync(client=client, min_position=0, pipeline_id=pipeline.id)
    assert isinstance(page, models.DealsPage), page

    # errors come back as the documented ErrorResponse
    refused = deals["advance_deal"].sync_detailed(
        deal_id=deal.id, client=client, body=models.DealAdvance(stage="Nowhere")
    )
    assert refused.status_code == 422
    assert isinstance(refused.parsed, models.ErrorResponse)
    assert refused.parsed.error.code == "unknown_stage"
    stranger = package.AuthenticatedClient(base_url=base_url, token="not-a-token", timeout=30)
    denied = pipelines["get_board"].sync_detailed(pipeline.id, client=stranger)
    assert denied.status_code == 401 and isinstance(denied.parsed, models.ErrorResponse)
