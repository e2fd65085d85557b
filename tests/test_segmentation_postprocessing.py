"""Post-processing of the tumour mask: one primary tumour per patient, anchored to the pancreas
(lnmet/tumour.py, operators/pdac_segmentation.py)."""

import numpy as np
import pytest
import SimpleITK as sitk

from lnmet.tumour import RULES, primary_tumour, selection_statement
from operators.pdac_segmentation import PANCREAS_LABEL, keep_primary_tumour

SPACING = (2.0, 2.0, 2.0)


def _blob(mask: np.ndarray, z: slice, y: slice, x: slice) -> None:
    mask[z, y, x] = True


def _scene():
    """A pancreas bar, a small tumour overlapping it and a larger false component far away."""
    shape = (30, 40, 60)
    pancreas = np.zeros(shape, bool)
    pancreas[10:16, 15:22, 5:35] = True
    tumour = np.zeros(shape, bool)
    _blob(tumour, slice(11, 17), slice(18, 25), slice(10, 16))  # 6*7*6 = 252 voxels, partly in the pancreas
    _blob(tumour, slice(2, 10), slice(2, 10), slice(45, 55))  # 640 voxels, far from the pancreas
    return tumour, pancreas


def test_the_component_in_the_pancreas_wins_over_a_larger_one_elsewhere():
    tumour, pancreas = _scene()
    choice = primary_tumour(tumour, pancreas, SPACING, reach_mm=10.0)
    assert choice.rule == "pancreas_overlap" and choice.components == 2
    assert choice.mask.dtype == np.uint8 and choice.mask.sum() == 252 and choice.mask[12, 20, 12] == 1
    assert choice.mask[5, 5, 50] == 0


def test_most_voxels_inside_the_pancreas_decides_not_size():
    shape = (20, 20, 60)
    pancreas = np.zeros(shape, bool)
    pancreas[5:15, 5:15, 0:60] = True
    tumour = np.zeros(shape, bool)
    _blob(tumour, slice(0, 20), slice(0, 20), slice(0, 6))  # 2400 voxels, 600 inside
    _blob(tumour, slice(6, 14), slice(6, 14), slice(20, 30))  # 640 voxels, all inside
    choice = primary_tumour(tumour, pancreas, SPACING)
    assert choice.mask.sum() == 640 and choice.mask[10, 10, 25] == 1


def test_without_pancreas_the_largest_component_is_kept():
    tumour, _ = _scene()
    for pancreas in (None, np.zeros(tumour.shape, bool)):
        choice = primary_tumour(tumour, pancreas, SPACING)
        assert choice.rule == "largest_no_pancreas" and choice.mask.sum() == 640


def test_a_component_near_the_pancreas_is_kept_within_reach_and_dropped_beyond():
    shape = (30, 40, 60)
    pancreas = np.zeros(shape, bool)
    pancreas[10:16, 15:22, 5:35] = True
    tumour = np.zeros(shape, bool)
    _blob(tumour, slice(10, 16), slice(25, 30), slice(10, 16))  # starts 4 voxels (8 mm) below the pancreas
    _blob(tumour, slice(2, 6), slice(2, 6), slice(50, 58))  # far away, smaller
    near = primary_tumour(tumour, pancreas, SPACING, reach_mm=10.0)
    assert near.rule == "near_pancreas" and near.mask[12, 27, 12] == 1 and near.mask.sum() == 6 * 5 * 6
    beyond = primary_tumour(tumour, pancreas, SPACING, reach_mm=6.0)
    assert beyond.rule == "none_near_pancreas" and beyond.mask.sum() == 0 and beyond.components == 2
    assert "6 mm" in beyond.describe(6.0)


def test_diagonal_voxels_belong_to_the_same_component():
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 3] = True
    mask[5, 5, 0] = True
    choice = primary_tumour(mask, None, SPACING)
    assert choice.components == 2 and choice.mask.sum() == 3


def test_empty_mask_stays_empty():
    choice = primary_tumour(np.zeros((4, 4, 4), bool), np.ones((4, 4, 4), bool), SPACING)
    assert choice.rule == "none" and choice.mask.sum() == 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        primary_tumour(np.ones((4, 4, 4), bool), np.ones((4, 4, 5), bool), SPACING)


def test_organ_map_on_another_grid_is_resampled():
    """The image-level helper takes the organ map on any grid (e.g. the 0.7 mm reference grid)."""
    tumour, pancreas = _scene()
    labels = sitk.GetImageFromArray(tumour.astype(np.uint8))
    labels.SetSpacing(SPACING)
    labels.SetOrigin((-30.0, 10.0, 5.0))
    fine = np.repeat(np.repeat(np.repeat(pancreas, 2, 0), 2, 1), 2, 2).astype(np.uint8) * PANCREAS_LABEL
    organs = sitk.GetImageFromArray(fine)
    organs.SetSpacing((1.0, 1.0, 1.0))
    organs.SetOrigin((-30.5, 9.5, 4.5))  # same physical extent: voxel centres half a coarse voxel apart
    kept, choice = keep_primary_tumour(labels, organs, 10.0)
    arr = sitk.GetArrayFromImage(kept)
    assert choice.rule == "pancreas_overlap" and arr.sum() == 252
    assert kept.GetSpacing() == labels.GetSpacing() and kept.GetOrigin() == labels.GetOrigin()


def test_what_the_outputs_are_told_about_the_choice():
    tumour, pancreas = _scene()
    kept = primary_tumour(tumour, pancreas, SPACING).selection(10.0)
    assert (kept.components, kept.rule, kept.reach_mm) == (2, "pancreas_overlap", 10.0)
    assert selection_statement(kept) == "" and selection_statement(None) == ""
    far = np.zeros_like(tumour)
    _blob(far, slice(2, 10), slice(2, 10), slice(45, 55))
    dropped = primary_tumour(far, pancreas, SPACING, reach_mm=10.0).selection(10.0)
    text = selection_statement(dropped)
    assert dropped.rule == "none_near_pancreas" and "1 region, all more than 10 mm" in text
    assert "lymph nodes only" in text
    unanchored = selection_statement(primary_tumour(tumour, None, SPACING).selection(10.0))
    assert unanchored.startswith("No pancreas was segmented") and "2 regions" in unanchored
    assert {primary_tumour(np.zeros((2, 2, 2)), None, SPACING).rule, kept.rule, dropped.rule} <= set(RULES)


def test_a_large_region_touching_the_pancreas_loses_to_one_mostly_inside():
    """The validation case that switched with the registration setting: a 12 mL false region with
    more voxels in the segmented pancreas than the tumour in the tail, of which only a
    share lies in the (under-segmented) gland. Weighted by the share inside, the tumour wins."""
    shape = (30, 60, 80)
    pancreas = np.zeros(shape, bool)
    pancreas[10:20, 20:30, 0:80] = True
    tumour = np.zeros(shape, bool)
    _blob(tumour, slice(12, 18), slice(24, 34), slice(60, 70))  # 600 voxels, 6*6*10 = 360 inside
    _blob(tumour, slice(5, 25), slice(26, 48), slice(5, 15))  # 4400 voxels, 10*4*10 = 400 inside: more
    tumour[15, 22, 40] = True  # one stray voxel entirely inside: too small to win
    choice = primary_tumour(tumour, pancreas, SPACING)
    assert choice.rule == "pancreas_overlap" and choice.components == 3
    assert choice.mask.sum() == 600 and choice.mask[15, 30, 65] == 1


def _hu(shape, regions):
    """A venous image: -100 HU fat, with (slices, HU) regions painted in."""
    hu = np.full(shape, -100.0, np.float32)
    for box, value in regions:
        hu[box] = value
    return hu


def test_density_check_sets_fluid_aside_and_keeps_a_solid_tumour_spilling_into_fat():
    """A fluid-filled region in the pancreas (water, 8 HU) loses to a solid tumour (40 HU) outside it
    but within reach, even though only the fluid one overlaps the gland; the tumour's fatty edge
    (a third of it at -100 HU) does not take its upper quartile below 20 HU."""
    shape = (30, 40, 60)
    pancreas = np.zeros(shape, bool)
    pancreas[10:16, 15:22, 5:35] = True
    mask = np.zeros(shape, bool)
    fluid = (slice(10, 16), slice(15, 22), slice(20, 30))  # inside the pancreas
    solid = (slice(10, 16), slice(24, 30), slice(5, 11))  # 4 mm below it
    mask[fluid] = mask[solid] = True
    hu = _hu(shape, [(fluid, 8.0), (solid, 40.0), ((slice(10, 12), slice(24, 30), slice(5, 11)), -100.0)])
    off = primary_tumour(mask, pancreas, SPACING, 10.0)
    assert off.rule == "pancreas_overlap" and off.mask[fluid].all()
    on = primary_tumour(mask, pancreas, SPACING, 10.0, hu, 20.0)
    assert on.rule == "near_pancreas" and on.components == 2 and on.mask[solid].all() and not on.mask[fluid].any()


def test_density_check_keeps_nothing_when_every_region_is_fluid_or_fat():
    tumour, pancreas = _scene()
    hu = _hu(tumour.shape, [((slice(11, 17), slice(18, 25), slice(10, 16)), 10.0)])  # the far blob stays fat
    choice = primary_tumour(tumour, pancreas, SPACING, 10.0, hu, 20.0)
    assert choice.rule == "none_solid" and choice.components == 2 and choice.mask.sum() == 0
    text = selection_statement(choice.selection(10.0))
    assert "2 regions, none of soft-tissue density" in text and "lymph nodes only" in text
    assert "none_solid" in RULES
    with pytest.raises(ValueError, match="venous image"):
        primary_tumour(tumour, pancreas, SPACING, 10.0, None, 20.0)


def test_keep_primary_tumour_reads_the_venous_image_on_any_grid():
    """The operator's wrapper resamples a venous image on another grid to the mask's before the check."""
    tumour, pancreas = _scene()
    labels = sitk.GetImageFromArray(tumour.astype(np.uint8))
    labels.SetSpacing(SPACING)
    organs = sitk.GetImageFromArray(np.where(pancreas, PANCREAS_LABEL, 0).astype(np.uint8))
    organs.CopyInformation(labels)

    def venous_at_half_spacing(regions):
        coarse = sitk.GetImageFromArray(_hu(tumour.shape, regions))
        coarse.CopyInformation(labels)
        return sitk.Resample(coarse, [2 * s for s in labels.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                             labels.GetOrigin(), [s / 2 for s in SPACING], labels.GetDirection(), -100.0)

    in_pancreas, far = (slice(11, 17), slice(18, 25), slice(10, 16)), (slice(2, 10), slice(2, 10), slice(45, 55))
    _, choice = keep_primary_tumour(labels, organs, 10.0, venous_at_half_spacing([(in_pancreas, 5.0)]), 20.0)
    assert choice.rule == "none_solid"  # the pancreas blob is fluid, the far one fat
    kept, choice = keep_primary_tumour(labels, organs, 30.0, venous_at_half_spacing([(in_pancreas, 5.0), (far, 45.0)]),
                                       20.0)
    assert choice.rule == "near_pancreas" and sitk.GetArrayFromImage(kept)[5, 5, 50] == 1
    assert sitk.GetArrayFromImage(kept)[12, 20, 12] == 0
