"""``dealtrail import events FILE``: restore an event export into an empty store.

The file is read twice. The first pass verifies it whole (chain, checkpoints,
signatures; with ``--public-key`` the signatures must be by that key) and refuses a
broken or partial file before anything is written. The second pass writes the events
with their positions and hashes as exported, in one transaction, checking the chain
again as it goes (a file changed between the passes rolls everything back). Then the
store's own chain is verified and every read model is rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from libs.application.app import DealtrailApplication
from libs.application.integrity import ChainError, chain_of, verify_store
from libs.chain_verifier import (
    GENESIS,
    ChainWalk,
    Checkpoint,
    ExportReport,
    Link,
    describe,
    read_export,
    verify_export,
)
from services.progress import Progress

RESTORE_BATCH = 5000


def _check(path: Path, trusted: list[bytes], quiet: bool) -> ExportReport:
    with (
        path.open(encoding="utf-8") as lines,
        Progress(None, label="verify file", unit="lines", enabled=not quiet) as bar,
    ):

        def counted() -> Iterator[str]:
            for line in lines:
                bar.update()
                yield line

        return verify_export(counted(), trusted)


def _batches(
    path: Path, expected: ExportReport, checkpoints: list[Checkpoint]
) -> Iterator[list[Link]]:
    """The file's events in batches, chained again from the start; its checkpoints are
    collected into ``checkpoints``."""
    walk = ChainWalk()
    batch: list[Link] = []
    with path.open(encoding="utf-8") as lines:
        for item in read_export(lines):
            if isinstance(item, Checkpoint):
                checkpoints.append(item)
                continue
            batch.append(item[1])
            if len(batch) >= RESTORE_BATCH:
                if not walk.feed(batch):
                    raise ChainError("the file changed while it was imported")
                yield batch
                batch = []
    if batch:
        if not walk.feed(batch):
            raise ChainError("the file changed while it was imported")
        yield batch
    if walk.hash != expected.last_hash or checkpoints != expected.checkpoints:
        raise ChainError("the file changed while it was imported")


def restore(
    app: DealtrailApplication, path: Path, trusted: list[bytes], *, quiet: bool = False
) -> int:
    """Verify ``path`` and write its events into the empty store; return how many."""
    report = _check(path, trusted, quiet)
    if not report.ok:
        raise ChainError("refused: " + "; ".join(describe(report)))
    if not report.events:
        raise ChainError("refused: the file holds no events")
    if report.start_position != 0 or report.start_hash != GENESIS:
        raise ChainError(
            f"refused: the file starts after position {report.start_position}; a restore "
            "needs a complete export (from the first event)"
        )
    if trusted and report.signed_up_to is None:
        raise ChainError("refused: no checkpoint in the file is signed by the given key")
    chain = chain_of(app.recorder)
    checkpoints: list[Checkpoint] = []
    with Progress(report.events, label="restore", unit="events", enabled=not quiet) as bar:

        def written() -> Iterator[list[Link]]:
            for batch in _batches(path, report, checkpoints):
                yield batch
                bar.update(len(batch))

        count = chain.restore(written(), checkpoints)
    stored = verify_store(chain, trusted=trusted)
    if not stored.ok:
        raise ChainError(f"the restored store does not verify: {stored.finding}")
    return count
