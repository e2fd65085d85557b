"""Evaluation metrics with the definitions of Zheng et al. (IJCV 2024).

- Segmentation: voxel Dice.
- LN detection: a ground-truth (GT) instance is *detected* when its IoU with a predicted instance is
  at least 0.3; a predicted instance is a true positive when it reaches that IoU with some GT
  instance. Recall = detected GT / GT, precision = true-positive predictions / predictions.
- Classification: AUC (Mann-Whitney U, ties count one half), sensitivity, specificity, accuracy,
  balanced accuracy, the decision threshold with the best balanced accuracy (as the paper chooses
  it on validation data), percentile bootstrap confidence intervals (seeded), and DeLong's test for
  two correlated AUCs (fast algorithm of Sun & Xu, 2014).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

from lnmet.labels import ORGAN_CLASSES

ArrayLike = Sequence[float] | np.ndarray


# ------------------------------------------------------------------------------------------------
# Segmentation and detection
# ------------------------------------------------------------------------------------------------

def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Voxel Dice of two binary masks (non-zero = foreground); 1.0 when both are empty."""
    p = np.asarray(pred) != 0
    t = np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"dice: masks differ in shape, {p.shape} vs {t.shape}")
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / denom


@dataclass
class InstanceMatch:
    """Matching of predicted to GT instances (IoU >= threshold)."""

    gt_ids: np.ndarray  # GT instance ids present
    pred_ids: np.ndarray  # predicted instance ids present
    iou: np.ndarray  # [len(gt_ids), len(pred_ids)] IoU matrix
    iou_threshold: float
    gt_detected: np.ndarray = field(init=False)  # bool per GT id
    pred_matched: np.ndarray = field(init=False)  # bool per predicted id
    pred_to_gt: dict[int, int] = field(init=False)  # predicted id -> GT id of highest IoU (>= thr)

    def __post_init__(self) -> None:
        ok = self.iou >= self.iou_threshold
        self.gt_detected = ok.any(axis=1) if ok.size else np.zeros(len(self.gt_ids), bool)
        self.pred_matched = ok.any(axis=0) if ok.size else np.zeros(len(self.pred_ids), bool)
        self.pred_to_gt = {}
        for j, pid in enumerate(self.pred_ids):
            if self.pred_matched[j]:
                self.pred_to_gt[int(pid)] = int(self.gt_ids[int(np.argmax(self.iou[:, j]))])

    @property
    def n_gt(self) -> int:
        return len(self.gt_ids)

    @property
    def n_pred(self) -> int:
        return len(self.pred_ids)

    @property
    def n_detected(self) -> int:
        return int(self.gt_detected.sum())

    @property
    def n_true_positive_pred(self) -> int:
        return int(self.pred_matched.sum())


def match_instances(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.3) -> InstanceMatch:
    """IoU of every (GT, predicted) instance pair of two instance maps (0 = background)."""
    p = np.asarray(pred).astype(np.int64, copy=False).ravel()
    t = np.asarray(truth).astype(np.int64, copy=False).ravel()
    if p.shape != t.shape:
        raise ValueError(f"match_instances: maps differ in shape, {np.shape(pred)} vs {np.shape(truth)}")
    gt_ids, gt_counts = np.unique(t[t > 0], return_counts=True)
    pred_ids, pred_counts = np.unique(p[p > 0], return_counts=True)
    iou = np.zeros((len(gt_ids), len(pred_ids)), dtype=np.float64)
    both = (p > 0) & (t > 0)
    if both.any() and len(gt_ids) and len(pred_ids):
        gi = np.searchsorted(gt_ids, t[both])
        pj = np.searchsorted(pred_ids, p[both])
        inter = np.zeros_like(iou)
        np.add.at(inter, (gi, pj), 1.0)
        union = gt_counts[:, None] + pred_counts[None, :] - inter
        iou = inter / union
    return InstanceMatch(gt_ids=gt_ids, pred_ids=pred_ids, iou=iou, iou_threshold=iou_threshold)


def dice_per_class(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Voxel Dice of every organ/vessel class of two label maps (lnmet.labels keys); NaN for a class
    absent from both (not 1.0, as :func:`dice` gives, so that it does not lift a mean)."""
    out = {}
    for c in ORGAN_CLASSES:
        x, y = pred == c.label, truth == c.label
        denom = int(x.sum()) + int(y.sum())
        out[c.key] = float("nan") if denom == 0 else 2.0 * float(np.logical_and(x, y).sum()) / denom
    return out


def detection_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """One study's node detection counts (:func:`match_instances`), voxel overlap, and the volume of
    every detected predicted instance over its ground-truth node's (``volume_ratios``); ``match``
    keeps the :class:`InstanceMatch`."""
    m = match_instances(pred, truth)
    pred_sizes = np.bincount(pred.ravel())
    gt_sizes = np.bincount(truth.ravel())
    ratios = [float(pred_sizes[p] / gt_sizes[g]) for p, g in sorted(m.pred_to_gt.items())]
    return {"gt": m.n_gt, "detected": m.n_detected, "pred": m.n_pred, "true_positive_pred": m.n_true_positive_pred,
            "dice": dice(pred > 0, truth > 0), "inter": int(np.logical_and(pred > 0, truth > 0).sum()),
            "pred_voxels": int((pred > 0).sum()), "gt_voxels": int((truth > 0).sum()), "volume_ratios": ratios,
            "match": m}


def detection_scores(n_gt: int, n_detected: int, n_pred: int, n_true_positive_pred: int) -> dict[str, float]:
    """Recall, precision and F1 from (pooled) counts; NaN where a denominator is zero."""
    recall = n_detected / n_gt if n_gt else float("nan")
    precision = n_true_positive_pred / n_pred if n_pred else float("nan")
    if np.isfinite(recall) and np.isfinite(precision) and recall + precision > 0:
        f1 = 2 * recall * precision / (recall + precision)
    else:
        f1 = float("nan") if not (np.isfinite(recall) and np.isfinite(precision)) else 0.0
    return {"recall": recall, "precision": precision, "f1": f1}


# ------------------------------------------------------------------------------------------------
# Binary classification
# ------------------------------------------------------------------------------------------------

def _labels_scores(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    return y, s


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve = Mann-Whitney U / (n_pos n_neg), ties counting 1/2.
    NaN when only one class is present."""
    y, s = _labels_scores(y_true, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)  # midranks handle ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Sensitivity, specificity, accuracy, balanced accuracy (NaN where a class is absent) and
    the confusion counts."""
    y = np.asarray(y_true).astype(bool).ravel()
    p = np.asarray(y_pred).astype(bool).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.size} vs {p.size}")
    tp = int((y & p).sum())
    tn = int((~y & ~p).sum())
    fp = int((~y & p).sum())
    fn = int((y & ~p).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    acc = (tp + tn) / y.size if y.size else float("nan")
    bacc = (sens + spec) / 2.0
    return {"sensitivity": sens, "specificity": spec, "accuracy": acc, "balanced_accuracy": bacc,
            "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def best_threshold(y_true: ArrayLike, scores: ArrayLike) -> float:
    """The threshold t (positive when score >= t) with the best balanced accuracy.

    Candidates are the midpoints between consecutive distinct scores (plus one below the lowest
    and one above the highest), so that the cut does not sit on a training score. Among equally
    good cuts the one nearest the median of the best cuts is chosen, a stable choice.
    """
    y, s = _labels_scores(y_true, scores)
    if y.all() or not y.any():
        raise ValueError("best_threshold needs both classes in the labels")
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1e-6 * max(1.0, abs(u[0]))], (u[:-1] + u[1:]) / 2.0,
                            [u[-1] + 1e-6 * max(1.0, abs(u[-1]))]])
    n_pos, n_neg = y.sum(), (~y).sum()
    pred = s[None, :] >= cands[:, None]
    sens = (pred & y).sum(1) / n_pos
    spec = (~pred & ~y).sum(1) / n_neg
    bacc = (sens + spec) / 2.0
    best = np.flatnonzero(np.isclose(bacc, bacc.max(), rtol=0, atol=1e-12))
    return float(cands[best[len(best) // 2]])


def classification_report(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """AUC and the thresholded metrics of :func:`binary_metrics`."""
    y, s = _labels_scores(y_true, scores)
    out = binary_metrics(y, s >= threshold)
    out["auc"] = roc_auc(y, s)
    out["threshold"] = float(threshold)
    return out


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], y_true: ArrayLike,
                 scores: ArrayLike, n_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric(y, scores)`` resampling cases with replacement.
    Resamples where the metric is undefined (NaN, e.g. one class only) are skipped."""
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, y.size, y.size)
        v = metric(y[idx], s[idx])
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def classification_metric_fns(threshold: float) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """AUC and, at ``threshold`` (positive when score >= threshold), accuracy, balanced accuracy,
    sensitivity and specificity, each as ``metric(y, scores)`` (for :func:`bootstrap_ci`)."""
    def at_threshold(key: str) -> Callable[[np.ndarray, np.ndarray], float]:
        return lambda y, s: binary_metrics(y, np.asarray(s) >= threshold)[key]

    return {"auc": roc_auc, "accuracy": at_threshold("accuracy"),
            "balanced_accuracy": at_threshold("balanced_accuracy"),
            "sensitivity": at_threshold("sensitivity"), "specificity": at_threshold("specificity")}


def classification_summary(y_true: ArrayLike, scores: ArrayLike, threshold: float, n_resamples: int = 1000,
                           seed: int = 0) -> dict[str, object]:
    """Every metric of :func:`classification_metric_fns` with its 95% percentile bootstrap CI
    (``n_resamples`` resamples of the cases, seeded): ``{name: {"value", "ci95": [lo, hi]}}``."""
    y, s = np.asarray(y_true).astype(bool).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    out: dict[str, object] = {"threshold": float(threshold)}
    for name, fn in classification_metric_fns(threshold).items():
        lo, hi = bootstrap_ci(fn, y, s, n_resamples=n_resamples, seed=seed)
        out[name] = {"value": float(fn(y, s)), "ci95": [lo, hi]}
    return out


# ------------------------------------------------------------------------------------------------
# DeLong's test
# ------------------------------------------------------------------------------------------------

def _midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties share their mean rank), as in Sun & Xu's fast DeLong."""
    return stats.rankdata(x, method="average")


def delong_components(y_true: ArrayLike, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu 2014): AUCs and the structural components of ``k`` score sets.

    ``scores`` is [k, n]. Returns ``aucs`` [k], ``v10`` [k, m] (one per positive: the fraction of
    negatives it outranks) and ``v01`` [k, n_neg] (one per negative: the fraction of positives
    that outrank it), ties counting 1/2, computed from midranks in O(n log n).
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != y.size:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.shape[1]}")
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both classes")
    pos, neg = s[:, y], s[:, ~y]
    k = s.shape[0]
    aucs = np.empty(k)
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    for r in range(k):
        tx = _midrank(pos[r])
        ty = _midrank(neg[r])
        tz = _midrank(np.concatenate([pos[r], neg[r]]))
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    return aucs, v10, v01


@dataclass
class DeLongResult:
    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    z: float
    p_value: float  # two-sided


def delong_test(y_true: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> DeLongResult:
    """DeLong's test for the difference of two correlated AUCs (same cases, two scores)."""
    y, sa = _labels_scores(y_true, scores_a)
    _, sb = _labels_scores(y_true, scores_b)
    aucs, v10, v01 = delong_components(y, np.vstack([sa, sb]))
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((2, 2))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        z = 0.0 if abs(diff) < 1e-15 else float("inf") * np.sign(diff)
        p = 1.0 if abs(diff) < 1e-15 else 0.0
    else:
        z = diff / np.sqrt(var)
        p = float(2.0 * stats.norm.sf(abs(z)))
    return DeLongResult(auc_a=float(aucs[0]), auc_b=float(aucs[1]), difference=diff, z=float(z), p_value=p)
