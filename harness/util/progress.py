"""Progress for steps that take longer than a few seconds: a tqdm bar on a terminal, else a line every 10%.

A log file or CI console gets no carriage-return bar (tqdm would write one line per refresh there, or
nothing useful); it gets ``  <what>: 40/120 (33%), 2.1/s, about 38 s left`` at each tenth of the way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

#: a line per this fraction of the work when stderr is not a terminal
STEP = 0.1


class Progress:
    """``update(done)`` with the number finished so far; ``close()`` at the end (also as a context manager).

    Args:
        total: how many items the step has.
        what: what is being done, e.g. "replay answers".
        log: where the lines go when stderr is not a terminal (default: stderr).
        terminal: force the bar (True) or the lines (False); default: whether stderr is a terminal.
    """

    def __init__(self, total: int, what: str, log: Callable[[str], None] | None = None,
                 terminal: bool | None = None) -> None:
        self.total = max(0, int(total))
        self.what = what
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._start = time.monotonic()
        self._done = 0
        self._next = STEP
        tty = sys.stderr.isatty() if terminal is None else terminal
        self._bar: Any = None
        if tty and self.total:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=f"  {what}", unit="ex", file=sys.stderr, leave=True, dynamic_ncols=True)

    def update(self, done: int) -> None:
        done = min(int(done), self.total)
        if self._bar is not None:
            self._bar.update(done - self._done)
        else:
            share = done / self.total if self.total else 0.0
            if self.total and share >= self._next - 1e-9:
                self._log(self.line(done))  # one line however many tenths one update crossed
                self._next = (int(share / STEP + 1e-9) + 1) * STEP
        self._done = max(self._done, done)

    def line(self, done: int) -> str:
        """The text line for ``done`` of ``total`` finished: count, share, rate and the time left."""
        took = time.monotonic() - self._start
        rate = done / took if took > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else None
        eta = "" if left is None or done >= self.total else f", about {_duration(left)} left"
        return f"  {self.what}: {done}/{self.total} ({done / self.total:.0%}), {rate:.2g}/s{eta}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
