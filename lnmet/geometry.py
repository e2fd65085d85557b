"""Grid helpers: working grids and resampling between grids (SimpleITK, LPS mm)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def working_grid(reference: sitk.Image, spacing_mm: Sequence[float]) -> sitk.Image:
    """An empty float32 image with the reference's origin and direction, covering the same
    physical extent, at ``spacing_mm`` (x, y, z)."""
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) == 1:
        spacing = spacing * 3
    size = [
        max(1, int(math.ceil(n * s_ref / s - 1e-6)))
        for n, s_ref, s in zip(reference.GetSize(), reference.GetSpacing(), spacing)
    ]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetOrigin(reference.GetOrigin())
    grid.SetDirection(reference.GetDirection())
    grid.SetSpacing(spacing)
    return grid


def resample_image(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None,
                   default_value: float = -1024.0, interpolator=sitk.sitkLinear) -> sitk.Image:
    """Resample an intensity image onto ``grid`` (float32). ``transform`` maps grid points to
    points of ``image`` (SimpleITK convention)."""
    tx = transform if transform is not None else sitk.Transform()
    out = sitk.Resample(image, grid, tx, interpolator, default_value, sitk.sitkFloat32)
    return out


def resample_labels(labels: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None,
                    smooth: bool = True) -> sitk.Image:
    """Resample a label map onto ``grid``: label-aware Gaussian interpolation (smooth boundaries
    when going to a finer grid) or nearest neighbour."""
    tx = transform if transform is not None else sitk.Transform()
    interp = sitk.sitkLabelGaussian if smooth else sitk.sitkNearestNeighbor
    return sitk.Resample(labels, grid, tx, interp, 0, labels.GetPixelID())


def voxel_volume_mm3(image: sitk.Image) -> float:
    sx, sy, sz = image.GetSpacing()
    return float(sx * sy * sz)


def index_to_physical(image: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """Array indices ``[..., (z, y, x)]`` to LPS mm ``[..., (x, y, z)]`` (vectorised)."""
    zyx = np.asarray(zyx, dtype=np.float64)
    ijk = zyx[..., ::-1]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    return origin + (ijk * spacing) @ direction.T


def physical_to_index(image: sitk.Image, xyz: np.ndarray) -> np.ndarray:
    """LPS mm ``[..., (x, y, z)]`` to continuous array indices ``[..., (z, y, x)]``."""
    xyz = np.asarray(xyz, dtype=np.float64)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    ijk = ((xyz - origin) @ direction) / spacing
    return ijk[..., ::-1]


def from_array(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """A SimpleITK image from a ``[z, y, x]`` array with ``like``'s geometry."""
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(like)
    return img
