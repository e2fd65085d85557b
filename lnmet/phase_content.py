"""Contrast phase by content: how bright the large vessels are in each series, measured at intake.

Phase selection reads headers only: descriptions and acquisition times. When those are neutral and
the times are swapped (or simply wrong), the venous series would be taken as arterial without a
word. The images themselves tell the phases apart: in the arterial (pancreatic) phase the aorta is
bright (about 250-400 HU), in the portal-venous phase the aorta, portal vein and IVC are all about
150-200 HU. So each chosen series is measured before any computation, and the series taken as
arterial must show the brighter large vessel.

The measurement (:func:`brightest_large_vessel`), cheap and without any model:

1. the volume is resampled to 3 mm voxels;
2. in every axial slice, connected regions of 120-500 HU (contrast-enhanced blood) are kept when
   they are round (area >= 60% of the disc of their longest side), 12-40 mm wide (the aorta,
   portal vein, IVC) and not enclosed by bone (at most 25% of a 6 mm ring around them above
   500 HU: the cancellous bone of a vertebral body is as bright as enhanced blood);
3. regions of consecutive slices (at most one slice skipped) whose centres lie within 10 mm are
   linked into tubes; tubes at least 15 mm long are large vessels;
4. the result is the highest median HU among those tubes (the aorta in an arterial phase).

Bone or any tissue that looks alike in both phases raises both values equally, so it cannot make
a correct pair look swapped: the pair looks swapped only when the series taken as venous has a large
vessel brighter, by more than ``phase_policy.content_margin_hu``, than anything in the series taken
as arterial. What to do then is ``phase_policy.content_check`` (app.yaml): ``error`` (stop, naming
both series), ``warn`` (go on; every output carries the warning) or ``off``. A series with no such
vessel at all (a non-contrast scan, a head CT) is reported in words: "no contrast-enhanced large
vessel", never called a contrast phase.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from lnmet.geometry import resample_image, working_grid

log = logging.getLogger(__name__)

SPACING_MM = 3.0
BLOOD_HU = (120.0, 500.0)  # contrast-enhanced blood in either phase; non-contrast blood is ~40 HU
BONE_HU = 500.0
DIAMETER_MM = (12.0, 40.0)  # aorta ~20-30 mm, IVC / portal vein 12-25 mm
MIN_ROUNDNESS = 0.6  # region area / area of the disc of its longest bounding-box side
MAX_BONE_RING = 0.25  # fraction of the 6 mm ring around a region that may be bone
LINK_MM = 10.0  # centres of a tube in consecutive slices lie within this
MIN_LENGTH_MM = 15.0


class PhaseContentError(ValueError):
    """The series taken as arterial and venous look swapped by their content."""


@dataclass(frozen=True)
class VesselMeasure:
    """The brightest large vessel of one series (``hu`` None when none was found)."""

    hu: float | None
    length_mm: float = 0.0
    diameter_mm: float = 0.0
    tubes: int = 0  # large vessels found

    def text(self) -> str:
        if self.hu is None:
            return (f"no contrast-enhanced large vessel ({BLOOD_HU[0]:g}-{BLOOD_HU[1]:g} HU, "
                    f"{DIAMETER_MM[0]:g}-{DIAMETER_MM[1]:g} mm wide, >= {MIN_LENGTH_MM:g} mm long) found")
        return (f"brightest large vessel {self.hu:.0f} HU ({self.diameter_mm:.0f} mm wide, {self.length_mm:.0f} mm "
                f"long; {self.tubes} large vessel(s) found)")

    def as_dict(self) -> dict[str, float | int | None]:
        return {"brightest_vessel_hu": None if self.hu is None else round(float(self.hu), 1),
                "vessel_length_mm": round(float(self.length_mm), 1),
                "vessel_diameter_mm": round(float(self.diameter_mm), 1), "large_vessels": int(self.tubes)}


def _slice_regions(hu: np.ndarray, bone: np.ndarray, spacing: float) -> list[tuple[float, float, float, float]]:
    """Round blood-bright regions of one axial slice: (centre y mm, centre x mm, diameter mm, median HU)."""
    blood = (hu >= BLOOD_HU[0]) & (hu <= BLOOD_HU[1])
    labels, n = ndimage.label(blood)
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == i
        area = float(mask.sum()) * spacing * spacing
        diameter = 2.0 * np.sqrt(area / np.pi)
        if not DIAMETER_MM[0] <= diameter <= DIAMETER_MM[1]:
            continue
        side = max(box[0].stop - box[0].start, box[1].stop - box[1].start) * spacing
        if area < MIN_ROUNDNESS * np.pi / 4.0 * side * side:
            continue
        grown = tuple(slice(max(0, s.start - 2), s.stop + 2) for s in box)
        region = labels[grown] == i
        ring = ndimage.binary_dilation(region, iterations=2) & ~region
        if ring.any() and bone[grown][ring].mean() > MAX_BONE_RING:
            continue
        inner = ndimage.binary_erosion(mask)
        values = hu[box][inner if inner.any() else mask]
        cy, cx = ndimage.center_of_mass(mask)
        out.append(((cy + box[0].start) * spacing, (cx + box[1].start) * spacing, diameter, float(np.median(values))))
    return out


def brightest_large_vessel(image: sitk.Image) -> VesselMeasure:
    """Measure one series (see the module docstring)."""
    grid = working_grid(image, (SPACING_MM,) * 3)
    hu = sitk.GetArrayFromImage(resample_image(image, grid)).astype(np.float32)
    bone = hu > BONE_HU
    tubes: list[list[tuple[int, float, float, float, float]]] = []
    for z in range(hu.shape[0]):
        for cy, cx, diameter, median in _slice_regions(hu[z], bone[z], SPACING_MM):
            for tube in tubes:
                last = tube[-1]
                if 1 <= z - last[0] <= 2 and np.hypot(cy - last[1], cx - last[2]) <= LINK_MM:
                    tube.append((z, cy, cx, diameter, median))
                    break
            else:
                tubes.append([(z, cy, cx, diameter, median)])
    large = [t for t in tubes if (t[-1][0] - t[0][0] + 1) * SPACING_MM >= MIN_LENGTH_MM]
    if not large:
        return VesselMeasure(hu=None)
    best = max(large, key=lambda t: float(np.median([r[4] for r in t])))
    return VesselMeasure(hu=float(np.median([r[4] for r in best])),
                         length_mm=(best[-1][0] - best[0][0] + 1) * SPACING_MM,
                         diameter_mm=float(np.median([r[3] for r in best])), tubes=len(large))


def swapped_phases_message(arterial: VesselMeasure, venous: VesselMeasure, margin_hu: float,
                           arterial_label: str, venous_label: str) -> str | None:
    """Why the pair looks swapped, or None when it does not (or when a series has no large vessel:
    then nothing can be told from the content)."""
    if arterial.hu is None or venous.hu is None or arterial.hu >= venous.hu - margin_hu:
        return None
    return (f"the phases look swapped by their content: the series taken as arterial ({arterial_label}) has its "
            f"brightest large vessel at {arterial.hu:.0f} HU, the one taken as venous ({venous_label}) at "
            f"{venous.hu:.0f} HU; in an arterial phase the aorta is the brighter (phase_policy.content_margin_hu "
            f"{margin_hu:g}). Check the acquisition times and series descriptions, or set series_selection.rules")
