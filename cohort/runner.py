"""Running a cohort on Ray: discovery, resume checks, scheduling on workers, progress, the table.

The driver (this module) finds the studies (:mod:`cohort.discovery`), checks the models once,
skips with ``--resume`` the studies whose outputs are complete and valid
(:mod:`cohort.validation`), and hands the others to a pool of Ray actors
(:class:`cohort.worker.StudyRunner`), each holding the imported app and its loaded models and
running one study at a time with the CPUs, memory and GPU it asked Ray for. Without ``--address``
Ray starts a private local instance (no cluster to set up) that is shut down at the end, also after
an error or Ctrl-C; with ``--address`` it joins an existing cluster.

Outputs under the cohort's output folder::

    studies/<StudyInstanceUID>/   the app's outputs of each study (SEG, SR, PDF, results.json)
    logs/<StudyInstanceUID>.log   the app's log of each study
    cohort.csv, cohort.parquet    the cohort table (cohort.table)
    cohort.json                   the run: input, models, options, one record per study
    statistics.json               with --labels: the cohort statistics (cohort.statistics)

A study that fails is recorded with its error and the others go on; a worker process that dies
(e.g. killed for memory) fails only its study and is replaced.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from cohort.discovery import CohortInputError, Study, find_studies
from cohort.table import STATUS_FAILED, build_row, study_status, write_table
from cohort.validation import check_outputs, read_results
from cohort.worker import ROOT, StudyRunner, raise_stack_limit

log = logging.getLogger(__name__)

RECORDS_NAME, STATISTICS_NAME = "cohort.json", "statistics.json"
PROGRESS_EVERY_S = 30.0
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20  # records are small: keep Ray's shared memory small
PASSED_ENV = ("PDAC_LN_CONFIG", "PDAC_LN_DEVICE", "PDAC_LN_MODEL_MANIFEST")
UPLOAD_EXCLUDES = [".venv", ".git", "output", "data", "build", "tests", ".pytest_cache", "**/__pycache__"]
GIB = 2**30


class CohortError(RuntimeError):
    """The cohort could not run (not a single study's failure); the message says why."""


@dataclass
class CohortOptions:
    input: Path
    output: Path
    models: Path = ROOT / "models"
    resume: bool = False
    labels: Path | None = None
    address: str | None = None  # None: a private local Ray instance
    num_cpus: int | None = None  # local instance only (default: every core)
    num_gpus: int | None = None  # local instance only (default: Ray's detection)
    workers: int | None = None  # default: as many as the cluster's resources fit
    cpus_per_study: float | None = None  # default: app.yaml resources.cpu
    memory_per_study_gib: float | None = None  # default: app.yaml resources.memory
    gpus_per_study: float | None = None  # default: 1 where the cluster has GPUs, else 0


@dataclass
class Progress:
    """Counts and ETA, printed while the cohort runs."""

    total: int
    print_fn: Callable[[str], None] = print
    done: int = 0
    failed: int = 0
    running: int = 0
    started: float = field(default_factory=time.perf_counter)
    finished_this_run: int = 0

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        waiting = self.total - self.done - self.failed - self.running
        left = self.total - self.done - self.failed
        if self.finished_this_run and left:
            eta = _hms(elapsed / self.finished_this_run * left)
        else:
            eta = "-" if not left else "unknown (no study finished yet)"
        return (f"[cohort {_hms(elapsed)}] {self.done + self.failed}/{self.total} finished: {self.done} done, "
                f"{self.failed} failed; {self.running} running, {waiting} waiting; ETA {eta}")

    def show(self) -> None:
        self.print_fn(self.line())


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _model_sha256(models: Path) -> dict[str, str]:
    """Verify the models against the manifest, as the app will (a bad model stops the cohort here,
    once, rather than failing every study)."""
    from app.application import required_models
    from app.startup import StartupError, check_models, find_manifest

    try:
        infos = check_models(models, find_manifest(), required_models())
    except StartupError as exc:
        raise CohortError(str(exc)) from None
    return {name: info.sha256 for name, info in infos.items()}


def _resources(opts: CohortOptions, cluster: dict[str, float]) -> dict[str, float]:
    from lnmet.config import load_settings

    res = load_settings(os.environ.get("PDAC_LN_CONFIG") or ROOT / "app.yaml").resources
    cpus = opts.cpus_per_study if opts.cpus_per_study is not None else (res.cpu if res else 1.0)
    mem = opts.memory_per_study_gib * GIB if opts.memory_per_study_gib is not None else (
        res.memory_bytes if res else 4 * GIB)
    gpus = opts.gpus_per_study if opts.gpus_per_study is not None else (1.0 if cluster.get("GPU", 0) >= 1 else 0.0)
    return {"num_cpus": float(cpus), "memory": float(int(mem)), "num_gpus": float(gpus)}


def _worker_count(opts: CohortOptions, need: dict[str, float], cluster: dict[str, float], studies: int) -> int:
    fits = []
    for key, have in (("num_cpus", "CPU"), ("memory", "memory"), ("num_gpus", "GPU")):
        if need[key] > 0:
            fits.append(math.floor(cluster.get(have, 0.0) / need[key] + 1e-9))
    fit = min(fits) if fits else studies
    if fit < 1:
        raise CohortError(
            f"one study asks for {need['num_cpus']:g} CPU, {need['memory'] / GIB:.1f} GiB memory and "
            f"{need['num_gpus']:g} GPU, more than the Ray cluster offers ({cluster.get('CPU', 0):g} CPU, "
            f"{cluster.get('memory', 0) / GIB:.1f} GiB, {cluster.get('GPU', 0):g} GPU): lower "
            f"--cpus-per-study / --memory-per-study / --gpus-per-study or add nodes")
    wanted = opts.workers if opts.workers else fit
    return max(1, min(wanted, fit, studies))


def _start_ray(opts: CohortOptions) -> tuple[Any, Path | None]:
    import ray

    raise_stack_limit()  # a local instance's workers inherit it (Holoscan wants 32 MB)
    env = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}
    if opts.address:
        runtime_env = {"working_dir": str(ROOT), "excludes": UPLOAD_EXCLUDES, "env_vars": env}
        ray.init(address=opts.address, runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING)
        return ray, None
    temp = Path(tempfile.mkdtemp(prefix="ray-cohort-"))
    ray.init(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, include_dashboard=False,
             object_store_memory=LOCAL_OBJECT_STORE_BYTES, _temp_dir=str(temp), log_to_driver=False,
             logging_level=logging.WARNING, runtime_env={"env_vars": {**env, "PYTHONPATH": str(ROOT)}})
    return ray, temp


def _models_for_workers(opts: CohortOptions) -> str:
    """The models folder as workers see it: relative to the uploaded project when it is inside it."""
    models = opts.models.resolve()
    if opts.address and models.is_relative_to(ROOT):
        return str(models.relative_to(ROOT))
    return str(models)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def _task(study: Study) -> dict[str, Any]:
    return {"key": study.key, "study_uid": study.study_uid, "files": study.files}


def _base_record(study: Study) -> dict[str, Any]:
    return {"key": study.key, "study_uid": study.study_uid, "sources": study.sources, "files": len(study.files),
            "series": study.series, "output_folder": f"studies/{study.key}"}


def _finish_record(record: dict[str, Any], out: Path, models: dict[str, str]) -> dict[str, Any]:
    """After a run: a study counts as done only when its outputs check out (cohort.validation)."""
    if record["status"] == "ran":
        problems = check_outputs(out / record["output_folder"], record["study_uid"], models)
        if problems:
            record.update(status=STATUS_FAILED, error="the run ended but its outputs are not valid: "
                          + "; ".join(problems))
        else:
            record["status"] = study_status(read_results(out / record["output_folder"]))
    return record


class _Pool:
    """Ray actors running studies, one at a time each; a dead actor is replaced."""

    def __init__(self, ray: Any, count: int, need: dict[str, float], models: str, output: Path) -> None:
        self.ray = ray
        self.need = need
        self.args = (models, str(output), need["num_cpus"])
        self.cls = ray.remote(StudyRunner).options(
            num_cpus=need["num_cpus"], num_gpus=need["num_gpus"], memory=need["memory"] or None,
            max_restarts=0, max_task_retries=0)
        self.idle = [self.cls.remote(*self.args) for _ in range(count)]
        self.busy: dict[Any, tuple[Any, dict[str, Any]]] = {}
        self.deaths_before_any_study = 0
        self.completed = 0

    def submit(self, task: dict[str, Any]) -> None:
        actor = self.idle.pop()
        self.busy[actor.run.remote(task)] = (actor, task)

    def wait(self, timeout: float) -> list[tuple[dict[str, Any], dict[str, Any] | None, str | None]]:
        """Finished studies: (task, result or None, error of a dead worker or None)."""
        ready, _ = self.ray.wait(list(self.busy), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            actor, task = self.busy.pop(ref)
            try:
                out.append((task, self.ray.get(ref), None))
                self.completed += 1
                self.idle.append(actor)
            except self.ray.exceptions.RayActorError as exc:  # the worker process died
                if not self.completed:
                    self.deaths_before_any_study += 1
                first = str(exc).strip().splitlines()
                out.append((task, None, f"the worker process died while running this study "
                                        f"({first[0] if first else type(exc).__name__})"))
                self.idle.append(self.cls.remote(*self.args))
            except self.ray.exceptions.RayError as exc:
                first = str(exc).strip().splitlines()
                out.append((task, None, f"{type(exc).__name__}: {first[-1] if first else ''}"))
                self.idle.append(actor)
        return out


def run_cohort(opts: CohortOptions, print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the cohort (module docstring); returns the summary written to cohort.json."""
    out = opts.output.resolve()
    inp = opts.input.resolve()
    if out == inp or (inp.is_dir() and out.is_relative_to(inp)):
        raise CohortInputError(f"the output folder {out} must not be inside the input folder {inp}: "
                               "its DICOM outputs would be read as studies")
    labels = None
    if opts.labels is not None:  # read first: a bad label file stops the cohort before any work
        from cohort.statistics import read_labels

        labels = read_labels(opts.labels)
    studies = find_studies(inp)
    models = _model_sha256(opts.models)
    out.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    planned: dict[str, dict[str, Any]] = {}
    todo: deque[Study] = deque()
    for study in studies:
        rec = _base_record(study)
        problems = check_outputs(out / rec["output_folder"], study.study_uid, models) if opts.resume else ["--resume not given"]
        if not problems:
            rec.update(status=study_status(read_results(out / rec["output_folder"])), error=None,
                       from_earlier_run=True)
            records[study.key] = rec
        else:
            rec["resume_check"] = problems if opts.resume else None
            planned[study.key] = rec
            todo.append(study)
    print_fn(f"{len(studies)} study(ies) under {opts.input}; {len(studies) - len(todo)} complete from an earlier "
             f"run (checked), {len(todo)} to run")
    summary: dict[str, Any] = {"input": str(inp), "output": str(out), "started": datetime.now().isoformat(timespec="seconds"),
                               "models": models, "options": {k: str(v) if isinstance(v, Path) else v
                                                             for k, v in asdict(opts).items()}}
    progress = Progress(total=len(studies), print_fn=print_fn,
                        done=sum(1 for r in records.values() if r["status"] != STATUS_FAILED))

    def save() -> None:
        ordered = [records.get(s.key, {**_base_record(s), "status": "waiting"}) for s in studies]
        _write_json(out / RECORDS_NAME, {**summary, "studies": ordered})

    stopped: BaseException | None = None
    if todo:
        try:
            _run_on_ray(opts, out, todo, planned, records, models, progress, summary, save)
        except (CohortError, KeyboardInterrupt) as exc:  # write what finished, then stop
            stopped = exc
    for study in studies:
        reason = f"not run: the cohort stopped ({type(stopped).__name__}: {stopped})" if stopped else "not run"
        records.setdefault(study.key, {**_base_record(study), "status": STATUS_FAILED, "error": reason,
                                       "from_earlier_run": False})
    summary["finished"] = datetime.now().isoformat(timespec="seconds")
    save()
    rows = []
    for study in studies:
        rec = records[study.key]
        doc = read_results(out / rec["output_folder"]) if rec["status"] != STATUS_FAILED else None
        rows.append(build_row(rec, doc))
    csv_path, parquet_path = write_table(rows, out)
    failed = [r for r in rows if r["status"] == STATUS_FAILED]
    print_fn(f"cohort table: {csv_path} and {parquet_path.name}; {len(rows) - len(failed)} done, {len(failed)} failed")
    for r in failed:
        print_fn(f"  failed: {r['study_uid']} ({r['sources']}): {r['error']}")
    if labels is not None:
        from cohort.statistics import cohort_statistics, format_statistics

        stats = cohort_statistics(rows, labels)
        _write_json(out / STATISTICS_NAME, stats)
        for line in format_statistics(stats):
            print_fn(line)
        summary["statistics"] = stats
    if stopped is not None:
        raise stopped
    summary["rows"] = rows
    return summary


def _run_on_ray(opts: CohortOptions, out: Path, todo: deque[Study], planned: dict[str, dict[str, Any]],
                records: dict[str, dict[str, Any]], models: dict[str, str], progress: Progress,
                summary: dict[str, Any], save: Callable[[], None]) -> None:
    ray, temp = _start_ray(opts)
    try:
        cluster = ray.cluster_resources()
        need = _resources(opts, cluster)
        count = _worker_count(opts, need, cluster, len(todo))
        summary["ray"] = {"address": opts.address or "local", "temp_dir": str(temp) if temp else None,
                          "cluster": cluster, "per_study": need, "workers": count}
        print_fn = progress.print_fn
        print_fn(f"Ray {'cluster ' + opts.address if opts.address else 'local instance'}: "
                 f"{cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU, "
                 f"{cluster.get('memory', 0) / GIB:.1f} GiB; {count} worker(s), each "
                 f"{need['num_cpus']:g} CPU, {need['memory'] / GIB:.1f} GiB, {need['num_gpus']:g} GPU")
        pool = _Pool(ray, count, need, _models_for_workers(opts), out)
        progress.started = time.perf_counter()
        while todo or pool.busy:
            while pool.idle and todo:
                pool.submit(_task(todo.popleft()))
            progress.running = len(pool.busy)
            finished = pool.wait(PROGRESS_EVERY_S)
            if not finished:
                progress.show()
                continue
            for task, result, error in finished:
                rec = {**planned[task["key"]], "from_earlier_run": False}
                if result is not None:
                    rec.update(result)
                else:
                    rec.update(status=STATUS_FAILED, error=error)
                rec = _finish_record(rec, out, models)
                records[task["key"]] = rec
                progress.finished_this_run += 1
                if rec["status"] == STATUS_FAILED:
                    progress.failed += 1
                else:
                    progress.done += 1
                progress.running = len(pool.busy)
                took = f" in {rec['seconds']:.1f} s" if rec.get("seconds") is not None else ""
                print_fn(f"study {task['study_uid']}: {rec['status']}{took}"
                         + (f": {rec['error']}" if rec.get("error") else ""))
                progress.show()
                save()
            if pool.deaths_before_any_study >= 2:
                raise CohortError("the workers die before finishing any study (see the errors above): "
                                  "check that the Ray nodes have the project's packages and a 32 MB stack")
    finally:
        ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="[%(asctime)s] [%(levelname)s] (%(name)s) - %(message)s")
