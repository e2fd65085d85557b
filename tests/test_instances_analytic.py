"""LN instances from a probability map: resampling to the reference grid, threshold, components,
minimum volume, deterministic numbering."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import pytest

from lnmet.geometry import working_grid
from lnmet.instances import instance_ids, label_components, ln_instances


def _reference(size=(80, 80, 40), spacing=(0.75, 0.75, 1.0)) -> sitk.Image:
    ref = sitk.Image(list(size), sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetOrigin((-30.0, -20.0, 5.0))
    return ref


def _blobs(grid: sitk.Image, spheres: list[tuple[tuple[float, float, float], float]]) -> sitk.Image:
    """Probability 1 inside spheres (centre in mm, radius mm), 0 outside, on ``grid``."""
    size = grid.GetSize()
    z, y, x = np.mgrid[:size[2], :size[1], :size[0]].astype(float)
    ox, oy, oz = grid.GetOrigin()
    sx, sy, sz = grid.GetSpacing()
    X, Y, Z = ox + x * sx, oy + y * sy, oz + z * sz
    p = np.zeros(z.shape, np.float32)
    for (cx, cy, cz), r in spheres:
        p[(X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2 <= r * r] = 1.0
    img = sitk.GetImageFromArray(p)
    img.CopyInformation(grid)
    return img


def test_instances_on_reference_grid_sorted_by_volume():
    ref = _reference()
    work = working_grid(ref, (1.5, 1.5, 1.5))
    spheres = [((-10.0, 0.0, 25.0), 3.0), ((10.0, 10.0, 20.0), 5.0), ((15.0, -10.0, 30.0), 4.0),
               ((-20.0, 20.0, 15.0), 1.0)]  # the last one (~4 mm^3) is below the minimum volume
    inst = ln_instances(_blobs(work, spheres), ref, 0.5, min_volume_mm3=20.0)
    assert inst.GetPixelID() == sitk.sitkUInt16
    assert inst.GetSize() == ref.GetSize() and inst.GetSpacing() == ref.GetSpacing()
    assert inst.GetOrigin() == ref.GetOrigin()
    arr = sitk.GetArrayFromImage(inst)
    assert instance_ids(inst) == [1, 2, 3]
    vols = np.bincount(arr.ravel())[1:] * np.prod(ref.GetSpacing())
    assert vols[0] > vols[1] > vols[2]
    # ids follow decreasing volume (radii 3, 5, 4 -> ids 3, 1, 2); each sphere has about its volume
    for k, ((cx, cy, cz), r) in zip([3, 1, 2], spheres[:3]):
        idx = ref.TransformPhysicalPointToIndex((cx, cy, cz))
        assert arr[idx[2], idx[1], idx[0]] == k
        assert vols[k - 1] == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.25)


def test_instances_match_full_resampling():
    """The bounding-box shortcut gives the same map as resampling the whole volume."""
    ref = _reference(size=(60, 50, 30))
    work = working_grid(ref, (1.5, 1.5, 1.5))
    rng = np.random.default_rng(0)
    p = rng.random(sitk.GetArrayViewFromImage(work).shape).astype(np.float32) ** 8  # sparse peaks
    prob = sitk.GetImageFromArray(p)
    prob.CopyInformation(work)
    fast = sitk.GetArrayFromImage(ln_instances(prob, ref, 0.5, 0.0))
    full = sitk.Resample(prob, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    slow = sitk.GetArrayFromImage(label_components(full > 0.5, 0.0))
    np.testing.assert_array_equal(fast, slow)
    assert fast.max() > 3


def test_empty_probability_gives_empty_map_and_bad_threshold_is_named():
    ref = _reference(size=(20, 20, 10))
    work = working_grid(ref, (1.5, 1.5, 1.5))
    inst = ln_instances(_blobs(work, []), ref, 0.5, 20.0)
    assert instance_ids(inst) == [] and inst.GetSize() == ref.GetSize()
    with pytest.raises(ValueError, match="probability_threshold"):
        ln_instances(_blobs(work, []), ref, 1.5, 20.0)


def test_full_connectivity_joins_diagonal_voxels():
    m = np.zeros((3, 3, 3), np.uint8)
    m[0, 0, 0] = m[1, 1, 1] = 1
    img = sitk.GetImageFromArray(m)
    assert instance_ids(label_components(img, 0.0)) == [1]


def _hu_reference(spheres_hu: list[tuple[tuple[float, float, float], float, float]], size=(80, 80, 40),
                  spacing=(0.75, 0.75, 1.0), fat_hu: float = -100.0) -> sitk.Image:
    """A venous image of fat with spheres (centre mm, radius mm, HU) painted in."""
    ref = _reference(size, spacing)
    arr = np.full(ref.GetSize()[::-1], fat_hu, np.float32)
    z, y, x = np.mgrid[:size[2], :size[1], :size[0]].astype(float)
    ox, oy, oz = ref.GetOrigin()
    X, Y, Z = ox + x * spacing[0], oy + y * spacing[1], oz + z * spacing[2]
    for (cx, cy, cz), r, hu in spheres_hu:
        arr[(X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2 <= r * r] = hu
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    return img


def test_density_check_drops_fat_components_and_keeps_spilling_nodes():
    """A component segmented in fat is dropped; a node whose segmentation spills into the fat
    around it (70% of its voxels fat) is kept (upper quartile, not mean); numbering stays by volume."""
    node, spill, fat_blob = ((-10.0, 0.0, 20.0), 4.0), ((12.0, 10.0, 20.0), 3.0), ((10.0, -12.0, 22.0), 5.0)
    venous = _hu_reference([(node[0], node[1], 60.0), (spill[0], 2.0, 60.0)])  # the spill node: HU radius 2
    work = working_grid(venous, (1.5, 1.5, 1.5))
    prob = _blobs(work, [node, spill, fat_blob])
    plain = ln_instances(prob, venous, 0.5, min_volume_mm3=10.0)
    checked = ln_instances(prob, venous, 0.5, min_volume_mm3=10.0, min_density_hu=0.0)
    assert instance_ids(plain) == [1, 2, 3]
    assert instance_ids(checked) == [1, 2]

    def at(img, centre):
        idx = venous.TransformPhysicalPointToIndex(centre)
        return int(sitk.GetArrayViewFromImage(img)[idx[2], idx[1], idx[0]])

    assert at(plain, fat_blob[0]) == 1 and at(checked, fat_blob[0]) == 0  # the largest, but fat
    assert (at(checked, node[0]), at(checked, spill[0])) == (1, 2)
    spill_voxels = sitk.GetArrayViewFromImage(checked) == 2
    assert np.mean(sitk.GetArrayViewFromImage(venous)[spill_voxels] > 0) < 0.5  # mostly fat, still kept
    # nodes kept are identical to the unchecked ones
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(checked) == 1, sitk.GetArrayViewFromImage(plain) == 2)


def test_density_check_needs_the_venous_grid():
    from lnmet.instances import drop_fat_density

    labels = sitk.Image([10, 10, 10], sitk.sitkUInt16)
    labels[5, 5, 5] = 1
    with pytest.raises(ValueError, match="venous image"):
        drop_fat_density(labels, sitk.Image([9, 10, 10], sitk.sitkFloat32), 0.0)
    assert drop_fat_density(labels, sitk.Image([10, 10, 10], sitk.sitkFloat32) + 50.0, 0.0)[5, 5, 5] == 1


def test_fat_rim_trim_keeps_the_node_and_its_deep_hilum():
    """A node segmented 1.5 mm (one working voxel) too wide: the fat rim goes, the node's soft tissue
    and its fatty hilum (deep inside) stay; a segmentation 3 mm too wide loses only its outer 1.5 mm;
    ids and order are unchanged."""
    node, wide, fat_blob = ((-10.0, 0.0, 20.0), 5.0), ((12.0, 10.0, 20.0), 4.0), ((10.0, -12.0, 22.0), 2.5)
    hilum = ((-10.0, 0.0, 20.0), 1.5)
    venous = _hu_reference([(node[0], node[1], 60.0), (hilum[0], hilum[1], -100.0), (wide[0], wide[1], 60.0)])
    work = working_grid(venous, (1.5, 1.5, 1.5))
    prob = _blobs(work, [(node[0], node[1] + 1.5), (wide[0], wide[1] + 3.0), fat_blob])
    plain = sitk.GetArrayFromImage(ln_instances(prob, venous, 0.5, min_volume_mm3=10.0))
    trimmed = sitk.GetArrayFromImage(ln_instances(prob, venous, 0.5, min_volume_mm3=10.0, rim_fat_hu=-50.0))
    assert instance_ids(plain) == instance_ids(trimmed) == [1, 2, 3]
    hu = sitk.GetArrayFromImage(venous)
    vox = float(np.prod(venous.GetSpacing()))
    sphere = 4 / 3 * np.pi * node[1] ** 3

    def at(arr, centre):
        idx = venous.TransformPhysicalPointToIndex(centre)
        return int(arr[idx[2], idx[1], idx[0]])

    first, second = at(plain, node[0]), at(plain, wide[0])
    assert (at(trimmed, node[0]), at(trimmed, wide[0])) == (first, second)  # the hilum voxel itself stays
    assert np.sum(plain == first) * vox > 1.4 * sphere
    assert np.sum(trimmed == first) * vox == pytest.approx(sphere, rel=0.12)
    assert np.all(hu[trimmed == first] > -50.0) is np.False_  # hilum fat kept
    assert np.all((trimmed == first) >= ((plain == first) & (hu > -50.0)))  # soft tissue all kept
    # 3 mm too wide: 1.5 mm of fat shell stays around the soft tissue
    kept_fat = (trimmed == second) & (hu < -50.0)
    assert 0 < kept_fat.sum() < ((plain == second) & (hu < -50.0)).sum()
    fat_id = at(plain, fat_blob[0])
    assert 0 < np.sum(trimmed == fat_id) < np.sum(plain == fat_id)  # no density check here: only its rim goes


def test_fat_rim_trim_leaves_an_all_fat_node_whole():
    from lnmet.instances import trim_fat_rim

    lab = np.zeros((7, 7, 7), np.uint16)
    lab[2:4, 2:5, 2:5] = 1  # two voxels thick: every voxel within 1.5 mm of the edge (1 mm voxels)
    labels = sitk.GetImageFromArray(lab)
    venous = sitk.GetImageFromArray(np.full(lab.shape, -100.0, np.float32))
    out = sitk.GetArrayFromImage(trim_fat_rim(labels, venous, -50.0, 1.5))
    np.testing.assert_array_equal(out, lab)


def test_fat_rim_trim_renumbers_by_trimmed_volume():
    from lnmet.instances import trim_fat_rim

    lab = np.zeros((10, 20, 10), np.uint16)
    hu = np.full(lab.shape, 40.0, np.float32)
    lab[2:8, 2:8, 2:8] = 1  # 216 voxels of fat: its outer layer (64 left inside) is rim
    hu[2:8, 2:8, 2:8] = -100.0
    lab[2:7, 11:16, 2:7] = 2  # 125 voxels of soft tissue: untouched
    labels, venous = sitk.GetImageFromArray(lab), sitk.GetImageFromArray(hu)
    out = sitk.GetArrayFromImage(trim_fat_rim(labels, venous, -30.0, 1.5))
    assert np.bincount(out.ravel()).tolist() == [out.size - 189, 125, 64]
    assert out[4, 13, 4] == 1 and out[4, 4, 4] == 2


def test_min_voxels_drops_single_voxels_of_a_coarse_scan_only():
    """On a 3 mm scan 20 mm^3 is less than one voxel: ``min_voxels`` drops one-voxel components there,
    and on a 1.5 mm grid, where 20 mm^3 is about six voxels, values up to 5 change nothing."""
    for spacing, kept_with_3 in ((3.0, [False, True]), (1.5, [True, True])):
        ref = _reference(size=(40, 40, 30), spacing=(spacing,) * 3)
        prob = np.zeros(ref.GetSize()[::-1], np.float32)
        prob[10, 10, 10] = 1.0                      # one voxel (27 or 3.4 mm^3)
        prob[20:22, 20:22, 20:22] = 1.0             # eight voxels
        if spacing == 1.5:
            prob[10:12, 10:12, 10:12] = 1.0         # 27 mm^3 at 1.5 mm too: above min_volume_mm3
        img = sitk.GetImageFromArray(prob)
        img.CopyInformation(ref)
        centres = [(10, 10, 10), (20, 20, 20)]
        for n, expected in ((1, [True, True]), (3, kept_with_3), (5, kept_with_3)):
            arr = sitk.GetArrayFromImage(ln_instances(img, ref, 0.5, min_volume_mm3=20.0, min_voxels=n))
            assert [bool(arr[c]) for c in centres] == expected, (spacing, n)
        # the labelling on its own: components smaller than min_voxels go, whatever their volume
        lab = sitk.GetArrayFromImage(label_components(img > 0.5, 0.0, min_voxels=9))
        assert lab.max() == 0

