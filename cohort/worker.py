"""The work done for one study, inside a long-lived worker process (a Ray actor, :mod:`cohort.runner`).

Each study is run through the application itself: :func:`app.application.main`, the same function
as ``python app -i IN -o OUT -m MODELS`` (start-up checks, the whole operator graph, the atomic
publisher), so a cohort's outputs are the single-study app's outputs. What the worker adds:

- the study's files are presented to the app as a folder of its own (symbolic links in a temporary
  folder), since the app takes one study per input folder and a cohort folder may hold several;
- models stay loaded between studies (:func:`lnmet.model_io.keep_models_loaded`), as do the
  imported libraries (torch, MONAI, Holoscan), which is most of a short run's start-up;
- the app's log of each study goes to ``<output>/logs/<study>.log``; its one-line error (the last
  ``ERROR:`` line) becomes the study's error in the cohort table;
- thread counts follow the CPUs the worker was given (torch, ITK), so workers sharing a machine do
  not oversubscribe it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STACK_BYTES = 32 * 1024 * 1024  # Holoscan wants a 32 MB stack
ERROR_PREFIX = "ERROR: "


def raise_stack_limit() -> bool:
    """Raise this process's stack limit to 32 MB when allowed (inherited by the processes it starts,
    e.g. a local Ray cluster's workers). Returns whether the limit is now at least 32 MB."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft >= STACK_BYTES:
        return True
    if hard == resource.RLIM_INFINITY or hard >= STACK_BYTES:
        resource.setrlimit(resource.RLIMIT_STACK, (STACK_BYTES, hard))
        return True
    return False


def stage_inputs(files: list[str], folder: Path) -> dict[str, str]:
    """A folder holding only the study's files (symbolic links, numbered so names never clash);
    returns ``{link path: original path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    width = len(str(len(files)))
    links = {}
    for n, src in enumerate(files):
        link = folder / f"{n:0{width}d}_{Path(src).name}"
        os.symlink(src, link)
        links[str(link)] = src
    return links


def _original_paths(text: str, links: dict[str, str]) -> str:
    """An error message naming the study's original files rather than their staged links."""
    for link in sorted(links, key=len, reverse=True):
        if link in text:
            text = text.replace(link, links[link])
    return text


def peak_rss_mib() -> float:
    """Peak resident memory of this worker process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this worker process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _last_error(log_text: str) -> str | None:
    lines = [ln for ln in log_text.splitlines() if ln.startswith(ERROR_PREFIX)]
    return lines[-1][len(ERROR_PREFIX):].strip() if lines else None


class StudyRunner:
    """Runs the application on one study after another in this process (see the module docstring).

    ``cpus``: the CPUs this worker was given (thread counts of torch and ITK); ``env``: variables
    set before the first run (e.g. ``PDAC_LN_CONFIG``, ``PDAC_LN_DEVICE``).
    """

    def __init__(self, models: str, output: str, cpus: float = 1, env: dict[str, str] | None = None) -> None:
        raise_stack_limit()
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        os.environ.update(env or {})
        threads = max(1, int(cpus))
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import SimpleITK as sitk
        import torch

        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        from lnmet.model_io import keep_models_loaded

        keep_models_loaded(True)
        import app.application  # noqa: F401  (imports Holoscan, MONAI and torch once, up front)

        self.models = models
        self.output = Path(output)
        self.threads = threads
        self.studies_run = 0

    def describe(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "threads": self.threads}

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        """Run the app on one study. ``task``: ``key`` (output folder name), ``study_uid``, ``files``.

        Returns the study's record: ``status`` (``ran`` or ``failed``), ``error``, ``exit_code``,
        ``seconds`` (wall time in the worker), ``stage_seconds``, ``worker_peak_rss_mib``, ``worker_cpu_s``
        (CPU time of the worker process so far), ``worker``, ``log``.
        """
        from app.application import TIMINGS_ENV, main
        from lnmet import timing

        key = task["key"]
        out = self.output / "studies" / key
        log_path = self.output / "logs" / f"{key}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="cohort-study-") as tmp:
            staged = Path(tmp) / "input"
            links = stage_inputs(task["files"], staged)
            timings_path = Path(tmp) / "timings.json"
            os.environ[TIMINGS_ENV] = str(timings_path)
            timing.TIMER.clear()  # the app's stage records are per process: start each study afresh
            argv = ["app", "-i", str(staged), "-o", str(out), "-m", str(self.models), "-l", "INFO"]
            with open(log_path, "w", encoding="utf-8") as log_file:
                # The app sets its logging up inside main() on sys.stderr, so its log lands in the file.
                with contextlib.redirect_stderr(log_file):
                    try:
                        code = main(argv)
                    except BaseException as exc:  # noqa: BLE001 - recorded; the worker goes on
                        code = -1
                        print(f"{ERROR_PREFIX}{type(exc).__name__}: {exc}", file=log_file)
                    finally:
                        _detach_logging(log_file)
            timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
            os.environ.pop(TIMINGS_ENV, None)
        self.studies_run += 1
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
        error = None if code == 0 else _original_paths(
            _last_error(log_text) or f"the application exited with status {code}", links)
        stages = {}
        for s in timings.get("stages", []):
            if s.get("parent") is None and s.get("ok", True):
                stages[s["name"]] = round(stages.get(s["name"], 0.0) + float(s["seconds"]), 3)
        return {"key": key, "study_uid": task["study_uid"], "status": "ran" if code == 0 else "failed",
                "error": error, "exit_code": code, "seconds": round(time.perf_counter() - t0, 3),
                "stage_seconds": stages, "worker_peak_rss_mib": round(peak_rss_mib(), 1),
                "worker_cpu_s": round(cpu_seconds(), 2),
                "worker": {**self.describe(), "study_number": self.studies_run},
                "log": str(log_path.relative_to(self.output))}


def _detach_logging(stream: Any) -> None:
    """Take the handlers that write to ``stream`` off every logger, so nothing logs to a closed file."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in list(lg.handlers):
            if getattr(h, "stream", None) is stream:
                lg.removeHandler(h)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.__stderr__))
