"""The paper's cohort statistics from a cohort table and a label file.

``labels.csv``: one row per study, a column ``study_uid`` (the StudyInstanceUID) and a column
``label`` (``1``/``0``, ``positive``/``negative``, ``true``/``false`` or ``yes``/``no``: lymph-node
metastasis present or not). Studies that failed, were not assessable, have no probability or no
label are left out and counted.

- :func:`cohort_statistics`: patient-level AUC and, at the app's decision threshold, balanced
  accuracy, sensitivity and specificity (and accuracy), each with a 95% percentile bootstrap CI over
  the patients (:func:`lnmet.metrics.classification_summary`, 1,000 resamples, seeded);
- :func:`compare_runs`: DeLong's test between the AUCs of two runs on the studies both analysed
  (e.g. two model sets; :func:`lnmet.metrics.delong_test`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from cohort.discovery import CohortInputError
from cohort.table import STATUS_DONE
from lnmet.metrics import classification_summary, delong_test

TRUE_WORDS = {"1", "positive", "pos", "true", "yes", "y", "n1", "n+"}
FALSE_WORDS = {"0", "negative", "neg", "false", "no", "n", "n0", "n-"}
UID_COLUMNS = ("study_uid", "studyinstanceuid", "study_instance_uid")
LABEL_COLUMNS = ("label", "ln_metastasis", "metastasis", "positive")


def read_labels(path: Path) -> dict[str, bool]:
    """``{StudyInstanceUID: metastasis}`` from a label CSV (see the module docstring)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CohortInputError(f"cannot read the labels {path}: {exc.strerror or exc}") from None
    reader = csv.DictReader(line for line in text.splitlines() if line.strip())
    fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
    uid_col = next((fields[c] for c in UID_COLUMNS if c in fields), None)
    label_col = next((fields[c] for c in LABEL_COLUMNS if c in fields), None)
    if uid_col is None or label_col is None:
        raise CohortInputError(f"{path}: expected the columns 'study_uid' and 'label', found {reader.fieldnames}")
    labels: dict[str, bool] = {}
    for n, row in enumerate(reader, start=2):
        uid, value = (row.get(uid_col) or "").strip(), (row.get(label_col) or "").strip().lower()
        if not uid:
            raise CohortInputError(f"{path} line {n}: empty study_uid")
        if value not in TRUE_WORDS | FALSE_WORDS:
            raise CohortInputError(f"{path} line {n}: label {value!r} is not 1/0, positive/negative, true/false or yes/no")
        if uid in labels and labels[uid] != (value in TRUE_WORDS):
            raise CohortInputError(f"{path} line {n}: study {uid} is labelled twice, differently")
        labels[uid] = value in TRUE_WORDS
    if not labels:
        raise CohortInputError(f"{path}: no labelled study")
    return labels


def usable(rows: list[dict[str, Any]], labels: dict[str, bool]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows that enter the statistics, and how many were left out and why."""
    left_out = {"failed": 0, "not assessable": 0, "no probability": 0, "no label": 0}
    keep = []
    for r in rows:
        if r["status"] != STATUS_DONE:
            left_out["failed" if r["status"] == "failed" else "not assessable"] += 1
        elif r.get("patient_probability") is None:
            left_out["no probability"] += 1
        elif r["study_uid"] not in labels:
            left_out["no label"] += 1
        else:
            keep.append(r)
    return keep, left_out


def cohort_statistics(rows: list[dict[str, Any]], labels: dict[str, bool], n_resamples: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """Patient-level AUC, balanced accuracy, sensitivity, specificity with bootstrap CIs."""
    keep, left_out = usable(rows, labels)
    y = np.array([labels[r["study_uid"]] for r in keep], dtype=bool)
    s = np.array([r["patient_probability"] for r in keep], dtype=float)
    thresholds = sorted({float(r["patient_threshold"]) for r in keep})
    out: dict[str, Any] = {"studies": len(rows), "analysed": len(keep), "positive": int(y.sum()),
                           "negative": int((~y).sum()), "left_out": left_out, "labels": len(labels)}
    if len(thresholds) > 1:
        out["note"] = f"studies were decided at different thresholds {thresholds}; the metrics use each study's decision"
    if not keep:
        return out
    # Decisions as the app made them (probability >= the study's threshold): scores 1/0 at threshold 0.5.
    decided = np.array([r["patient_decision"] == "positive" for r in keep], dtype=float)
    summary = classification_summary(y, s, thresholds[0], n_resamples=n_resamples, seed=seed)
    at_decision = classification_summary(y, decided, 0.5, n_resamples=n_resamples, seed=seed)
    out["threshold"] = thresholds[0] if len(thresholds) == 1 else thresholds
    out["auc"] = summary["auc"]
    for key in ("balanced_accuracy", "sensitivity", "specificity", "accuracy"):
        out[key] = at_decision[key]
    return out


def compare_runs(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], labels: dict[str, bool]
                 ) -> dict[str, Any]:
    """DeLong's test of AUC(a) - AUC(b) on the labelled studies both runs analysed."""
    keep_a = {r["study_uid"]: r for r in usable(rows_a, labels)[0]}
    keep_b = {r["study_uid"]: r for r in usable(rows_b, labels)[0]}
    common = sorted(set(keep_a) & set(keep_b))
    out: dict[str, Any] = {"common_studies": len(common), "only_in_a": len(set(keep_a) - set(keep_b)),
                           "only_in_b": len(set(keep_b) - set(keep_a))}
    y = np.array([labels[u] for u in common], dtype=bool)
    if not common or y.all() or not y.any():
        out["note"] = "DeLong's test needs analysed studies of both classes common to the two runs"
        return out
    d = delong_test(y, [keep_a[u]["patient_probability"] for u in common],
                    [keep_b[u]["patient_probability"] for u in common])
    out.update({"positive": int(y.sum()), "negative": int((~y).sum()), "auc_a": d.auc_a, "auc_b": d.auc_b,
                "difference": d.difference, "z": d.z, "p_value": d.p_value})
    return out


def format_statistics(stats: dict[str, Any]) -> list[str]:
    """Lines for people."""
    lines = [f"cohort statistics: {stats['analysed']} of {stats['studies']} studies analysed "
             f"({stats['positive']} positive, {stats['negative']} negative); left out: "
             + ", ".join(f"{v} {k}" for k, v in stats["left_out"].items())]
    if "auc" not in stats:
        return lines + ["  nothing to analyse"]
    thr = stats["threshold"]
    lines.append("  threshold " + (f"{thr:.3f}" if isinstance(thr, float) else ", ".join(f"{t:.3f}" for t in thr)))
    for key, name in (("auc", "AUC"), ("balanced_accuracy", "balanced accuracy"), ("sensitivity", "sensitivity"),
                      ("specificity", "specificity"), ("accuracy", "accuracy")):
        v = stats[key]
        lines.append(f"  {name:<18} {v['value']:.3f}  [95% CI {v['ci95'][0]:.3f}-{v['ci95'][1]:.3f}]")
    if "note" in stats:
        lines.append(f"  note: {stats['note']}")
    return lines
