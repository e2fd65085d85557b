"""PDAC segmentation models side by side on validation studies, to choose between them.

Each study is generated once and its organs segmented once by the bundled organ model (the models'
grid, phases perfectly aligned); every PDAC model given then segments it, and the app's rule keeps
one component (:func:`operators.pdac_segmentation.keep_primary_tumour`). Four conditions per study:
as generated, registered (the arterial phase put on the venous one by the app's own registration,
as the app gives it to the models: a residual warp, and air where breathing moved tissue out of the
arterial series' field), scanned at ``--coarse-mm`` voxels (thick scans, where fine-tunes have lost
tumours before), and with the contrast removed (:func:`synthetic.faults.remove_contrast`: the tumour can
hardly be seen, so a good model marks little). Per condition and model it prints the kept tumour's
median Dice, how many tumours the kept component touches, the raw mask's median Dice, the false
components (touching no tumour voxel) over 1 ml and their volume, and the raw mask's volume.

A choice is made here, so the held-out test seeds are refused:

    python -m evaluation.pdac_models --models models/pdac_seg/model.ts build/pdac_candidate/model.ts \
        [--count 6] [--seed-start 150000] [--preset train] [--coarse-mm 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.config import load_settings  # noqa: E402
from lnmet.geometry import resample_labels  # noqa: E402
from lnmet.inference import SegmentationModel, resolve_model_path, segment_registered  # noqa: E402
from lnmet.metrics import dice  # noqa: E402
from lnmet.tumour import solid_components  # noqa: E402
from lnmet.seeds import FIRST_VALIDATION_SEED, TestSeedError, refuse_test_seeds  # noqa: E402
from evaluation.organ_segmentation import acquired_preset, registered_from_study  # noqa: E402

CONDITIONS = ("as generated", "registered", "coarse", "no contrast")


def score_study(study: Any, organ_model: SegmentationModel, models: dict[str, SegmentationModel],
                reach_mm: float, registration: str = "perfect",
                min_density_hu: float | None = None) -> dict[str, dict[str, Any]]:
    """Every PDAC model on one study (organs segmented once; ``registration`` as
    :func:`evaluation.organ_segmentation.registered_from_study`): the figures of one row per model.
    ``min_density_hu``: the app's density check (app.yaml), in the kept tumour and in the false
    components it leaves."""
    from operators.organ_segmentation import segment_organs
    from operators.pdac_segmentation import keep_primary_tumour

    registered = registered_from_study(study, organ_model.spacing_mm, registration)
    organs, _ = segment_organs(registered, organ_model)
    truth = sitk.GetArrayFromImage(resample_labels(study.pdac, registered.working_venous, smooth=False)) > 0
    voxel_ml = float(np.prod(registered.working_venous.GetSpacing())) / 1000.0
    rows = {}
    for name, model in models.items():
        raw, raw_img, _ = segment_registered(registered, model)
        kept_img, _ = keep_primary_tumour(raw_img, organs, reach_mm, registered.working_venous, min_density_hu)
        kept = sitk.GetArrayViewFromImage(kept_img) > 0
        comps, n = ndimage.label(raw > 0, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        touching = set(np.unique(comps[truth]).tolist()) - {0}
        solid = np.concatenate([[False], solid_components(comps, n, sitk.GetArrayViewFromImage(
            registered.working_venous), min_density_hu) if n and min_density_hu is not None else np.ones(n, bool)])
        false_ml = [float(sizes[i]) * voxel_ml for i in range(1, n + 1) if i not in touching]
        false_solid_ml = [float(sizes[i]) * voxel_ml for i in range(1, n + 1) if i not in touching and solid[i]]
        rows[name] = {"kept_dice": dice(kept, truth), "tumour_kept": bool((kept & truth).any()),
                      "raw_dice": dice(raw > 0, truth), "false_over_1ml": sum(v > 1.0 for v in false_ml),
                      "false_ml": sum(false_ml), "raw_ml": float((raw > 0).sum()) * voxel_ml,
                      # the density check: components touching the tumour it sets aside, false ones it leaves
                      "tumour_parts_not_solid": sum(1 for i in touching if not solid[i]),
                      "false_solid_over_1ml": sum(v > 1.0 for v in false_solid_ml)}
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One condition and model over the studies."""
    return {"studies": len(rows), "kept_dice_median": float(np.median([r["kept_dice"] for r in rows])),
            "tumours_kept": sum(r["tumour_kept"] for r in rows),
            "raw_dice_median": float(np.median([r["raw_dice"] for r in rows])),
            "false_over_1ml": sum(r["false_over_1ml"] for r in rows),
            "false_ml": sum(r["false_ml"] for r in rows), "raw_ml": sum(r["raw_ml"] for r in rows),
            "tumour_parts_not_solid": sum(r["tumour_parts_not_solid"] for r in rows),
            "false_solid_over_1ml": sum(r["false_solid_over_1ml"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="PDAC model files (TorchScript), the first the reference")
    p.add_argument("--organ-model", help="organ model (default: the bundled one)")
    p.add_argument("--count", type=int, default=6)
    p.add_argument("--seed-start", type=int, default=FIRST_VALIDATION_SEED)
    p.add_argument("--preset", default="train", help="generator preset (train: the models' grid)")
    p.add_argument("--coarse-mm", type=float, default=4.0, help="voxel size of the coarse condition")
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    args = p.parse_args(argv)
    seeds = list(range(args.seed_start, args.seed_start + args.count))
    try:
        refuse_test_seeds(seeds, "evaluation.pdac_models (a comparison to choose a model)")
    except TestSeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    from synthetic import generate_study
    from synthetic.faults import remove_contrast

    if args.threads:
        torch.set_num_threads(args.threads)
    organ_model = SegmentationModel.load(resolve_model_path("organ_seg", args.organ_model or ROOT / "models"))
    models: dict[str, SegmentationModel] = {}
    for i, path in enumerate(args.models):
        m = SegmentationModel.load(Path(path))
        models[f"{i + 1}: {m.name} {m.metadata.get('version')}"] = m
    settings = load_settings()
    reach, density = settings.tumour_pancreas_reach_mm, settings.tumour_min_density_hu
    per: dict[str, dict[str, list]] = {c: {name: [] for name in models} for c in CONDITIONS}
    for seed in seeds:
        study = generate_study(seed, args.preset)
        for cond, s, registration in (("as generated", study, "perfect"), ("registered", study, "real"),
                                      ("no contrast", remove_contrast(study), "perfect"),
                                      ("coarse", generate_study(seed, acquired_preset(args.preset, args.coarse_mm)),
                                       "perfect")):
            for name, row in score_study(s, organ_model, models, reach, registration, density).items():
                per[cond][name].append({"seed": seed, **row})
        print(f"seed {seed}: " + "; ".join(f"{n.split(':')[0]} kept Dice {per['as generated'][n][-1]['kept_dice']:.2f}"
                                           for n in models), flush=True)
    out = {cond: {name: summarize(rows) for name, rows in by.items()} for cond, by in per.items()}
    print(f"\nPDAC models on {len(seeds)} studies (seeds {seeds[0]}-{seeds[-1]}, preset {args.preset}; coarse: "
          f"{args.coarse_mm:g} mm voxels; organs by {organ_model.name} {organ_model.metadata.get('version')})")
    print(f"density check (app.yaml pdac_segmentation.min_density_hu): {density}; 'solid': the false components over "
          "1 ml it leaves; 'tumour set aside': components touching the tumour it sets aside")
    print(f"{'condition':13s} {'model':28s} {'kept Dice':>9s} {'kept':>6s} {'raw Dice':>8s} {'false>1ml':>9s} "
          f"{'false ml':>8s} {'raw ml':>7s} {'solid':>6s} {'tumour set aside':>16s}")
    for cond, by in out.items():
        for name, s in by.items():
            print(f"{cond:13s} {name:28s} {s['kept_dice_median']:9.2f} {s['tumours_kept']:>3d}/{s['studies']:<2d} "
                  f"{s['raw_dice_median']:8.2f} {s['false_over_1ml']:9d} {s['false_ml']:8.1f} {s['raw_ml']:7.1f} "
                  f"{s['false_solid_over_1ml']:6d} {s['tumour_parts_not_solid']:16d}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": seeds, "preset": args.preset, "coarse_mm": args.coarse_mm,
                                               "models": list(models), "summary": out, "studies": per}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
