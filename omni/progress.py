"""Progress of long work, fit for a terminal and for a log.

On a terminal, tqdm's bar. Anywhere else (a log file, CI, `make demo | tee`), where a bar's
carriage returns pile up into one line of kilobytes, one compact line on stderr about every
minute and one at the end:

    [encode] 5,120/20,500 img | 1.0 min | 85.3 img/s
    [encode done] 20,500/20,500 img | 4.0 min | 85.4 img/s

Training prints lines of the same shape (omni.training.progress.ProgressLines).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

EVERY_SECONDS = 60.0  # between two lines in a log


def progress(
    total: int | None,
    desc: str,
    unit: str = "item",
    *,
    enabled: bool = True,
    every_seconds: float = EVERY_SECONDS,
):
    """A progress counter (`update(n)`, `close()`, a context manager): tqdm's bar when stderr is
    a terminal, else `ProgressLog`'s lines on stderr; nothing at all when not `enabled`."""
    if enabled and sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit)
    return ProgressLog(total, desc, unit, enabled=enabled, every_seconds=every_seconds)


class ProgressLog:
    """Counts work done and prints a line about every `every_seconds`, and one when closed."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "item",
        *,
        enabled: bool = True,
        every_seconds: float = EVERY_SECONDS,
        clock=time.monotonic,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled, self.every_seconds, self.clock = enabled, every_seconds, clock
        self.n = 0
        self._start = self._last = clock()
        self._closed = False

    def update(self, n: int = 1) -> None:
        """Count `n` more units; print a line when a minute has passed since the last one."""
        self.n += n
        now = self.clock()
        if self.enabled and now - self._last >= self.every_seconds:
            self._print(now)
            self._last = now

    def close(self, tag: str = "done") -> None:
        """Print the closing line (once), tagged `done` (or `stopped` when the work failed)."""
        if self.enabled and not self._closed and (self.n or self.total != 0):  # no line for no work
            self._print(self.clock(), tag)
        self._closed = True

    def _print(self, now: float, tag: str = "") -> None:
        elapsed = now - self._start
        count = f"{self.n:,}" + (f"/{self.total:,}" if self.total else "")
        parts = [f"{count} {self.unit}", f"{elapsed / 60:.1f} min"]
        if elapsed > 0 and self.n:
            parts.append(f"{self.n / elapsed:,.1f} {self.unit}/s")
        # stderr, as tqdm: a command's stdout may be its result (`omni tokenizer eval` prints JSON).
        print(f"[{self.desc}{' ' + tag if tag else ''}] " + " | ".join(parts), file=sys.stderr, flush=True)

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close("done" if exc_type is None else "stopped")
