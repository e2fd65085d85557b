"""How far does a setting move the app's answer? The patient decision under app.yaml variants.

The patient classifier reads the arterial phase through the registration, so a registration
setting (or any other app.yaml setting) can move the patient probability. This script runs the
app (``python app``, the user's path) on each study with the project's app.yaml and with every
``--variant`` (an app.yaml copy with one or more settings changed, given as ``section.key=value``),
and prints per study the patient probability of each run (where the quality gate withheld the
decision, the classifier's output it kept), whether the decision changed (a study that became not
assessable counts), and the node count; then the largest and the median change. That largest change
is what ``patient_classifier.borderline_margin`` in app.yaml should cover: a study whose probability
lies closer to the threshold than it gets "borderline" in every output.

Studies are DICOM folders (``--study DIR``, repeatable: a generated study's folder with ``dicom/``,
or a folder of DICOM files) or generated validation studies (``--seed-start``/``--count``; seeds
from 150000: this chooses a setting, so the held-out test seeds are refused). Results are cached
under ``--work``/<study>/<variant> and reused when the command is repeated.

    python -m evaluation.decision_stability --study build/eval/qg_val/standard/studies/SYN150000 \\
        --variant registration.bspline_iterations=100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluation.quality_gate import _big_stack  # noqa: E402 - Holoscan's 32 MB stack for the app's process
from lnmet.config import CONFIG_ENV, DEFAULT_CONFIG_PATH  # noqa: E402
from lnmet.seeds import FIRST_VALIDATION_SEED, refuse_test_seeds  # noqa: E402

DEFAULT = "default"


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``a.b=1,c.d=x`` -> (the text, {"a.b": 1, "c.d": "x"}); values are read as YAML scalars."""
    changes = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or "." not in key:
            raise argparse.ArgumentTypeError(f"--variant {text!r}: expected section.key=value[,section.key=value]")
        changes[key.strip()] = yaml.safe_load(value)
    return text, changes


def write_config(changes: dict[str, Any], path: Path) -> Path:
    """The project's app.yaml with ``changes`` applied (each key must exist there), written to ``path``."""
    doc = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = doc
        for p in parents:
            if not isinstance(node, dict) or p not in node:
                raise SystemExit(f"--variant: app.yaml has no section '{p}' (in '{dotted}')")
            node = node[p]
        if leaf not in node:
            raise SystemExit(f"--variant: app.yaml has no setting '{dotted}'")
        node[leaf] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_app(dicom: Path, out: Path, config: Path | None, models: Path, log_path: Path) -> dict[str, Any]:
    """The app on ``dicom`` with ``config`` (None: the project's app.yaml); its results.json (cached)."""
    results = out / "results.json"
    if results.is_file():
        return json.loads(results.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PDAC_LN_", "HOLOSCAN_"))}
    if config is not None:
        env[CONFIG_ENV] = str(config)
    with open(log_path, "w") as log:
        rc = subprocess.run([sys.executable, str(ROOT / "app"), "-i", str(dicom), "-o", str(out), "-m", str(models)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                            preexec_fn=_big_stack).returncode
    if rc != 0 or not results.is_file():
        raise RuntimeError(f"the app failed on {dicom} (exit {rc}); see {log_path}")
    return json.loads(results.read_text())


def summarize(rows: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Per variant: the largest and median |probability change| and the decisions flipped."""
    out = {}
    for v in variants:
        deltas = [abs(r[v]["probability"] - r[DEFAULT]["probability"]) for r in rows
                  if r[v]["probability"] is not None and r[DEFAULT]["probability"] is not None]
        flips = [r["study"] for r in rows if r[v]["decision"] != r[DEFAULT]["decision"]]
        out[v] = {"studies": len(deltas), "max_abs_change": float(max(deltas)) if deltas else None,
                  "median_abs_change": float(np.median(deltas)) if deltas else None, "flipped": flips}
    return out


def _patient(doc: dict[str, Any]) -> dict[str, Any]:
    """The run's patient result; where the quality gate withheld the decision, the classifier's
    output it kept (``quality_gate.withheld_model_output``): what the setting did to the model."""
    p = doc.get("patient") or {}
    probability = p.get("probability")
    if probability is None:
        probability = ((doc.get("quality_gate") or {}).get("withheld_model_output") or {}).get("probability")
    return {"probability": probability, "decision": p.get("decision"), "status": doc.get("status"),
            "nodes": len(doc.get("lymph_nodes") or []),
            "failed_checks": list((doc.get("quality_gate") or {}).get("failed_critical") or [])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", type=Path, action="append", default=[], help="a study folder (repeatable)")
    ap.add_argument("--seed-start", type=int, help=f"generated validation studies from this seed (>= {FIRST_VALIDATION_SEED})")
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--variant", type=parse_variant, action="append", required=True,
                    help="section.key=value[,section.key=value]: an app.yaml variant (repeatable)")
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "eval" / "decision_stability")
    ap.add_argument("--json", type=Path, help="also write the table and summary here")
    args = ap.parse_args(argv)
    studies = list(args.study)
    if args.count:
        if args.seed_start is None:
            ap.error("--count needs --seed-start")
        seeds = range(args.seed_start, args.seed_start + args.count)
        refuse_test_seeds(seeds, "evaluation.decision_stability (it sizes app.yaml's borderline margin)")
        from synthetic import generate_study, write_study

        for seed in seeds:
            folder = args.work / "studies" / f"SYN{seed:06d}"
            if not (folder / "dicom").is_dir():
                write_study(generate_study(seed=seed, preset="standard"), args.work / "studies")
            studies.append(folder)
    if not studies:
        ap.error("give --study DIR or --seed-start/--count")
    args.work.mkdir(parents=True, exist_ok=True)
    configs: dict[str, Path | None] = {DEFAULT: None}
    for i, (text, changes) in enumerate(args.variant):
        configs[text] = write_config(changes, args.work / f"app.variant{i}.yaml")
    rows = []
    for study in studies:
        dicom = study / "dicom" if (study / "dicom").is_dir() else study
        row: dict[str, Any] = {"study": study.name}
        for name, config in configs.items():
            slug = "default" if config is None else config.stem
            out = args.work / study.name / slug
            t0 = time.perf_counter()
            out.parent.mkdir(parents=True, exist_ok=True)
            row[name] = _patient(run_app(dicom, out, config, args.models, args.work / f"{study.name}.{slug}.log"))
            print(f"{study.name} {name}: probability {row[name]['probability']}, {row[name]['decision']} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        rows.append(row)
    summary = summarize(rows, [v for v in configs if v != DEFAULT])
    print(f"\npatient probability under each variant, against app.yaml ({len(rows)} studies):")
    for r in rows:
        cells = "  ".join(f"{v}: " + ("-" if r[v]["probability"] is None else f"{r[v]['probability']:.3f}")
                          + f" ({r[v]['decision']}"
                          + (f": {', '.join(r[v]['failed_checks'])}" if r[v]["failed_checks"] else "")
                          + f", {r[v]['nodes']} nodes)" for v in configs)
        print(f"  {r['study']}  {cells}")
    for v, s in summary.items():
        print(f"{v}: |change| max {s['max_abs_change']}, median {s['median_abs_change']} over {s['studies']} "
              f"studies; decisions flipped: {', '.join(s['flipped']) or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
