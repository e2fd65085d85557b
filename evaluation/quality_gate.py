"""The quality gate on held-out generated standard studies: how often does it pass a good scan?

Every study (seeds from ``--seed-start``, default 100000: held out, never trained on; preset
``standard``, 512 x 512 x 200 like a clinical scan) goes through the app's own path: the study is
generated and written as DICOM (``python -m synthetic generate``), then ``python app`` runs on it
with the bundled models, and its ``results.json`` is read. A generated study is a scan the models
were made for, so every "not assessable" is a false alarm. Printed:

- the pass rate (assessed / studies) with its 95% Wilson interval (goal: >= 98% on >= 50 studies);
- every false alarm with each failed critical check, its value and the reason;
- per check: how many studies failed it, and the spread (min / median / max) of its values, so that
  the margin between the accepted ranges and what good scans measure can be seen.

A study whose generation or app run fails (or runs past ``--timeout``) is listed and left out of
the rate. Generated studies and the app's results are kept under ``--work``/<preset> (a study's DICOM
is deleted after its run unless ``--keep-studies``; results are reused when the run is repeated).

    nice -n 10 python -m evaluation.quality_gate --count 50 --work build/eval/quality_gate [--json out.json]

``--ground-truth`` judges each study's own ground truth instead (its organ labels, its arterial
phase without the deformation: a perfect organ model and registration; no node or intensity checks),
in this process, at the preset ``train`` (the standard field of view at the models' 1.5 mm grid)
unless ``--preset`` says otherwise: a false alarm there is a range that does not fit the generator's
anatomy, whatever the models do. No models are needed.

``--jobs N`` runs N studies at a time (each generation and app run is its own process; on a machine
with many cores, N about cores / 2). ``--preset tiny --count 2`` checks the script itself in minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIRST_HELD_OUT_SEED = 100000
PASS_RATE_GOAL = 0.98

log = logging.getLogger("evaluation.quality_gate")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _run(cmd: list[str], log_path: Path, timeout: float) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PDAC_LN_", "HOLOSCAN_"))}
    with open(log_path, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=timeout,
                              preexec_fn=_big_stack)
    return done.returncode


def _big_stack() -> None:  # Holoscan wants a 32 MB stack (as scripts/run_tests.sh sets)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 32 * 1024 * 1024
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def run_study(seed: int, work: Path, preset: str, models: Path, keep: bool, timeout: float) -> dict[str, Any]:
    """Generate study ``seed``, run the app on it, return its results.json (cached)."""
    case = f"SYN{seed:06d}"
    out = work / "results" / case
    results = out / "results.json"
    if results.is_file():
        return json.loads(results.read_text())
    studies = work / "studies"
    case_dir = studies / case
    t0 = time.perf_counter()
    if not (case_dir / "dicom").is_dir():
        rc = _run([sys.executable, "-m", "synthetic", "generate", "--seed", str(seed), "--count", "1",
                   "--preset", preset, "--out", str(studies)], work / f"{case}.generate.log", timeout)
        if rc != 0:
            raise RuntimeError(f"{case}: the generator failed (exit {rc}); see {work / f'{case}.generate.log'}")
    t1 = time.perf_counter()
    rc = _run([sys.executable, str(ROOT / "app"), "-i", str(case_dir / "dicom"), "-o", str(out), "-m", str(models)],
              work / f"{case}.app.log", timeout)
    if rc != 0 or not results.is_file():
        raise RuntimeError(f"{case}: the app failed (exit {rc}); see {work / f'{case}.app.log'}")
    log.info("%s: generated in %.0f s, app in %.0f s", case, t1 - t0, time.perf_counter() - t1)
    if not keep:
        shutil.rmtree(case_dir, ignore_errors=True)
    return json.loads(results.read_text())


def ground_truth_study(seed: int, preset: str) -> dict[str, Any]:
    """The gate on study ``seed``'s ground truth, as a results.json-like document (``status``, ``quality_gate``)."""
    import SimpleITK as sitk

    from lnmet.config import load_settings
    from lnmet.quality import GateInputs, assess_quality
    from synthetic import generate_study

    study = generate_study(seed, preset)
    venous = study.venous
    arterial = study.arterial_aligned if study.arterial_aligned is not None else study.arterial
    inputs = GateInputs(venous=sitk.GetArrayFromImage(venous).astype(np.float32),
                        arterial=sitk.GetArrayFromImage(arterial).astype(np.float32),
                        organs=sitk.GetArrayFromImage(study.organs).astype(np.uint8), grid=venous,
                        scan_length_mm=float(venous.GetSize()[2] * venous.GetSpacing()[2]))
    report = assess_quality(inputs, load_settings().quality_gate)
    return {"status": report.status, "quality_gate": {
        "assessable": report.assessable, "summary": report.summary(), "checks": [c.as_dict() for c in report.checks],
        "failed_critical": [c.name for c in report.blocking], "warnings": [c.name for c in report.warnings]}}


def summarize(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pass rate, false alarms and per-check statistics of the studies' results.json documents."""
    n = len(docs)
    assessed = [c for c, d in docs.items() if d["status"] == "assessed"]
    lo, hi = wilson_interval(len(assessed), n)
    alarms = []
    per_check: dict[str, dict[str, Any]] = {}
    for case, doc in docs.items():
        gate = doc.get("quality_gate") or {"checks": []}
        for c in gate["checks"]:
            entry = per_check.setdefault(c["name"], {"values": [], "failed": 0, "not_applicable": 0,
                                                     "severity": c["severity"], "min": c["min"], "max": c["max"],
                                                     "unit": c["unit"]})
            if c["value"] is not None:
                entry["values"].append(float(c["value"]))
            entry["failed"] += c["result"] == "fail"
            entry["not_applicable"] += c["result"] == "not_applicable"
        if doc["status"] != "assessed":
            alarms.append({"case": case, "failed": [
                {"name": c["name"], "value": c["value"], "reason": c["reason"]}
                for c in gate["checks"] if c["result"] == "fail" and c["severity"] == "critical"]})
    stats = {}
    for name, e in per_check.items():
        v = np.array(e["values"], dtype=float)
        spread = ({"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())} if v.size
                  else {"min": None, "median": None, "max": None})  # never measured (e.g. no nodes)
        stats[name] = {"failed": e["failed"], "not_applicable": e["not_applicable"], "severity": e["severity"],
                       "accepted": [e["min"], e["max"]], "unit": e["unit"], **spread}
    return {"studies": n, "assessed": len(assessed), "pass_rate": (len(assessed) / n) if n else float("nan"),
            "pass_rate_ci95": [lo, hi], "goal": PASS_RATE_GOAL, "false_alarms": alarms, "checks": stats}


def print_summary(s: dict[str, Any]) -> None:
    print(f"\nquality gate on {s['studies']} generated studies{s.get('seeds', '')} ({s.get('judged', 'the app')}): "
          f"{s['assessed']} assessed, "
          f"pass rate {100 * s['pass_rate']:.1f}% (95% CI {100 * s['pass_rate_ci95'][0]:.1f}-"
          f"{100 * s['pass_rate_ci95'][1]:.1f}%); goal >= {100 * s['goal']:.0f}% on >= 50 studies: "
          + ("met" if s["pass_rate"] >= s["goal"] and s["studies"] >= 50 else
             "NOT MET" if s["pass_rate"] < s["goal"] else f"rate met, but only {s['studies']} studies"))
    for case, error in s.get("errors", {}).items():
        print(f"  not run: {case}: {error}")
    print(f"false alarms: {len(s['false_alarms'])}")
    for a in s["false_alarms"]:
        print(f"  {a['case']}:")
        for f in a["failed"]:
            print(f"    {f['name']}: {f['reason']}")
    print("\nper check (failed / not applicable over the studies; values min / median / max; accepted range):")
    for name, c in s["checks"].items():
        lo, hi = c["accepted"]
        rng = f"{'' if lo is None else lo:>6} .. {'' if hi is None else hi:<6}"
        print(f"  {name:32s} {c['severity'][:4]} failed {c['failed']:2d}  n/a {c['not_applicable']:2d}  "
              + " ".join("        -" if c[k] is None else f"{c[k]:9.3g}" for k in ("min", "median", "max"))
              + f" {c['unit']:8s} accepted {rng}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed-start", type=int, default=FIRST_HELD_OUT_SEED)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--preset", help="generator preset (default: standard; train with --ground-truth)")
    p.add_argument("--ground-truth", action="store_true",
                   help="judge each study's ground truth (no models, no app run; see the module docstring)")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "eval" / "quality_gate")
    p.add_argument("--keep-studies", action="store_true", help="keep each generated study's DICOM")
    p.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds per generation or app run")
    p.add_argument("--json", type=Path, help="also write the summary here")
    p.add_argument("--jobs", type=int, default=1, help="studies run at the same time (default 1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.seed_start < FIRST_HELD_OUT_SEED:
        p.error(f"--seed-start {args.seed_start}: seeds below {FIRST_HELD_OUT_SEED} are training seeds")
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: at least 1")
    preset = args.preset or ("train" if args.ground_truth else "standard")
    work = args.work / preset  # results are reused per preset: a tiny study's are not a standard one's
    work.mkdir(parents=True, exist_ok=True)
    docs, errors = {}, {}
    seeds = range(args.seed_start, args.seed_start + args.count)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        if args.ground_truth:
            futures = {pool.submit(ground_truth_study, seed, preset): f"SYN{seed:06d}" for seed in seeds}
        else:
            futures = {pool.submit(run_study, seed, work, preset, args.models, args.keep_studies, args.timeout):
                       f"SYN{seed:06d}" for seed in seeds}
        for done, future in enumerate(as_completed(futures), start=1):
            case = futures[future]
            try:
                doc = future.result()
            except Exception as exc:  # noqa: BLE001 - counted and listed, not a pass or a fail
                errors[case] = (str(exc).splitlines() or [type(exc).__name__])[0]
                log.error("%s (%d of %d): %s", case, done, len(futures), errors[case])
                continue
            docs[case] = doc
            log.info("%s (%d of %d): %s%s", case, done, len(futures), doc["status"],
                     "" if doc["status"] == "assessed"
                     else " (" + ", ".join(doc["quality_gate"]["failed_critical"]) + ")")
    docs = dict(sorted(docs.items()))
    errors = dict(sorted(errors.items()))
    summary = summarize(docs)
    summary["errors"] = errors
    summary["seeds"] = (f", seeds {args.seed_start}-{args.seed_start + args.count - 1}"
                        + (" (held out)" if args.seed_start + args.count - 1 < 150000 else ""))
    summary["judged"] = (f"ground truth, preset {preset}" if args.ground_truth
                         else f"the app with {args.models}, preset {preset}")
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
