"""Measurements of lymph nodes and of the tumour on the reference grid, for the report.

Definitions (documented here because readers compare them with a radiologist's):

- **Volume**: number of voxels x voxel volume (mm^3).
- **Axial diameters**: measured on the axial slice (a slice of the reference grid, i.e. of the
  venous series, which is axial) where the node's cross-section is largest (ties: the slice
  nearest the node's centroid). The *long axis* is the largest in-plane Feret (caliper) diameter of
  the voxel squares, measured edge to edge. The *short axis* is the longest diameter perpendicular
  to the long axis: the node is cut into strips one pixel wide along the long axis, and the largest
  edge-to-edge extent of a strip across it is taken (for a convex node this is the longest chord
  perpendicular to the long axis, as RECIST-style short-axis measurements are made).
- **Mean HU**: mean venous-phase intensity over the node's voxels.
- **Centroid**: mean voxel position, in LPS mm.
- **Nearest organ/vessel** and **distance**: the class (of the ten of ``lnmet.labels``) whose voxels
  are closest to the node, and the gap in mm between the node's and that structure's voxels taken
  as boxes (0 when they touch or overlap): the distance between the node's boundary and the
  structure's boundary.
- **Tumour**: volume, the largest long-axis diameter over all axial slices, mean HU, centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from lnmet.geometry import index_to_physical, voxel_volume_mm3
from lnmet.labels import ORGAN_BY_LABEL

@dataclass
class NodeMeasurement:
    """Measurements of one LN instance."""

    index: int
    volume_mm3: float
    short_axis_mm: float
    long_axis_mm: float
    mean_hu_venous: float
    centroid_mm: tuple[float, float, float]
    nearest_structure: str  # key of lnmet.labels.ORGAN_CLASSES ("" when no structure exists)
    distance_mm: float  # NaN when no structure exists


@dataclass
class TumourMeasurement:
    volume_mm3: float
    max_axial_diameter_mm: float
    mean_hu_venous: float
    centroid_mm: tuple[float, float, float]


# ------------------------------------------------------------------------------------------------
# 2D diameters
# ------------------------------------------------------------------------------------------------

def _pixel_corners(mask2d: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """Corners (y, x in mm) of the pixels of a 2D mask, boundary pixels only, unique."""
    interior = ndimage.binary_erosion(mask2d, structure=np.ones((3, 3), bool), border_value=0)
    yy, xx = np.nonzero(mask2d & ~interior)
    sy, sx = spacing_yx
    pts = []
    for dy in (-0.5, 0.5):
        for dx in (-0.5, 0.5):
            pts.append(np.stack([(yy + dy) * sy, (xx + dx) * sx], axis=1))
    return np.unique(np.concatenate(pts), axis=0)


@dataclass(frozen=True)
class AxialAxes:
    """Long and short axis of a 2D mask with the end points that realise them.

    End points are (y, x) in mm from the centre of pixel (0, 0) of the slice (pixel (r, c) has its
    centre at (r * sy, c * sx)); the distance between the two end points of an axis equals its length.
    """

    long_mm: float
    short_mm: float
    long_ends: tuple[tuple[float, float], tuple[float, float]]
    short_ends: tuple[tuple[float, float], tuple[float, float]]


def axial_axes(mask2d: np.ndarray, spacing_yx: tuple[float, float]) -> AxialAxes | None:
    """Long and short axis of a 2D mask [y, x] with pixel spacing (sy, sx), with their end points;
    see the module docstring for the definitions. None for an empty mask."""
    m = np.asarray(mask2d, bool)
    if not m.any():
        return None
    pts = _pixel_corners(m, spacing_yx)
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):
        hull = pts
    d = hull[:, None, :] - hull[None, :, :]
    dist2 = (d ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(dist2)), dist2.shape)
    long_axis = float(np.sqrt(dist2[i, j]))
    u = (hull[j] - hull[i]) / long_axis  # unit vector (y, x)
    v = np.array([-u[1], u[0]])
    sy, sx = spacing_yx
    yy, xx = np.nonzero(m)
    centres = np.stack([yy * sy, xx * sx], axis=1)
    along = centres @ u
    across = centres @ v
    strip = min(sy, sx)
    bins = np.floor((along - along.min()) / strip).astype(int)
    # largest extent across, per strip; plus the footprint of one pixel in that direction
    lo = np.full(bins.max() + 1, np.inf)
    hi = np.full(bins.max() + 1, -np.inf)
    np.minimum.at(lo, bins, across)
    np.maximum.at(hi, bins, across)
    ok = np.flatnonzero(np.isfinite(lo))
    footprint = abs(v[0]) * sy + abs(v[1]) * sx
    k = int(ok[np.argmax(hi[ok] - lo[ok])])
    short_axis = float(hi[k] - lo[k] + footprint)
    # The short axis is drawn through the middle of its strip, from edge to edge of the pixels.
    in_strip = bins == k
    mid = float(along[in_strip].mean())
    a = mid * u + (lo[k] - footprint / 2) * v
    b = mid * u + (hi[k] + footprint / 2) * v
    if short_axis > long_axis:  # a thin diagonal sliver: the short axis never exceeds the long one
        short_axis = long_axis
        b = a + (b - a) * (long_axis / float(np.linalg.norm(b - a)))
    as_pair = lambda p: (float(p[0]), float(p[1]))  # noqa: E731
    return AxialAxes(long_mm=long_axis, short_mm=short_axis,
                     long_ends=(as_pair(hull[i]), as_pair(hull[j])), short_ends=(as_pair(a), as_pair(b)))


def axial_diameters(mask2d: np.ndarray, spacing_yx: tuple[float, float]) -> tuple[float, float]:
    """(long axis, short axis) in mm of a 2D mask [y, x] with pixel spacing (sy, sx); see the
    module docstring for the definitions. (0, 0) for an empty mask."""
    axes = axial_axes(mask2d, spacing_yx)
    return (0.0, 0.0) if axes is None else (axes.long_mm, axes.short_mm)


# ------------------------------------------------------------------------------------------------
# Nearest structure
# ------------------------------------------------------------------------------------------------

class _StructureSurface:
    """The boundary voxels of all organ/vessel structures (a voxel with a 6-neighbour outside every
    structure) in a KD-tree, in mm. The structure voxel nearest (centre to centre) to any point
    outside the structures is always such a boundary voxel, so searching the boundary is exact."""

    def __init__(self, organs: np.ndarray, spacing_zyx: np.ndarray):
        from scipy.spatial import cKDTree

        self.organs = organs
        self.spacing = spacing_zyx
        mask = organs > 0
        self.empty = not mask.any()
        if self.empty:
            return
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        sub = mask[box]
        surf = sub & ~ndimage.binary_erosion(sub, border_value=0)
        idx = np.argwhere(surf) + [s.start for s in box]
        self.points = idx
        self.labels = organs[tuple(idx.T)]
        self.tree = cKDTree(idx * spacing_zyx)

    def nearest(self, node: np.ndarray, offset: np.ndarray) -> tuple[int, float]:
        """(organ label, gap in mm) for the node voxels ``node`` (bool, box at ``offset``)."""
        if self.empty:
            return 0, float("nan")
        zyx = np.argwhere(node) + offset
        inside = self.organs[tuple(zyx.T)]
        if (inside > 0).any():  # overlapping a structure: the most overlapped one, distance 0
            labels, counts = np.unique(inside[inside > 0], return_counts=True)
            return int(labels[np.argmax(counts)]), 0.0
        eroded = ndimage.binary_erosion(node, border_value=0)
        edge = np.argwhere(node & ~eroded) + offset  # the nearest node voxel is a boundary voxel too
        centre, j = self.tree.query(edge * self.spacing)
        delta = np.abs(self.points[j] - edge) * self.spacing
        gap = np.sqrt((np.maximum(delta - self.spacing, 0.0) ** 2).sum(axis=1))
        k = int(np.lexsort((centre, gap))[0])
        return int(self.labels[j[k]]), float(gap[k])


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------

def _check_same_grid(a: sitk.Image, b: sitk.Image, what: str) -> None:
    if a.GetSize() != b.GetSize() or not np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4) \
            or not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3) \
            or not np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5):
        raise ValueError(f"{what} is not on the instance map's grid (reference grid): size "
                         f"{b.GetSize()} vs {a.GetSize()}, spacing {b.GetSpacing()} vs {a.GetSpacing()}")


def _largest_axial_slice(mask: np.ndarray) -> int:
    areas = mask.sum(axis=(1, 2))
    best = np.flatnonzero(areas == areas.max())
    zc = np.nonzero(mask)[0].mean()
    return int(best[np.argmin(np.abs(best - zc))])


@dataclass(frozen=True)
class PlacedAxes:
    """The axes of a structure on the axial slice where they were measured: ``slice_index`` is the
    index ``k`` of that slice in the grid, ``axes`` its :class:`AxialAxes` in that slice."""

    slice_index: int
    axes: AxialAxes


def lymph_node_axes(instances: sitk.Image) -> dict[int, PlacedAxes]:
    """Instance id -> the axes of that node on its slice of largest cross-section (the slice and
    values :func:`measure_lymph_nodes` reports)."""
    inst = sitk.GetArrayViewFromImage(instances)
    sx, sy, _ = instances.GetSpacing()
    out: dict[int, PlacedAxes] = {}
    for idx, box in enumerate(ndimage.find_objects(inst), start=1):
        if box is None:
            continue
        node = inst[box] == idx
        z = _largest_axial_slice(node)
        axes = _shift(axial_axes(node[z], (sy, sx)), box, (sy, sx))
        out[idx] = PlacedAxes(slice_index=z + box[0].start, axes=axes)
    return out


def tumour_axes(pdac: sitk.Image) -> PlacedAxes | None:
    """The tumour's axes on the axial slice of its maximum axial diameter (the value
    :func:`measure_tumour` reports as ``max_axial_diameter_mm``); None for an empty mask."""
    m = sitk.GetArrayViewFromImage(pdac) != 0
    if not m.any():
        return None
    box = ndimage.find_objects(m.astype(np.uint8))[0]
    sub = m[box]
    sx, sy, _ = pdac.GetSpacing()
    best: tuple[int, AxialAxes] | None = None
    for z in range(sub.shape[0]):
        axes = axial_axes(sub[z], (sy, sx))
        if axes is not None and (best is None or axes.long_mm > best[1].long_mm):
            best = (z, axes)
    z, axes = best
    return PlacedAxes(slice_index=z + box[0].start, axes=_shift(axes, box, (sy, sx)))


def _shift(axes: AxialAxes, box: tuple[slice, ...], spacing_yx: tuple[float, float]) -> AxialAxes:
    """Axes measured in a crop starting at ``box`` moved to the whole slice's coordinates."""
    dy, dx = box[1].start * spacing_yx[0], box[2].start * spacing_yx[1]
    move = lambda ends: tuple((y + dy, x + dx) for y, x in ends)  # noqa: E731
    return AxialAxes(long_mm=axes.long_mm, short_mm=axes.short_mm,
                     long_ends=move(axes.long_ends), short_ends=move(axes.short_ends))


def measure_lymph_nodes(instances: sitk.Image, venous: sitk.Image, organs: sitk.Image | None
                        ) -> list[NodeMeasurement]:
    """Measure every instance of ``instances`` (uint16, reference grid); ``venous`` (HU) and
    ``organs`` (labels 1-10, or None) must lie on the same grid. Sorted by instance id."""
    _check_same_grid(instances, venous, "the venous image")
    inst = sitk.GetArrayViewFromImage(instances)
    hu = sitk.GetArrayViewFromImage(venous)
    org = None
    if organs is not None:
        _check_same_grid(instances, organs, "the organ label map")
        org = sitk.GetArrayViewFromImage(organs)
    sx, sy, sz = instances.GetSpacing()
    spacing_zyx = np.array([sz, sy, sx], float)
    vox = voxel_volume_mm3(instances)
    surface = _StructureSurface(org, spacing_zyx) if org is not None else None
    out: list[NodeMeasurement] = []
    for idx, box in enumerate(ndimage.find_objects(inst), start=1):
        if box is None:
            continue
        node = inst[box] == idx
        zyx = np.argwhere(node)
        z = _largest_axial_slice(node)
        long_ax, short_ax = axial_diameters(node[z], (sy, sx))
        centroid = index_to_physical(instances, zyx.mean(axis=0) + [s.start for s in box])
        label, dist = (0, float("nan")) if surface is None else surface.nearest(node, np.array([b.start for b in box]))
        out.append(NodeMeasurement(
            index=idx, volume_mm3=float(len(zyx) * vox), short_axis_mm=short_ax, long_axis_mm=long_ax,
            mean_hu_venous=float(hu[box][node].mean()), centroid_mm=tuple(float(c) for c in centroid),
            nearest_structure=ORGAN_BY_LABEL[label].key if label in ORGAN_BY_LABEL else "",
            distance_mm=dist,
        ))
    return out


def measure_tumour(pdac: sitk.Image, venous: sitk.Image) -> TumourMeasurement | None:
    """Volume, largest axial long-axis diameter, mean HU and centroid of the tumour mask (non-zero
    voxels, reference grid); None when the mask is empty."""
    _check_same_grid(pdac, venous, "the venous image")
    m = sitk.GetArrayViewFromImage(pdac) != 0
    if not m.any():
        return None
    box = ndimage.find_objects(m.astype(np.uint8))[0]
    sub = m[box]
    sx, sy, _ = pdac.GetSpacing()
    diam = max(axial_diameters(sub[z], (sy, sx))[0] for z in range(sub.shape[0]) if sub[z].any())  # = tumour_axes
    zyx = np.argwhere(sub).mean(axis=0) + [s.start for s in box]
    return TumourMeasurement(
        volume_mm3=float(sub.sum() * voxel_volume_mm3(pdac)), max_axial_diameter_mm=float(diam),
        mean_hu_venous=float(sitk.GetArrayViewFromImage(venous)[box][sub].mean()),
        centroid_mm=tuple(float(c) for c in index_to_physical(pdac, zyx)),
    )
