"""A small progress display on stderr: done/total, rate per second and time left.

On a terminal it redraws one bar in place (at most ten times a second); when stderr is
a file or a pipe it prints a plain line every few seconds instead, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

BAR_WIDTH = 28
TTY_INTERVAL = 0.1
LOG_INTERVAL = 5.0


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts work done; use as a context manager and call :meth:`update` as you go."""

    def __init__(
        self,
        total: int | None,
        *,
        label: str = "",
        unit: str = "rows",
        stream: TextIO | None = None,
        enabled: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._clock = clock or time.monotonic
        self.done = 0
        self._started = self._clock()
        self._last_draw = float("-inf")
        try:
            self._tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self._tty = False
        self._interval = TTY_INTERVAL if self._tty else LOG_INTERVAL
        self._drawn = False

    def __enter__(self) -> Progress:
        self._started = self._clock()
        self._last_draw = self._started if not self._tty else float("-inf")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1) -> None:
        """Record ``n`` more units done; redraw if the last drawing is old enough."""
        self.done += n
        now = self._clock()
        if self.enabled and now - self._last_draw >= self._interval:
            self._last_draw = now
            self._draw()

    def advance_to(self, done: int, total: int | None) -> None:
        """Record that ``done`` of ``total`` units are done now (for work that reports how
        far it has come rather than each step)."""
        self.total = total
        self.update(done - self.done)

    def line(self) -> str:
        """The current state as one line of text."""
        rate = self.rate
        prefix = f"{self.label}: " if self.label else ""
        if self.total:
            share = min(1.0, self.done / self.total)
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            counts = f"{self.done:,}/{self.total:,} {self.unit} ({share:.0%})"
            tail = f"{rate:,.0f} {self.unit}/s, ETA {_duration(left)}"
            if self._tty:
                filled = round(share * BAR_WIDTH)
                bar = "#" * filled + "." * (BAR_WIDTH - filled)
                return f"{prefix}[{bar}] {counts} {tail}"
            return f"{prefix}{counts}, {tail}"
        return f"{prefix}{self.done:,} {self.unit}, {rate:,.0f} {self.unit}/s"

    def _draw(self) -> None:
        if self._tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Print the final summary (count, time, rate) on its own line."""
        if not self.enabled:
            return
        prefix = f"{self.label}: " if self.label else ""
        summary = (
            f"{prefix}{self.done:,} {self.unit} in {self.elapsed:.1f}s "
            f"({self.rate:,.0f} {self.unit}/s)"
        )
        if self._tty:
            self.stream.write("\r\x1b[K" + summary + "\n")
        else:
            self.stream.write(summary + "\n")
        self.stream.flush()
        self.enabled = False
