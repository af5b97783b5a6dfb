"""The vendored front-end files are the versions web/package-lock.json pins (`make vendor`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENDORED = {
    "chart.js": (
        ROOT / "services/pipeline_api/dashboard/static/vendor/chart.umd.min.js",
        r"Chart\.js v(\S+)",
    ),
    "axe-core": (ROOT / "tests/browser/vendor/axe.min.js", r"axe v(\S+)"),
}


def test_each_vendored_file_is_the_version_the_lockfile_pins() -> None:
    lock = json.loads((ROOT / "web/package-lock.json").read_text())
    wanted = json.loads((ROOT / "web/package.json").read_text())["devDependencies"]
    assert set(wanted) == set(VENDORED)
    for name, (path, pattern) in VENDORED.items():
        pinned = lock["packages"][f"node_modules/{name}"]["version"]
        assert wanted[name] == pinned
        header = path.read_text()[:400]
        found = re.search(pattern, header)
        assert found, f"{path.name} has no version header"
        assert found.group(1) == pinned, f"{path.name} is {found.group(1)}, not {pinned}"
