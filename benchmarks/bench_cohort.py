#!/usr/bin/env python
"""Benchmark of cohorts: the same N studies through ``python -m cohort run`` and through N
sequential ``python app`` runs, in one run of this script (the baseline is measured beside it).

For each way it prints the wall time, the wall time per study, the CPU time per study (user +
system of every process that did the work: the app processes, or the Ray workers plus the cohort's
driver) and the peak memory of each process that ran studies (per app run, per Ray worker). The
ratio is sequential wall / cohort wall (above 1: the cohort is faster).

Cohort configurations are given as ``WORKERSxCPUS`` (e.g. ``2x1``: two Ray workers of one CPU each,
``1x2``: one worker of two CPUs); each runs on a private local Ray instance of WORKERS*CPUS CPUs.

    python benchmarks/bench_cohort.py                    # N=4 tiny studies, configs 2x1 and 1x2
    python benchmarks/bench_cohort.py --count 4 --preset standard --configs 2x1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cohort.worker import raise_stack_limit  # noqa: E402


def _studies(preset: str, seed: int, count: int) -> list[Path]:
    """Generated studies, cached under output/bench_cohort/<preset>/ (generation is not timed)."""
    from synthetic import generate_study, write_study

    cache = ROOT / "output" / "bench_cohort" / preset
    paths = []
    for s in range(seed, seed + count):
        found = sorted(cache.glob(f"*{s:06d}")) if cache.is_dir() else []
        if found and (found[0] / "dicom").is_dir():
            paths.append(found[0])
            continue
        t = time.perf_counter()
        paths.append(write_study(generate_study(seed=s, preset=preset), cache))
        print(f"generated {preset} study {paths[-1].name} in {time.perf_counter() - t:.1f} s (not counted)", flush=True)
    return paths


def _children_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def run_sequential(studies: list[Path], out: Path, models: Path) -> dict:
    """``python app`` once per study, one after the other; each run's CPU time and peak memory
    from its own rusage (wait4)."""
    walls, peaks, cpu = [], [], 0.0
    t0 = time.perf_counter()
    for study in studies:
        t = time.perf_counter()
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen([sys.executable, str(ROOT / "app"), "-i", str(study / "dicom"),
                                     "-o", str(out / study.name), "-m", str(models)],
                                    stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            if proc.returncode != 0:
                raise RuntimeError(f"the app failed on {study.name}: {err.read().strip().splitlines()[-1:]}")
        walls.append(time.perf_counter() - t)
        cpu += usage.ru_utime + usage.ru_stime
        peaks.append(usage.ru_maxrss / 1024.0)
    return {"wall": time.perf_counter() - t0, "per_study_wall": walls, "cpu": cpu, "peaks": peaks}


def run_cohort(root: Path, out: Path, models: Path, workers: int, cpus: int, memory_gib: float) -> dict:
    cmd = [sys.executable, "-m", "cohort", "run", "-i", str(root), "-o", str(out), "-m", str(models),
           "--num-cpus", str(workers * cpus), "--workers", str(workers), "--cpus-per-study", str(cpus),
           "--memory-per-study", str(memory_gib)]
    before_cpu = _children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    driver_cpu = _children_cpu() - before_cpu  # the cohort driver (Ray's own daemons are not its children)
    if done.returncode not in (0, 1):  # 1: some study failed (counted below); else the cohort did not run
        raise RuntimeError(f"the cohort failed (exit {done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    record = json.loads((out / "cohort.json").read_text())
    failed = [r for r in record["studies"] if r["status"] == "failed"]
    for r in failed:
        print(f"  failed in the cohort: {r['study_uid']}: {r['error']}", flush=True)
    per_worker: dict[str, dict] = {}
    for r in record["studies"]:
        w = r.get("worker")
        if not w:
            continue
        key = f"{w['host']}:{w['pid']}"
        prev = per_worker.get(key, {"studies": 0, "peak": 0.0, "cpu": 0.0})
        per_worker[key] = {"studies": prev["studies"] + 1, "peak": max(prev["peak"], r["worker_peak_rss_mib"]),
                           "cpu": max(prev["cpu"], r["worker_cpu_s"])}
    cpu = sum(w["cpu"] for w in per_worker.values()) + driver_cpu
    return {"wall": wall, "per_study_wall": [r.get("seconds") for r in record["studies"]], "cpu": cpu,
            "peaks": [w["peak"] for w in per_worker.values()], "workers": per_worker, "failed": len(failed)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=4, help="number of studies N (default 4)")
    ap.add_argument("--preset", default="tiny", help="generator preset (default tiny; standard = clinical size)")
    ap.add_argument("--seed", type=int, default=100000, help="first seed (default 100000)")
    ap.add_argument("--configs", default="2x1,1x2", help="cohort configurations WORKERSxCPUS (default 2x1,1x2)")
    ap.add_argument("--memory-per-study", type=float, default=None,
                    help="GiB asked per study (default: 1 for tiny, else app.yaml resources.memory)")
    ap.add_argument("-m", "--models", type=Path, default=ROOT / "models")
    args = ap.parse_args(argv)
    raise_stack_limit()
    configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs.split(",") if c]
    memory = args.memory_per_study
    if memory is None:
        from lnmet.config import load_settings

        res = load_settings(ROOT / "app.yaml").resources
        memory = 1.0 if args.preset == "tiny" else res.memory_bytes / 2**30
    studies = _studies(args.preset, args.seed, args.count)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_cohort_") as tmp:
        work = Path(tmp)
        root = work / "cohort_root"
        for s in studies:  # the cohort's input: every study under one root
            shutil.copytree(s / "dicom", root / s.name)
        print(f"{len(studies)} {args.preset} studies; {os.cpu_count()} CPU cores on this machine", flush=True)
        print("running: sequential app runs", flush=True)
        results["sequential app"] = run_sequential(studies, work / "seq", args.models)
        for workers, cpus in configs:
            name = f"cohort {workers} worker(s) x {cpus} CPU"
            print(f"running: {name}", flush=True)
            results[name] = run_cohort(root, work / f"cohort_{workers}x{cpus}", args.models, workers, cpus, memory)
    base = results["sequential app"]["wall"]
    n = len(studies)
    print(f"\n{n} {args.preset} studies (seeds {args.seed}-{args.seed + n - 1})")
    print(f"{'way':<30}{'wall s':>9}{'s/study':>9}{'ratio':>8}{'CPU s/study':>13}  peak memory per process (MiB)")
    for name, r in results.items():
        peaks = ", ".join(f"{p:.0f}" for p in r["peaks"])
        failed = f"  ({r['failed']} failed)" if r.get("failed") else ""
        print(f"{name:<30}{r['wall']:>9.1f}{r['wall'] / n:>9.1f}{base / r['wall']:>8.2f}{r['cpu'] / n:>13.1f}  {peaks}{failed}")
    print("(ratio: sequential wall / this wall; peak memory: each app run, or each Ray worker over all its studies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
