"""Put the held-out figures of ``evaluation.app_mode --json`` beside the models in the manifest.

Every output of the application says how far its patient-level answer can be trusted
(:mod:`lnmet.held_out`); the figures come from here. This reads the summary that ``python -m
evaluation.app_mode --json FILE`` wrote on held-out seeds (as the app runs: standard studies, the
app's registration and filters) and records, per model, the figures that measure it:

    patient_cls  patient AUC and balanced accuracy of the combined answer, AUC of the nodes-only
                 rule the app falls back to when no tumour is found (95% bootstrap CIs; chance 0.5)
    ln_cls       identification AUC on the ground-truth nodes and on the segmented ones
    ln_seg       node recall, precision, F1 and the median detected/true volume
    pdac_seg     median PDAC Dice and the share of tumours found
    organ_seg    mean Dice over the ten organ and vessel classes, and the lowest class's

Each record names the SHA-256 of the file measured; a model whose file in ``models/`` differs
from the one evaluated is refused (measure it again). Only held-out seeds (100000-149999) count:
a summary on training or validation seeds is refused, since choices were made on those.

    python -m evaluation.app_mode --count 30 --json build/eval/app_mode.json
    python -m evaluation.record_held_out build/eval/app_mode.json [--manifest model_manifest.json]
                                         [--only organ_seg]   # after retraining one model
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.held_out import HeldOutEvidence, HeldOutFigure  # noqa: E402
from lnmet.model_manifest import MANIFEST_NAME, load_manifest  # noqa: E402
from lnmet.seeds import is_test_seed  # noqa: E402

AUC_CHANCE = 0.5


class RecordError(ValueError):
    """The summary cannot be recorded; the message says why."""


def _with_ci(key: str, label: str, metric: dict[str, Any]) -> HeldOutFigure:
    ci = metric.get("ci95")
    value = metric.get("value")
    return HeldOutFigure(key, label, float("nan") if value is None else float(value),
                         (float(ci[0]), float(ci[1])) if ci else None, AUC_CHANCE)


def figures_by_model(summary: dict[str, Any]) -> dict[str, list[HeldOutFigure]]:
    """The figures that measure each bundled model, from ``evaluation.app_mode``'s summary."""
    out: dict[str, list[HeldOutFigure]] = {}
    methods = summary["patients"]["methods"]
    if "combined" in methods:
        out["patient_cls"] = [
            _with_ci("patient_auc_combined", "patient-level AUC", methods["combined"]["auc"]),
            _with_ci("patient_balanced_accuracy_combined", "balanced accuracy", methods["combined"]["balanced_accuracy"])]
        if "nodes_only" in methods:
            out["patient_cls"].append(_with_ci("patient_auc_nodes_only", "AUC of the nodes-only rule",
                                               methods["nodes_only"]["auc"]))
    ident = summary["ln"]["identification"]
    out["ln_cls"] = [
        HeldOutFigure(f"identification_auc_{k}", label, float(ident[k]["auc"]),
                      tuple(float(v) for v in ident[k]["auc_ci95"]) if ident[k].get("auc_ci95") else None, AUC_CHANCE)
        for k, label in (("gt_instances", "node identification AUC (true nodes)"),
                         ("segmented_instances", "node identification AUC (segmented nodes)"))
        if ident[k].get("auc") is not None]
    det = summary["ln"]["detection"]["ln_seg"]
    out["ln_seg"] = [HeldOutFigure(f"node_{k}", f"node {k}", float(det[k])) for k in ("recall", "precision", "f1")]
    if det.get("volume_ratio_quartiles"):
        out["ln_seg"].append(HeldOutFigure("node_volume_ratio_median", "median detected/true node volume",
                                           float(det["volume_ratio_quartiles"][1])))
    pat = summary["patients"]
    out["pdac_seg"] = [HeldOutFigure("pdac_dice_median", "median PDAC Dice", float(pat["pdac_dice_median"])),
                       # found: the region kept overlaps the true tumour (not merely some region kept)
                       HeldOutFigure("pdac_found_share", "share of tumours found",
                                     1.0 - (pat["tumours_missed"] + pat.get("tumours_kept_elsewhere", 0))
                                     / pat["patients"])]
    dice = {k: float(v) for k, v in summary["organs"]["dice"].items() if v is not None and math.isfinite(v)}
    if dice:  # classes absent from every study have no Dice
        lowest = min(dice, key=dice.get)
        out["organ_seg"] = [HeldOutFigure("organ_dice_mean", f"mean organ/vessel Dice ({len(dice)} classes)",
                                          sum(dice.values()) / len(dice)),
                            HeldOutFigure("organ_dice_lowest", f"lowest class Dice ({lowest})", dice[lowest])]
    # a figure that could not be computed (an AUC with one class only) is left out, not recorded as NaN
    kept = {k: [f for f in v if math.isfinite(f.value) and (f.ci95 is None or all(map(math.isfinite, f.ci95)))]
            for k, v in out.items()}
    return {k: v for k, v in kept.items() if v}


def evidence_from_summary(doc: dict[str, Any], manifest: dict[str, dict[str, Any]],
                          only: set[str] | None = None) -> dict[str, HeldOutEvidence]:
    """Per model in the manifest (or in ``only``): its held-out evidence from ``app_mode``'s JSON document.

    Raises :class:`RecordError` when the document has no provenance, was measured on seeds that are
    not all held-out, or on a model file other than the manifest's."""
    prov = doc.get("provenance")
    if not isinstance(prov, dict) or "models" not in prov or "seeds" not in prov:
        raise RecordError("the summary has no provenance (seeds, models): write it with python -m "
                          "evaluation.app_mode --json (this version or later)")
    seeds = [int(s) for s in prov["seeds"]]
    outside = [s for s in seeds if not is_test_seed(s)]
    if not seeds or outside:
        raise RecordError(f"held-out figures come from held-out seeds (100000-149999) only; the summary has "
                          f"{len(outside)} seed(s) outside them (e.g. {outside[:3]})")
    measured = prov["models"]
    figures = figures_by_model(doc["summary"])
    span = f"{min(seeds)}-{max(seeds)}" if max(seeds) - min(seeds) + 1 == len(seeds) else f"{len(seeds)} seeds"
    setting = (f"{len(seeds)} held-out generated studies (seeds {span}, generator {prov['generator']}, "
               f"{prov['preset']} preset) run as the app runs")
    out: dict[str, HeldOutEvidence] = {}
    for name, figs in figures.items():
        if name not in manifest or (only is not None and name not in only):
            continue
        sha = measured.get(name, {}).get("sha256")
        if sha != manifest[name]["sha256"]:
            raise RecordError(f"model '{name}': the summary measured file {str(sha)[:12]}..., the manifest lists "
                              f"{manifest[name]['sha256'][:12]}...; run evaluation.app_mode again with these models")
        out[name] = HeldOutEvidence(sha256=sha, setting=setting, measured=str(prov["measured"]),
                                    command=str(prov["command"]), figures=tuple(figs))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("summary", type=Path, help="the --json file of python -m evaluation.app_mode")
    p.add_argument("--manifest", type=Path, default=ROOT / MANIFEST_NAME)
    p.add_argument("--only", nargs="+", metavar="MODEL",
                   help="record these models only (e.g. the one retrained); the others keep their records")
    args = p.parse_args(argv)
    try:
        doc = json.loads(args.summary.read_text())
        manifest = load_manifest(args.manifest)
        unknown = sorted(set(args.only or ()) - set(manifest))
        if unknown:
            raise RecordError(f"--only {' '.join(unknown)}: not in the manifest (models: {', '.join(sorted(manifest))})")
        evidence = evidence_from_summary(doc, manifest, set(args.only) if args.only else None)
    except (OSError, ValueError, RecordError) as exc:
        print(f"error: {args.summary}: {exc}", file=sys.stderr)
        return 1
    raw = json.loads(args.manifest.read_text())
    for entry in raw["models"]:
        if entry["name"] in evidence:
            entry["held_out"] = evidence[entry["name"]].as_dict()
            print(f"{entry['name']:<12s} {evidence[entry['name']].summary()}")
    args.manifest.write_text(json.dumps(raw, indent=2) + "\n")
    load_manifest(args.manifest)  # what was written reads back
    print(f"wrote {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
