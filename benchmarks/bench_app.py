#!/usr/bin/env python
"""Benchmark of the whole application on one `standard` study (512x512, 200 slices).

Runs ``python app -i STUDY/dicom -o OUT -m MODELS`` as a subprocess and prints the wall time of
every stage (the app's own stage timings, written as JSON through ``$PDAC_LN_TIMINGS``), the total
wall time and the peak resident memory of the app process (its own rusage, from ``wait4``). With
``--baseline-root`` another checkout's app runs on the same study in the same run (order
baseline, this, this, baseline), for a ratio that a loaded machine does not distort much. The study is generated in this
process first (not timed, not counted in the child's memory) unless ``--study`` gives one.

    python benchmarks/bench_app.py                       # seed 100000, models/, device auto
    python benchmarks/bench_app.py --study output/sample_study/SYN000001 --device cpu
    git worktree add /tmp/main-wt main && python benchmarks/bench_app.py --baseline-root /tmp/main-wt
        # old vs new in one run: baseline, this, this, baseline; fastest of each and the ratio
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


def run_once(root: Path, study: Path, out: Path, models: Path, device: str, work: Path) -> dict:
    """``python <root>/app`` on the study in a subprocess: the app's stage timings, the process wall
    time and the process's own peak memory (wait4)."""
    timings = work / "timings.json"
    timings.unlink(missing_ok=True)
    env = dict(os.environ, PDAC_LN_TIMINGS=str(timings))
    if device != "auto":
        env["PDAC_LN_DEVICE"] = device
    cmd = [sys.executable, str(root / "app"), "-i", str(study / "dicom"), "-o", str(out), "-m", str(models)]
    print("running:", " ".join(cmd), flush=True)
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, preexec_fn=_big_stack)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        if proc.returncode != 0:
            print(err.read()[-4000:], file=sys.stderr)
            raise RuntimeError(f"the application in {root} failed (exit {proc.returncode})")
    data = json.loads(timings.read_text())
    return {"data": data, "wall": wall, "peak_mib": usage.ru_maxrss / 1024.0,
            "outputs": sum(1 for p in Path(out).rglob("*") if p.is_file())}


def _print_run(label: str, run: dict, study: Path) -> None:
    data = run["data"]
    width = max([len(s["name"]) + (2 if s["parent"] else 0) for s in data["stages"]] + [24])
    info = study / "ground_truth" / "study.json"
    meta = json.loads(info.read_text()) if info.is_file() else {}
    size = "x".join(str(v) for v in meta.get("geometry", {}).get("size_xyz", []))
    print(f"\n{label}: {meta.get('preset', '?')} study {study.name} {size} on {data['device']} ({os.cpu_count()} CPU cores)")
    print(f"{'stage':<{width}} {'wall s':>9}")
    for s in data["stages"]:
        name = ("  " + s["name"]) if s["parent"] else s["name"]
        print(f"{name:<{width}} {s['seconds']:9.2f}")
    print(f"{'total (app, incl. imports)':<{width}} {data['total_seconds']:9.2f}")
    print(f"{'total (process wall)':<{width}} {run['wall']:9.2f}")
    print(f"peak memory (app process, max RSS): {run['peak_mib']:.0f} MiB ({run['peak_mib'] / 1024:.2f} GiB)")
    if data.get("peak_gpu_mib") is not None:
        print(f"peak GPU memory (torch, allocated): {data['peak_gpu_mib']:.0f} MiB")
    print(f"outputs written: {run['outputs']} file(s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, help="a written study folder (with dicom/); default: generate one")
    parser.add_argument("--seed", type=int, default=100000, help="seed of the generated study (held-out range)")
    parser.add_argument("-m", "--models", type=Path, default=ROOT / "models")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--keep", type=Path, help="keep the outputs in this folder (default: a temp folder)")
    parser.add_argument("--baseline-root", type=Path,
                        help="another checkout of the project (e.g. a git worktree of main): its app runs on the "
                             "same study in the same run, and the ratio is printed")
    parser.add_argument("--order", default="ABBA",
                        help="with --baseline-root: run order, A = baseline, B = this checkout (default ABBA: "
                             "a drifting load falls on both alike; AB for one run each)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        work = Path(tmp)
        study = _study(args, work)
        out = args.keep or work / "out"
        if args.baseline_root is None:
            run = run_once(ROOT, study, out, args.models, args.device, work)
            _print_run("this checkout", run, study)
            suggested = max(1, int(-(-run["peak_mib"] * 1.5 // 1024)))
            print(f"suggested app.yaml resources.memory (peak x 1.5, rounded up): {suggested}Gi")
            return 0
        base_root = args.baseline_root.resolve()
        base_models = base_root / "models" if args.models == ROOT / "models" else args.models
        runs: dict[str, list[dict]] = {"baseline": [], "this checkout": []}
        keep = args.keep or work
        for label in ("baseline" if c == "A" else "this checkout" for c in args.order.upper()):
            root, models = (base_root, base_models) if label == "baseline" else (ROOT, args.models)
            runs[label].append(run_once(root, study, keep / f"out_{label.replace(' ', '_')}_{len(runs[label])}",
                                        models, args.device, work))
        for label, rs in runs.items():
            _print_run(f"{label} ({base_root if label == 'baseline' else ROOT}), fastest of {len(rs)}",
                       min(rs, key=lambda r: r["wall"]), study)
    print(f"\nwhole app, process wall time (s), run order {args.order.upper()} (A baseline, B this checkout):")
    for label, rs in runs.items():
        walls = ", ".join(f"{r['wall']:.1f}" for r in rs)
        registration = ", ".join(f"{_stage(r, 'phase_registration'):.1f}" for r in rs)
        print(f"  {label:<14} {walls}  (registration {registration})")
    b = min(r["wall"] for r in runs["baseline"])
    n = min(r["wall"] for r in runs["this checkout"])
    print(f"fastest: baseline {b:.1f} s, this checkout {n:.1f} s: x{b / n:.2f} faster")
    if args.keep:
        _print_result_differences(keep / "out_baseline_0", keep / "out_this_checkout_0")
    return 0


def _results(out: Path) -> dict | None:
    found = sorted(out.rglob("results.json"))
    return json.loads(found[0].read_text()) if found else None


def _print_result_differences(baseline_out: Path, this_out: Path) -> None:
    """What a user reads, baseline against this checkout: status, patient probability and decision,
    tumour volume, the nodes (count, positives; each node's volume and probability beside the
    nearest node of the other run)."""
    a, b = _results(baseline_out), _results(this_out)
    if a is None or b is None:
        print("\nresults: a results.json is missing; nothing compared")
        return
    print("\nresults, baseline -> this checkout:")
    for doc in (a, b):  # a results.json from before the quality gate has no status
        doc.setdefault("status", f"n/a (schema {doc.get('schema_version', '?')})")
    print(f"  status {a['status']} -> {b['status']}; decision {a['patient']['decision']} -> "
          f"{b['patient']['decision']}; patient probability {a['patient']['probability']} -> "
          f"{b['patient']['probability']}")
    print(f"  tumour {a['tumour']['volume_mm3']} -> {b['tumour']['volume_mm3']} mm3")
    na, nb = a["lymph_nodes"], b["lymph_nodes"]
    print(f"  lymph nodes {len(na)} -> {len(nb)} (positive {sum(x['positive'] for x in na)} -> "
          f"{sum(x['positive'] for x in nb)})")
    for x in na:  # each baseline node beside this checkout's node nearest to it
        if not nb:
            break
        y = min(nb, key=lambda n: sum((p - q) ** 2 for p, q in zip(n["centroid_mm"], x["centroid_mm"])))
        shift = sum((p - q) ** 2 for p, q in zip(y["centroid_mm"], x["centroid_mm"])) ** 0.5
        print(f"    node {x['index']} -> {y['index']} (centroids {shift:.1f} mm apart): {x['volume_mm3']:.0f} -> "
              f"{y['volume_mm3']:.0f} mm3, p {x['probability_positive']:.3f} -> {y['probability_positive']:.3f}")


def _stage(run: dict, name: str) -> float:
    return sum(s["seconds"] for s in run["data"]["stages"] if s["name"] == name and not s["parent"])


if __name__ == "__main__":
    sys.exit(main())
