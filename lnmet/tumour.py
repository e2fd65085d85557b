"""The primary tumour in the PDAC model's mask: one connected component, anchored to the pancreas.

A patient has one primary pancreatic tumour, but the PDAC model's mask has several components: on
the 16 validation studies at 0.7 mm (seeds 150000-150015, the app's registration) 4 to 10, the
false ones up to several mL each and up to 10 cm from the pancreas. Keeping the
largest component (nnU-Net's usual post-processing) kept a false one in 7 of the 16 studies, and
which one won could change with a registration setting (issue 19). A PDAC arises in the pancreas,
so the component kept is the one most in the segmented pancreas: the most voxels in it, each
component's count weighted by the share of the component that lies in it. A false region at a
neighbouring organ that only touches the gland has its edge there, the tumour most of itself. On
those 16 studies this kept the true tumour in 15 (the 16th: the model missed the tumour) and, under
two registration settings (B-spline 10 and 100 iterations), the same component in every study; the
plain count of voxels in the pancreas also kept 15, but switched to a 12 mL false region 11 cm
away with the other setting in one study (the tumour in the tail, a quarter to a third of it in
the segmented pancreas).

Density check (``min_density_hu``, optional): a PDAC is a solid tumour, soft tissue of about +30 to
+45 HU without contrast and more with it; fluid (a cyst, the fluid-filled duodenum or bowel) is 0 to
+20 HU, fat about -100 HU. A component whose upper quartile of venous HU is below ``min_density_hu``
is fluid or fat, not a solid tumour, and is set aside before the rules below (the upper quartile, as
the lymph nodes' density check, so that a tumour whose edge spills into fat keeps its own density).

Rules, in order:

0. components found but none of soft-tissue density (density check): nothing kept;
1. no component: nothing kept;
2. no pancreas in the organ map (e.g. a site segmentation without one): the largest component;
3. components overlapping the pancreas: the one with the largest ``inside * inside / size``
   (``inside``: its voxels in the pancreas; ties: the larger);
4. else components within ``reach_mm`` of the pancreas (a tumour growing out of the gland): the
   largest of them;
5. else nothing: every component lies farther than ``reach_mm`` from the pancreas and none is
   taken for a pancreatic tumour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from lnmet.types import TumourSelection

CONNECTIVITY = np.ones((3, 3, 3), bool)  # 26-connected
RULES = ("none", "largest_no_pancreas", "pancreas_overlap", "near_pancreas", "none_near_pancreas", "none_solid")
DENSITY_PERCENTILE = 75.0  # the density check's statistic: upper quartile of the component's venous HU


@dataclass(frozen=True)
class TumourChoice:
    """The kept component (uint8 0/1) and how it was chosen."""

    mask: np.ndarray
    components: int  # connected components in the model's mask
    rule: str  # one of RULES

    def selection(self, reach_mm: float) -> TumourSelection:
        """What the outputs report about the choice (no mask)."""
        return TumourSelection(components=self.components, rule=self.rule, reach_mm=float(reach_mm))

    def describe(self, reach_mm: float) -> str:
        return {
            "none": "the PDAC model found no tumour",
            "largest_no_pancreas": f"no pancreas segmented: kept the largest of {self.components} components",
            "pancreas_overlap": f"kept the component most in the pancreas ({self.components} found)",
            "near_pancreas": f"no component in the pancreas: kept the largest within {reach_mm:g} mm of it "
                             f"({self.components} found)",
            "none_near_pancreas": f"all {self.components} components lie more than {reach_mm:g} mm from the "
                                  "pancreas: no tumour kept",
            "none_solid": f"none of the {self.components} components has soft-tissue density (fluid or fat): "
                          "no tumour kept",
        }[self.rule]


def solid_components(labelled: np.ndarray, n: int, venous_hu: np.ndarray, min_density_hu: float) -> np.ndarray:
    """Which of the ``n`` components of ``labelled`` (1..n) have an upper quartile of ``venous_hu``
    (same grid) at or above ``min_density_hu``: bool [n]."""
    if venous_hu.shape != labelled.shape:
        raise ValueError(f"density check: venous image shape {venous_hu.shape} differs from the tumour mask's "
                         f"{labelled.shape}")
    flat = labelled.ravel()
    idx = np.flatnonzero(flat)
    idx = idx[np.argsort(flat[idx], kind="stable")]
    groups = np.split(np.asarray(venous_hu).ravel()[idx], np.flatnonzero(np.diff(flat[idx])) + 1)
    return np.array([np.percentile(g, DENSITY_PERCENTILE) >= min_density_hu for g in groups], bool)


def primary_tumour(mask: np.ndarray, pancreas: np.ndarray | None, spacing_zyx: Sequence[float],
                   reach_mm: float = 10.0, venous_hu: np.ndarray | None = None,
                   min_density_hu: float | None = None) -> TumourChoice:
    """The primary tumour of the PDAC model's ``mask`` [Z, Y, X] given the ``pancreas`` mask on the
    same grid (None or empty: no pancreas); ``venous_hu`` (same grid) and ``min_density_hu``: the
    density check (None: off); see the module docstring for the rules."""
    mask = np.asarray(mask) != 0
    labelled, n = ndimage.label(mask, structure=CONNECTIVITY)
    if n == 0:
        return TumourChoice(np.zeros(mask.shape, np.uint8), 0, "none")
    if min_density_hu is not None:
        if venous_hu is None:
            raise ValueError("the PDAC density check needs the venous image")
        solid = solid_components(labelled, n, venous_hu, float(min_density_hu))
        if not solid.any():
            return TumourChoice(np.zeros(mask.shape, np.uint8), int(n), "none_solid")
        lut = np.concatenate([[0], np.where(solid, np.arange(1, n + 1), 0)])
        labelled = lut[labelled]  # the set-aside components take no part in the rules below
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    pancreas = None if pancreas is None else (np.asarray(pancreas) != 0)
    if pancreas is not None and pancreas.shape != mask.shape:
        raise ValueError(f"pancreas mask shape {pancreas.shape} differs from the tumour mask's {mask.shape}")

    def keep(index: int, rule: str) -> TumourChoice:
        return TumourChoice((labelled == index + 1).astype(np.uint8), int(n), rule)

    if pancreas is None or not pancreas.any():
        return keep(int(np.argmax(sizes)), "largest_no_pancreas")
    inside = np.bincount(labelled[pancreas].ravel(), minlength=n + 1)[1:]
    if inside.max() > 0:
        # voxels in the pancreas x share in the pancreas (0 for components set aside by the density check)
        weighted = np.divide(inside.astype(np.float64) ** 2, sizes, out=np.zeros(n), where=sizes > 0)
        return keep(int(np.lexsort((-sizes, -weighted))[0]), "pancreas_overlap")
    distance = ndimage.distance_transform_edt(~pancreas, sampling=[float(s) for s in spacing_zyx])
    nearest = ndimage.minimum(distance, labelled, index=np.arange(1, n + 1))
    near = np.flatnonzero((np.asarray(nearest) <= reach_mm) & (sizes > 0))
    if near.size:
        return keep(int(near[np.argmax(sizes[near])]), "near_pancreas")
    return TumourChoice(np.zeros(mask.shape, np.uint8), int(n), "none_near_pancreas")


def selection_statement(selection: TumourSelection | None) -> str:
    """What a reader must be told about the choice, for the outputs' tumour statement: the two
    rules that change what the tumour means (none near the pancreas: the patient prediction uses the
    nodes only; no pancreas: the tumour is not checked against the gland); "" otherwise."""
    if selection is None:
        return ""
    n = selection.components
    regions = f"{n} region{'s' if n != 1 else ''}"
    if selection.rule == "none_near_pancreas":
        return (f"The PDAC segmentation model found {regions}, all more than {selection.reach_mm:g} mm from the "
                "segmented pancreas; none is reported as the tumour, and the prediction uses the lymph nodes only")
    if selection.rule == "none_solid":
        return (f"The PDAC segmentation model found {regions}, none of soft-tissue density (fluid or fat); none is "
                "reported as the tumour, and the prediction uses the lymph nodes only")
    if selection.rule == "largest_no_pancreas":
        return (f"No pancreas was segmented: the largest of the PDAC segmentation model's {regions} is reported as "
                "the tumour, unchecked against the pancreas")
    return ""
