"""Draw docs/figures/generated_vs_real.png: generated venous-phase slices beside real CT, at W400/L40.

The real slices come from ../shared/real-ct-validation (a real non-contrast CT, 3 mm; see its
SOURCES.md), at the levels of its pancreas and of its kidneys; the generated ones from held-out
studies (seed 100001 by default, the README's sample) at the same levels relative to the pancreas.
Both are shown in the DICOM patient frame (patient's right on the image's left).

    python scripts/figure_generated_vs_real.py [--seed 100001] [--preset train] [--out docs/figures/generated_vs_real.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluation.real_ct import DEFAULT_DATA, TOTALSEG_LABELS, load_real_ct  # noqa: E402
from lnmet.labels import ORGAN_BY_KEY  # noqa: E402
from synthetic import GENERATOR_VERSION, generate_study  # noqa: E402

WINDOW = (40.0 - 200.0, 40.0 + 200.0)  # W400 / L40


def _slice_at(image: sitk.Image, z_mm: float) -> np.ndarray:
    k = int(round(image.TransformPhysicalPointToContinuousIndex((image.GetOrigin()[0], image.GetOrigin()[1], z_mm))[2]))
    k = min(max(k, 0), image.GetSize()[2] - 1)
    return sitk.GetArrayViewFromImage(image)[k]


def _pancreas_z(labels: sitk.Image, value: int) -> float:
    arr = sitk.GetArrayViewFromImage(labels)
    ks = np.nonzero((arr == value).any(axis=(1, 2)))[0]
    k = int(ks[np.argmax([(arr[i] == value).sum() for i in ks])])
    return labels.TransformIndexToPhysicalPoint((0, 0, k))[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=100001)
    p.add_argument("--preset", default="train")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(ROOT / "docs" / "figures" / "generated_vs_real.png"))
    args = p.parse_args(argv)
    ct, ts = load_real_ct(Path(args.data))
    study = generate_study(args.seed, args.preset)
    real_z = _pancreas_z(ts, TOTALSEG_LABELS["pancreas"])
    gen_z = _pancreas_z(study.organs, ORGAN_BY_KEY["pancreas"].label)
    offsets = (0.0, -30.0)  # the pancreas' largest slice, and 3 cm below it (kidneys, bowel)
    fig, axes = plt.subplots(2, 2, figsize=(10, 9.4))
    for row, dz in enumerate(offsets):
        for col, (img, z, title) in enumerate(((study.venous, gen_z + dz, f"generated (generator {GENERATOR_VERSION}, seed {args.seed}, venous)"),
                                               (ct, real_z + dz, "real CT (non-contrast, TotalSegmentator test volume)"))):
            ax = axes[row, col]
            ax.imshow(np.clip(_slice_at(img, z), *WINDOW), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1],
                      extent=_extent(img), interpolation="bilinear")
            ax.set_title(f"{title}\n{'pancreas level' if dz == 0 else f'{-dz:.0f} mm below it'}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-190, 190)
            ax.set_ylim(190 + _centre_y(img), -190 + _centre_y(img))
    fig.suptitle("W400/L40, same scale (mm); patient's right on the left", fontsize=10)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")
    return 0


def _extent(img: sitk.Image) -> tuple[float, float, float, float]:
    ox, oy, _ = img.GetOrigin()
    sx, sy, _ = img.GetSpacing()
    nx, ny, _ = img.GetSize()
    return (ox - sx / 2, ox + (nx - 0.5) * sx, oy + (ny - 0.5) * sy, oy - sy / 2)


def _centre_y(img: sitk.Image) -> float:
    arr = sitk.GetArrayViewFromImage(img)
    body = arr[arr.shape[0] // 2] > -300
    ys = np.nonzero(body.any(axis=1))[0]
    return img.GetOrigin()[1] + img.GetSpacing()[1] * float(ys.mean()) if ys.size else img.GetOrigin()[1]


if __name__ == "__main__":
    sys.exit(main())
