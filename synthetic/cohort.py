"""Cohort statistics of generated patients, to compare with the paper's discovery cohort.

Only the patients are drawn (anatomy, tumour, nodes); no image is rendered, so a cohort of a few
hundred takes minutes. Node volumes and tumour diameters are measured on fine local grids.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterable

import numpy as np

from lnmet.labels import ANATOMY_LABELS as L
from synthetic.grid import Grid
from synthetic.study import _max_diameter, sample_patient

# Reference values: Zheng et al. IJCV 2024, Table 1 and section 4.1.1 (discovery dataset).
PAPER = {
    "positive_patient_fraction": 351 / 749,
    "lns_per_patient": 2467 / 749,
    "positive_lns_per_positive_patient": 476 / 351,
    "negative_lns_per_positive_patient": 322 / 351,
    "negative_lns_per_negative_patient": 1669 / 398,
    "positive_ln_volume_mm3": (665.0, 210.0, 804.0),
    "negative_ln_volume_mm3": (300.0, 106.0, 377.0),
    "tumour_diameter_mm": (30.0, 25.0, 41.0),
    "head_uncinate_fraction": 475 / 749,
}


def _node_volume(anatomy, tumour, node, spacing: float = 0.5) -> float:
    """The node's painted volume (it only replaces fat), on a fine local grid."""
    lo, hi = node.shape.bbox(1.0)
    g = Grid.centred(tuple(int(np.ceil((h - l) / spacing)) + 1 for l, h in zip(lo, hi)), (spacing,) * 3,
                     tuple((l + h) / 2 for l, h in zip(lo, hi)))
    labels = anatomy.render(g)
    tumour.paint(g, labels)
    x, y, z = g.coords(g.full)
    inside = (node.shape.level(x, y, z) <= 1.0) & (labels == L["body_fat"])
    return float(inside.sum() * spacing ** 3)


def patient_record(seed: int) -> dict[str, Any]:
    """What the statistics need of one patient."""
    p = sample_patient(seed)
    les = p.lesions
    nodes = [{"positive": n.positive, "volume_mm3": _node_volume(p.anatomy, les.tumour, n),
              "station": n.station, "nearest": n.nearest_structure, "distance_mm": n.distance_mm,
              "max_distance_mm": n.max_distance_mm, "in_range_fraction": n.in_range_fraction,
              "short_long_ratio": float(np.sort(n.shape.semi_axes)[1] / n.shape.semi_axes.max())}
             for n in les.nodes]
    return {"seed": seed, "positive": les.metastasis_positive, "location": les.tumour.location,
            "tumour_diameter_mm": _max_diameter(les.tumour), "nodes": nodes,
            "distractors": len(les.distractors)}


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def cohort_statistics(seeds: Iterable[int], workers: int = 1) -> dict[str, Any]:
    seeds = list(seeds)
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            records = list(ex.map(patient_record, seeds, chunksize=4))
    else:
        records = [patient_record(s) for s in seeds]
    return summarise(records)


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    pos_pat = [r for r in records if r["positive"]]
    neg_pat = [r for r in records if not r["positive"]]
    nodes = [n for r in records for n in r["nodes"]]
    vol_pos = np.array([n["volume_mm3"] for n in nodes if n["positive"]])
    vol_neg = np.array([n["volume_mm3"] for n in nodes if not n["positive"]])
    diam = np.array([r["tumour_diameter_mm"] for r in records])
    largest = np.array([max([n["volume_mm3"] for n in r["nodes"]], default=0.0) for r in records])
    labels = np.array([r["positive"] for r in records])

    def q(a):
        return tuple(float(v) for v in np.percentile(a, [50, 25, 75])) if len(a) else (float("nan"),) * 3

    return {
        "patients": len(records),
        "positive_patient_fraction": len(pos_pat) / max(len(records), 1),
        "lns_per_patient": len(nodes) / max(len(records), 1),
        "positive_lns_per_positive_patient": sum(n["positive"] for r in pos_pat for n in r["nodes"]) / max(len(pos_pat), 1),
        "negative_lns_per_positive_patient": sum(not n["positive"] for r in pos_pat for n in r["nodes"]) / max(len(pos_pat), 1),
        "negative_lns_per_negative_patient": sum(len(r["nodes"]) for r in neg_pat) / max(len(neg_pat), 1),
        "positive_lns_in_negative_patients": sum(n["positive"] for r in neg_pat for n in r["nodes"]),
        "positive_ln_volume_mm3": q(vol_pos),
        "negative_ln_volume_mm3": q(vol_neg),
        "tumour_diameter_mm": q(diam),
        "head_uncinate_fraction": float(np.mean([r["location"] in ("head", "uncinate") for r in records])),
        "ln_volume_auc": _auc(vol_pos, vol_neg),
        "ln_roundness_auc": _auc(np.array([n["short_long_ratio"] for n in nodes if n["positive"]]),
                                 np.array([n["short_long_ratio"] for n in nodes if not n["positive"]])),
        "patient_tumour_diameter_auc": _auc(diam[labels], diam[~labels]),
        "patient_largest_ln_auc": _auc(largest[labels], largest[~labels]),
        "ln_all_voxels_in_table7_range_fraction": float(np.mean([n["in_range_fraction"] >= 0.999 for n in nodes])) if nodes else float("nan"),
        "ln_voxels_in_table7_range_fraction": float(np.mean([n["in_range_fraction"] for n in nodes])) if nodes else float("nan"),
        "ln_gap_mm": q(np.array([n["distance_mm"] for n in nodes])),
        "ln_nearest_is_station_fraction": float(np.mean([n["nearest"] == n["station"] for n in nodes])) if nodes else float("nan"),
        "stations": {k: sum(n["station"] == k for n in nodes) for k in sorted({n["station"] for n in nodes})},
        "distractors_per_patient": float(np.mean([r["distractors"] for r in records])) if records else float("nan"),
    }


def format_statistics(s: dict[str, Any]) -> str:
    def iqr(v):
        return f"{v[0]:.0f} [{v[1]:.0f}-{v[2]:.0f}]"

    rows = [
        ("patients", f"{s['patients']}", "749"),
        ("metastasis-positive patients", f"{100 * s['positive_patient_fraction']:.1f}%", f"{100 * PAPER['positive_patient_fraction']:.1f}%"),
        ("labelled LNs per patient", f"{s['lns_per_patient']:.2f}", f"{PAPER['lns_per_patient']:.2f}"),
        ("positive LNs per positive patient", f"{s['positive_lns_per_positive_patient']:.2f}", f"{PAPER['positive_lns_per_positive_patient']:.2f}"),
        ("negative LNs per positive patient", f"{s['negative_lns_per_positive_patient']:.2f}", f"{PAPER['negative_lns_per_positive_patient']:.2f}"),
        ("negative LNs per negative patient", f"{s['negative_lns_per_negative_patient']:.2f}", f"{PAPER['negative_lns_per_negative_patient']:.2f}"),
        ("positive LNs in negative patients", f"{s['positive_lns_in_negative_patients']}", "0"),
        ("positive LN volume, mm^3 median [IQR]", iqr(s["positive_ln_volume_mm3"]), iqr(PAPER["positive_ln_volume_mm3"])),
        ("negative LN volume, mm^3 median [IQR]", iqr(s["negative_ln_volume_mm3"]), iqr(PAPER["negative_ln_volume_mm3"])),
        ("tumour diameter, mm median [IQR]", iqr(s["tumour_diameter_mm"]), iqr(PAPER["tumour_diameter_mm"])),
        ("tumour in head/uncinate", f"{100 * s['head_uncinate_fraction']:.1f}%", f"{100 * PAPER['head_uncinate_fraction']:.1f}%"),
        ("AUC of LN volume, positive vs negative LNs", f"{s['ln_volume_auc']:.3f}", "< 1 (overlap)"),
        ("AUC of LN roundness (short/long axis)", f"{s['ln_roundness_auc']:.3f}", "< 1 (overlap)"),
        ("AUC of tumour diameter for the patient label", f"{s['patient_tumour_diameter_auc']:.3f}", "< 1 (overlap)"),
        ("AUC of largest LN volume (any class) for the patient label", f"{s['patient_largest_ln_auc']:.3f}", "< 1 (overlap)"),
        ("LNs with all voxels in the Table 7 range", f"{100 * s['ln_all_voxels_in_table7_range_fraction']:.1f}%", "most"),
        ("LN voxels in the Table 7 range", f"{100 * s['ln_voxels_in_table7_range_fraction']:.1f}%", "most"),
        ("LN gap to nearest structure, mm median [IQR]", f"{s['ln_gap_mm'][0]:.1f} [{s['ln_gap_mm'][1]:.1f}-{s['ln_gap_mm'][2]:.1f}]", "small, right-skewed"),
        ("LNs whose nearest structure is their station", f"{100 * s['ln_nearest_is_station_fraction']:.1f}%", ""),
        ("LN-like distractor nodules per patient", f"{s['distractors_per_patient']:.2f}", "(unlabelled)"),
    ]
    w = max(len(r[0]) for r in rows)
    lines = [f"{'statistic':<{w}}  {'generated':>16}  {'paper (discovery)':>18}", "-" * (w + 38)]
    lines += [f"{a:<{w}}  {b:>16}  {c:>18}" for a, b, c in rows]
    lines.append("stations: " + ", ".join(f"{k} {v}" for k, v in s["stations"].items()))
    return "\n".join(lines)
