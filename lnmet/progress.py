"""Progress lines for long stages: at most one log line every few seconds, whatever the work does.

Long stages (decoding a series, registration, each sliding-window inference, generating a study)
call :meth:`Progress.update` as often as they like (every slice, iteration or window); a line is
logged only when ``every_s`` seconds passed since the last one, so a user sees the stage move at
least every ~10 s without a flood of lines. :meth:`Progress.note` logs at once (a new level, a new
step). Free of Holoscan, like :mod:`lnmet.timing`.

    progress = Progress("registration", log=log)
    progress.note("affine stage, level 1/3")
    for it in ...:
        progress.update(it, total=200, detail=f"metric {value:.4f}")
"""

from __future__ import annotations

import logging
import time
from typing import Callable

DEFAULT_EVERY_S = 5.0
"""Seconds between two progress lines: half the ~10 s a user waits at most for a sign of life."""

logger = logging.getLogger(__name__)


class Progress:
    """Throttled progress lines of one stage (``<what>: <done>/<total> (<pct>%), <elapsed> s; <detail>``)."""

    def __init__(self, what: str, *, log: logging.Logger | None = None, every_s: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.what = what
        self.log = log or logger
        self.every_s = float(DEFAULT_EVERY_S if every_s is None else every_s)
        self._clock = clock
        self.started = clock()
        self._last = self.started
        self.lines = 0  # progress lines logged so far (tests, benchmarks)

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self.started

    def _emit(self, text: str) -> None:
        self._last = self._clock()
        self.lines += 1
        self.log.info("%s: %s, %.0f s", self.what, text, self.elapsed_s)

    def note(self, text: str) -> None:
        """Log ``text`` now (a new level or step starts)."""
        self._emit(text)

    def update(self, done: int, total: int | None = None, detail: str = "") -> bool:
        """Log the count when ``every_s`` passed since the last line; returns True when it logged."""
        if self._clock() - self._last < self.every_s:
            return False
        count = f"{done}/{total} ({100.0 * done / total:.0f}%)" if total else str(done)
        self._emit(count + (f"; {detail}" if detail else ""))
        return True
