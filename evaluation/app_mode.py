"""Held-out evaluation "as the app runs" (issue 21): every figure a user of the application gets.

Runs the application's chain once per generated ``standard`` study (:mod:`evaluation.app_chain`:
DICOM intake, the app's registration, resampling, filters and bundled models; both cached), then
prints each evaluation script's part from those runs: registration, organ Dice, node detection and
identification, patient scores. Each script prints its own part alone with ``--mode app``.

    python -m evaluation.app_mode --count 20 [--models models] [--baseline-model FILE]
        [--tumour-only-model FILE] [--json out.json]

``--json`` also records the provenance (seeds, preset, generator, the SHA-256 of every model) that
``python -m evaluation.record_held_out`` needs to put the figures beside the models in the manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.config import load_settings  # noqa: E402
from lnmet.model_io import sha256_file  # noqa: E402
from lnmet.seeds import FIRST_TEST_SEED  # noqa: E402
from evaluation import ln_detection, organ_segmentation, patient_prediction, registration_accuracy  # noqa: E402
from evaluation.app_chain import APP_PRESET, DEFAULT_CACHE, scored_app_cases  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Every held-out figure as the app runs, from one run of the chain per study."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--seed-start", type=int, default=FIRST_TEST_SEED)
    p.add_argument("--preset", default=APP_PRESET, help="generator preset (standard: like a clinical scan)")
    p.add_argument("--models", default=str(ROOT / "models"))
    p.add_argument("--baseline-model", help="plain LN segmentation model (ablation), run in the same chain")
    p.add_argument("--tumour-only-model", help="tumour-only patient model (ClsfromPDAC)")
    p.add_argument("--cache", dest="app_cache", default=str(DEFAULT_CACHE))
    p.add_argument("--drop-dicom", action="store_true")
    p.add_argument("--device")
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    args = p.parse_args(argv)
    cases = scored_app_cases(p, args, args.baseline_model, args.tumour_only_model)
    out: dict[str, Any] = {}
    print()
    out["registration"] = registration_accuracy.report_app(cases, args)
    print()
    out["organs"] = organ_segmentation.report_app(cases, args)
    print()
    out["ln"] = ln_detection.report_app(cases, args, load_settings())
    print()
    out["patients"] = patient_prediction.report_app(cases, args, load_settings())
    if args.json:
        Path(args.json).write_text(json.dumps({"provenance": provenance(args, cases), "summary": out, "studies": cases},
                                              indent=1, default=float))
    return 0


def provenance(args: argparse.Namespace, cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a summary was measured on: the seeds, preset, generator version, date and every model
    file (name, version, SHA-256), so that ``evaluation.record_held_out`` can tie the figures to the
    files measured."""
    from lnmet.model_manifest import read_model_metadata, scan_models_dir
    from synthetic import GENERATOR_VERSION

    models = {name: {"version": str(read_model_metadata(path).get("version")), "sha256": sha256_file(path)}
              for name, path in scan_models_dir(args.models).items()}
    return {"seeds": [int(c["seed"]) for c in cases], "preset": args.preset, "generator": GENERATOR_VERSION,
            "measured": time.strftime("%Y-%m-%d"), "models": models, "extra_models": {
                "baseline": args.baseline_model, "tumour_only": args.tumour_only_model},
            "command": "python -m evaluation.app_mode " + " ".join(
                f"--count {len(cases)} --seed-start {cases[0]['seed']} --preset {args.preset}".split())}


if __name__ == "__main__":
    sys.exit(main())
