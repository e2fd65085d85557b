"""Acquisition randomisation for training data: each exported case is "scanned" at its own voxel
size and coverage, then brought to the training grid by the application's own resampling
(:mod:`lnmet.geometry`), exactly as the app treats a real series.

Real abdominal CT comes as 0.6-1 mm pixels with 0.6-5 mm slices, sometimes covering only part of
the upper abdomen. A model trained only on studies rendered directly at its 1.5 mm working grid
never sees the interpolation, noise texture and partial-volume blur of a resampled fine (or thick)
series; on 0.7 mm studies its nodes came out 1.2-1.9x too large (issue 21). Here a third of the
cases are fine (0.6-1.0 mm pixels, 0.6-1.25 mm slices), about a third thick (2-5 mm slices), the rest
at the preset's own grid, and a quarter cover only 90-160 mm of the abdomen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from synthetic.grid import Preset

# Noise of the standard preset (0.70 x 0.70 x 1.0 mm voxels); noise scales as 1/sqrt(voxel volume).
REFERENCE_NOISE_HU = 12.0
REFERENCE_VOXEL_MM3 = 0.703125 * 0.703125 * 1.0


@dataclass(frozen=True)
class Acquisition:
    """How one case is scanned: voxel size, slice thickness and the z-range covered."""

    kind: str  # "preset" | "fine" | "thick"
    in_plane_mm: float
    slice_mm: float
    z_range_mm: tuple[float, float] | None  # covered range (relative to the preset's centre), None = all

    def preset(self, base: Preset) -> Preset:
        """The acquisition as a generator preset with the base preset's field of view."""
        if self.kind == "preset" and self.z_range_mm is None:
            return base
        fov = [n * s for n, s in zip(base.size, base.spacing)]
        centre = list(base.centre)
        if self.z_range_mm is not None:
            lo, hi = self.z_range_mm
            fov[2] = hi - lo
            centre[2] = base.centre[2] + (lo + hi) / 2
        spacing = (base.spacing if self.kind == "preset"
                   else (self.in_plane_mm, self.in_plane_mm, self.slice_mm))
        size = tuple(max(int(round(f / s)), 8) for f, s in zip(fov, spacing))
        voxel = float(np.prod(spacing))
        noise = REFERENCE_NOISE_HU * np.sqrt(REFERENCE_VOXEL_MM3 / voxel)
        return replace(base, name=f"{base.name}-{self.kind}", size=size, spacing=tuple(float(s) for s in spacing),
                       centre=tuple(centre), slice_thickness=float(spacing[2]), noise_hu=float(noise),
                       description=f"{base.description}; acquired {self.kind}")

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def sample_acquisition(rng: np.random.Generator, base: Preset) -> Acquisition:
    """Draw how a training case is acquired (see the module docstring for the mix)."""
    kind = str(rng.choice(["preset", "fine", "thick"], p=[0.4, 0.3, 0.3]))
    in_plane = float(rng.uniform(0.62, 0.98)) if kind != "preset" else float(base.spacing[0])
    slice_mm = {"preset": float(base.spacing[2]), "fine": float(rng.uniform(0.75, 1.25)),
                "thick": float(rng.uniform(2.0, 5.0))}[kind]
    z_range = None
    if rng.uniform() < 0.3:
        full = base.size[2] * base.spacing[2]
        extent = float(rng.uniform(90.0, min(160.0, full)))
        start = float(rng.uniform(-full / 2, full / 2 - extent))
        z_range = (start, start + extent)
    return Acquisition(kind, in_plane, slice_mm, z_range)
