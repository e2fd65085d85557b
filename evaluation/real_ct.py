"""The bundled models on real CT (issue 16): ``../shared/real-ct-validation``, never trained on.

The volume is a real NON-contrast upper-abdomen CT (3 mm voxels) of a patient without known PDAC,
with TotalSegmentator's labels as the reference (an automatic reference: the Dice below is
agreement with TotalSegmentator). It is run the way the app runs a single-phase study: the NIfTI is
reoriented to the DICOM patient frame (as a DICOM series of it would load), resampled to the
models' working grid by the app's own code, and segmented by the operators' own functions
(venous image in both channels). The script prints

- organ Dice per class against TotalSegmentator (goals: spleen >= 0.70, stomach >= 0.50, aorta >=
  0.60, pancreas and duodenum >= 0.30) with predicted and reference volumes, and the share of each
  mask in its largest connected piece (the quality gate's ``organ_connectivity`` measure) for the
  model's mask and for the reference; and where along the scan the reference is found: the share of
  its voxels the model marks in the lower, middle and upper third of the slices (feet to head);
- lymph-node detections after the app's filters (goal <= 5: the patient has no known nodes);
- PDAC components of the raw tumour segmentation and their volumes (goal: none > 1 ml), and the
  one the app keeps as the tumour (anchored to the segmented pancreas, lnmet/tumour.py).

With ``--generated N`` the organ table gets a column beside the real one: the same organ model on N
held-out generated studies scanned the way this volume was (the venous phase alone, no contrast,
its voxel size; :mod:`evaluation.organ_segmentation`). Where that column is high and the real one
low, the scan is not the cause: the generated anatomy does not look like real anatomy.

It measures the models themselves; the app's quality gate may (rightly) call this scan not
assessable. Rerun it after retraining any model:

    python -m evaluation.real_ct [--models models] [--data ../shared/real-ct-validation] [--json out.json]
                                 [--generated 10 [--generated-preset train]]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.attention import attention_map  # noqa: E402
from lnmet.config import load_settings  # noqa: E402
from lnmet.inference import SegmentationModel, resolve_model_path, segment_registered  # noqa: E402
from lnmet.instances import app_instances, instance_ids  # noqa: E402
from lnmet.tumour import solid_components  # noqa: E402
from lnmet.labels import ORGAN_BY_KEY  # noqa: E402
from lnmet.metrics import dice  # noqa: E402
from lnmet.quality import EDGE_MARGIN_MM, largest_piece_fraction  # noqa: E402
from lnmet.types import PhaseVolume, SeriesRef  # noqa: E402
from operators.ln_segmentation import segment_lymph_nodes  # noqa: E402
from operators.organ_segmentation import segment_organs  # noqa: E402
from operators.pdac_segmentation import keep_primary_tumour  # noqa: E402
from operators.phase_registration import register_and_resample  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "real-ct-validation"
# TotalSegmentator v2 `total` label values of the classes it shares with the attention map.
TOTALSEG_LABELS = {"spleen": 1, "esophagus": 15, "stomach": 6, "aorta": 52, "pancreas": 7, "duodenum": 19}
GOALS = {"spleen": 0.70, "stomach": 0.50, "aorta": 0.60, "pancreas": 0.30, "duodenum": 0.30}
LN_GOAL, PDAC_GOAL_ML = 5, 1.0


def load_real_ct(data: Path) -> tuple[sitk.Image, sitk.Image]:
    """CT (float32 HU) and TotalSegmentator labels, reoriented to the DICOM patient frame (LPS)."""
    ct = sitk.ReadImage(str(data / "ct.nii.gz"))
    labels = sitk.ReadImage(str(data / "totalsegmentator_labels.nii.gz"))
    if ct.GetSize() != labels.GetSize():
        raise ValueError(f"{data}: CT {ct.GetSize()} and labels {labels.GetSize()} differ in size")
    return sitk.Cast(sitk.DICOMOrient(ct, "LPS"), sitk.sitkFloat32), sitk.DICOMOrient(labels, "LPS")


def venous_phase(image: sitk.Image) -> PhaseVolume:
    ref = SeriesRef(phase="venous", study_instance_uid="", series_instance_uid="", series_description="real CT",
                    series_number=None, modality="CT", acquisition_time=None, num_slices=image.GetSize()[2],
                    reason="evaluation/real_ct.py")
    return PhaseVolume(phase="venous", image=image, series=ref, source_files=[], sop_instance_uids=[],
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.2", frame_of_reference_uid="")


def found_by_third(predicted: np.ndarray, reference: np.ndarray) -> list[float | None]:
    """Share of the reference's voxels that are predicted, in the lower, middle and upper third of
    the slices (arrays [Z, Y, X] of a grid whose z grows towards the head, as LPS); None for a third
    without reference voxels."""
    out = []
    for part in np.array_split(np.arange(reference.shape[0]), 3):
        t = reference[part]
        out.append(round(float(predicted[part][t].mean()), 3) if t.any() else None)
    return out


def evaluate(models: Path, data: Path) -> dict[str, Any]:
    settings = load_settings()
    ct, ts = load_real_ct(data)
    organ_model = SegmentationModel.load(resolve_model_path("organ_seg", models / "organ_seg" / "model.ts"))
    registered = register_and_resample(venous_phase(ct), None, settings, organ_model.metadata["spacing_mm"])
    organs_working, organs = segment_organs(registered, organ_model)
    pred = sitk.GetArrayFromImage(organs)
    ref = sitk.GetArrayFromImage(ts)
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    rows = {}
    for key, ts_label in TOTALSEG_LABELS.items():
        p, t = pred == ORGAN_BY_KEY[key].label, ref == ts_label
        zyx = tuple(reversed(ct.GetSpacing()))
        rows[key] = {"dice": dice(p, t) if t.any() else None, "predicted_ml": round(float(p.sum()) * voxel_ml, 1),
                     "reference_ml": round(float(t.sum()) * voxel_ml, 1), "goal": GOALS.get(key),
                     # the quality gate's organ_connectivity measure, on the model's mask and on the reference
                     "one_piece": round(largest_piece_fraction(p, zyx, EDGE_MARGIN_MM), 3) if p.any() else None,
                     "reference_one_piece": round(largest_piece_fraction(t, zyx, EDGE_MARGIN_MM), 3) if t.any() else None,
                     "found_by_third": found_by_third(p, t) if t.any() else None}

    ln_model = SegmentationModel.load(resolve_model_path("ln_seg", models / "ln_seg" / "model.ts"))
    att = attention_map(organs_working, settings.attention) if ln_model.uses_attention else None
    prob, _ = segment_lymph_nodes(registered, att, ln_model)
    det = settings.ln_detection
    inst = app_instances(prob, ct, det)
    ids = instance_ids(inst)
    inst_arr = sitk.GetArrayFromImage(inst)
    node_ml = [round(float((inst_arr == i).sum()) * voxel_ml, 2) for i in ids]

    pdac_model = SegmentationModel.load(resolve_model_path("pdac_seg", models / "pdac_seg" / "model.ts"))
    raw, raw_img, _ = segment_registered(registered, pdac_model)
    density = settings.tumour_min_density_hu
    kept, choice = keep_primary_tumour(raw_img, organs_working, settings.tumour_pancreas_reach_mm,
                                       registered.working_venous, density)
    comps, n = ndimage.label(raw > 0, structure=np.ones((3, 3, 3), bool))
    w_ml = float(np.prod(registered.working_venous.GetSpacing())) / 1000.0
    sizes_ml = np.bincount(comps.ravel(), minlength=n + 1)[1:] * w_ml
    pdac_ml = sorted((round(float(v), 2) for v in sizes_ml), reverse=True) if n else []
    solid = (solid_components(comps, n, sitk.GetArrayViewFromImage(registered.working_venous), density)
             if n and density is not None else np.ones(n, bool))
    solid_ml = sorted((round(float(v), 2) for v in sizes_ml[solid]), reverse=True)
    liver = ref == 5
    return {
        "data": str(data), "models": {m.name: m.metadata.get("version") for m in (organ_model, ln_model, pdac_model)},
        "organs": rows,
        "lymph_nodes": {"detections": len(ids), "volumes_ml": node_ml, "goal_max": LN_GOAL,
                        "inside_liver": int(sum(bool(liver[inst_arr == i].mean() > 0.5) for i in ids))},
        "pdac": {"components_ml": pdac_ml[:10], "components_over_1ml": sum(v > PDAC_GOAL_ML for v in pdac_ml),
                 "goal": "no component > 1 ml",
                 # the components the app's density check leaves (app.yaml pdac_segmentation.min_density_hu)
                 "min_density_hu": density, "solid_components_ml": solid_ml[:10],
                 "solid_components_over_1ml": sum(v > PDAC_GOAL_ML for v in solid_ml),
                 # what the app would report as the tumour (lnmet/tumour.py: anchored to the pancreas)
                 "kept_ml": round(float(sitk.GetArrayViewFromImage(kept).sum()) * w_ml, 2),
                 "kept_rule": choice.describe(settings.tumour_pancreas_reach_mm)},
    }


def generated_same_scan(models: Path, voxel_mm: float, count: int, preset: str = "train",
                        seed_start: int = 100000) -> dict[str, Any]:
    """Mean organ Dice of the organ model on ``count`` held-out generated studies scanned as the real
    CT was: venous phase alone, no contrast, isotropic ``voxel_mm`` voxels."""
    from evaluation.organ_segmentation import acquired_preset, evaluate_study
    from synthetic import generate_study
    from synthetic.faults import remove_contrast

    model = SegmentationModel.load(resolve_model_path("organ_seg", models / "organ_seg" / "model.ts"))
    scan = acquired_preset(preset, voxel_mm)
    per_study = [evaluate_study(remove_contrast(generate_study(seed, scan)), model, "perfect", single_phase=True)["dice"]
                 for seed in range(seed_start, seed_start + count)]
    return {"seeds": [seed_start, seed_start + count - 1], "preset": preset, "voxel_mm": voxel_mm,
            "dice": {k: _mean_or_none([d[k] for d in per_study]) for k in TOTALSEG_LABELS}}


def _mean_or_none(values: list[float]) -> float | None:
    """The mean of the finite values; None when a class is absent from every study."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def format_report(r: dict[str, Any]) -> str:
    gen = r.get("generated_same_scan")
    lines = [f"real CT {r['data']} (non-contrast, 3 mm; reference: TotalSegmentator), models {r['models']}",
             f"{'class':<10} {'Dice':>6} {'goal':>6} {'pred ml':>9} {'ref ml':>8} {'one piece':>10} {'ref':>6}"
             + (f" {'generated, same scan':>21}" if gen else "")]
    for key, row in r["organs"].items():
        d = "n/a" if row["dice"] is None else f"{row['dice']:.3f}"
        g = "" if row["goal"] is None else (f">={row['goal']:.2f}" + (" met" if row["dice"] is not None and
                                                                    row["dice"] >= row["goal"] else " MISSED"))
        one = "" if row.get("one_piece") is None else f"{row['one_piece']:.3f}"
        ref = "" if row.get("reference_one_piece") is None else f"{row['reference_one_piece']:.3f}"
        same = "" if not gen else (f" {'n/a':>21}" if gen["dice"][key] is None else f" {gen['dice'][key]:>21.3f}")
        lines.append(f"{key:<10} {d:>6} {g:>6} {row['predicted_ml']:>9} {row['reference_ml']:>8} {one:>10} {ref:>6}{same}")
    thirds = {k: row["found_by_third"] for k, row in r["organs"].items() if row.get("found_by_third")}
    if thirds:
        lines.append("share of the reference found, by third of the scan (feet / middle / head): "
                     + "; ".join(f"{k} " + " / ".join("-" if v is None else f"{v:.2f}" for v in third)
                                 for k, third in thirds.items()))
    if gen:
        lines.append(f"generated, same scan: the organ model on held-out generated studies {gen['seeds'][0]}-"
                     f"{gen['seeds'][1]} (preset {gen['preset']}) scanned as this volume was: venous phase alone, "
                     f"no contrast, {gen['voxel_mm']:g} mm voxels; high there and low here = the anatomy, not the scan")
    ln = r["lymph_nodes"]
    lines.append(f"lymph-node detections after the app's filters: {ln['detections']} (goal <= {ln['goal_max']}; "
                 f"{ln['inside_liver']} inside the liver), largest ml {ln['volumes_ml'][:8]}")
    pd = r["pdac"]
    lines.append(f"PDAC components (raw tumour segmentation): {pd['components_over_1ml']} over 1 ml (goal: none); "
                 f"largest ml {pd['components_ml'][:5]}")
    if pd.get("min_density_hu") is not None:
        lines.append(f"  of soft-tissue density (the app's check, upper-quartile venous HU >= {pd['min_density_hu']:g}): "
                     f"{pd['solid_components_over_1ml']} over 1 ml; largest ml {pd['solid_components_ml'][:5]}")
    lines.append(f"  the app keeps {pd['kept_ml']} ml ({pd['kept_rule']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.real_ct", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=str(ROOT / "models"))
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--generated", type=int, default=0, metavar="N",
                   help="also run the organ model on N held-out generated studies scanned as this volume was")
    p.add_argument("--generated-preset", default="train", help="generator preset of those studies (default: train)")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "ct.nii.gz").is_file():
        p.error(f"{data}: no ct.nii.gz (the real validation volume, see its SOURCES.md)")
    if args.generated < 0:
        p.error(f"--generated {args.generated}: expected a number of studies >= 0")
    result = evaluate(Path(args.models), data)
    if args.generated:
        voxel_mm = max(sitk.ReadImage(str(data / "ct.nii.gz")).GetSpacing())
        result["generated_same_scan"] = generated_same_scan(Path(args.models), voxel_mm, args.generated,
                                                            args.generated_preset)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
