"""Network and training presets of the segmentation models.

``paper`` is the configuration of Zheng et al. (IJCV 2024, Appendix D and section 4.1.2): 6 encoder
blocks of 32 channels doubling per stage (capped at 320 as nnU-Net does), 0.68 x 0.68 x 0.80 mm,
patches 160 x 192 x 80 voxels [x, y, z], SGD with Nesterov momentum and poly learning rate as
nnU-Net. ``small`` is the CPU configuration of the bundled models: 1.5 mm isotropic, 5 encoder
levels (8 ... 128 channels), patches 80 x 80 x 48 [x, y, z], AdamW at lr 1e-2 with poly decay (it
learns far faster than SGD in short CPU budgets, see the note below). Every value can be overridden on the
command line of :mod:`training.train_segmentation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from training.randomisation import RandomisationSettings

# Paper Eq. 4: Tversky weights of false positives (alpha) and false negatives (beta).
PAPER_TVERSKY_ALPHA = 0.5
PAPER_TVERSKY_BETA = 1.5


@dataclass(frozen=True)
class Preset:
    """Everything that defines a segmentation training run apart from the data."""

    name: str
    spacing_mm: tuple[float, float, float]  # x, y, z
    patch_size: tuple[int, int, int]  # x, y, z (voxels)
    filters: tuple[int, ...]
    strides: tuple[tuple[int, int, int], ...]  # per encoder level, (z, y, x)
    batch_size: int
    iterations: int
    optimizer: str  # "sgd" (nnU-Net: Nesterov, momentum 0.99, poly LR) or "adamw"
    learning_rate: float
    weight_decay: float
    momentum: float = 0.99
    foreground_fraction: float = 0.33  # nnU-Net's oversample_foreground_percent
    augmentation: bool = True
    single_phase_fraction: float = 0.0  # share of patches with the venous image in the arterial channel
    overlap: float = 0.25  # sliding-window overlap at inference (0.5 gave the same Dice, 2.3x slower)
    # domain randomisation of the patches (training.randomisation); None switches it off
    randomisation: RandomisationSettings | None = field(default_factory=RandomisationSettings)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_zyx(self) -> tuple[int, int, int]:
        return (self.patch_size[2], self.patch_size[1], self.patch_size[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.spacing_mm[2], self.spacing_mm[1], self.spacing_mm[0])

    def check(self) -> None:
        """Raise ValueError when the patch is not divisible by the network's total stride."""
        if len(self.filters) != len(self.strides):
            raise ValueError(f"preset {self.name}: filters and strides need one entry per level")
        total = [1, 1, 1]
        for s in self.strides:
            total = [t * int(v) for t, v in zip(total, s)]
        for axis, (p, t) in enumerate(zip(self.patch_zyx, total)):
            if p % t:
                raise ValueError(f"preset {self.name}: patch size {p} along {'zyx'[axis]} is not divisible by the "
                                 f"network's total stride {t}")


def auto_strides(patch_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float], levels: int,
                 min_feature: int = 4) -> tuple[tuple[int, int, int], ...]:
    """nnU-Net-like planning of the down-sampling: halve an axis at a level while its feature size
    stays >= ``min_feature`` and its spacing is not more than twice the finest one."""
    size = list(patch_zyx)
    spacing = list(spacing_zyx)
    strides = [(1, 1, 1)]
    for _ in range(levels - 1):
        finest = min(spacing)
        s = tuple(2 if (size[a] % 2 == 0 and size[a] // 2 >= min_feature and spacing[a] <= 2 * finest) else 1
                  for a in range(3))
        strides.append(s)  # type: ignore[arg-type]
        size = [n // f for n, f in zip(size, s)]
        spacing = [sp * f for sp, f in zip(spacing, s)]
    return tuple(strides)


PAPER = Preset(
    name="paper",
    spacing_mm=(0.68, 0.68, 0.80),
    patch_size=(160, 192, 80),
    filters=(32, 64, 128, 256, 320, 320),
    strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
    batch_size=2,
    iterations=250_000,  # nnU-Net: 1000 epochs x 250 iterations
    optimizer="sgd",
    learning_rate=0.01,
    weight_decay=3e-5,
)

SMALL = Preset(
    name="small",
    spacing_mm=(1.5, 1.5, 1.5),
    patch_size=(80, 80, 48),
    filters=(8, 16, 32, 64, 128),
    strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
    batch_size=2,
    iterations=1500,
    optimizer="adamw",  # in short CPU budgets AdamW learns far faster than SGD (note below)
    learning_rate=1e-2,
    weight_decay=1e-4,
    single_phase_fraction=0.1,
)

# Why the small preset uses AdamW: on the tiny generated organ data (filters 8-64, batch 2, no
# augmentation) AdamW at lr 1e-2 (poly decay) reached Dice 0.8-0.97 on the large organs of the
# training patches after 400 iterations, nnU-Net's SGD (lr 1e-2, Nesterov momentum 0.99) was still
# at ~0 except the stomach (0.4), and AdamW at 3e-3 learnt much slower too. The paper preset keeps
# nnU-Net's SGD for long runs.
PRESETS: dict[str, Preset] = {p.name: p for p in (PAPER, SMALL)}

# Per task: arbitrary tissue HU (SynthSeg-like) only for the organs. A node is soft tissue in fat and
# a PDAC is hypo-enhancing against its pancreas: random HU would teach those models that a fat-dense
# blob can be a node or that a tumour may be brighter than the gland.
TASK_RANDOMISATION = {
    "organs": RandomisationSettings(probability=0.75, random_hu_probability=0.15, no_contrast_probability=0.2),
    "lymph_nodes": RandomisationSettings(probability=0.5, random_hu_probability=0.0),
    # A PDAC is only visible on contrast-enhanced CT (isodense without contrast): no non-contrast
    # patches, and contrast at least half the usual strength, so the label always marks a visible lesion.
    "pdac": RandomisationSettings(probability=0.6, random_hu_probability=0.0, no_contrast_probability=0.0,
                                  strength_range=(0.5, 1.4), organ_shift_hu=8.0),
}


def get_preset(name: str, **overrides: Any) -> Preset:
    """A preset by name, with command-line overrides (None values ignored); strides are re-planned
    when the patch size or depth changes and no strides are given."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    changes = {k: v for k, v in overrides.items() if v is not None}
    if ("patch_size" in changes or "filters" in changes or "spacing_mm" in changes) and "strides" not in changes:
        p = replace(base, **changes)
        changes["strides"] = auto_strides(p.patch_zyx, p.spacing_zyx, len(p.filters))
    preset = replace(base, **changes)
    preset.check()
    return preset
