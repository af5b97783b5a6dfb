"""Writes checkpoints while the projection worker runs (embedded or its own process).

Every few seconds it asks the store whether a checkpoint is due (``DEALTRAIL_CHECKPOINT_EVERY``
positions or ``DEALTRAIL_CHECKPOINT_MINUTES`` since the latest one) and writes one at the
newest event. The decision and the insert happen in one transaction under the
checkpoints table's lock, and the latest checkpoint is read from the database each
time, so a standby worker never duplicates one and a restart carries on where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from libs.application.app import Clock, DealtrailApplication, utc_now
from libs.application.integrity import (
    CheckpointPolicy,
    Signer,
    chain_of,
    checkpoint_if_due,
)
from libs.chain_verifier import Checkpoint

log = logging.getLogger("dealtrail.audit")

CHECKPOINT_POLL_SECONDS = 5.0


class Checkpointer:
    """Writes a checkpoint whenever one is due, until stopped."""

    def __init__(
        self,
        app: DealtrailApplication,
        signer: Signer | None,
        policy: CheckpointPolicy,
        *,
        poll_seconds: float = CHECKPOINT_POLL_SECONDS,
        clock: Clock = utc_now,
    ) -> None:
        self.chain = chain_of(app.recorder)
        self.signer = signer
        self.policy = policy
        self.poll_seconds = poll_seconds
        self.clock = clock
        self._stopping = asyncio.Event()

    def step(self) -> Checkpoint | None:
        """One check (blocking): the checkpoint written, if one was due."""
        return checkpoint_if_due(self.chain, self.signer, self.policy, self.clock())

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                written = await asyncio.to_thread(self.step)
                if written is not None:
                    log.info("checkpoint at position %d", written.position)
            except Exception as exc:  # noqa: BLE001 - outlives outages like the worker
                log.warning("checkpoint: %s; retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.poll_seconds)

    def stop(self) -> None:
        self._stopping.set()
