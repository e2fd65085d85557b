"""The quality gate's ``intensity_in_training_range`` on the models' own training cohort.

Each model's ``normalization.clip_hu`` is the 0.5-99.5 percentile range of its training foreground
pooled over all training studies, so 99% of the pooled voxels lie inside it; one study's share can
be much lower (a strong bolus puts its arteries above the organ model's upper clip). The accepted
range of the check is about single studies, so it is read off this script: the check's own
measurement (``lnmet.quality``) on every study of an exported training dataset, with the study's
ground truth standing in for the models' outputs (organ labels, tumour label, the attention map
built from the organ labels). A study the models were trained on is, by definition, inside their
experience; the lowest share among them is how low a scan's share can be without being outside it.

Export the studies as training does (``scripts/train_bundled_models.sh``: preset train, acquisition
randomisation), then run it:

    python -m synthetic export-nnunet --seed 0 --count 40 --preset train --acquisition random \\
        --out build/intensity_ref/nnunet --workers 2
    python -m evaluation.intensity_reference --data build/intensity_ref/nnunet [--json out.json]

Printed: per study the share of each model/channel (the smallest is the check's value), then the
minimum, 5th percentile and median over the studies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.attention import attention_map  # noqa: E402
from lnmet.config import load_settings  # noqa: E402
from lnmet.model_manifest import verify_models  # noqa: E402
from lnmet.quality import GateInputs, _clip_ranges, _Measure, _training_regions  # noqa: E402

ORGANS, TUMOUR = "Dataset501_PancreasOrgans", "Dataset503_PancreasTumour"


def study_shares(data: Path, case: str, models: list, settings) -> dict[str, float]:
    """Share of each model/channel's training region of ``case`` inside its clip range."""
    read = lambda p: sitk.ReadImage(str(p))  # noqa: E731
    arterial = read(data / ORGANS / "imagesTr" / f"{case}_0000.nii.gz")
    venous = read(data / ORGANS / "imagesTr" / f"{case}_0001.nii.gz")
    organs = read(data / ORGANS / "labelsTr" / f"{case}.nii.gz")
    pdac_path = data / TUMOUR / "labelsTr" / f"{case}.nii.gz"
    pdac = sitk.GetArrayFromImage(read(pdac_path)) if pdac_path.is_file() else None
    inputs = GateInputs(venous=sitk.GetArrayFromImage(venous).astype(np.float32),
                        arterial=sitk.GetArrayFromImage(arterial).astype(np.float32),
                        organs=sitk.GetArrayFromImage(organs).astype(np.uint8), grid=venous,
                        scan_length_mm=float(venous.GetSize()[2] * venous.GetSpacing()[2]),
                        attention=sitk.GetArrayFromImage(attention_map(organs, settings.attention)),
                        pdac=pdac, models=models)
    m = _Measure(inputs)
    out = {}
    for model in models:
        region = _training_regions(m, model)
        if region is None or not region.any():
            continue
        for channel, lo, hi in _clip_ranges(model):
            image = inputs.arterial if "arterial" in channel.lower() else inputs.venous
            values = image[region]
            out[f"{model.name} {channel}"] = float(np.mean((values >= lo) & (values <= hi)))
    return out


def summarize(rows: dict[str, dict[str, float]]) -> dict[str, Any]:
    worst = np.array([min(r.values()) for r in rows.values() if r])
    keys = sorted({k for r in rows.values() for k in r})
    per = {k: [r[k] for r in rows.values() if k in r] for k in keys}
    stat = lambda v: {"min": float(np.min(v)), "p5": float(np.percentile(v, 5)), "median": float(np.median(v))}  # noqa: E731
    return {"studies": len(worst), "check_value": stat(worst), "per_channel": {k: stat(v) for k, v in per.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.intensity_reference", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="an export-nnunet folder of training studies")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--json", type=Path, help="also write per-study shares and the summary here")
    args = p.parse_args(argv)
    settings = load_settings()
    models = list(verify_models(args.models, ROOT / "model_manifest.json").values())
    cases = sorted(f.name[: -len("_0001.nii.gz")] for f in (args.data / ORGANS / "imagesTr").glob("*_0001.nii.gz"))
    if not cases:
        p.error(f"{args.data / ORGANS / 'imagesTr'}: no studies")
    rows = {}
    for i, case in enumerate(cases, 1):
        rows[case] = study_shares(args.data, case, models, settings)
        worst = min(rows[case].items(), key=lambda kv: kv[1]) if rows[case] else ("none", float("nan"))
        print(f"[{i}/{len(cases)}] {case}: smallest share {worst[1]:.3f} ({worst[0]})", flush=True)
    s = summarize(rows)
    print(f"\nintensity_in_training_range on {s['studies']} training studies (ground-truth regions):")
    print(f"  check value (smallest share): min {s['check_value']['min']:.3f}, 5th percentile "
          f"{s['check_value']['p5']:.3f}, median {s['check_value']['median']:.3f}")
    for k, v in s["per_channel"].items():
        print(f"  {k:<28} min {v['min']:.3f}  p5 {v['p5']:.3f}  median {v['median']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"studies": rows, "summary": s}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
