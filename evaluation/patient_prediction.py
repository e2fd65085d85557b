"""Patient-level LN metastasis prediction on a held-out generated cohort (issue 6, paper Table 4).

For each patient (seeds from ``--seed-start``, default 100000: never a training seed; preset
``train``) the app's chain runs on the cached study: organ model -> attention -> LN segmentation ->
instances -> LN identification (largest positive LN volume), PDAC model -> tumour mask, then the
patient-level models on the **predicted** tumour mask. The arterial phase is the generator's
perfectly aligned one. Printed:

- PDAC Dice (median over patients; goal >= 0.7) and the number of patients whose tumour was missed;
- for tumour-only (ClsfromPDAC, ``--tumour-only-model``), nodes-only (ClsbyLNSeg: the largest
  positive LN volume against the threshold stored in the combined model, or ``--nodes-only-model``)
  and combined (the bundled ``patient_cls``): AUC, accuracy, balanced accuracy, sensitivity and
  specificity at the models' stored thresholds, each with a 95% bootstrap CI (1,000 resamples,
  seeded); DeLong tests of combined against each alone.

A patient whose tumour the PDAC model misses gets the nodes-only score from every model, as the
app's operator does (counted and reported). Generated studies and per-patient predictions (keyed by
the models' checksums) are cached under ``--cache``.

    python -m evaluation.patient_prediction --count 60 --cache build/eval/patient \\
        --tumour-only-model build/models/patient_cls_tumour_only.ts [--models models] [--json out.json]
    python -m evaluation.patient_prediction --count 60 --mode app --tumour-only-model ...

``--mode app`` (:mod:`evaluation.app_chain`): standard 0.7 mm DICOM studies through the app's own
functions, from the intake to the patient classifier operator; the patient's score is the app's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluation.ln_detection import (FIRST_HELD_OUT_SEED, _cached_image, ln_probability,  # noqa: E402
                                     predicted_organs, read_case, start_run, working_inputs)
from lnmet.inference import SegmentationModel, resolve_model_path  # noqa: E402
from lnmet.metrics import classification_summary, delong_test, dice  # noqa: E402
from lnmet.model_io import sha256_file  # noqa: E402
from lnmet.networks.ln_classifier import LNPipeline  # noqa: E402
from lnmet.networks.patient_classifier import PatientModel, nodes_only_score  # noqa: E402
from lnmet.config import load_settings  # noqa: E402
from lnmet.seeds import seed_set_name  # noqa: E402
from evaluation.app_chain import add_app_arguments  # noqa: E402

log = logging.getLogger("evaluation.patient_prediction")

DICE_GOAL = 0.7
METHODS = ("tumour_only", "nodes_only", "combined")


def summarize_method(y: np.ndarray, s: np.ndarray, threshold: float, seed: int = 0) -> dict[str, Any]:
    """Every metric with its 95% bootstrap CI (1,000 resamples of the patients, seeded)."""
    return classification_summary(y, s, threshold, n_resamples=1000, seed=seed)


def evaluate_patient(cache: Path, data: Path, case: str, m: dict[str, Any], settings: Any) -> dict[str, Any]:
    c = read_case(data, case)
    organs = predicted_organs(cache, case, m["organ"], m["organ_sha"], c)
    t = time.perf_counter()
    seg = m["pipeline"].segmentation  # its probability map is shared with evaluation.ln_detection's cache
    grid, ven, art, att = working_inputs(seg.spacing_mm, c, organs, settings)
    organ_tag = "organs" + m["organ_sha"][:8] if m["organ"] is not None else "gtorgans"
    prob, _ = ln_probability(cache, case, seg, m["ln_seg_sha"], organ_tag, grid, ven, art, att)
    ln = m["pipeline"].run(c["venous"], c["arterial"], organs, probability=prob)
    volume = ln.largest_positive_volume_mm3

    def pdac() -> sitk.Image:
        from operators.pdac_segmentation import keep_primary_tumour
        from training.train_patient_classifier import predicted_labels

        labels = predicted_labels(m["pdac"], c["venous"], c["arterial"])
        kept, _ = keep_primary_tumour(labels, organs, settings.tumour_pancreas_reach_mm, c["venous"],
                                      settings.tumour_min_density_hu)
        return kept  # as the app: the primary tumour, anchored to the (predicted) pancreas

    mask = _cached_image(cache / "pred" / f"pdac_primary_{m['pdac_sha'][:12]}_{organ_tag}{tumour_rule_tag(settings)}"
                         / f"{case}.nii.gz", pdac)
    pd, gt = sitk.GetArrayViewFromImage(mask) > 0, sitk.GetArrayViewFromImage(c["pdac_gt"]) > 0
    row: dict[str, Any] = {"case": case, "largest_positive_volume_mm3": volume, "pdac_dice": dice(pd, gt),
                           "tumour_found": bool(pd.any()), "ln_instances": len(ln.ids),
                           "ln_positive": int(ln.positive.sum())}
    nodes_t = m["nodes_only_threshold_mm3"]
    row["nodes_only"] = float(nodes_only_score(volume, nodes_t))
    for method in ("tumour_only", "combined"):
        model: PatientModel | None = m.get(method)
        if model is None:
            continue
        if not pd.any():
            row[method] = float(nodes_only_score(volume, model.nodes_only_threshold_mm3))
        else:
            row[method] = model.predict(c["venous"], c["arterial"], mask, volume)[0]
    row["seconds"] = round(time.perf_counter() - t, 1)
    return row


def report(rows: list[dict[str, Any]], thresholds: dict[str, float | None], header: str) -> dict[str, Any]:
    """Print the PDAC Dice, every method's metrics with CIs and the DeLong tests of ``rows`` (one per
    patient: ``label``, ``pdac_dice``, ``tumour_found`` and a score per method); returns the summary."""
    y = np.array([r["label"] for r in rows])
    dices = np.array([r["pdac_dice"] for r in rows])
    missed = sum(not r["tumour_found"] for r in rows)
    # a region kept that does not touch the true tumour: the tumour is missed there too
    elsewhere = sum(bool(r["tumour_found"]) and r["pdac_dice"] == 0 for r in rows)
    summary: dict[str, Any] = {"patients": len(rows), "positive": int(y.sum()),
                               "pdac_dice_median": float(np.median(dices)), "pdac_dice_mean": float(np.mean(dices)),
                               "tumours_missed": missed, "tumours_kept_elsewhere": elsewhere, "methods": {}}
    print(f"\n{len(rows)} {header}: {int(y.sum())} positive")
    print(f"PDAC Dice median {np.median(dices):.3f}, mean {np.mean(dices):.3f} (goal >= {DICE_GOAL}: "
          f"{'met' if np.median(dices) >= DICE_GOAL else 'NOT met'}); no region kept in {missed} patient(s) "
          f"(nodes-only fallback), a region other than the tumour kept in {elsewhere}")
    print(f"\n  {'method':<12s}" + "".join(f"{k:>24s}" for k in ("AUC", "accuracy", "balanced acc.", "sensitivity",
                                                                   "specificity")))
    for method in METHODS:
        if method not in rows[0] or thresholds.get(method) is None:
            print(f"  {method:<12s} (no model given)")
            continue
        scores = np.array([r[method] for r in rows])
        res = summarize_method(y, scores, thresholds[method])
        summary["methods"][method] = res
        cells = [f"{res[k]['value']:.3f} [{res[k]['ci95'][0]:.3f}-{res[k]['ci95'][1]:.3f}]"
                 for k in ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")]
        print(f"  {method:<12s}" + "".join(f"{c:>24s}" for c in cells))
    summary["delong"] = {}
    if "combined" in summary["methods"] and 0 < y.sum() < len(y):
        for other in ("tumour_only", "nodes_only"):
            if other in summary["methods"]:
                d = delong_test(y, [r["combined"] for r in rows], [r[other] for r in rows])
                summary["delong"][other] = {"auc_combined": d.auc_a, "auc_other": d.auc_b, "z": d.z, "p": d.p_value}
                print(f"DeLong combined vs {other}: AUC {d.auc_a:.3f} vs {d.auc_b:.3f}, z {d.z:.2f}, p {d.p_value:.4f}")
        best = max(summary["methods"], key=lambda k: summary["methods"][k]["auc"]["value"])
        print(f"Best AUC: {best}" + ("" if best == "combined" else
                                     " -- the combination is not best here (see the per-method figures and the DeLong p)"))
    return summary


def report_app(cases: list[dict[str, Any]], args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """The patient figures of the app mode (:mod:`evaluation.app_chain`): the app's patient classifier
    operator (its threshold, app.yaml's override included), the nodes-only rule on the largest
    positive node the app found, the tumour-only model when given (``--tumour-only-model``)."""
    rows = [c["patient"] for c in cases]
    thresholds = {"combined": rows[0]["combined_threshold"], "nodes_only": 0.5,
                  "tumour_only": rows[0].get("tumour_only_threshold")}
    return report(rows, thresholds, f"{seed_set_name(c['seed'] for c in cases)} patients as the app runs, seeds {cases[0]['seed']}-{cases[-1]['seed']}, "
                                    f"preset {args.preset} (DICOM intake, the app's registration, PDAC and patient "
                                    "operators)")


def tumour_rule_tag(settings: Any) -> str:
    """Cache-name suffix of the tumour rule's density check (empty when off)."""
    d = settings.tumour_min_density_hu
    return "" if d is None else f"_d{d:g}"


def _cache_key(paths: list[str | None], settings: Any) -> str:
    import hashlib

    det = settings.ln_detection
    parts = [sha256_file(p) if p else "-" for p in paths] + [str(det.probability_threshold), str(det.min_volume_mm3),
                                                              str(det.min_density_hu), str(det.positive_threshold),
                                                              str(det.rim_fat_hu), str(det.min_voxels)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=60)
    p.add_argument("--seed-start", type=int, default=FIRST_HELD_OUT_SEED)
    p.add_argument("--preset", help="generator preset (default: train, the models' grid; standard with --mode app)")
    p.add_argument("--models", default=str(ROOT / "models"), help="models folder (<name>/model.ts)")
    p.add_argument("--combined-model", help="combined patient model (default: <models>/patient_cls/model.ts)")
    p.add_argument("--tumour-only-model", help="patient model trained with --mode tumour_only (ClsfromPDAC)")
    p.add_argument("--nodes-only-model", help="model file of --mode nodes_only (default: the combined model's "
                                              "stored nodes-only threshold)")
    p.add_argument("--organs", choices=["model", "gt"], default="model")
    p.add_argument("--cache", default=str(ROOT / "build" / "eval" / "heldout"))
    p.add_argument("--device")
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    add_app_arguments(p)
    args = p.parse_args(argv)
    if args.mode == "app":
        if args.nodes_only_model or args.organs != "model":
            p.error("--mode app runs the app's own chain: --nodes-only-model and --organs gt are for --mode model-grid")
        from evaluation.app_chain import scored_app_cases

        summary = report_app(scored_app_cases(p, args, tumour_only=args.tumour_only_model,
                                              overrides={"patient_cls": args.combined_model}), args, load_settings())
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": summary}, indent=1, default=float))
        return 0
    args.preset = args.preset or "train"
    settings, cache, data, cases = start_run(p, args)
    seeds = list(range(args.seed_start, args.seed_start + args.count))

    combined_path = Path(args.combined_model) if args.combined_model else resolve_model_path("patient_cls", args.models)
    combined = PatientModel.load(combined_path, args.device)
    if combined.mode != "combined":
        print(f"WARNING: {combined_path} is a {combined.mode} model, not a combined one")
    nodes_model = PatientModel.load(args.nodes_only_model, args.device) if args.nodes_only_model else combined
    seg_path, cls_path = resolve_model_path("ln_seg", args.models), resolve_model_path("ln_cls", args.models)
    pdac_path = resolve_model_path("pdac_seg", args.models)
    organ_path = resolve_model_path("organ_seg", args.models) if args.organs == "model" else None
    m: dict[str, Any] = {
        "pipeline": LNPipeline.load(seg_path, cls_path, settings, args.device), "ln_seg_sha": sha256_file(seg_path),
        "pdac": SegmentationModel.load(pdac_path, args.device), "pdac_sha": sha256_file(pdac_path),
        "organ": SegmentationModel.load(organ_path, args.device) if organ_path else None,
        "organ_sha": sha256_file(organ_path) if organ_path else "",
        "combined": combined, "tumour_only": PatientModel.load(args.tumour_only_model, args.device)
        if args.tumour_only_model else None,
        "nodes_only_threshold_mm3": nodes_model.nodes_only_threshold_mm3,
    }
    key = _cache_key([str(seg_path), str(cls_path), str(pdac_path), organ_path and str(organ_path), str(combined_path),
                      args.tumour_only_model, args.nodes_only_model], settings)
    pred_path = cache / "pred" / f"patients_{key}.json"
    cached: dict[str, Any] = json.loads(pred_path.read_text()) if pred_path.is_file() else {}
    patients = json.loads((data / "patients.json").read_text())
    rows = []
    for seed, case in zip(seeds, cases):
        if case not in cached:
            cached[case] = evaluate_patient(cache, data, case, m, settings)
            pred_path.parent.mkdir(parents=True, exist_ok=True)
            pred_path.write_text(json.dumps(cached, indent=1))
        r = dict(cached[case], label=bool(patients[case]["metastasis_positive"]))
        rows.append(r)
        print(f"seed {seed}: label {'positive' if r['label'] else 'negative'}, PDAC Dice {r['pdac_dice']:.3f}, "
              f"largest positive LN {r['largest_positive_volume_mm3']:.0f} mm3, scores "
              + ", ".join(f"{k} {r[k]:.3f}" for k in METHODS if k in r), flush=True)

    thresholds = {"combined": combined.threshold, "nodes_only": 0.5,
                  "tumour_only": m["tumour_only"].threshold if m["tumour_only"] else None}
    if settings.patient_threshold is not None:
        thresholds["combined"] = settings.patient_threshold
    summary = report(rows, thresholds, f"{seed_set_name(seeds)} patients, seeds {seeds[0]}-{seeds[-1]}, preset {args.preset} "
                                       "(arterial phase perfectly aligned, on the models' grid)")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "patients": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
