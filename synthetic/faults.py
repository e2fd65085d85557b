"""Faults injected into a generated study, to show that the quality gate catches them.

Each function takes a :class:`synthetic.study.SyntheticStudy` and returns a new one (the input is
left as it was) that ``write_study`` writes like any other:

- :func:`swap_phases` - the arterial images in the series described and timed as portal-venous,
  and the other way round;
- :func:`remove_contrast` - both phases at non-contrast attenuation (no contrast medium given);
- :func:`crop_out_pancreas` - only the slices cranial to the pancreas (the scan misses it);
- :func:`remove_organ` - one organ replaced by fat (as after its resection).

Non-contrast attenuation values (HU) are typical unenhanced CT values from the radiology
literature (blood 40, liver 55, spleen 45, pancreas 40, kidney 30, bowel wall 35). Only the study's
own images and labels are used: nothing here depends on how the generator made them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk
from lnmet.labels import ANATOMY_LABELS, ORGAN_BY_KEY
from synthetic.grid import Grid

# Unenhanced attenuation of the tissues that take up contrast medium.
NON_CONTRAST_HU: dict[str, float] = {
    **{k: 40.0 for k in ("aorta", "sma", "tc_sa", "lga", "cha_pha", "ivc", "portal_splenic_vein", "hepatic_vein",
                         "other_artery", "other_vein")},
    "liver": 55.0, "spleen": 45.0, "pancreas": 40.0, "pdac": 35.0, "adrenal": 35.0,
    **{k: 30.0 for k in ("kidney_left", "kidney_right", "kidney_medulla")},
    **{k: 35.0 for k in ("stomach", "duodenum", "bowel", "esophagus", "lymph_node", "distractor_nodule")},
    "muscle_wall": 50.0, "paraspinal_muscle": 50.0,
}  # tissues the generator does not have are skipped


def _replace_images(study, **images: sitk.Image):
    return dataclasses.replace(study, **images)


def _like(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def swap_phases(study):
    """The arterial images under the venous series' description, number and time, and vice versa."""
    return _replace_images(study, arterial=study.venous, venous=study.arterial)


def _arterial_labels(study, labels: sitk.Image) -> sitk.Image:
    """A venous-grid label map as it appears in the arterial image: the arterial image at point q
    shows the tissue of venous point q - u(q) to first order (the displacement is small and smooth)."""
    field = sitk.Cast(study.displacement, sitk.sitkVectorFloat64)
    inverse = sitk.Compose([sitk.VectorIndexSelectionCast(field, i) * -1.0 for i in range(3)])
    transform = sitk.DisplacementFieldTransform(sitk.Cast(inverse, sitk.sitkVectorFloat64))
    return sitk.Resample(labels, study.arterial, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def _shift_to(hu: np.ndarray, labels: np.ndarray, targets: dict[int, float]) -> np.ndarray:
    """Each label's voxels shifted so that the label's median becomes its target (texture and noise kept)."""
    out = hu.copy()
    for value, target in targets.items():
        mask = labels == value
        if mask.any():
            out[mask] += np.float32(target - float(np.median(hu[mask])))
    return out


def _shift_tissues(study, targets: dict[int, float]):
    """Both phases with each anatomy label of ``targets`` shifted to its HU (texture kept)."""
    venous = sitk.GetArrayFromImage(study.venous).astype(np.float32)
    arterial = sitk.GetArrayFromImage(study.arterial).astype(np.float32)
    anatomy_v = sitk.GetArrayFromImage(study.anatomy)
    anatomy_a = sitk.GetArrayFromImage(_arterial_labels(study, study.anatomy))
    return _replace_images(study, venous=_like(_shift_to(venous, anatomy_v, targets), study.venous),
                           arterial=_like(_shift_to(arterial, anatomy_a, targets), study.arterial))


def remove_contrast(study):
    """Both phases at unenhanced attenuation: every contrast-taking tissue shifted to its
    :data:`NON_CONTRAST_HU` value."""
    targets = {ANATOMY_LABELS[name]: hu for name, hu in NON_CONTRAST_HU.items() if name in ANATOMY_LABELS}
    return _shift_tissues(study, targets)


def fill_stomach(study, hu: float = 35.0):
    """A stomach full of food: its lumen and gas at ``hu`` (soft tissue; the wall's unenhanced value
    by default) in both phases, their texture kept; the labels do not change. The generator's
    stomachs hold water and a gas cap; a real one after a meal shows neither."""
    return _shift_tissues(study, {ANATOMY_LABELS["stomach_lumen"]: hu, ANATOMY_LABELS["stomach_gas"]: hu})


def remove_organ(study, key: str):
    """The organ ``key`` (an ``lnmet.labels`` organ key) removed as after its resection: in both
    phases its voxels take the attenuation of the study's body fat (its texture and noise kept),
    and the ground-truth organ labels lose it."""
    label = ORGAN_BY_KEY[key].label
    organs = sitk.GetArrayFromImage(study.organs)
    fat = sitk.GetArrayViewFromImage(study.anatomy) == ANATOMY_LABELS["body_fat"]
    images = {}
    for phase, mask in (("venous", organs == label),
                        ("arterial", sitk.GetArrayFromImage(study.arterial_organs) == label)):
        if not mask.any():
            raise ValueError(f"remove_organ: the study has no {key} in its {phase} phase")
        image = getattr(study, phase)
        hu = sitk.GetArrayFromImage(image).astype(np.float32)
        fat_hu = float(np.median(sitk.GetArrayViewFromImage(study.venous)[fat]))  # fat does not enhance
        hu[mask] += np.float32(fat_hu - float(np.median(hu[mask])))
        images[phase] = _like(hu, image)
    kept = np.where(organs == label, 0, organs).astype(organs.dtype)
    arterial_organs = sitk.GetArrayFromImage(study.arterial_organs)
    return _replace_images(study, **images, organs=_like(kept, study.organs),
                           arterial_organs=_like(np.where(arterial_organs == label, 0, arterial_organs)
                                                 .astype(arterial_organs.dtype), study.arterial_organs))


def crop_slices(study, start: int, stop: int):
    """Slices ``start:stop`` of every image of the study (both phases share one grid)."""
    n = study.grid.shape[0]
    if not 0 <= start < stop <= n:
        raise ValueError(f"crop_slices: slices {start}:{stop} outside 0:{n}")
    g = study.grid
    origin = (g.origin[0], g.origin[1], g.origin[2] + start * g.spacing[2])
    grid = Grid((stop - start, g.shape[1], g.shape[2]), g.spacing, origin)
    images = {}
    for name in ("venous", "arterial", "organs", "anatomy", "pdac", "ln_instances", "arterial_organs"):
        image = getattr(study, name)
        images[name] = image[:, :, start:stop]
    if study.arterial_aligned is not None:  # the undeformed arterial phase shares the grid too
        images["arterial_aligned"] = study.arterial_aligned[:, :, start:stop]
    return dataclasses.replace(study, grid=grid, **images)


def slab_around_pancreas(study, slab_mm: float):
    """Only a ``slab_mm`` thick slab of slices centred on the pancreas (a scan of short coverage,
    as ../shared/real-ct-validation's 90 mm); the whole study when it is not longer than that."""
    organs = sitk.GetArrayViewFromImage(study.organs)
    zs = np.flatnonzero((organs == ORGAN_BY_KEY["pancreas"].label).any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("slab_around_pancreas: the study has no pancreas")
    n = organs.shape[0]
    count = min(n, max(1, int(round(slab_mm / study.grid.spacing[2]))))
    start = int(np.clip(round((zs[0] + zs[-1]) / 2 - count / 2), 0, n - count))
    return crop_slices(study, start, start + count)


def crop_out_pancreas(study, min_slices: int = 20):
    """Only the slices cranial to the pancreas (the scan misses it). When fewer than ``min_slices``
    slices lie above it (a small field of view), the scan keeps ``min_slices`` and ends inside the
    pancreas."""
    organs = sitk.GetArrayViewFromImage(study.organs)
    zs = np.flatnonzero((organs == ORGAN_BY_KEY["pancreas"].label).any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("crop_out_pancreas: the study has no pancreas")
    n = organs.shape[0]
    start = min(int(zs[-1]) + 1, n - min_slices)  # +z is cranial (LPS)
    return crop_slices(study, max(0, start), n)
