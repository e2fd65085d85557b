"""How well one property of a lymph node alone tells metastatic from benign nodes (issue 21).

For a generated cohort (rendered at the ``train`` preset, the models' 1.5 mm grid, and exported in
nnU-Net's layout: the identification model's training data) two tables of AUCs for the node label,
over the labelled nodes in the field of view:

- **every generator parameter** of a node, read generically from the study summary's node table
  (``lymph_nodes/<case>.json`` = ``study.json`` ``lymph_nodes``): every number and yes/no field
  (nested ones too, by dotted name), and for a list of axis lengths the smallest/largest and
  middle/largest ratios; ``id``, positions and text fields are left out. New or renamed parameters
  of the generator appear by themselves;
- **every single measurement the identification head receives** (:class:`lnmet.networks.ln_classifier.
  NodeDescriptors`: log volume, axial and 3D axis ratios, mean and SD of each phase inside the node's
  core), computed by the training code's own path (:func:`training.train_ln_classifier.node_samples`,
  ``CropSource``, ``NodeDescriptors.raw``) on the ground-truth node masks, with the crop, spacing and
  normalisation of the LN identification model (default ``models/ln_cls/model.ts``).

AUC 1: every positive node above every negative one; 0.5: no information; below 0.5: the property
is lower in positive nodes (``separation`` = max(AUC, 1 - AUC) ranks them). Compare the best single
figure with the identification model's AUC on ground-truth nodes (``evaluation/ln_detection.py``):
what the network adds over a one-line rule.

    python -m evaluation.node_separability --seed 1000 --count 120
    python -m synthetic stats --seed 1000 --count 120      # prints these tables after the cohort's
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.metrics import roc_auc  # noqa: E402

DEFAULT_CACHE = ROOT / "build" / "stats"
PRESET = "train"
LABEL_KEY = "positive"
LEFT_OUT = {"id", LABEL_KEY}
AXES_WORDS = ("axes", "axis", "semi")  # list fields of axis lengths: their ratios are shape parameters
CHUNK = 10  # studies generated between progress lines


# ------------------------------------------------------------------------------------------------
# Generator parameters, generically from the node table
# ------------------------------------------------------------------------------------------------

def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(float(v)):
        return float(v)
    return None


def node_parameters(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric parameters of one node-table row by name (see the module docstring)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = prefix + str(key)
        if not prefix and key in LEFT_OUT:
            continue
        number = _number(value)
        if number is not None:
            out[name] = number
        elif isinstance(value, Mapping):
            out.update(node_parameters(value, name + "."))
        elif (isinstance(value, (list, tuple)) and len(value) >= 2 and any(w in str(key).lower() for w in AXES_WORDS)
              and all(_number(v) is not None for v in value)):
            axes = sorted((float(v) for v in value), reverse=True)
            if axes[0] > 0:
                out[f"{name} smallest/largest"] = axes[-1] / axes[0]
                if len(axes) >= 3:
                    out[f"{name} middle/largest"] = axes[1] / axes[0]
    return out


def text_fields(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of the rows' text (categorical) fields, which get no AUC."""
    return sorted({str(k) for r in rows for k, v in r.items() if isinstance(v, str)})


def auc_table(labels: Sequence[bool], features: Sequence[Mapping[str, float]]) -> list[dict[str, Any]]:
    """AUC of every feature for the label, over the items that have it; sorted by separation."""
    y = np.asarray(labels, bool)
    names = sorted({k for f in features for k in f})
    out = []
    for name in names:
        keep = np.array([name in f for f in features])
        values = np.array([f.get(name, np.nan) for f in features], float)[keep]
        yy = y[keep]
        row: dict[str, Any] = {"name": name, "nodes": int(keep.sum()), "positive": int(yy.sum())}
        if values.size == 0 or np.ptp(values) == 0:
            row.update(auc=float("nan"), separation=float("nan"), constant=True)
        else:
            auc = roc_auc(yy, values)
            row.update(auc=auc, separation=max(auc, 1 - auc) if math.isfinite(auc) else float("nan"), constant=False)
        out.append(row)
    return sorted(out, key=lambda r: (-(r["separation"] if math.isfinite(r["separation"]) else -1), r["name"]))


# ------------------------------------------------------------------------------------------------
# What the identification head receives
# ------------------------------------------------------------------------------------------------

def descriptor_names(channel_names: Sequence[str]) -> list[str]:
    """Names of :meth:`NodeDescriptors.raw`'s columns, in its order (the 3 shape measurements, then
    the mean of every channel, then the SD of every channel, inside the node's core)."""
    from lnmet.networks.ln_classifier import DESCRIPTOR_NAMES

    return (list(DESCRIPTOR_NAMES) + [f"core mean {c} (normalised HU)" for c in channel_names]
            + [f"core SD {c} (normalised HU)" for c in channel_names])


def head_measurements(dataset: Path, cases: Sequence[str], identifier: Any
                      ) -> tuple[list[str], list[int], list[dict[str, float]], list[bool]]:
    """The identification head's node measurements of every ground-truth node of ``cases`` (the LN
    dataset folder ``dataset``), through the training code's own path. Returns, per node, its case,
    its id, its measurements by name and its label."""
    import torch

    from lnmet.config import load_settings
    from lnmet.networks.ln_classifier import NodeDescriptors
    from training.datasets import TASKS, load_case, read_dataset_json
    from training.train_ln_classifier import CropSource, node_samples, node_table

    spacing_xyz = identifier.spacing_mm
    crop_zyx = identifier.crop_zyx
    names = descriptor_names(identifier.channel_names)
    descriptors = NodeDescriptors(len(identifier.channel_names), spacing_xyz[::-1])
    source = CropSource(crop_zyx, identifier.metadata["normalization"], use_attention=False)
    meta = read_dataset_json(dataset)
    attention = load_settings().attention
    case_of, ids, values, labels = [], [], [], []
    for i, case in enumerate(cases):
        data = load_case(dataset, case, meta, TASKS["lymph_nodes"], spacing_xyz, attention)
        present = sorted(int(v) for v in np.unique(data.instances) if v) if data.instances is not None else []
        samples = node_samples(data, node_table(dataset, case), i, crop_zyx)
        if not samples:
            continue
        x, _, m = source.crops(samples)
        with torch.no_grad():
            raw = descriptors.raw(x, m).numpy()
        for node_id, s, r in zip(present, samples, raw):
            case_of.append(case)
            ids.append(node_id)
            values.append(dict(zip(names, (float(v) for v in r))))
            labels.append(bool(s.positive))
    return case_of, ids, values, labels


# ------------------------------------------------------------------------------------------------
# The cohort and both tables
# ------------------------------------------------------------------------------------------------

def ensure_rendered_cohort(cache: str | Path, seeds: Sequence[int], workers: int = 2,
                           preset: str = PRESET) -> tuple[Path, list[str]]:
    """The cohort exported in nnU-Net's layout under ``cache``/generator_<version>/data_<preset>
    (studies already there are kept), with a progress line every few studies."""
    from evaluation.ln_detection import cohort_cache, ensure_cohort

    base = cohort_cache(cache)
    seeds = list(seeds)
    t = time.perf_counter()
    for k in range(0, len(seeds), CHUNK):
        data, _ = ensure_cohort(base, seeds[k:k + CHUNK], preset, workers=workers)
        done = min(k + CHUNK, len(seeds))
        if done < len(seeds):
            print(f"  {done}/{len(seeds)} studies ready ({time.perf_counter() - t:.0f} s)", flush=True)
    return ensure_cohort(base, seeds, preset, workers=workers)


def node_separability(seeds: Iterable[int], cache: str | Path = DEFAULT_CACHE, workers: int = 2,
                      ln_cls_model: str | Path | None = None, preset: str = PRESET) -> dict[str, Any]:
    """Both AUC tables for the cohort ``seeds`` (see the module docstring)."""
    from lnmet.inference import resolve_model_path
    from lnmet.networks.ln_classifier import LNIdentifier

    seeds = list(seeds)
    model_path = Path(ln_cls_model) if ln_cls_model else resolve_model_path("ln_cls", ROOT / "models")
    identifier = LNIdentifier.load(model_path, "cpu")
    data, cases = ensure_rendered_cohort(cache, seeds, workers, preset)
    dataset = data / "Dataset502_PancreasLymphNodes"
    print(f"  measuring the nodes of {len(cases)} studies as the identification head sees them ...", flush=True)
    case_of, ids, measured, labels = head_measurements(dataset, cases, identifier)
    tables = {c: {int(r["id"]): r for r in json.loads((dataset / "lymph_nodes" / f"{c}.json").read_text())}
              for c in cases}
    rows = [tables[c][i] for c, i in zip(case_of, ids)]
    for row, label in zip(rows, labels):
        if bool(row.get(LABEL_KEY)) != label:
            raise ValueError(f"node table and instance map disagree on a node's class ({dataset})")
    return {"seeds": [seeds[0], seeds[-1]], "studies": len(cases), "preset": preset, "nodes": len(rows),
            "positive": int(sum(labels)), "model": f"{identifier.metadata.get('name')} "
                                                  f"{identifier.metadata.get('version')} ({model_path})",
            "crop_zyx": list(identifier.crop_zyx), "spacing_mm": list(identifier.spacing_mm),
            "generator_parameters": auc_table(labels, [node_parameters(r) for r in rows]),
            "text_fields": text_fields(rows),
            "head_measurements": auc_table(labels, measured)}


def format_separability(res: dict[str, Any]) -> str:
    def table(title: str, rows: list[dict[str, Any]]) -> list[str]:
        w = max([len(r["name"]) for r in rows] + [20])
        lines = [title, f"  {'':<{w}}  {'AUC':>6}  {'separation':>10}  {'nodes':>6}"]
        for r in rows:
            if r["constant"]:
                lines.append(f"  {r['name']:<{w}}  {'(the same in every node)':>26}")
                continue
            note = "  lower in positive nodes" if r["auc"] < 0.5 else ""
            lines.append(f"  {r['name']:<{w}}  {r['auc']:>6.3f}  {r['separation']:>10.3f}  {r['nodes']:>6d}{note}")
        return lines

    head = (f"Node separability: {res['nodes']} labelled nodes in the field of view ({res['positive']} positive) of "
            f"{res['studies']} generated studies (seeds {res['seeds'][0]}-{res['seeds'][1]}, preset {res['preset']}); "
            "AUC of one property alone for the node label (0.5: no information)")
    lines = [head]
    lines += table("generator parameters (the study summary's node table):", res["generator_parameters"])
    if res["text_fields"]:
        lines.append(f"  (text fields, no AUC: {', '.join(res['text_fields'])})")
    lines += table(f"measurements the identification head receives (ground-truth node masks; crop "
                   f"{res['crop_zyx'][::-1]} voxels at {res['spacing_mm']} mm and normalisation of {res['model']}):",
                   res["head_measurements"])
    for key, what in (("generator_parameters", "generator parameter"), ("head_measurements", "head measurement")):
        best = next((r for r in res[key] if not r["constant"]), None)
        if best:
            lines.append(f"best single {what}: {best['name']}, separation {best['separation']:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1000, help="first seed of the cohort")
    p.add_argument("--count", type=int, default=120)
    p.add_argument("--workers", type=int, default=2, help="processes generating the studies")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the rendered cohort is kept (per generator version)")
    p.add_argument("--ln-cls-model", help="identification model whose crop and normalisation are used "
                                          "(default: the bundled models/ln_cls/model.ts)")
    p.add_argument("--json", help="also write the tables to this file")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    res = node_separability(range(args.seed, args.seed + args.count), args.cache, args.workers, args.ln_cls_model)
    print(format_separability(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
