"""The application's chain run on generated studies and scored: the engine of "as the app runs" (issue 21).

The other mode of the evaluation scripts (``--mode model-grid``) feeds the models studies generated
on their own 1.5 mm grid with the arterial phase perfectly aligned: it measures the models. This
mode measures the product. For every held-out seed a ``standard`` study (512 x 512 at 0.7 mm, 200
slices of 1 mm, like a clinical scan) is generated and written as DICOM, and the application's own
functions run on it in the graph's order, with app.yaml's settings and the bundled models:

    load_series -> select_phases -> selection_to_volumes        (DICOM intake, operators/)
    -> register_and_resample (the app's registration and working grid)
    -> segment_organs -> attention_map -> segment_lymph_nodes
    -> identify_lymph_nodes (app.yaml's instance filter, density check included)
    -> segment_pdac -> classify_patient

These are the functions the operators' ``compute`` call; only the Holoscan wiring and the output
writers are left out. The outputs are scored on the venous series' own grid (0.7 mm), where the
app reports them: organ Dice per class, node detection and the detected/true volume of every
found node, identification AUC (on the ground-truth nodes, through the same registered images,
and on the segmented ones), the patient scores, and the registration's TRE at the generator's
landmarks. Each evaluation script prints its part (``--mode app``, through
:func:`scored_app_cases`); ``python -m evaluation.app_mode`` prints all of them from one run per study.

A standard study takes about 40 s to generate and 2 minutes through the chain on a 2-core CPU, so
both are cached under ``--cache``/generator_<version>/: ``studies_<preset>/<case>/`` (DICOM and
ground truth, about 230 MB per standard study; ``--drop-dicom`` deletes the DICOM once the chain has
run, and it is generated again when needed) and ``app_<preset>_<key>/<case>/`` (the chain's
outputs; the key is the checksums of the model files and of app.yaml). Changing code of the
pipeline does not change the key: delete the ``app_*`` folders after such a change. A tumour-only
model (the ablation) asked for after the chain ran is scored from the cached outputs (the venous
intake and the cached PDAC mask) instead of running the chain again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.config import Settings, config_path, load_settings  # noqa: E402
from lnmet.inference import resolve_model_path  # noqa: E402
from lnmet.labels import ORGAN_CLASSES  # noqa: E402
from lnmet.metrics import detection_counts, dice, dice_per_class  # noqa: E402
from lnmet.model_io import sha256_file  # noqa: E402
from lnmet.seeds import FIRST_TEST_SEED  # noqa: E402

log = logging.getLogger("evaluation.app_chain")

APP_PRESET = "standard"
DEFAULT_CACHE = ROOT / "build" / "eval" / "app"
MODES = ("model-grid", "app")
MODEL_NAMES = ("organ_seg", "ln_seg", "ln_cls", "pdac_seg", "patient_cls")
RESULT = "result.json"


# ------------------------------------------------------------------------------------------------
# Models and cache keys
# ------------------------------------------------------------------------------------------------

@dataclass
class AppModels:
    """The model files the chain runs with (the app's five, optionally a plain LN segmentation
    model for the ablation and a tumour-only patient model), loaded once."""

    paths: dict[str, Path]
    device: str | None = None
    loaded: dict[str, Any] = field(default_factory=dict)
    shas: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, models: str | Path, baseline: str | Path | None = None,
                    tumour_only: str | Path | None = None, device: str | None = None,
                    overrides: dict[str, str | Path | None] | None = None) -> "AppModels":
        paths = {name: Path((overrides or {}).get(name) or resolve_model_path(name, models)) for name in MODEL_NAMES}
        if baseline:
            paths["baseline"] = Path(baseline)
        if tumour_only:
            paths["tumour_only"] = Path(tumour_only)
        for name, path in paths.items():
            if not path.is_file():
                raise FileNotFoundError(f"model {name}: {path} not found")
        return cls(paths, device)

    def sha(self, name: str) -> str:
        if name not in self.shas:
            self.shas[name] = sha256_file(self.paths[name])
        return self.shas[name]

    def get(self, name: str) -> Any:
        """The loaded model ``name`` (the class the app's operator uses)."""
        if name not in self.loaded:
            from lnmet.inference import SegmentationModel
            from lnmet.networks.ln_classifier import LNIdentifier
            from lnmet.networks.patient_classifier import PatientModel

            kind = {"ln_cls": LNIdentifier, "patient_cls": PatientModel, "tumour_only": PatientModel}
            self.loaded[name] = kind.get(name, SegmentationModel).load(self.paths[name], self.device)
        return self.loaded[name]

    def key(self) -> str:
        """The app's five models and app.yaml: what the chain's outputs depend on."""
        parts = [f"{n}:{self.sha(n)}" for n in MODEL_NAMES] + [hashlib.sha256(config_path().read_bytes()).hexdigest()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def describe(self) -> list[str]:
        return [f"{name}: {self.get(name).metadata.get('name')} {self.get(name).metadata.get('version')} "
                f"({self.paths[name]})" for name in self.paths]


# ------------------------------------------------------------------------------------------------
# Studies
# ------------------------------------------------------------------------------------------------

def case_id(seed: int) -> str:
    return f"SYN{int(seed):06d}"


def ensure_study(cache: Path, seed: int, preset: str = APP_PRESET) -> Path:
    """The study of ``seed`` written as DICOM + ground truth under ``cache/studies_<preset>/``
    (generated once; again when its DICOM was dropped)."""
    from synthetic import generate_study, write_study

    folder = cache / f"studies_{preset}"
    case = folder / case_id(seed)
    if (case / "ground_truth" / "study.json").is_file() and (case / "dicom").is_dir():
        return case
    t = time.perf_counter()
    print(f"  seed {seed}: generating the {preset} study ...", flush=True)
    study = generate_study(seed, preset)
    written = write_study(study, folder)
    if written != case:  # the generator names cases by seed; keep the cache's own name whatever it does
        if case.exists():
            shutil.rmtree(case)
        written.rename(case)
    print(f"  seed {seed}: generated and written in {time.perf_counter() - t:.0f} s", flush=True)
    return case


def ground_truth(case: Path) -> dict[str, Any]:
    """The generator's ground truth of a written study."""
    gt = case / "ground_truth"
    summary = json.loads((gt / "study.json").read_text())
    return {"summary": summary, "organs": sitk.ReadImage(str(gt / "organs.nii.gz")),
            "instances": sitk.ReadImage(str(gt / "lymph_nodes.nii.gz")),
            "pdac": sitk.ReadImage(str(gt / "pdac.nii.gz")),
            "arterial_organs": sitk.ReadImage(str(gt / "arterial_organs.nii.gz")),
            "nodes": {int(r["id"]): bool(r["positive"]) for r in summary.get("lymph_nodes", [])},
            "label": bool(summary["patient"]["metastasis_positive"])}


def on_grid(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``labels`` on ``reference``'s grid (nearest neighbour when the geometry differs at all)."""
    same = (labels.GetSize() == reference.GetSize()
            and np.allclose(labels.GetSpacing(), reference.GetSpacing(), atol=1e-4)
            and np.allclose(labels.GetOrigin(), reference.GetOrigin(), atol=1e-3)
            and np.allclose(labels.GetDirection(), reference.GetDirection(), atol=1e-5))
    if same:
        return labels
    return sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


# ------------------------------------------------------------------------------------------------
# The chain, as the application runs it
# ------------------------------------------------------------------------------------------------

def _write(img: sitk.Image, path: Path) -> None:
    tmp = path.with_name(".tmp_" + path.name)
    sitk.WriteImage(img, str(tmp), useCompression=True)
    os.replace(tmp, path)


def _findings(nodes: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"index": int(n.index), "volume_mm3": float(n.volume_mm3), "probability": float(n.probability_positive),
             "positive": bool(n.positive), "short_axis_mm": float(n.short_axis_mm)} for n in nodes]


def run_chain(case: Path, out: Path, models: AppModels, settings: Settings) -> dict[str, Any]:
    """Run the application's functions on the DICOM study ``case``; write the outputs to ``out``
    (organ, LN instance and PDAC maps on the reference grid, the LN probability on the working grid,
    ``result.json``) and return the result."""
    from lnmet.attention import attention_map
    from lnmet.geometry import resample_image, resample_labels
    from lnmet.inference import model_inputs
    from lnmet.networks.ln_classifier import identify_instances
    from lnmet.networks.patient_classifier import nodes_only_score
    from lnmet.registration import transform_points, warp_labels
    from operators.ln_identification import identify_lymph_nodes
    from operators.ln_segmentation import segment_lymph_nodes
    from operators.organ_segmentation import segment_organs
    from operators.patient_classifier import classify_patient
    from operators.pdac_segmentation import segment_pdac
    from operators.phase_registration import register_and_resample
    from operators.phase_selector import select_phases
    from operators.series_to_volume import selection_to_volumes
    from operators.study_loader import load_series

    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        seconds[name] = round(now - clock[0], 2)
        clock[0] = now

    venous, arterial = selection_to_volumes(select_phases(load_series(case / "dicom"), settings), settings)
    lap("intake")
    organ_model = models.get("organ_seg")
    registered = register_and_resample(venous, arterial, settings, organ_model.spacing_mm)  # as app._working_spacing
    lap("registration")
    organs_working, organs = segment_organs(registered, organ_model)
    lap("organs")
    attention = attention_map(organs_working, settings.attention)
    lap("attention")
    probability, _ = segment_lymph_nodes(registered, attention, models.get("ln_seg"))
    lap("ln_segmentation")
    identifier = models.get("ln_cls")
    instances, nodes = identify_lymph_nodes(registered, probability, organs, identifier, settings, attention)
    lap("ln_identification")
    _, pdac, _ = segment_pdac(registered, models.get("pdac_seg"), organs_working, settings.tumour_pancreas_reach_mm,
                              settings.tumour_min_density_hu)
    lap("pdac")
    patient_model = models.get("patient_cls")
    tumour, prediction = classify_patient(registered, pdac, nodes, patient_model, settings)
    lap("patient")

    gt = ground_truth(case)
    reference = registered.reference
    gt_instances = on_grid(gt["instances"], reference)
    # the identification of the ground-truth nodes, through the same registered images and map
    channels, grid = model_inputs(registered, identifier)
    att_arr = sitk.GetArrayFromImage(attention if attention.GetSize() == grid.GetSize()
                                     else resample_image(attention, grid, default_value=0.0)).astype(np.float32)
    gt_ids, gt_probs = identify_instances(identifier, gt_instances, grid, channels,
                                          att_arr if identifier.uses_attention else None, 8)
    # attention coverage of the true node voxels (working grid), predicted and ground-truth organs
    ln_working = sitk.GetArrayFromImage(resample_labels(gt_instances, organs_working, smooth=False)) > 0
    att_gt = sitk.GetArrayFromImage(attention_map(resample_labels(on_grid(gt["organs"], reference), organs_working,
                                                                  smooth=False), settings.attention))
    att_pred = sitk.GetArrayFromImage(attention)
    n_ln = int(ln_working.sum())
    # registration against the generator's known deformation
    landmarks = gt["summary"].get("landmarks", [])
    reg: dict[str, Any] = {"metrics": {k: float(v) for k, v in registered.registration_metrics.items()}}
    if landmarks and registered.transform is not None:
        v_mm = np.array([lm["venous_mm"] for lm in landmarks], float)
        a_mm = np.array([lm["arterial_mm"] for lm in landmarks], float)
        venous_labels = sitk.GetArrayFromImage(on_grid(gt["organs"], reference))
        art_org = gt["arterial_organs"]
        reg.update({
            "tre_before": np.linalg.norm(v_mm - a_mm, axis=1).tolist(),
            "tre_after": np.linalg.norm(transform_points(registered.transform, v_mm) - a_mm, axis=1).tolist(),
            "dice_before": dice_per_class(sitk.GetArrayFromImage(warp_labels(art_org, reference, None)), venous_labels),
            "dice_after": dice_per_class(sitk.GetArrayFromImage(warp_labels(art_org, reference, registered.transform)),
                                         venous_labels)})
    result: dict[str, Any] = {
        "case": case.name, "seed": gt["summary"].get("seed"), "preset": gt["summary"].get("preset"),
        "generator_version": gt["summary"].get("generator_version"), "seconds": seconds,
        "single_phase": bool(registered.single_phase), "working_spacing_mm": list(grid.GetSpacing()),
        "findings": _findings(nodes), "gt_nodes": {"ids": [int(i) for i in gt_ids],
                                                   "probabilities": [float(p) for p in gt_probs]},
        "ln_threshold": _ln_threshold(identifier, settings),
        "attention_coverage": {"ln_voxels": n_ln,
                               "gt_organs": float((att_gt[ln_working] > 0).mean()) if n_ln else float("nan"),
                               "predicted_organs": float((att_pred[ln_working] > 0).mean()) if n_ln else float("nan")},
        "registration": reg,
        "patient": {"probability": float(prediction.probability), "threshold": float(prediction.threshold),
                    "positive": bool(prediction.positive), "method": prediction.method,
                    "largest_positive_ln_volume_mm3": float(prediction.largest_positive_ln_volume_mm3),
                    "tumour_found": bool(tumour.found),
                    "nodes_only_score": float(nodes_only_score(prediction.largest_positive_ln_volume_mm3,
                                                               patient_model.nodes_only_threshold_mm3))},
    }
    if "tumour_only" in models.paths:
        result["tumour_only"] = _tumour_only_entry(registered, pdac, nodes, models, settings)
    if "baseline" in models.paths:  # the plain model in the same chain: same registration, organs, filter
        prob_b, _ = segment_lymph_nodes(registered, attention, models.get("baseline"))
        inst_b, nodes_b = identify_lymph_nodes(registered, prob_b, organs, identifier, settings, attention)
        folder = out / f"baseline_{models.sha('baseline')[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        _write(inst_b, folder / "ln_instances.nii.gz")
        result["baseline"] = {"sha": models.sha("baseline")[:12], "findings": _findings(nodes_b)}
    out.mkdir(parents=True, exist_ok=True)
    for name, img in (("organs", organs), ("ln_instances", instances), ("pdac", pdac),
                      ("ln_probability", probability)):
        _write(img, out / f"{name}.nii.gz")
    tmp = out / (".tmp_" + RESULT)
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, out / RESULT)  # written last: its presence means the case is complete
    return result


def _ln_threshold(identifier: Any, settings: Settings) -> float:
    from operators.ln_identification import positive_threshold

    return float(positive_threshold(identifier, settings))


def _cached(out: Path) -> dict[str, Any] | None:
    """The cached result of a case, None when the chain has not finished it."""
    path = out / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(result: dict[str, Any], models: AppModels) -> set[str]:
    """The optional models asked for now whose outputs the cached ``result`` lacks (or has from
    another model file)."""
    return {name for name in ("baseline", "tumour_only")
            if name in models.paths and result.get(name, {}).get("sha") != models.sha(name)[:12]}


def _tumour_only_entry(registered: Any, pdac: sitk.Image, nodes: Sequence[Any], models: AppModels,
                       settings: Settings) -> dict[str, Any]:
    from operators.patient_classifier import classify_patient

    model = models.get("tumour_only")
    _, prediction = classify_patient(registered, pdac, nodes, model, settings)
    return {"sha": models.sha("tumour_only")[:12], "probability": float(prediction.probability),
            "threshold": float(model.threshold)}


def add_tumour_only(case: Path, out: Path, result: dict[str, Any], models: AppModels,
                    settings: Settings) -> dict[str, Any] | None:
    """The tumour-only prediction added to a case whose chain already ran, without running it again:
    a model that reads the venous phase only needs the app's intake of that phase and the cached
    PDAC mask, not the registration. None (the chain must run) for a model that reads the arterial
    phase too."""
    from types import SimpleNamespace

    from lnmet.types import RegisteredPhases
    from operators.phase_selector import select_phases
    from operators.series_to_volume import selection_to_volumes
    from operators.study_loader import load_series

    if any("arterial" in c.lower() for c in models.get("tumour_only").channel_names):
        return None
    venous, _ = selection_to_volumes(select_phases(load_series(case / "dicom"), settings), settings)
    registered = RegisteredPhases(venous=venous, arterial=None, working_venous=venous.image, working_arterial=None,
                                  transform=None, single_phase=False)
    pdac = sitk.ReadImage(str(out / "pdac.nii.gz"))
    nodes = [SimpleNamespace(volume_mm3=f["volume_mm3"], positive=f["positive"]) for f in result["findings"]]
    result = dict(result, tumour_only=_tumour_only_entry(registered, pdac, nodes, models, settings))
    tmp = out / (".tmp_" + RESULT)
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, out / RESULT)
    return result


def app_results(cache: str | Path, seeds: Sequence[int], models: AppModels, settings: Settings,
                preset: str = APP_PRESET, drop_dicom: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    """The chain's outputs for every seed (cached), with progress; returns the cache folder of this
    generator version and, per seed, ``{"result": ..., "study": case folder, "outputs": folder}``."""
    from synthetic import GENERATOR_VERSION

    base = Path(cache) / f"generator_{GENERATOR_VERSION}"
    runs = base / f"app_{preset}_{models.key()}"
    rows = []
    t_all = time.perf_counter()
    for i, seed in enumerate(seeds):
        out = runs / case_id(seed)
        result = _cached(out)
        if result is not None and _missing(result, models) == {"tumour_only"}:
            print(f"  seed {seed}: adding the tumour-only prediction to the cached outputs ...", flush=True)
            result = add_tumour_only(ensure_study(base, seed, preset), out, result, models, settings)
            if result is not None and drop_dicom:
                shutil.rmtree(base / f"studies_{preset}" / case_id(seed) / "dicom", ignore_errors=True)
        if result is None or _missing(result, models):
            case = ensure_study(base, seed, preset)
            t = time.perf_counter()
            print(f"  seed {seed}: running the app's chain ({i + 1}/{len(seeds)}) ...", flush=True)
            result = run_chain(case, out, models, settings)
            s = result["seconds"]
            print(f"  seed {seed}: chain done in {time.perf_counter() - t:.0f} s ("
                  + ", ".join(f"{k} {v:.0f} s" for k, v in s.items()) + ")", flush=True)
            if drop_dicom:
                shutil.rmtree(case / "dicom", ignore_errors=True)
        elif not (base / f"studies_{preset}" / case_id(seed) / "ground_truth" / "study.json").is_file():
            ensure_study(base, seed, preset)  # the ground truth is needed for the scores
        rows.append({"seed": seed, "result": result, "study": base / f"studies_{preset}" / case_id(seed),
                     "outputs": out})
    print(f"  {len(rows)} studies ready in {time.perf_counter() - t_all:.0f} s (cache {runs})", flush=True)
    return base, rows


# ------------------------------------------------------------------------------------------------
# Scores of one case (in the row formats of the evaluation scripts)
# ------------------------------------------------------------------------------------------------

def _instances_scored(pred: sitk.Image, gt: np.ndarray, findings: Sequence[dict[str, Any]],
                      table: dict[int, bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Detection counts (:func:`lnmet.metrics.detection_counts`) and the segmented nodes'
    identification (probability, class of the matched true node, whether it matched one)."""
    arr = sitk.GetArrayFromImage(pred).astype(np.int64)
    counts = detection_counts(arr, gt)
    m = counts.pop("match")
    by_index = {int(f["index"]): f for f in findings}
    ids = sorted(by_index)
    seg = {"probabilities": [by_index[i]["probability"] for i in ids],
           "labels": [table.get(m.pred_to_gt.get(i, -1), False) for i in ids],
           "true_node": [i in m.pred_to_gt for i in ids]}
    return counts, seg


def score_case(row: dict[str, Any]) -> dict[str, Any]:
    """Every score of one case against the generator's ground truth, on the reference grid."""
    result, out = row["result"], row["outputs"]
    gt = ground_truth(row["study"])
    organs = sitk.ReadImage(str(out / "organs.nii.gz"))
    truth = sitk.GetArrayFromImage(on_grid(gt["organs"], organs))
    pred = sitk.GetArrayFromImage(organs)
    organ_dice = {c.key: (dice(pred == c.label, truth == c.label) if (truth == c.label).any() else float("nan"))
                  for c in ORGAN_CLASSES}
    gt_inst = sitk.GetArrayFromImage(on_grid(gt["instances"], organs)).astype(np.int64)
    table = gt["nodes"]
    ln, seg = _instances_scored(sitk.ReadImage(str(out / "ln_instances.nii.gz")), gt_inst, result["findings"], table)
    scored: dict[str, Any] = {"case": result["case"], "seed": row["seed"], "organ_dice": organ_dice,
                              "ln_seg": ln, "segmented_nodes": seg,
                              "gt_nodes": {"probabilities": result["gt_nodes"]["probabilities"],
                                           "labels": [table[i] for i in result["gt_nodes"]["ids"]]},
                              "ln_threshold": result["ln_threshold"], "attention_coverage": result["attention_coverage"],
                              "registration": result["registration"], "seconds": result["seconds"]}
    if "baseline" in result:
        b_path = out / f"baseline_{result['baseline']['sha']}" / "ln_instances.nii.gz"
        scored["baseline"], _ = _instances_scored(sitk.ReadImage(str(b_path)), gt_inst,
                                                  result["baseline"]["findings"], table)
    pdac = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "pdac.nii.gz"))) > 0
    pdac_gt = sitk.GetArrayFromImage(on_grid(gt["pdac"], organs)) > 0
    p = result["patient"]
    scored["patient"] = {"case": result["case"], "label": gt["label"], "pdac_dice": dice(pdac, pdac_gt),
                         "tumour_found": bool(pdac.any()), "largest_positive_volume_mm3": p["largest_positive_ln_volume_mm3"],
                         "combined": p["probability"], "combined_threshold": p["threshold"],
                         "nodes_only": p["nodes_only_score"], "ln_instances": len(result["findings"]),
                         "ln_positive": sum(f["positive"] for f in result["findings"])}
    if "tumour_only" in result:
        scored["patient"]["tumour_only"] = result["tumour_only"]["probability"]
        scored["patient"]["tumour_only_threshold"] = result["tumour_only"]["threshold"]
    return scored


# ------------------------------------------------------------------------------------------------
# Command line (shared by the evaluation scripts' --mode app)
# ------------------------------------------------------------------------------------------------

def add_app_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the app mode that every evaluation script takes."""
    p.add_argument("--mode", choices=MODES, default="model-grid",
                   help="model-grid: studies on the models' 1.5 mm grid, arterial phase perfectly aligned (measures "
                        "the models); app: standard 0.7 mm DICOM studies through the application's own functions "
                        "(registration, resampling, filters: what a user gets; see evaluation/app_chain.py)")
    p.add_argument("--app-cache", default=str(DEFAULT_CACHE),
                   help="--mode app: cache of the generated studies and of the chain's outputs")
    p.add_argument("--drop-dicom", action="store_true",
                   help="--mode app: delete each study's DICOM once the chain has run (keeps the ground truth)")


def scored_app_cases(p: argparse.ArgumentParser, args: argparse.Namespace, baseline: str | None = None,
                     tumour_only: str | None = None,
                     overrides: dict[str, str | Path | None] | None = None) -> list[dict[str, Any]]:
    """Check the seeds, load the models, run (or reuse) the chain on every seed and score each case."""
    if args.seed_start < FIRST_TEST_SEED:
        p.error(f"--seed-start must be >= {FIRST_TEST_SEED}: seeds below are training seeds")
    if args.count < 1:
        p.error("--count must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    preset = args.preset = args.preset or APP_PRESET
    models = AppModels.from_folder(args.models, baseline, tumour_only, getattr(args, "device", None), overrides)
    settings = load_settings()
    seeds = list(range(args.seed_start, args.seed_start + args.count))
    print(f"As the app runs: {len(seeds)} {preset} studies (seeds {seeds[0]}-{seeds[-1]}), DICOM intake, the app's "
          f"registration, resampling and filters (app.yaml {config_path()})")
    for line in models.describe():
        print("  " + line)
    _, rows = app_results(args.app_cache, seeds, models, settings, preset, args.drop_dicom)
    return [score_case(r) for r in rows]
