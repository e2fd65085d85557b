"""The paper's evaluation protocol in one command (Zheng et al. 2024, sections 4.1-4.3; issue 21).

On a generated cohort (training seeds, never the held-out test seeds 100000-149999: the protocol
trains and chooses thresholds on every patient it sees), nested 5-fold cross-validation as the
paper: the patients are split into 5 folds stratified by the patient label; in each round one fold
is the test set (20%) and the training commands get the other four, from which each holds back its
own validation split (``--val-fraction 0.2``: 64% training, 16% validation). Per round:

- three LN segmentation models (``training.train_segmentation --task lymph_nodes``): the paper's
  attention-guided network with informative negative selection ("ours"), the same without
  informative negative selection (``--no-ins``, "ours w/o INS") and the plain network without
  attention (``--no-attention``, the nnU-Net-like baseline); both baselines draw their patches from
  the whole body (``--sample-region body``), as nnU-Net does;
- the LN identification model on "ours" (``training.train_ln_classifier``);
- the patient classifier, combined (tumour patches + largest positive LN volume) and tumour-only
  (``training.train_patient_classifier --mode combined / tumour_only``); the nodes-only rule
  (ClsbyLNSeg) is the threshold the combined training stores, chosen on the round's training patients.

On the round's test patients the app's own steps run with its app.yaml filter (attention map from
the organ labels: ground truth or the bundled organ model; LN instances; identification; tumour mask:
ground truth or the bundled PDAC model; patient models). Printed as the paper's tables:

- Table 2 style: LN identification AUC on the ground-truth nodes, per fold and averaged;
- Table 3 style: voxel Dice / recall / precision and instance F1 / recall / precision (IoU >= 0.3)
  of the three segmentation models, class-agnostic and, after identification by the round's
  identification model, for positive and negative nodes; averaged over the folds; Wilcoxon
  signed-rank tests (``scipy.stats.wilcoxon``) of "ours" against each other model on the per-patient
  voxel Dice and instance F1 of all test patients (``*`` p < 0.05, ``NS`` otherwise); below it, how
  many of the "w/o INS" network's training patches held no attended voxel (the ones INS rejects):
  where none did, as on the generated studies, "w/o INS" is trained like "ours" and the two differ
  only by run-to-run noise;
- Table 4 style: balanced accuracy, AUC, accuracy, sensitivity and specificity of combined,
  tumour-only and nodes-only on the pooled test predictions of the 5 folds (each fold's model at its
  own stored threshold), 95% bootstrap CIs (1,000 resamples); as the paper, a Wilcoxon signed-rank
  test on the paired bootstrap distributions of the balanced accuracy (combined vs each other; with
  1,000 resamples nearly any difference comes out significant, so read it beside the CIs), and
  DeLong tests on the pooled scores.

Presets: ``tiny`` (10 tiny 3 mm studies, very small networks and a few iterations: checks that the
whole protocol runs, in a couple of minutes; its figures mean nothing) and ``full`` (150 studies at
the train preset, the bundled models' network sizes, 3000 segmentation iterations; about 14 hours
on 2 CPU cores: ``--plan`` prints the estimate per stage and every training command). Everything is
cached under ``--out`` (the cohort per generator version, each trained model under a name holding a
hash of its training command, a segmentation training's checkpoint every 100 iterations), so an
interrupted run resumes where it stopped: run the same command again. ``--only-fold K ...`` runs (or
reads from the cache) only those folds, with tables marked partial: the finished folds of a long run
can be read while it goes on, and machines that share ``--out`` can each take a fold.

    python -m evaluation.protocol --preset tiny
    python -m evaluation.protocol --preset full --threads 2 [--json build/protocol/full.json]
    python -m evaluation.protocol --preset full --threads 2 --only-fold 1   # fold 1's tables alone
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.metrics import (classification_metric_fns, classification_summary, delong_test,  # noqa: E402
                           detection_scores, dice, match_instances, roc_auc)
from lnmet.seeds import TestSeedError, refuse_test_seeds  # noqa: E402

log = logging.getLogger("evaluation.protocol")

LN_DATASET = "Dataset502_PancreasLymphNodes"
PDAC_DATASET = "Dataset503_PancreasTumour"
# --sample-region body is the trainer's default without INS; it is written out so that models trained
# before that default (on the attended crop, which made "w/o INS" the same training as "ours") get a
# new command hash and are trained again.
VARIANTS = {"plain": ("Plain U-Net (w/o attention)", ["--no-attention", "--sample-region", "body"]),
            "no_ins": ("Ours w/o INS", ["--no-ins", "--sample-region", "body"]),
            "ours": ("Ours (attention + INS)", [])}
REFERENCE = "ours"
PATIENT_METHODS = {"tumour_only": "ClsfromPDAC (tumour only)", "nodes_only": "ClsbyLNSeg w/ Attn (nodes only)",
                   "combined": "Ours (combined)"}
N_BOOTSTRAP = 1000
TABLE4_DECISION_METRICS = ("balanced_accuracy", "accuracy", "sensitivity", "specificity")


@dataclass(frozen=True)
class ProtocolPreset:
    """Cohort, folds and the training commands' settings of one protocol run."""

    name: str
    study_preset: str  # generator preset of the cohort
    seed_start: int
    count: int
    folds: int
    segmentation_args: tuple[str, ...]
    ln_classifier_args: tuple[str, ...]
    patient_args: tuple[str, ...]
    organs: str  # "gt" or "model": organ labels of the test patients' attention maps
    pdac: str  # "gt" or "model": tumour masks of the test patients
    minutes_per_fold: dict[str, float] = field(default_factory=dict)  # estimate per stage, 2 CPU cores (--plan)


SEGMENTATION_FIXED_MINUTES = 2.7  # loading a fold's 96 training cases and validating, per model (2 cores)

PRESETS: dict[str, ProtocolPreset] = {
    "tiny": ProtocolPreset(
        "tiny", "tiny", 90010, 10, 5,
        ("--spacing", "3", "3", "3", "--patch-size", "32", "32", "16", "--filters", "4", "8", "16", "--iterations",
         "4", "--batch-size", "2", "--val-overlap", "0", "--val-max-cases", "1", "--log-every", "2",
         "--checkpoint-every", "0"),
        ("--crop-size", "16", "16", "16", "--iterations", "4", "--batch-size", "4", "--lr", "0.05", "--val-every", "4",
         "--no-augmentation"),
        ("--patch-size", "32", "--patch-spacing", "3", "--block-inplanes", "4", "8", "16", "32", "--iterations", "4",
         "--batch-size", "8", "--lr", "0.02", "--val-every", "4", "--no-augmentation"),
        organs="gt", pdac="gt"),
    # The bundled models' network sizes and budgets (docs/TRAINING.md), cut where a CPU day allows.
    "full": ProtocolPreset(
        "full", "train", 20000, 150, 5,
        ("--preset", "small", "--iterations", "3000", "--per-node-sampling", "--val-max-cases", "5"),
        ("--iterations", "400", "--lr", "0.01"),
        ("--iterations", "600", "--lr", "0.01", "--max-minutes", "10"),
        organs="model", pdac="model",
        # 3000 segmentation iterations, not the 1500 of the first run: at 1500 the LN networks were
        # still leaving the all-background plateau (loss about 1) at iterations 1000-1400, and in fold 2
        # two of the three had not left it (no node marked on their validation patients).
        # Measured in the first fold of a full run on this 2-core machine (2026-12-04), nothing else
        # running: an LN segmentation model 22-28 min at 1500 iterations (1.1-1.4 per s, plus 2.7 min
        # loading its 96 cases and validating: about 45 min at 3000); identification 7 min (reading 120 cases' nodes 1.5 min, 400
        # iterations 5 min); the LN chain of the 120 training patients 11 min (~5 s each); the two patient
        # classifiers under a minute each (600 iterations of 96-pixel patches), far from their 10 min
        # cap; the 30 test patients 14 min (organ, 3 LN, PDAC models ~5 s each, plus identification).
        minutes_per_fold={"3 LN segmentation models (3000 iterations each)": 135.0,
                          "LN identification (400 iterations)": 7.0,
                          "LN chain on ~120 training patients (patient classifier input)": 11.0,
                          "2 patient classifiers (600 iterations each)": 2.0,
                          "30 test patients (organs, 3 LN models, identification, PDAC, patient)": 14.0}),
}


# ------------------------------------------------------------------------------------------------
# Folds
# ------------------------------------------------------------------------------------------------

def stratified_folds(labels: dict[str, bool], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` disjoint folds covering every case, each with about the same share of positive cases."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    if len(labels) < k:
        raise ValueError(f"{len(labels)} patients cannot make {k} folds")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    offset = 0
    for cls in (True, False):
        group = sorted(c for c, y in labels.items() if y == cls)
        rng.shuffle(group)
        for i, case in enumerate(group):
            folds[(i + offset) % k].append(case)
        offset += len(group)
    return [sorted(f) for f in folds]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(src.resolve(), dst)


def subset_cohort(data: Path, dst: Path, cases: Sequence[str]) -> Path:
    """A cohort folder holding only ``cases`` of the exported cohort ``data`` (symbolic links to the
    files of every sub-folder of its LN and tumour datasets, and ``patients.json``), for the training
    commands."""
    patients = json.loads((data / "patients.json").read_text())
    for ds in (LN_DATASET, PDAC_DATASET):
        (dst / ds).mkdir(parents=True, exist_ok=True)
        meta = json.loads((data / ds / "dataset.json").read_text())
        (dst / ds / "dataset.json").write_text(json.dumps(dict(meta, numTraining=len(cases)), indent=1))
        for sub in sorted(d.name for d in (data / ds).iterdir() if d.is_dir()):  # imagesTr, labelsTr, organsTr, ...
            for case in cases:
                for f in (data / ds / sub).glob(f"{case}[._]*"):
                    _link(f, dst / ds / sub / f.name)
    (dst / "patients.json").write_text(json.dumps({c: patients[c] for c in cases}, indent=1))
    return dst


# ------------------------------------------------------------------------------------------------
# Training (the public command lines of training/)
# ------------------------------------------------------------------------------------------------

def _tag(argv: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(argv).encode()).hexdigest()[:10]


def trained(out_dir: Path, name: str, argv: list[str], run: Callable[[list[str]], Any]) -> Path:
    """The model file of ``run(argv + --out ...)``, trained once: the folder name holds a hash of the
    command, so a changed setting trains anew and an interrupted protocol resumes. A segmentation
    training interrupted part-way goes on from its last checkpoint (every 100 iterations: weights,
    optimiser, iteration and the random states of the sampler, augmentation and randomiser, so that
    it goes on exactly as an unbroken run would), so a run of many hours can be
    spread over several sittings."""
    folder = out_dir / f"{name}_{_tag(argv)}"
    model = folder / "model.ts"
    done = folder / "done.json"
    if done.is_file() and model.is_file():
        return model
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    extra = ["--out", str(model), "--name", name]
    resumed = False
    if run.__module__.endswith("train_segmentation"):
        checkpoint = folder / "checkpoint.pt"
        extra += ["--checkpoint", str(checkpoint)]
        resumed = checkpoint.is_file()
        if resumed:
            extra.append("--resume")
    print(f"    training {name}{' (resuming from its checkpoint)' if resumed else ''} ...", flush=True)
    with open(folder / "train.log", "a") as printed, contextlib.redirect_stdout(printed):  # its summary line
        summary = run(argv + extra)
    seconds = time.perf_counter() - t
    done.write_text(json.dumps({"argv": argv, "seconds": round(seconds, 1),
                                "validation": (summary or {}).get("validation")}, indent=1, default=float))
    print(f"    trained {name} in {seconds:.0f} s", flush=True)
    return model


def train_fold(fold_data: Path, models_dir: Path, preset: ProtocolPreset, threads: int | None, seed: int,
               organ_model: Path | None) -> dict[str, Path]:
    """Every model of one round, trained on that round's cohort folder."""
    from training import train_ln_classifier, train_patient_classifier, train_segmentation

    common = ["--seed", str(seed), "--val-fraction", "0.2"] + (["--threads", str(threads)] if threads else [])
    out: dict[str, Path] = {}
    for key, (_, flags) in VARIANTS.items():
        argv = ["--dataset", str(fold_data / LN_DATASET), "--task", "lymph_nodes", *flags,
                *preset.segmentation_args, *common]
        out[key] = trained(models_dir, f"ln_seg_{key}", argv, train_segmentation.main)
    argv = ["--dataset", str(fold_data / LN_DATASET), "--ln-seg-model", str(out[REFERENCE]),
            *preset.ln_classifier_args, *common]
    out["ln_cls"] = trained(models_dir, "ln_cls", argv, train_ln_classifier.main)
    for mode in ("combined", "tumour_only"):
        argv = ["--data", str(fold_data), "--ln-seg-model", str(out[REFERENCE]), "--ln-cls-model", str(out["ln_cls"]),
                "--mode", mode, "--cache", str(models_dir / "ln_volumes"), *preset.patient_args, *common]
        out[f"patient_{mode}"] = trained(models_dir, f"patient_cls_{mode}", argv, train_patient_classifier.main)
    return out


# ------------------------------------------------------------------------------------------------
# Test patients of a round
# ------------------------------------------------------------------------------------------------

def _scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """Voxel and instance figures of one patient (pooled counts kept for the fold's averages)."""
    m = match_instances(pred, gt)
    inter = int(np.logical_and(pred > 0, gt > 0).sum())
    p_vox, g_vox = int((pred > 0).sum()), int((gt > 0).sum())
    inst = detection_scores(m.n_gt, m.n_detected, m.n_pred, m.n_true_positive_pred)
    f1 = inst["f1"]
    if not np.isfinite(f1) and (m.n_gt or m.n_pred):
        f1 = 0.0  # nodes on one side only: nothing right
    return {"dice": dice(pred > 0, gt > 0) if (p_vox or g_vox) else float("nan"), "f1": f1,
            "counts": [m.n_gt, m.n_detected, m.n_pred, m.n_true_positive_pred], "voxels": [inter, p_vox, g_vox]}


def _class_maps(inst: np.ndarray, ids: Sequence[int], positive: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    pos_ids = [i for i, p in zip(ids, positive) if p]
    neg_ids = [i for i, p in zip(ids, positive) if not p]
    return np.where(np.isin(inst, pos_ids), inst, 0), np.where(np.isin(inst, neg_ids), inst, 0)


def evaluate_test_case(cache: Path, data: Path, case: str, m: dict[str, Any], settings: Any) -> dict[str, Any]:
    """Every figure of one test patient of a round (models of that round in ``m``)."""
    from evaluation.ln_detection import ln_probability, predicted_organs, read_case, working_inputs
    from lnmet.instances import app_instances
    from lnmet.networks.ln_classifier import channel_stack, identify_instances
    from lnmet.networks.patient_classifier import nodes_only_score

    c = read_case(data, case)
    organs = predicted_organs(cache, case, m["organ"], m["organ_sha"], c)
    gt = sitk.GetArrayFromImage(c["instances_gt"]).astype(np.int64)
    table = {int(r["id"]): bool(r["positive"]) for r in c["nodes"]}
    gt_pos, gt_neg = _class_maps(gt, list(table), list(table.values()))
    det = settings.ln_detection
    ident = m["ln_cls"]
    grid, ven, art, att = working_inputs(ident.spacing_mm, c, organs, settings)
    image = channel_stack(ident.channel_names, art, ven)
    row: dict[str, Any] = {"case": case, "segmentation": {}}
    volume = 0.0
    for key in VARIANTS:
        model = m["seg"][key]
        prob, _ = ln_probability(cache, case, model, m["seg_sha"][key], m["organ_tag"], grid, ven, art, att)
        inst_img = app_instances(prob, c["venous"], det)
        inst = sitk.GetArrayFromImage(inst_img).astype(np.int64)
        ids, probs = identify_instances(ident, inst_img, grid, image, att, batch_size=8)
        positive = [bool(p >= m["ln_threshold"]) for p in probs]
        pos, neg = _class_maps(inst, ids, positive)
        row["segmentation"][key] = {"agnostic": _scores(inst, gt), "positive": _scores(pos, gt_pos),
                                    "negative": _scores(neg, gt_neg)}
        if key == REFERENCE:  # the largest positive LN of "ours": the patient classifier's input (Eq. 7)
            counts = np.bincount(inst.ravel())
            vox = float(np.prod(c["venous"].GetSpacing()))
            volume = max((counts[i] * vox for i, p in zip(ids, positive) if p), default=0.0)
    gt_ids, gt_probs = identify_instances(ident, c["instances_gt"], grid, image, att, batch_size=8)
    row["gt_nodes"] = {"labels": [table[i] for i in gt_ids], "probabilities": [float(p) for p in gt_probs]}
    mask = c["pdac_gt"] if m["pdac"] is None else _predicted_pdac(cache, case, m, c, organs, settings)
    combined, tumour_only = m["patient_combined"], m["patient_tumour_only"]
    found = bool(sitk.GetArrayViewFromImage(mask).any())
    row["patient"] = {"largest_positive_volume_mm3": float(volume), "tumour_found": found,
                      "nodes_only": float(nodes_only_score(volume, combined.nodes_only_threshold_mm3))}
    for name, model in (("combined", combined), ("tumour_only", tumour_only)):
        row["patient"][name] = (model.predict(c["venous"], c["arterial"], mask, volume)[0] if found
                                else float(nodes_only_score(volume, model.nodes_only_threshold_mm3)))
    return row


def _predicted_pdac(cache: Path, case: str, m: dict[str, Any], c: dict[str, Any], organs: sitk.Image,
                    settings: Any) -> sitk.Image:
    """The PDAC model's primary tumour (as the app keeps it, against the round's organ map), cached."""
    from evaluation.ln_detection import _cached_image

    def compute() -> sitk.Image:
        from operators.pdac_segmentation import keep_primary_tumour
        from training.train_patient_classifier import predicted_labels

        labels = predicted_labels(m["pdac"], c["venous"], c["arterial"])
        kept, _ = keep_primary_tumour(labels, organs, settings.tumour_pancreas_reach_mm, c["venous"],
                                      settings.tumour_min_density_hu)
        return kept

    from evaluation.patient_prediction import tumour_rule_tag

    return _cached_image(cache / "pred" / f"pdac_primary_{m['pdac_sha'][:12]}_{m['organ_tag']}{tumour_rule_tag(settings)}"
                         / f"{case}.nii.gz", compute)


def load_fold_models(paths: dict[str, Path], organ_model: Path | None, pdac_model: Path | None,
                     device: str | None, settings: Any) -> dict[str, Any]:
    from lnmet.inference import SegmentationModel
    from lnmet.model_io import sha256_file
    from lnmet.networks.ln_classifier import LNIdentifier
    from lnmet.networks.patient_classifier import PatientModel
    from operators.ln_identification import positive_threshold

    ident = LNIdentifier.load(paths["ln_cls"], device)
    organ_sha = sha256_file(organ_model) if organ_model else ""
    return {"seg": {k: SegmentationModel.load(paths[k], device) for k in VARIANTS},
            "seg_sha": {k: sha256_file(paths[k]) for k in VARIANTS},
            "ln_cls": ident, "ln_threshold": positive_threshold(ident, settings),
            "organ": SegmentationModel.load(organ_model, device) if organ_model else None, "organ_sha": organ_sha,
            "organ_tag": ("organs" + organ_sha[:8]) if organ_model else "gtorgans",
            "pdac": SegmentationModel.load(pdac_model, device) if pdac_model else None,
            "pdac_sha": sha256_file(pdac_model) if pdac_model else "",
            "patient_combined": PatientModel.load(paths["patient_combined"], device),
            "patient_tumour_only": PatientModel.load(paths["patient_tumour_only"], device)}


# ------------------------------------------------------------------------------------------------
# Statistics and the tables
# ------------------------------------------------------------------------------------------------

def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired values (pairs with a NaN left out); 1.0 when every
    pair is equal or fewer than 2 pairs remain."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2 or np.all(x == y):
        return 1.0
    return float(wilcoxon(x, y).pvalue)


def _mark(p: float) -> str:
    return "*" if p < 0.05 else "NS"


def fold_means(folds: Sequence[Sequence[dict[str, Any]]], key: str, part: str) -> dict[str, float]:
    """Voxel Dice/recall/precision and instance F1/recall/precision of model ``key`` (``part``:
    agnostic / positive / negative), pooled within each fold, averaged over the folds."""
    per_fold = []
    for rows in folds:
        counts = np.sum([r["segmentation"][key][part]["counts"] for r in rows], axis=0)
        inter, p_vox, g_vox = np.sum([r["segmentation"][key][part]["voxels"] for r in rows], axis=0)
        inst = detection_scores(*[int(v) for v in counts])
        per_fold.append({"voxel_dice": 2 * inter / (p_vox + g_vox) if p_vox + g_vox else float("nan"),
                         "voxel_recall": inter / g_vox if g_vox else float("nan"),
                         "voxel_precision": inter / p_vox if p_vox else float("nan"),
                         "instance_f1": inst["f1"], "instance_recall": inst["recall"],
                         "instance_precision": inst["precision"]})
    return {k: float(np.nanmean([f[k] for f in per_fold])) if any(np.isfinite(f[k]) for f in per_fold)
            else float("nan") for k in per_fold[0]}


def table3(folds: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    rows = [r for f in folds for r in f]
    out: dict[str, Any] = {}
    for part in ("agnostic", "positive", "negative"):
        out[part] = {}
        for key in VARIANTS:
            res = fold_means(folds, key, part)
            if key != REFERENCE:
                for metric in ("dice", "f1"):
                    res[f"p_{metric}"] = wilcoxon_p([r["segmentation"][REFERENCE][part][metric] for r in rows],
                                                    [r["segmentation"][key][part][metric] for r in rows])
            out[part][key] = res
    return out


def table4(rows: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Per method: metrics with bootstrap CIs on the pooled test predictions (AUC from the scores, the
    others from each fold's own decisions; :func:`lnmet.metrics.classification_summary`); paired
    bootstrap balanced accuracies compared by Wilcoxon; DeLong on the scores."""
    y = np.array([r["label"] for r in rows], bool)
    out: dict[str, Any] = {"patients": int(y.size), "positive": int(y.sum()), "methods": {}}
    ba = classification_metric_fns(0.5)["balanced_accuracy"]
    boot: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, y.size, y.size) for _ in range(N_BOOTSTRAP)]
    for method in PATIENT_METHODS:
        s = np.array([r["scores"][method] for r in rows], float)
        pred = np.array([r["predicted"][method] for r in rows], float)
        decided = classification_summary(y, pred, 0.5, n_resamples=N_BOOTSTRAP, seed=seed)
        scored = classification_summary(y, s, 0.5, n_resamples=N_BOOTSTRAP, seed=seed)
        out["methods"][method] = {"auc": scored["auc"], **{k: decided[k] for k in TABLE4_DECISION_METRICS}}
        boot[method] = np.array([ba(y[i], pred[i]) for i in idx], float)
    for method in PATIENT_METHODS:
        if method == "combined":
            continue
        res = out["methods"][method]
        res["p_balanced_accuracy_bootstrap_wilcoxon"] = wilcoxon_p(boot["combined"], boot[method])
        if 0 < y.sum() < y.size:
            d = delong_test(y, [r["scores"]["combined"] for r in rows], [r["scores"][method] for r in rows])
            res["delong_vs_combined_p"] = d.p_value
    return out


def segmentation_validation(paths: dict[str, Path]) -> dict[str, Any]:
    """Each LN segmentation model's own validation at the end of its training (its ``done.json``)."""
    out = {}
    for key in VARIANTS:
        done = paths[key].parent / "done.json"
        out[key] = json.loads(done.read_text()).get("validation") if done.is_file() else None
    return out


def segmentation_sampling(paths: dict[str, Path]) -> dict[str, Any]:
    """Each LN segmentation model's patch counts from its metadata (``training.sampler``; None for a
    model trained before they were recorded): "uninformative" counts the patches without an attended
    voxel, the ones informative negative selection rejects."""
    from lnmet.model_io import read_metadata

    return {key: read_metadata(paths[key]).get("training", {}).get("sampler") for key in VARIANTS}


def ins_note(sampling: Sequence[dict[str, Any]]) -> str | None:
    """What "w/o INS" drew that INS would have rejected, pooled over the folds, in one sentence; on a
    cohort where every patch holds attended voxels the ablation cannot differ from "ours" by design."""
    stats = [fold.get("no_ins") for fold in sampling if fold.get("no_ins")]
    if not stats:
        return None
    bad, total = sum(int(s.get("uninformative", 0)) for s in stats), sum(int(s["patches"]) for s in stats)
    note = (f"Informative negative selection: {VARIANTS['no_ins'][0]} drew {bad} of {total} training patches "
            f"({100 * bad / max(total, 1):.1f}%) without an attended voxel, the ones INS rejects")
    if bad == 0:
        note += (" - none: on this cohort every patch holds attended voxels, so it is trained like 'ours' and "
                 "any difference between the two is run-to-run noise, not the effect of INS")
    return note + "."


def did_not_learn(validation: dict[str, Any] | None) -> bool:
    """A model that marked no node at all on its validation patients: at a small iteration budget a
    network can still sit on the all-background plateau (loss about 1), and its test figures then say
    nothing about its design."""
    return bool(validation) and validation.get("predicted_instances") == 0


def fold_summary(rows: Sequence[dict[str, Any]], validation: dict[str, Any] | None = None,
                 sampling: dict[str, Any] | None = None) -> str:
    """One round's test figures in a few lines, printed as each fold ends so a long run's progress can
    be read before its tables: class-agnostic instance F1 / recall / precision (pooled over the fold's
    patients) of each LN segmentation variant (with the model's own validation Dice, and a warning
    where it did not learn, and the share of its training patches without an attended voxel),
    identification AUC on the true nodes, patient AUC per method. A fold of
    ~30 patients is a noisy sample; the tables average and test over all folds."""
    lines = []
    for key, (title, _) in VARIANTS.items():
        counts = np.sum([r["segmentation"][key]["agnostic"]["counts"] for r in rows], axis=0)
        inst = detection_scores(*[int(v) for v in counts])
        line = (f"  {title}: instance F1 {_fmt3(inst['f1'])}, recall {_fmt3(inst['recall'])} "
                f"({int(counts[1])} of {int(counts[0])} nodes), precision {_fmt3(inst['precision'])}")
        v = (validation or {}).get(key)
        if v:
            line += f"; its validation Dice {_fmt3(v.get('mean_dice', float('nan')))}"
            if did_not_learn(v):
                line += " (DID NOT LEARN: no node marked on its validation patients)"
        drawn = (sampling or {}).get(key)
        if drawn and drawn.get("patches"):
            line += f"; {int(drawn.get('uninformative', 0))} of its {int(drawn['patches'])} patches had no attended voxel"
        lines.append(line)
    y_nodes = [lab for r in rows for lab in r["gt_nodes"]["labels"]]
    auc_nodes = roc_auc(y_nodes, [p for r in rows for p in r["gt_nodes"]["probabilities"]])
    lines.append(f"  LN identification AUC on the true nodes {_fmt3(auc_nodes)} ({len(y_nodes)} nodes, "
                 f"{int(sum(y_nodes))} positive)")
    y = [r["label"] for r in rows]
    aucs = ", ".join(f"{m} {_fmt3(roc_auc(y, [r['scores'][m] for r in rows]))}" for m in PATIENT_METHODS)
    lines.append(f"  patient AUC ({len(y)} patients, {int(sum(y))} positive): {aucs}")
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "  n/a" if not np.isfinite(v) else f"{100 * v:5.1f}"


def format_tables(res: dict[str, Any]) -> str:
    run = res.get("folds_run") or list(range(1, res["folds"] + 1))
    lines = [f"Nested {res['folds']}-fold cross-validation on {res['patients']} generated patients ({res['positive']} "
             f"positive; seeds {res['seeds'][0]}-{res['seeds'][1]}, preset {res['study_preset']}; protocol preset "
             f"{res['preset']}); test-time organs: {res['organs']}, tumour masks: {res['pdac']}"]
    if len(run) < res["folds"]:
        lines.append(f"PARTIAL: only fold{'s' if len(run) > 1 else ''} {', '.join(map(str, run))} of {res['folds']}; "
                     f"every figure below is on {'their' if len(run) > 1 else 'its'} {res['table4']['patients']} "
                     "test patients alone")
    lines.append("")
    t2 = res["table2"]
    lines.append("Table 2 style: LN identification on the ground-truth nodes of the test folds")
    lines.append("  AUC " + ", ".join(f"fold {k} {_fmt3(v)}" for k, v in zip(run, t2["auc_per_fold"]))
                 + f"; mean {_fmt3(t2['auc_mean'])}; pooled {_fmt3(t2['auc_pooled'])} ({t2['nodes']} nodes, "
                 f"{t2['positive']} positive)")
    lines.append("")
    lines.append("Table 3 style: LN segmentation before (class-agnostic) and after identification (class-aware), %, "
                 "averaged over the folds; Wilcoxon signed-rank on per-patient voxel Dice and instance F1 vs "
                 "'ours' (* p < 0.05, NS: no significance)")
    head = (f"  {'stage / class':<16}{'method':<30}{'Dice':>10}{'Recall':>8}{'Prec.':>8}   {'F1':>10}{'Recall':>8}"
            f"{'Prec.':>8}")
    lines.append(f"  {'':<46}{'voxel-wise':^26}   {'instance-wise':^26}")
    lines.append(head)
    for part, title in (("agnostic", "class-agnostic"), ("positive", "class-aware Pos"),
                        ("negative", "class-aware Neg")):
        for i, key in enumerate(VARIANTS):
            r = res["table3"][part][key]
            mk = {m: ("ref" if key == REFERENCE else _mark(r[f"p_{m}"])) for m in ("dice", "f1")}
            lines.append(f"  {title if i == 0 else '':<16}{VARIANTS[key][0]:<30}"
                         f"{_pct(r['voxel_dice']) + ' ' + mk['dice']:>10}{_pct(r['voxel_recall']):>8}"
                         f"{_pct(r['voxel_precision']):>8}   {_pct(r['instance_f1']) + ' ' + mk['f1']:>10}"
                         f"{_pct(r['instance_recall']):>8}{_pct(r['instance_precision']):>8}")
        ps = [f"{VARIANTS[k][0]}: Dice p {res['table3'][part][k]['p_dice']:.3g}, F1 p {res['table3'][part][k]['p_f1']:.3g}"
              for k in VARIANTS if k != REFERENCE]
        lines.append(f"  {'':<16}(" + "; ".join(ps) + ")")
    stuck = [f"{VARIANTS[key][0]} in fold {k}" for k, fold in zip(run, res.get("segmentation_validation", []))
             for key in VARIANTS if did_not_learn(fold.get(key))]
    if stuck:
        lines.append(f"  Did not learn at {res.get('segmentation_iterations')} iterations (no node marked on its own "
                     f"validation patients; its test rows count as all missed): " + ", ".join(stuck)
                     + ". Read the comparison with that in mind, or rerun with more --segmentation-iterations.")
    note = ins_note(res.get("segmentation_sampling", []))
    if note:
        lines.append("  " + note)
    lines.append("")
    t4 = res["table4"]
    lines.append(f"Table 4 style: patient-level prediction on the pooled test predictions of the {len(run)} folds "
                 f"({t4['patients']} patients, {t4['positive']} positive), 95% bootstrap CI; Wilcoxon signed-rank on "
                 "the paired bootstrap balanced accuracies vs 'ours' (* p < 0.05)")
    cols = ("balanced_accuracy", "auc", "accuracy", "sensitivity", "specificity")
    lines.append(f"  {'method':<34}" + "".join(f"{c.replace('_', ' '):>26}" for c in cols))
    for method, title in PATIENT_METHODS.items():
        r = t4["methods"][method]
        mark = "ref" if method == "combined" else _mark(r["p_balanced_accuracy_bootstrap_wilcoxon"])
        cells = []
        for c in cols:
            v, (lo, hi) = r[c]["value"], r[c]["ci95"]
            cells.append(f"{_fmt3(v)}{' ' + mark if c == 'balanced_accuracy' else ''} [{_fmt3(lo)}-{_fmt3(hi)}]")
        lines.append(f"  {title:<34}" + "".join(f"{c:>26}" for c in cells))
    for method, title in PATIENT_METHODS.items():
        r = t4["methods"][method]
        if "delong_vs_combined_p" in r:
            lines.append(f"  DeLong ours (combined) vs {title}: p {r['delong_vs_combined_p']:.3g}")
    lines.append(f"\nTime: {res['seconds'] / 60:.1f} min ({res['machine']})")
    return "\n".join(lines)


def _option(args: Sequence[str], name: str) -> str | None:
    return args[list(args).index(name) + 1] if name in args else None


def with_segmentation_iterations(preset: ProtocolPreset, iterations: int) -> ProtocolPreset:
    """``preset`` with its LN segmentation models trained for ``iterations`` (the plan's estimate of
    that stage scaled to match: loading and validating take the same, the iterations in proportion)."""
    args = list(preset.segmentation_args)
    before = int(args[args.index("--iterations") + 1])
    args[args.index("--iterations") + 1] = str(iterations)
    minutes = {}
    for stage, value in preset.minutes_per_fold.items():
        if stage.startswith("3 LN segmentation models"):
            fixed = 3 * SEGMENTATION_FIXED_MINUTES
            stage, value = f"3 LN segmentation models ({iterations} iterations each)", \
                fixed + (value - fixed) * iterations / before
        minutes[stage] = value
    return replace(preset, segmentation_args=tuple(args), minutes_per_fold=minutes)


def format_plan(preset: ProtocolPreset, out: Path, threads: int | None, seed: int) -> str:
    """What a run of ``preset`` trains, per fold, and how long it should take on 2 CPU cores."""
    n_test = -(-preset.count // preset.folds)
    common = ["--seed", str(seed), "--val-fraction", "0.2"] + (["--threads", str(threads)] if threads else [])
    lines = [f"protocol preset {preset.name}: {preset.count} patients (seeds {preset.seed_start}-"
             f"{preset.seed_start + preset.count - 1}, generator preset {preset.study_preset}), {preset.folds} folds "
             f"(~{preset.count - n_test} training+validation and ~{n_test} test patients each); cache {out}",
             "per fold (FOLD = the round's cohort folder of training patients):"]
    for key, (_, flags) in VARIANTS.items():
        lines.append("  python -m training.train_segmentation " + " ".join(
            ["--dataset", f"FOLD/{LN_DATASET}", "--task", "lymph_nodes", *flags, *preset.segmentation_args, *common]))
    lines.append("  python -m training.train_ln_classifier " + " ".join(
        ["--dataset", f"FOLD/{LN_DATASET}", "--ln-seg-model", "<ours>", *preset.ln_classifier_args, *common]))
    for mode in ("combined", "tumour_only"):
        lines.append("  python -m training.train_patient_classifier " + " ".join(
            ["--data", "FOLD", "--ln-seg-model", "<ours>", "--ln-cls-model", "<ln_cls>", "--mode", mode,
             *preset.patient_args, *common]))
    if preset.minutes_per_fold:
        per_fold = sum(preset.minutes_per_fold.values())
        lines.append("estimate per fold on 2 CPU cores, nothing else running:")
        lines += [f"  {k}: {v:.0f} min" for k, v in preset.minutes_per_fold.items()]
        lines.append(f"  total {per_fold:.0f} min per fold, {preset.folds * per_fold / 60:.1f} h for {preset.folds} "
                     f"folds (plus generating the cohort: 21 min for the full preset's 150 studies)")
    return "\n".join(lines)


def _fmt3(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def run_protocol(preset: ProtocolPreset, out: Path, threads: int | None = None, device: str | None = None,
                 models_folder: Path = ROOT / "models", seed: int = 0,
                 only_folds: Sequence[int] | None = None) -> dict[str, Any]:
    """Train and evaluate every fold (or only the 1-based ``only_folds``: the tables then cover those
    folds' test patients alone and say so) and return every figure and per-patient row."""
    from evaluation.ln_detection import cohort_cache, ensure_cohort
    from lnmet.config import load_settings
    from lnmet.inference import resolve_model_path

    t0 = time.perf_counter()
    seeds = list(range(preset.seed_start, preset.seed_start + preset.count))
    refuse_test_seeds(seeds, "the cross-validation protocol")
    if threads:
        import torch

        torch.set_num_threads(threads)
    settings = load_settings()
    base = cohort_cache(out)
    data, cases = ensure_cohort(base, seeds, preset.study_preset)
    patients = json.loads((data / "patients.json").read_text())
    labels = {c: bool(patients[c]["metastasis_positive"]) for c in cases}
    folds = stratified_folds(labels, preset.folds, seed)
    organ_model = resolve_model_path("organ_seg", models_folder) if preset.organs == "model" else None
    pdac_model = resolve_model_path("pdac_seg", models_folder) if preset.pdac == "model" else None
    root = base / f"cv_{preset.name}_{preset.folds}folds_seed{seed}"
    run = sorted(set(only_folds)) if only_folds else list(range(1, preset.folds + 1))
    fold_rows: list[list[dict[str, Any]]] = []
    validations: list[dict[str, Any]] = []  # per fold run: each LN segmentation model's own validation
    sampling: list[dict[str, Any]] = []  # per fold run: each LN segmentation model's patch counts
    for k, test in enumerate(folds):
        if k + 1 not in run:
            continue
        t = time.perf_counter()
        train = sorted(c for c in cases if c not in set(test))
        print(f"fold {k + 1}/{preset.folds}: {len(train)} training+validation patients, {len(test)} test patients",
              flush=True)
        fold_data = subset_cohort(data, root / f"fold{k}" / "data", train)
        paths = train_fold(fold_data, root / f"fold{k}" / "models", preset, threads, seed, organ_model)
        m = load_fold_models(paths, Path(organ_model) if organ_model else None,
                             Path(pdac_model) if pdac_model else None, device, settings)
        rows = []
        for case in test:
            r = evaluate_test_case(root / f"fold{k}" / "cache", data, case, m, settings)
            r["label"], r["fold"] = labels[case], k
            thresholds = {"combined": float(m["patient_combined"].threshold if settings.patient_threshold is None
                                            else settings.patient_threshold),
                          "tumour_only": float(m["patient_tumour_only"].threshold), "nodes_only": 0.5}
            r["scores"] = {mth: r["patient"][mth] for mth in PATIENT_METHODS}
            r["predicted"] = {mth: bool(r["scores"][mth] >= thresholds[mth]) for mth in PATIENT_METHODS}
            rows.append(r)
        fold_rows.append(rows)
        validations.append(segmentation_validation(paths))
        sampling.append(segmentation_sampling(paths))
        print(f"fold {k + 1}/{preset.folds} done in {time.perf_counter() - t:.0f} s; its test patients:", flush=True)
        print(fold_summary(rows, validations[-1], sampling[-1]), flush=True)
    all_rows = [r for f in fold_rows for r in f]
    y_nodes = [lab for r in all_rows for lab in r["gt_nodes"]["labels"]]
    p_nodes = [p for r in all_rows for p in r["gt_nodes"]["probabilities"]]
    auc_folds = [roc_auc([lab for r in f for lab in r["gt_nodes"]["labels"]],
                         [p for r in f for p in r["gt_nodes"]["probabilities"]]) for f in fold_rows]
    return {"preset": preset.name, "study_preset": preset.study_preset, "seeds": [seeds[0], seeds[-1]],
            "patients": len(cases), "positive": int(sum(labels.values())), "folds": preset.folds,
            "folds_run": run, "fold_cases": folds, "organs": "bundled organ model" if organ_model else "ground truth",
            "pdac": "bundled PDAC model" if pdac_model else "ground truth",
            "table2": {"auc_per_fold": auc_folds,
                       "auc_mean": float(np.nanmean(auc_folds)) if any(np.isfinite(auc_folds)) else float("nan"),
                       "auc_pooled": roc_auc(y_nodes, p_nodes), "nodes": len(y_nodes), "positive": int(sum(y_nodes))},
            "table3": table3(fold_rows), "table4": table4(all_rows, seed), "segmentation_validation": validations,
            "segmentation_sampling": sampling,
            "segmentation_iterations": _option(preset.segmentation_args, "--iterations"),
            "seconds": time.perf_counter() - t0, "machine": f"{os.cpu_count()} CPU cores, torch threads {threads}",
            "patients_rows": all_rows}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--seed-start", type=int, help="first seed of the cohort (default: the preset's)")
    p.add_argument("--count", type=int, help="patients in the cohort (default: the preset's)")
    p.add_argument("--folds", type=int, help="cross-validation folds (default 5)")
    p.add_argument("--organs", choices=["gt", "model"], help="test-time organ labels (default: the preset's)")
    p.add_argument("--pdac", choices=["gt", "model"], help="test-time tumour masks (default: the preset's)")
    p.add_argument("--models", default=str(ROOT / "models"), help="where the bundled organ and PDAC models are")
    p.add_argument("--out", default=str(ROOT / "build" / "protocol"), help="cache of the cohort, models and predictions")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold split and of the trainings")
    p.add_argument("--segmentation-iterations", type=int,
                   help="iterations of each LN segmentation model (default: the preset's; the full preset's 3000 "
                        "fit a 2-core CPU in about 45 min each; a network leaves the all-background plateau only "
                        "after 1000-1500: with a GPU give it more)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device")
    p.add_argument("--log-level", default="INFO",
                   help="of the training commands' logs (INFO, the default, shows their progress; WARNING hides it)")
    p.add_argument("--json", help="also write every figure and per-patient row to this file")
    p.add_argument("--only-fold", type=int, nargs="+", metavar="K",
                   help="run (or read from the cache) only these folds, 1-based; the tables then cover their test "
                        "patients alone: to read finished folds while a run goes on, or to split a run across "
                        "machines that share --out")
    p.add_argument("--plan", action="store_true", help="print the folds' training commands and the time estimate, "
                                                        "run nothing")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    changes = {k: v for k, v in (("seed_start", args.seed_start), ("count", args.count), ("folds", args.folds),
                                 ("organs", args.organs), ("pdac", args.pdac)) if v is not None}
    preset = replace(preset, **changes)
    if args.segmentation_iterations is not None:
        if args.segmentation_iterations < 1:
            p.error(f"--segmentation-iterations {args.segmentation_iterations}: must be at least 1")
        preset = with_segmentation_iterations(preset, args.segmentation_iterations)
    seeds = range(preset.seed_start, preset.seed_start + preset.count)
    try:
        refuse_test_seeds(seeds, "the cross-validation protocol")
    except TestSeedError as exc:
        p.error(str(exc))
    if preset.count < preset.folds:
        p.error(f"--count {preset.count}: fewer patients than folds ({preset.folds})")
    bad = [k for k in args.only_fold or [] if not 1 <= k <= preset.folds]
    if bad:
        p.error(f"--only-fold {' '.join(map(str, bad))}: folds are numbered 1-{preset.folds}")
    if args.plan:
        print(format_plan(preset, Path(args.out), args.threads, args.seed))
        return 0
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = run_protocol(preset, Path(args.out), args.threads, args.device, Path(args.models), args.seed,
                       args.only_fold)
    print()
    print(format_tables(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
