"""Stage timing: one log line per stage with its wall time, and a summary at the end.

Free of Holoscan, so operators, training and benchmark code can all use it. Every finished stage
is logged (``stage 'registration' done in 12.41 s``) and recorded in a process-wide
:class:`StageTimer` (:data:`TIMER`), which the application prints as a summary when the run ends.

Use it as a context manager or a decorator::

    from lnmet import timing

    with timing.stage("registration"):            # logs on exit, also when an exception is raised
        transform = register(fixed, moving)

    @timing.timed("ln identification")            # the same, around every call of a function
    def classify(...): ...

    with timing.stage("affine", parent="registration") as rec:   # sub-stage, shown indented
        ...
    rec.seconds                                   # the measured wall time, once the block ended

The application times every operator's ``compute`` itself (as top-level stages named after the
operators); operators that want finer detail open sub-stages with ``parent=<operator name>``.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class StageRecord:
    """One timed stage: its name, optional parent stage, wall time and whether it succeeded."""

    name: str
    parent: str | None = None
    seconds: float = 0.0
    ok: bool = True
    started: float = 0.0  # time.time() at the start, to order stages in the summary


class StageTimer:
    """Collects :class:`StageRecord` objects (thread-safe) and renders a summary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[StageRecord] = []

    def add(self, record: StageRecord) -> None:
        with self._lock:
            self._records.append(record)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    @property
    def records(self) -> list[StageRecord]:
        with self._lock:
            return sorted(self._records, key=lambda r: r.started)

    def total(self, name: str) -> float:
        """Total seconds spent in all stages called ``name``."""
        return sum(r.seconds for r in self.records if r.name == name)

    def top_level_seconds(self) -> dict[str, float]:
        """Wall seconds of each finished top-level stage so far, in order (for the results)."""
        out: dict[str, float] = {}
        for r in self.records:
            if r.parent is None and r.ok:
                out[r.name] = round(out.get(r.name, 0.0) + r.seconds, 3)
        return out

    def summary_lines(self, total_seconds: float | None = None) -> list[str]:
        """Human-readable summary: top-level stages, their sub-stages indented, then the total."""
        recs = self.records
        width = max([len(r.name) + (2 if r.parent else 0) for r in recs] + [10])
        lines = []
        for r in recs:
            if r.parent is not None:
                continue
            lines.append(f"  {r.name:<{width}} {r.seconds:9.2f} s{'' if r.ok else '  FAILED'}")
            for sub in recs:
                if sub.parent == r.name:
                    lines.append(f"    {sub.name:<{width - 2}} {sub.seconds:9.2f} s{'' if sub.ok else '  FAILED'}")
        if total_seconds is not None:
            lines.append(f"  {'total':<{width}} {total_seconds:9.2f} s")
        return lines

    def to_json(self, path: str | Path, total_seconds: float | None = None, **extra: Any) -> None:
        """Write the records (and the total) as JSON, for benchmarks."""
        data = {"stages": [asdict(r) for r in self.records], "total_seconds": total_seconds, **extra}
        Path(path).write_text(json.dumps(data, indent=2))


TIMER = StageTimer()
"""The process-wide timer that :func:`stage` and :func:`timed` record into by default."""


@contextmanager
def stage(name: str, *, parent: str | None = None, log: logging.Logger | None = None,
          timer: StageTimer | None = None) -> Iterator[StageRecord]:
    """Time the enclosed block, log ``stage '<name>' done in X s`` and record it.

    The record is logged and kept also when the block raises (marked failed); the exception
    propagates unchanged.
    """
    record = StageRecord(name=name, parent=parent, started=time.time())
    out = log or logger
    t0 = time.perf_counter()
    out.info("stage '%s' started", name)
    try:
        yield record
    except BaseException:
        record.ok = False
        raise
    finally:
        record.seconds = time.perf_counter() - t0
        (timer or TIMER).add(record)
        if record.ok:
            out.info("stage '%s' done in %.2f s", name, record.seconds)
        else:
            out.error("stage '%s' failed after %.2f s", name, record.seconds)


def timed(name: str | None = None, *, parent: str | None = None) -> Callable[[F], F]:
    """Decorator: time every call of the function as a stage (default name: the function's)."""

    def decorate(fn: F) -> F:
        stage_name = name or fn.__name__

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with stage(stage_name, parent=parent, log=logging.getLogger(fn.__module__)):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
