"""The 9 tumour patches of the patient-level classifier (Zheng et al. 2024, section 3.2).

From the PDAC mask, at the classifier's isotropic patch spacing (model metadata): the 3 slices with
the largest tumour area in each of the axial, sagittal and coronal planes (planes of the mask's
grid, i.e. of the venous series), each giving a square patch (224 x 224 pixels in the paper, at
about 0.68 mm) centred on the tumour's centroid in that slice. Patches are resampled directly from
the source images (linear; the mask linearly then thresholded at 0.5), so a tumour touching the
volume's border simply gets padding (``pad_hu`` for images, 0 for the mask) where the patch leaves
the volume.

Orientation: axial patches are [y, x] (rows anterior -> posterior, columns right -> left, as the
slices are stored); sagittal [z, y] and coronal [z, x] with superior at the top.

When the tumour spans fewer than 3 slices of a plane, its slices are repeated (largest first) so
that there are always 9 patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

PLANES = ("axial", "sagittal", "coronal")
# (normal axis, column axis, row axis, row sign) in (x, y, z) index axes of the tumour grid
_PLANE_AXES = {"axial": (2, 0, 1, 1.0), "sagittal": (0, 1, 2, -1.0), "coronal": (1, 0, 2, -1.0)}


@dataclass
class TumourPatches:
    """Patches of one tumour: 3 per plane, in the order of :data:`PLANES`."""

    images: np.ndarray  # [9, C, P, P] float32 HU
    masks: np.ndarray  # [9, 1, P, P] float32 0/1
    planes: list[str]
    slice_index: list[int]  # index of the slice along the plane's normal, on the tumour grid
    areas_mm2: list[float]  # tumour area of each slice (at the patch spacing)
    spacing_mm: float

    def __len__(self) -> int:
        return len(self.planes)


class NoTumourError(ValueError):
    """The PDAC mask is empty: no tumour patches can be taken."""


def _tumour_grid(mask: sitk.Image, spacing_mm: float) -> tuple[sitk.Image, np.ndarray]:
    """A grid with the mask's direction and ``spacing_mm`` covering the tumour's bounding box, and
    the tumour mask resampled on it ([z, y, x] bool)."""
    arr = sitk.GetArrayViewFromImage(mask) != 0
    if not arr.any():
        raise NoTumourError("the PDAC mask is empty: no tumour to take patches from")
    nz = [np.flatnonzero(arr.any(axis=tuple(a for a in range(3) if a != d))) for d in range(3)]
    lo_zyx = np.array([v[0] for v in nz], float) - 0.5
    hi_zyx = np.array([v[-1] for v in nz], float) + 0.5
    lo_xyz, hi_xyz = lo_zyx[::-1], hi_zyx[::-1]
    extent_mm = (hi_xyz - lo_xyz) * np.array(mask.GetSpacing())
    size = [int(np.ceil(e / spacing_mm)) + 2 for e in extent_mm]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetDirection(mask.GetDirection())
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    corner = np.array(mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in lo_xyz]))
    grid.SetOrigin(tuple(corner + direction @ (np.full(3, -0.5 * spacing_mm))))
    m = sitk.Resample(sitk.Cast(mask != 0, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    marr = sitk.GetArrayFromImage(m)
    sel = marr >= 0.5
    if not sel.any():  # a tumour smaller than one patch voxel: keep its partial voxels
        sel = marr >= marr.max() * 0.5
    return grid, sel


def _patch_grid(grid: sitk.Image, plane: str, centre_xyz: np.ndarray, patch_size: int) -> sitk.Image:
    """A [P, P, 1] grid in ``plane`` centred on the continuous tumour-grid index ``centre_xyz``."""
    normal, col, row, row_sign = _PLANE_AXES[plane]
    e = np.eye(3)
    e_col, e_row, e_nrm = e[col], e[row] * row_sign, e[normal]
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    basis = np.stack([e_col, e_row, e_nrm], axis=1)  # grid index axes of the patch's i, j, k
    half = patch_size // 2
    start = centre_xyz - half * e_col - half * e_row
    out = sitk.Image([patch_size, patch_size, 1], sitk.sitkFloat32)
    out.SetSpacing(grid.GetSpacing())
    out.SetDirection(tuple((direction @ basis).ravel()))
    out.SetOrigin(grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in start]))
    return out


def _top_slices(areas: np.ndarray, count: int) -> list[int]:
    order = [int(i) for i in np.argsort(-areas, kind="stable") if areas[i] > 0]
    return [order[k % len(order)] for k in range(count)]


def extract_tumour_patches(images: Sequence[sitk.Image], mask: sitk.Image, patch_size: int = 224,
                           spacing_mm: float = 0.68, slices_per_plane: int = 3, pad_hu: float = -1024.0,
                           transforms: Sequence[sitk.Transform | None] | None = None) -> TumourPatches:
    """The tumour patches (see the module docstring).

    ``images``: the channels (e.g. venous, arterial), each a HU volume; ``transforms[i]`` maps
    points of the mask's space to points of ``images[i]`` (e.g. the registration transform for an
    unregistered arterial phase), None for identity. ``mask``: the PDAC mask (non-zero = tumour).
    Raises :class:`NoTumourError` for an empty mask.
    """
    if not images:
        raise ValueError("extract_tumour_patches needs at least one image channel")
    if patch_size < 8:
        raise ValueError(f"patch_size must be at least 8 pixels, got {patch_size}")
    transforms = list(transforms) if transforms is not None else [None] * len(images)
    if len(transforms) != len(images):
        raise ValueError(f"{len(transforms)} transforms for {len(images)} images")
    grid, sel = _tumour_grid(mask, spacing_mm)
    mask_f = sitk.Cast(mask != 0, sitk.sitkFloat32)
    imgs, msks, planes, slices, areas = [], [], [], [], []
    for plane in PLANES:
        normal, _, _, _ = _PLANE_AXES[plane]
        axis_zyx = 2 - normal
        other = tuple(a for a in range(3) if a != axis_zyx)
        area = sel.sum(axis=other).astype(float)
        for s in _top_slices(area, slices_per_plane):
            sl = np.take(sel, s, axis=axis_zyx)
            pts = np.argwhere(sl).mean(axis=0)  # in-plane (zyx order minus the normal axis)
            centre_zyx = np.insert(pts, axis_zyx, s)
            pgrid = _patch_grid(grid, plane, centre_zyx[::-1].astype(float), patch_size)
            chans = []
            for img, tx in zip(images, transforms):
                r = sitk.Resample(img, pgrid, tx if tx is not None else sitk.Transform(), sitk.sitkLinear,
                                  float(pad_hu), sitk.sitkFloat32)
                chans.append(sitk.GetArrayFromImage(r)[0])
            m = sitk.Resample(mask_f, pgrid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            imgs.append(np.stack(chans))
            msks.append((sitk.GetArrayFromImage(m)[0] >= 0.5).astype(np.float32)[None])
            planes.append(plane)
            slices.append(int(s))
            areas.append(float(area[s] * spacing_mm ** 2))
    return TumourPatches(images=np.stack(imgs).astype(np.float32), masks=np.stack(msks), planes=planes,
                         slice_index=slices, areas_mm2=areas, spacing_mm=float(spacing_mm))


def extract_box(array: np.ndarray, start_zyx: Sequence[int], size_zyx: Sequence[int], pad_value: float) -> np.ndarray:
    """``array[..., z0:z0+sz, y0:y0+sy, x0:x0+sx]`` with constant padding where the box leaves
    the array (leading axes, e.g. channels, are kept whole)."""
    lead = array.ndim - 3
    out = np.full(array.shape[:lead] + tuple(int(s) for s in size_zyx), pad_value, dtype=array.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for s0, sz, n in zip(start_zyx, size_zyx, array.shape[lead:]):
        a, b = max(int(s0), 0), min(int(s0) + int(sz), n)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - int(s0), b - int(s0)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def crop_centred(array: np.ndarray, centre_zyx: Sequence[float], size_zyx: Sequence[int],
                 pad_value: float) -> np.ndarray:
    """A box of ``size_zyx`` voxels of ``array`` (``[..., Z, Y, X]``, leading axes kept) centred on
    ``centre_zyx`` (voxel ``size // 2`` of the box is the rounded centre), padded with
    ``pad_value`` where it leaves the array. Used for the LN identification crops."""
    start = [int(np.floor(c + 0.5)) - s // 2 for c, s in zip(centre_zyx, size_zyx)]
    return extract_box(array, start, size_zyx, pad_value)
