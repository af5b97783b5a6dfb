"""``python -m tests.golden``: rebuild the golden history on SQLite and rewrite the files."""

from __future__ import annotations

import asyncio
import tempfile

from tests.conftest import Backend
from tests.golden.build import build, path, write


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        golden = asyncio.run(build(Backend("sqlite", f"sqlite:///{tmp}/golden.db")))
    write(golden)
    for kind in golden:
        print(f"wrote {path(kind)} ({path(kind).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
