"""Organ/vessel segmentation and attention coverage on held-out generated studies (issue 4).

For each study (seeds from ``--seed-start``, default 100000: never a training seed; preset
``train`` by default) the bundled organ model segments the registered phases exactly as the app
does (:func:`operators.organ_segmentation.segment_organs`), and the script prints

- the Dice of every class on the reference grid against the generator's organ labels (goals: >= 0.85
  for spleen, stomach, aorta, pancreas; >= 0.7 for the vessels, duodenum and esophagus);
- the fraction of ground-truth LN voxels that get attention > 0 (Eq. 1-2, app.yaml Table 7) with
  the ground-truth organ labels (expected near 100%) and with the predicted ones (goal >= 90%).

The arterial phase is registered with the product's own registration (``--registration real``,
default) or taken perfectly aligned from the generator (``--registration perfect``, isolates the
organ model).

The real CT's acquisition on generated anatomy (issue 16): ``--no-contrast`` (every contrast-taking
tissue at unenhanced HU, :func:`synthetic.faults.remove_contrast`), ``--voxel-mm 3`` (the study
generated at 3 mm voxels) and ``--single-phase`` (the venous series alone, as the app reads a
one-phase study) together reproduce how ``../shared/real-ct-validation`` was scanned, so that its
figure beside :mod:`evaluation.real_ct`'s separates what the acquisition costs from what the
anatomy costs.

``--slab-mm 90``: the real CT also covers only 90 mm. Each study is segmented twice, whole and cut to
a slab of that thickness centred on the pancreas (:func:`synthetic.faults.slab_around_pancreas`),
and both are scored on the slab's slices: what the short coverage alone costs the model.
``--stomach-filled``: the stomach's water and gas at the wall's unenhanced 35 HU, as after a meal
(the real CT's stomach holds no water or gas cap).

``--mode app`` (:mod:`evaluation.app_chain`): standard 0.7 mm DICOM studies through the app's own
intake, registration and organ segmentation; Dice on the venous series' own grid.

    python evaluation/organ_segmentation.py --count 10 [--models models] [--json out.json]
    python evaluation/organ_segmentation.py --count 10 --mode app
    python evaluation/organ_segmentation.py --count 10 --no-contrast --voxel-mm 3 --single-phase
    python evaluation/organ_segmentation.py --count 10 --no-contrast --voxel-mm 3 --single-phase --slab-mm 90
    python evaluation/organ_segmentation.py --count 10 --no-contrast --voxel-mm 3 --single-phase --stomach-filled
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.attention import attention_map  # noqa: E402
from lnmet.config import load_settings  # noqa: E402
from lnmet.geometry import resample_image, resample_labels, working_grid  # noqa: E402
from lnmet.inference import SegmentationModel, resolve_model_path  # noqa: E402
from lnmet.labels import ORGAN_CLASSES  # noqa: E402
from lnmet.metrics import dice  # noqa: E402
from lnmet.seeds import seed_set_name  # noqa: E402
from lnmet.types import PhaseVolume, RegisteredPhases, SeriesRef  # noqa: E402
from evaluation.app_chain import add_app_arguments  # noqa: E402

LARGE = ("spleen", "stomach", "aorta", "pancreas")
LARGE_GOAL, OTHER_GOAL, COVERAGE_GOAL = 0.85, 0.7, 0.9


def _phase_volume(study: Any, phase: str, image: sitk.Image) -> PhaseVolume:
    info = study.series.get(phase, {})
    ref = SeriesRef(phase=phase, study_instance_uid=study.study_uid,
                    series_instance_uid=info.get("SeriesInstanceUID", ""),
                    series_description=info.get("SeriesDescription", phase), series_number=info.get("SeriesNumber"),
                    modality="CT", acquisition_time=info.get("AcquisitionTime"), num_slices=image.GetSize()[2],
                    reason="generated study")
    return PhaseVolume(phase=phase, image=image, series=ref, source_files=[], sop_instance_uids=[],
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                       frame_of_reference_uid=getattr(study, "frame_of_reference_uid", ""))


def registered_from_study(study: Any, spacing_mm: tuple[float, float, float], registration: str = "perfect",
                          single_phase: bool = False) -> RegisteredPhases:
    """:class:`RegisteredPhases` of a generated study on a working grid at ``spacing_mm``:
    ``perfect`` uses the generator's undeformed arterial image, ``real`` runs the product's
    registration (operators.phase_registration); ``single_phase`` drops the arterial phase."""
    venous = _phase_volume(study, "venous", study.venous)
    if single_phase:
        grid = working_grid(study.venous, spacing_mm)
        return RegisteredPhases(venous=venous, arterial=None, working_venous=resample_image(study.venous, grid),
                                working_arterial=None, transform=None, single_phase=True)
    arterial = _phase_volume(study, "arterial", study.arterial)
    if registration == "real":
        from operators.phase_registration import register_and_resample

        return register_and_resample(venous, arterial, load_settings(), spacing_mm)
    if registration != "perfect":
        raise ValueError(f"registration must be 'perfect' or 'real', got {registration!r}")
    grid = working_grid(study.venous, spacing_mm)
    return RegisteredPhases(venous=venous, arterial=arterial, working_venous=resample_image(study.venous, grid),
                            working_arterial=resample_image(study.arterial_aligned, grid),
                            transform=sitk.Transform(), single_phase=False)


def acquired_preset(name: str, voxel_mm: float | None) -> Any:
    """The generator preset ``name``, or its field of view scanned at isotropic ``voxel_mm`` voxels
    (noise scaled with the voxel volume, :class:`synthetic.acquisition.Acquisition`)."""
    if voxel_mm is None:
        return name
    from synthetic.acquisition import Acquisition
    from synthetic.grid import PRESETS

    kind = "thick" if voxel_mm >= 2.0 else "fine"
    return Acquisition(kind, voxel_mm, voxel_mm, None).preset(PRESETS[name])


def acquisition_label(args: argparse.Namespace) -> str:
    """How the studies were scanned and registered, in words (the report's header)."""
    parts = [f"{args.voxel_mm:g} mm voxels"] if args.voxel_mm is not None else []
    parts += ["no contrast"] if args.no_contrast else []
    parts += [f"{args.slab_mm:g} mm slab"] if getattr(args, "slab_mm", None) is not None else []
    parts += ["stomach full (35 HU)"] if getattr(args, "stomach_filled", False) else []
    parts += ["venous phase alone"] if args.single_phase else [f"registration {args.registration}"]
    return ", ".join(parts)


def evaluate_study(study: Any, model: SegmentationModel, registration: str,
                   single_phase: bool = False) -> dict[str, Any]:
    """Dice per class (reference grid) and LN attention coverage for one study."""
    from operators.organ_segmentation import segment_organs

    settings = load_settings().attention
    t0 = time.perf_counter()
    registered = registered_from_study(study, model.spacing_mm, registration, single_phase)
    organs_working, organs_ref = segment_organs(registered, model)
    seconds = time.perf_counter() - t0
    pred = sitk.GetArrayFromImage(organs_ref)
    truth = sitk.GetArrayFromImage(study.organs)
    per_class = {c.key: (dice(pred == c.label, truth == c.label) if (truth == c.label).any() else float("nan"))
                 for c in ORGAN_CLASSES}
    # coverage on the working grid, where the attention map is computed
    gt_working = resample_labels(study.organs, organs_working, smooth=False)
    ln_working = sitk.GetArrayFromImage(resample_labels(study.ln_instances, organs_working, smooth=False)) > 0
    ln_ref = sitk.GetArrayFromImage(study.ln_instances) > 0
    att_gt = sitk.GetArrayFromImage(attention_map(gt_working, settings))
    att_pred = sitk.GetArrayFromImage(attention_map(organs_working, settings))
    n_ln = int(ln_working.sum())
    return {"case": study.case_id, "dice": per_class, "seconds": seconds, "ln_voxels": n_ln,
            "ln_voxels_reference": int(ln_ref.sum()),
            "coverage_gt": float((att_gt[ln_working] > 0).mean()) if n_ln else float("nan"),
            "coverage_pred": float((att_pred[ln_working] > 0).mean()) if n_ln else float("nan")}


def slab_dice(study: Any, model: SegmentationModel, registration: str, single_phase: bool,
              slab_mm: float) -> dict[str, dict[str, float]]:
    """Dice per class on the slices of a ``slab_mm`` slab around the pancreas: the whole study
    segmented (``whole``) and the slab segmented alone (``slab``), against the same truth."""
    from operators.organ_segmentation import segment_organs
    from synthetic.faults import slab_around_pancreas

    slab = slab_around_pancreas(study, slab_mm)
    start = int(round(study.venous.TransformPhysicalPointToContinuousIndex(slab.venous.GetOrigin())[2]))
    count = slab.venous.GetSize()[2]
    truth = sitk.GetArrayFromImage(slab.organs)
    out = {}
    for name, source, crop in (("whole", study, slice(start, start + count)), ("slab", slab, slice(None))):
        _, ref = segment_organs(registered_from_study(source, model.spacing_mm, registration, single_phase), model)
        pred = sitk.GetArrayFromImage(ref)[crop]
        out[name] = {c.key: (dice(pred == c.label, truth == c.label) if (truth == c.label).any() else float("nan"))
                     for c in ORGAN_CLASSES}
    return out


def report_slab(rows: list[dict[str, dict[str, float]]], slab_mm: float, header: str) -> dict[str, Any]:
    """Mean Dice per class on the slabs, whole study against slab alone."""
    def mean(values: list[float]) -> float:  # NaN where no slab holds the class (e.g. the esophagus)
        finite = [v for v in values if np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    means = {name: {c.key: mean([r[name][c.key] for r in rows]) for c in ORGAN_CLASSES} for name in ("whole", "slab")}
    print(f"Dice on a {slab_mm:g} mm slab around the pancreas over {len(rows)} {header}:")
    print(f"  {'class':<38s} {'whole scan':>10s} {'slab alone':>10s}")
    for c in ORGAN_CLASSES:
        whole, alone = (f"{means[n][c.key]:10.3f}" if np.isfinite(means[n][c.key]) else f"{'n/a':>10s}"
                        for n in ("whole", "slab"))
        print(f"  {c.name:<38s} {whole} {alone}")
    return {"slab_mm": slab_mm, "studies": len(rows), "dice": means}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean Dice per class, pooled coverage and the goals."""
    dice_mean = {c.key: float(np.nanmean([r["dice"][c.key] for r in results])) for c in ORGAN_CLASSES}
    n = sum(r["ln_voxels"] for r in results)
    cov_gt = sum(r["coverage_gt"] * r["ln_voxels"] for r in results if r["ln_voxels"]) / n if n else float("nan")
    cov_pred = sum(r["coverage_pred"] * r["ln_voxels"] for r in results if r["ln_voxels"]) / n if n else float("nan")
    goals = {k: (v >= (LARGE_GOAL if k in LARGE else OTHER_GOAL)) for k, v in dice_mean.items()}
    return {"studies": len(results), "dice": dice_mean, "coverage_gt": cov_gt, "coverage_pred": cov_pred,
            "dice_goals_met": goals, "coverage_goal_met": bool(cov_pred >= COVERAGE_GOAL)}


def report(s: dict[str, Any], header: str) -> None:
    """Print the Dice per class, the attention coverage and the goals of a summary."""
    print(f"Dice per class over {s['studies']} {header}:")
    for c in ORGAN_CLASSES:
        goal = LARGE_GOAL if c.key in LARGE else OTHER_GOAL
        print(f"  {c.name:<38s} {s['dice'][c.key]:.3f}   goal >= {goal:.2f}  "
              f"{'met' if s['dice_goals_met'][c.key] else 'NOT met'}")
    print(f"LN voxels with attention > 0: ground-truth organs {100 * s['coverage_gt']:.1f}%, "
          f"predicted organs {100 * s['coverage_pred']:.1f}% (goal >= {100 * COVERAGE_GOAL:.0f}%: "
          f"{'met' if s['coverage_goal_met'] else 'NOT met'})")


def report_app(cases: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The organ figures of the app mode (:mod:`evaluation.app_chain`): the app's organ labels on the
    venous series' own grid against the generator's, and the attention coverage of the true nodes."""
    rows = [{"case": c["case"], "dice": c["organ_dice"], "ln_voxels": c["attention_coverage"]["ln_voxels"],
             "coverage_gt": c["attention_coverage"]["gt_organs"],
             "coverage_pred": c["attention_coverage"]["predicted_organs"]} for c in cases]
    s = summarize(rows)
    report(s, f"held-out studies as the app runs (seeds {cases[0]['seed']}-{cases[-1]['seed']}, preset "
              f"{args.preset}, DICOM intake and the app's registration; Dice on the venous series' grid)")
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--seed-start", type=int, default=100000)
    p.add_argument("--preset", help="generator preset (default: train; standard with --mode app)")
    p.add_argument("--models", default=str(ROOT / "models"), help="models folder (<name>/model.ts) or a model file")
    p.add_argument("--registration", choices=["real", "perfect"], default="real",
                   help="--mode model-grid: the product's registration or the generator's perfect alignment")
    p.add_argument("--no-contrast", action="store_true",
                   help="--mode model-grid: contrast-taking tissues at unenhanced HU (a non-contrast scan)")
    p.add_argument("--stomach-filled", action="store_true",
                   help="--mode model-grid: the stomach's water and gas at 35 HU, as after a meal "
                        "(synthetic.faults.fill_stomach; the real CT's stomach holds neither)")
    p.add_argument("--voxel-mm", type=float,
                   help="--mode model-grid: generate the studies at this isotropic voxel size (e.g. 3)")
    p.add_argument("--single-phase", action="store_true",
                   help="--mode model-grid: the venous series alone (a one-phase study)")
    p.add_argument("--slab-mm", type=float,
                   help="--mode model-grid: also segment a slab of this thickness around the pancreas alone "
                        "and compare it with the whole study on the slab's slices (the real CT covers 90 mm)")
    p.add_argument("--device")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="also write the results to this file")
    add_app_arguments(p)
    args = p.parse_args(argv)
    acquisition = [f for f, on in (("--no-contrast", args.no_contrast), ("--voxel-mm", args.voxel_mm is not None),
                                   ("--single-phase", args.single_phase), ("--slab-mm", args.slab_mm is not None),
                                   ("--stomach-filled", args.stomach_filled))
                   if on]
    if args.mode == "app" and acquisition:
        p.error(f"{', '.join(acquisition)}: only with --mode model-grid (the app mode scores the studies as generated)")
    if args.voxel_mm is not None and not 0.5 <= args.voxel_mm <= 6.0:
        p.error(f"--voxel-mm {args.voxel_mm}: expected 0.5-6 mm")
    if args.mode == "app":
        from evaluation.app_chain import scored_app_cases

        s = report_app(scored_app_cases(p, args), args)
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": s}, indent=1, default=float))
        return 0
    args.preset = args.preset or "train"
    if args.seed_start < 100000:
        p.error("--seed-start must be >= 100000: seeds below are training seeds")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from synthetic import generate_study

    model = SegmentationModel.load(resolve_model_path("organ_seg", args.models), args.device)
    print(f"organ model {model.name} {model.metadata['version']} ({model.metadata['trained_on']})")
    preset = acquired_preset(args.preset, args.voxel_mm)
    if args.slab_mm is not None and args.slab_mm <= 0:
        p.error(f"--slab-mm {args.slab_mm}: expected a thickness in mm > 0")
    results, slabs = [], []
    for seed in range(args.seed_start, args.seed_start + args.count):
        study = generate_study(seed, preset)
        if args.no_contrast:
            from synthetic.faults import remove_contrast

            study = remove_contrast(study)
        if args.stomach_filled:
            from synthetic.faults import fill_stomach

            study = fill_stomach(study)
        if args.slab_mm is not None:
            slabs.append(slab_dice(study, model, args.registration, args.single_phase, args.slab_mm))
            print(f"seed {seed}: mean Dice on the slab, whole scan {np.nanmean(list(slabs[-1]['whole'].values())):.3f}, "
                  f"slab alone {np.nanmean(list(slabs[-1]['slab'].values())):.3f}", flush=True)
            continue
        r = evaluate_study(study, model, args.registration, args.single_phase)
        results.append(r)
        print(f"seed {seed}: mean Dice {np.nanmean(list(r['dice'].values())):.3f}, LN attention coverage "
              f"GT {r['coverage_gt']:.3f} / predicted {r['coverage_pred']:.3f} ({r['seconds']:.1f} s)", flush=True)
    seeds = range(args.seed_start, args.seed_start + args.count)
    if slabs:
        s = report_slab(slabs, args.slab_mm, f"{seed_set_name(seeds)} studies (seeds {seeds[0]}-{seeds[-1]}, preset "
                                             f"{args.preset}, {acquisition_label(args)})")
        if args.json:
            Path(args.json).write_text(json.dumps({"slab": s, "studies": slabs}, indent=1))
        return 0
    s = summarize(results)
    report(s, f"{seed_set_name(seeds)} studies (seeds {seeds[0]}-{seeds[-1]}, preset {args.preset}, "
              f"{acquisition_label(args)})")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": s, "studies": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
