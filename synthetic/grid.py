"""Axis-aligned voxel grids in the DICOM patient frame (LPS mm) and the size presets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Grid:
    """An axial grid: ``shape`` is (z, y, x) like the arrays, ``spacing`` and ``origin`` are (x, y, z)
    mm; the direction is the identity (rows along +x, columns along +y, slices along +z)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def centred(cls, size_xyz, spacing_xyz, centre_xyz) -> "Grid":
        size = np.asarray(size_xyz, dtype=int)
        spacing = np.asarray(spacing_xyz, dtype=float)
        origin = np.asarray(centre_xyz, dtype=float) - (size - 1) * spacing / 2.0
        return cls(tuple(int(v) for v in size[::-1]), tuple(float(v) for v in spacing),
                   tuple(float(round(v, 4)) for v in origin))

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        return self.shape[::-1]

    def axis(self, a: int) -> np.ndarray:
        """Physical coordinates along x (0), y (1) or z (2)."""
        n = self.size_xyz[a]
        return self.origin[a] + self.spacing[a] * np.arange(n)

    def index_range(self, lo_xyz, hi_xyz) -> tuple[slice, slice, slice] | None:
        """Array slices (z, y, x) of the voxels whose centres lie in the physical box, or None."""
        out = []
        for a in (2, 1, 0):
            i0 = int(np.ceil((lo_xyz[a] - self.origin[a]) / self.spacing[a] - 1e-9))
            i1 = int(np.floor((hi_xyz[a] - self.origin[a]) / self.spacing[a] + 1e-9)) + 1
            i0, i1 = max(i0, 0), min(i1, self.size_xyz[a])
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    @property
    def full(self) -> tuple[slice, slice, slice]:
        """Slices covering the whole grid."""
        return tuple(slice(0, n) for n in self.shape)  # type: ignore[return-value]

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable physical coordinates (x, y, z) of the voxels of a sub-block."""
        z = self.axis(2)[sl[0]][:, None, None]
        y = self.axis(1)[sl[1]][None, :, None]
        x = self.axis(0)[sl[2]][None, None, :]
        return x, y, z

    def padded(self, pad_mm: float) -> tuple["Grid", tuple[slice, slice, slice]]:
        """The grid grown by ``pad_mm`` on every side (whole voxels) and the slices of the original."""
        pads = [int(np.ceil(pad_mm / s)) for s in self.spacing]  # x, y, z
        shape = tuple(n + 2 * p for n, p in zip(self.shape, pads[::-1]))
        origin = tuple(o - p * s for o, p, s in zip(self.origin, pads, self.spacing))
        inner = tuple(slice(p, p + n) for p, n in zip(pads[::-1], self.shape))
        return Grid(shape, self.spacing, origin), inner  # type: ignore[arg-type]

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        return img

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))


@dataclass(frozen=True)
class Preset:
    """A study size: voxels (x, y, z), spacing (x, y, z) mm and the field-of-view centre (LPS mm)."""

    name: str
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    centre: tuple[float, float, float]
    slice_thickness: float
    noise_hu: float  # standard deviation of the image noise at this voxel size
    description: str

    @property
    def grid(self) -> Grid:
        return Grid.centred(self.size, self.spacing, self.centre)


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", (64, 64, 40), (3.0, 3.0, 3.0), (5.0, 5.0, 0.0), 3.0, 4.0,
                   "192x192x120 mm around the pancreas at 3 mm, for fast tests"),
    "train": Preset("train", (240, 240, 134), (1.5, 1.5, 1.5), (0.0, 15.0, -10.0), 1.5, 6.0,
                    "the whole upper abdomen at the models' 1.5 mm working spacing, for training data"),
    "standard": Preset("standard", (512, 512, 200), (0.703125, 0.703125, 1.0), (0.0, 15.0, -10.0), 1.0, 12.0,
                       "like a clinical scan: 512x512 at 0.7 mm, 200 slices of 1 mm (360 x 360 x 200 mm)"),
}
