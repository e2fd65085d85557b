"""LN and tumour measurements on analytic shapes with known answers (anisotropic spacing)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import pytest

from lnmet.labels import ORGAN_BY_KEY
from lnmet.measurements import axial_diameters, measure_lymph_nodes, measure_tumour

SPACING = (0.7, 0.8, 1.25)  # x, y, z: anisotropic on purpose
SIZE = (110, 100, 40)


def _coords():
    z, y, x = np.mgrid[:SIZE[2], :SIZE[1], :SIZE[0]].astype(float)
    return x * SPACING[0], y * SPACING[1], z * SPACING[2]


def _image(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin((10.0, -5.0, 100.0))
    return img


def _ellipsoid(centre, axes, angle_deg):
    """Ellipsoid with semi-axes (a along the rotated x axis, b, c along z), rotated in plane."""
    X, Y, Z = _coords()
    th = np.deg2rad(angle_deg)
    dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
    u = dx * np.cos(th) + dy * np.sin(th)
    v = -dx * np.sin(th) + dy * np.cos(th)
    a, b, c = axes
    return (u / a) ** 2 + (v / b) ** 2 + (dz / c) ** 2 <= 1.0


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0])
def test_ellipsoid_volume_diameters_hu_centroid(angle):
    centre, axes = (38.0, 40.0, 24.0), (11.0, 6.0, 7.0)
    m = _ellipsoid(centre, axes, angle)
    inst = _image(m.astype(np.uint16))
    hu = _image(np.where(m, 35.0, -90.0).astype(np.float32))
    (node,) = measure_lymph_nodes(inst, hu, None)
    assert node.index == 1
    assert node.volume_mm3 == pytest.approx(4 / 3 * np.pi * np.prod(axes), rel=0.03)
    # largest axial section is the equator: long axis 2a, short axis 2b (within about a voxel)
    assert node.long_axis_mm == pytest.approx(2 * axes[0], abs=1.0)
    assert node.short_axis_mm == pytest.approx(2 * axes[1], abs=1.0)
    assert node.mean_hu_venous == pytest.approx(35.0)
    expected = np.array(centre) + np.array([10.0, -5.0, 100.0])
    np.testing.assert_allclose(node.centroid_mm, expected, atol=0.3)
    assert node.nearest_structure == "" and np.isnan(node.distance_mm)


def test_sphere_at_known_distance_from_slab_and_touching():
    X, Y, Z = _coords()
    organs = np.zeros(X.shape, np.uint8)
    slab_x = 60.0  # the aorta slab: x >= 60 mm
    organs[X >= slab_x] = ORGAN_BY_KEY["aorta"].label
    organs[(X < 10.0)] = ORGAN_BY_KEY["spleen"].label  # a farther structure on the other side
    r = 5.0
    inst = np.zeros(X.shape, np.uint16)
    inst[(X - 40.0) ** 2 + (Y - 40.0) ** 2 + (Z - 25.0) ** 2 <= r * r] = 1  # gap to slab 15 mm
    inst[(X - (slab_x - 4.0)) ** 2 + (Y - 15.0) ** 2 + (Z - 25.0) ** 2 <= 16.0] = 2  # touches slab
    venous = _image(np.zeros(X.shape, np.float32))
    nodes = measure_lymph_nodes(_image(inst), venous, _image(organs))
    assert [n.index for n in nodes] == [1, 2]
    assert nodes[0].nearest_structure == "aorta"
    assert nodes[0].distance_mm == pytest.approx(slab_x - 40.0 - r, abs=0.8)
    assert nodes[1].nearest_structure == "aorta" and nodes[1].distance_mm == 0.0


def test_nearest_structure_far_away():
    X, Y, Z = _coords()
    organs = np.zeros(X.shape, np.uint8)
    organs[X >= 75.0] = ORGAN_BY_KEY["stomach"].label
    inst = np.zeros(X.shape, np.uint16)
    inst[(X - 8.0) ** 2 + (Y - 40.0) ** 2 + (Z - 25.0) ** 2 <= 9.0] = 1  # a 64 mm gap
    (node,) = measure_lymph_nodes(_image(inst), _image(np.zeros(X.shape, np.float32)), _image(organs))
    assert node.nearest_structure == "stomach"
    assert node.distance_mm == pytest.approx(75.0 - 8.0 - 3.0, abs=0.8)


def test_axial_diameters_of_a_rectangle_and_empty():
    m = np.zeros((40, 40), bool)
    m[10:20, 5:35] = True  # 10 x 30 pixels at (sy, sx) = (1, 0.5): 10 mm x 15 mm
    long_ax, short_ax = axial_diameters(m, (1.0, 0.5))
    assert long_ax == pytest.approx(np.hypot(10.0, 15.0))  # a rectangle's Feret diameter: diagonal
    assert 0 < short_ax < long_ax
    assert axial_diameters(np.zeros((5, 5), bool), (1.0, 1.0)) == (0.0, 0.0)
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    assert axial_diameters(one, (1.0, 1.0))[0] == pytest.approx(np.sqrt(2.0))


def test_tumour_measurement_and_grid_mismatch():
    m = _ellipsoid((40.0, 40.0, 25.0), (15.0, 10.0, 9.0), 0.0)
    hu = _image(np.where(m, 60.0, 0.0).astype(np.float32))
    t = measure_tumour(_image(m.astype(np.uint8)), hu)
    assert t.volume_mm3 == pytest.approx(4 / 3 * np.pi * 15 * 10 * 9, rel=0.03)
    assert t.max_axial_diameter_mm == pytest.approx(30.0, abs=1.0)
    assert t.mean_hu_venous == pytest.approx(60.0)
    assert measure_tumour(_image(np.zeros_like(m, np.uint8)), hu) is None
    other = sitk.Image([10, 10, 10], sitk.sitkUInt16)
    with pytest.raises(ValueError, match="venous image"):
        measure_lymph_nodes(other, hu, None)
