#!/usr/bin/env python
"""Benchmark of the whole application on one `standard` study (512x512, 200 slices).

Runs ``python app -i STUDY/dicom -o OUT -m MODELS`` as a subprocess (the only child of this
process) and prints the wall time of every stage (the app's own stage timings, written as JSON
through ``$PDAC_LN_TIMINGS``), the total wall time and the peak resident memory of the app process
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it ended). The study is generated in this
process first (not timed, not counted in the child's memory) unless ``--study`` gives one.

    python benchmarks/bench_app.py                       # seed 100000, models/, device auto
    python benchmarks/bench_app.py --study output/sample_study/SYN000001 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _big_stack() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 32 * 1024 * 1024
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def _study(args: argparse.Namespace, work: Path) -> Path:
    if args.study is not None:
        return args.study
    cache = ROOT / "output" / "bench_study"
    existing = sorted(p for p in cache.glob("*") if (p / "dicom").is_dir()) if cache.is_dir() else []
    wanted = [p for p in existing if p.name.endswith(f"{args.seed:06d}")]
    if wanted:
        return wanted[0]
    from synthetic import generate_study, write_study

    t = time.perf_counter()
    study = generate_study(seed=args.seed, preset="standard")
    path = write_study(study, cache)
    print(f"generated standard study {path.name} in {time.perf_counter() - t:.1f} s (not counted)")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, help="a written study folder (with dicom/); default: generate one")
    parser.add_argument("--seed", type=int, default=100000, help="seed of the generated study (held-out range)")
    parser.add_argument("-m", "--models", type=Path, default=ROOT / "models")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--keep", type=Path, help="keep the outputs in this folder (default: a temp folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        work = Path(tmp)
        study = _study(args, work)
        out = args.keep or work / "out"
        timings = work / "timings.json"
        env = dict(os.environ, PDAC_LN_TIMINGS=str(timings))
        if args.device != "auto":
            env["PDAC_LN_DEVICE"] = args.device
        cmd = [sys.executable, str(ROOT / "app"), "-i", str(study / "dicom"), "-o", str(out), "-m", str(args.models)]
        print("running:", " ".join(cmd))
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=_big_stack)
        wall = time.perf_counter() - t0
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            print(f"the application failed (exit {done.returncode})", file=sys.stderr)
            return 1
        data = json.loads(timings.read_text())
        n_outputs = sum(1 for p in Path(out).rglob("*") if p.is_file())

    width = max([len(s["name"]) + (2 if s["parent"] else 0) for s in data["stages"]] + [24])
    info = study / "ground_truth" / "study.json"
    preset = json.loads(info.read_text()).get("preset", "?") if info.is_file() else "?"
    size = "x".join(str(v) for v in json.loads(info.read_text()).get("geometry", {}).get("size_xyz", [])) if info.is_file() else ""
    print(f"\n{preset} study {study.name} {size} on {data['device']} ({os.cpu_count()} CPU cores)")
    print(f"{'stage':<{width}} {'wall s':>9}")
    for s in data["stages"]:
        name = ("  " + s["name"]) if s["parent"] else s["name"]
        print(f"{name:<{width}} {s['seconds']:9.2f}")
    print(f"{'total (app, incl. imports)':<{width}} {data['total_seconds']:9.2f}")
    print(f"{'total (process wall)':<{width}} {wall:9.2f}")
    print(f"peak memory (app process, max RSS): {peak_mib:.0f} MiB ({peak_mib / 1024:.2f} GiB)")
    if data.get("peak_gpu_mib") is not None:
        print(f"peak GPU memory (torch, allocated): {data['peak_gpu_mib']:.0f} MiB")
    suggested = max(1, int(-(-peak_mib * 1.5 // 1024)))
    print(f"suggested app.yaml resources.memory (peak x 1.5, rounded up): {suggested}Gi")
    print(f"outputs written: {n_outputs} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
