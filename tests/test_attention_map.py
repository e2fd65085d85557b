"""Known-answer tests of the signed-distance attention map (paper Eq. 1-2, Table 7 from app.yaml)."""

from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from lnmet.attention import attention_array, attention_map, signed_distance_mm, trapezoid
from lnmet.config import AttentionClass, config_path, load_settings, parse_settings
from lnmet.labels import ORGAN_BY_KEY


@pytest.fixture(scope="module")
def settings():
    return load_settings().attention


def _cls(settings, key: str) -> AttentionClass:
    return next(c for c in settings.classes if c.key == key)


def test_trapezoid_ramp_values_from_settings(settings):
    ramp = settings.ramp_mm
    for c in settings.classes:
        d = np.array([c.d_min - ramp - 0.5, c.d_min - ramp / 2, c.d_min, (c.d_min + c.d_max) / 2,
                      c.d_max, c.d_max + ramp / 2, c.d_max + ramp + 0.5])
        np.testing.assert_allclose(trapezoid(d, c.d_min, c.d_max, ramp), [0, 0.5, 1, 1, 1, 0.5, 0], atol=1e-6)
    # the paper's 3 mm ramp: d_min - 1.5 mm and d_max + 1.5 mm give 0.5
    assert ramp == 3.0
    panc = _cls(settings, "pancreas")
    np.testing.assert_allclose(trapezoid(np.array([panc.d_min - 1.5, panc.d_max + 1.5]), panc.d_min,
                                         panc.d_max, ramp), [0.5, 0.5], atol=1e-6)


def test_signed_distance_slab_anisotropic():
    spacing = (2.0, 0.5, 0.7)  # z, y, x
    mask = np.zeros((12, 6, 5), bool)
    mask[:5] = True  # slab z = 0..4 inside
    d = signed_distance_mm(mask, spacing)
    z = np.arange(12)
    expected = np.where(z <= 4, -(5 - z) * 2.0, (z - 4) * 2.0)
    np.testing.assert_allclose(d[:, 3, 2], expected, atol=1e-5)
    # the same slab along x uses the x spacing
    mask_x = np.zeros((4, 4, 20), bool)
    mask_x[..., :8] = True
    dx = signed_distance_mm(mask_x, spacing)
    x = np.arange(20)
    np.testing.assert_allclose(dx[1, 1], np.where(x <= 7, -(8 - x) * 0.7, (x - 7) * 0.7), atol=1e-5)


def test_signed_distance_sphere_anisotropic():
    spacing = np.array([2.0, 1.0, 1.25])
    shape = (30, 60, 50)
    centre = (np.array(shape) - 1) / 2 * spacing
    zz, yy, xx = np.indices(shape).astype(float)
    r = np.sqrt(((zz * spacing[0] - centre[0]) ** 2) + ((yy * spacing[1] - centre[1]) ** 2)
                + ((xx * spacing[2] - centre[2]) ** 2))
    radius = 12.0
    mask = r <= radius
    d = signed_distance_mm(mask, spacing)
    assert (d[mask] < 0).all() and (d[~mask] > 0).all()
    # distance to a discretised sphere equals the analytic one within one voxel diagonal
    tol = float(np.linalg.norm(spacing))
    far = r > radius + 2
    np.testing.assert_array_less(np.abs(d[far] - (r[far] - radius)), tol)
    deep = r < radius - 2
    np.testing.assert_array_less(np.abs(d[deep] - (r[deep] - radius)), tol)


def _slab_labels(key: str, shape=(60, 4, 4), inside_until: int = 30):
    labels = np.zeros(shape, np.uint8)
    labels[:inside_until] = ORGAN_BY_KEY[key].label
    return labels


def test_inside_rule_pancreas_depths(settings):
    """Inside the pancreas (d_min = -5): 2 mm deep -> 1, 6.5 mm deep -> 0.5, >= 8 mm deep -> 0."""
    panc = _cls(settings, "pancreas")
    assert panc.d_min == -5
    spacing = (0.5, 1.0, 1.0)
    labels = _slab_labels("pancreas", shape=(60, 3, 3), inside_until=40)
    att = attention_array(labels, spacing, settings)[:, 1, 1]
    depth_vox = {2.0: 40 - 4, 6.5: 40 - 13, 8.0: 40 - 16, 10.0: 40 - 20}  # depth (k+1)*0.5 mm
    expected = {2.0: 1.0, 6.5: 0.5, 8.0: 0.0, 10.0: 0.0}
    for depth, z in depth_vox.items():
        assert att[z] == pytest.approx(expected[depth], abs=1e-5), depth
    # outside: 1 up to d_max, 0.5 at d_max + 1.5 mm, 0 beyond d_max + 3 mm
    outside = {(panc.d_max, 1.0), (panc.d_max + 1.5, 0.5)}
    labels2 = _slab_labels("pancreas", shape=(80, 3, 3), inside_until=10)
    att2 = attention_array(labels2, spacing, settings)[:, 1, 1]
    for dist, value in outside:
        assert att2[9 + int(round(dist / 0.5))] == pytest.approx(value, abs=1e-5)
    assert att2[9 + int((panc.d_max + settings.ramp_mm) / 0.5):].max() == 0.0
    assert att2[9 + int((panc.d_max + settings.ramp_mm) / 0.5) - 1] > 0.0


def test_inside_uses_own_score_not_the_max(settings):
    """A voxel deep inside the spleen (d_min 0) gets the spleen's 0, even where the adjacent aorta's
    range would give 1; a voxel outside both gets the maximum."""
    spacing = (1.0, 1.0, 1.0)
    labels = np.zeros((70, 3, 3), np.uint8)
    labels[:30] = ORGAN_BY_KEY["spleen"].label
    labels[30:34] = ORGAN_BY_KEY["aorta"].label
    att = attention_array(labels, spacing, settings)[:, 1, 1]
    spleen, aorta = _cls(settings, "spleen"), _cls(settings, "aorta")
    z_in = 20  # 10 mm deep in the spleen, 10 mm from the aorta
    assert trapezoid(np.array([-10.0]), spleen.d_min, spleen.d_max, settings.ramp_mm)[0] == 0
    assert att[z_in] == 0.0
    z_in2 = 28  # 2 mm deep: spleen's ramp gives (3-2)/3
    assert att[z_in2] == pytest.approx(1 / 3, abs=1e-5)
    # outside both (beyond the aorta): max of the spleen's and the aorta's score
    for z in range(34, 70):
        d_spl, d_ao = z - 29.0, z - 33.0
        want = max(trapezoid(np.array([d_spl]), spleen.d_min, spleen.d_max, settings.ramp_mm)[0],
                   trapezoid(np.array([d_ao]), aorta.d_min, aorta.d_max, settings.ramp_mm)[0])
        assert att[z] == pytest.approx(want, abs=1e-5)
    assert att[34 + int(aorta.d_max) - 1] == 1.0 and att[-1] == 0.0


def _brute_force(labels, spacing, settings):
    """Eq. 1-2 on the whole volume, class by class, without bounding boxes."""
    scores = {}
    for c in settings.classes:
        m = labels == c.label
        if m.any():
            scores[c.label] = trapezoid(signed_distance_mm(m, spacing), c.d_min, c.d_max, settings.ramp_mm)
    out = np.max(np.stack(list(scores.values())), axis=0)
    for lab, s in scores.items():
        out[labels == lab] = s[labels == lab]
    return out


def test_bounding_box_restriction_matches_whole_volume(settings):
    rng = np.random.default_rng(0)
    shape = (40, 70, 60)
    labels = np.zeros(shape, np.uint8)
    for c in settings.classes[:6]:
        z, y, x = rng.integers(5, 35), rng.integers(10, 60), rng.integers(10, 50)
        labels[max(0, z - 3):z + 3, max(0, y - 5):y + 6, max(0, x - 4):x + 4] = c.label
    spacing = (2.5, 0.8, 0.9)
    got = attention_array(labels, spacing, settings)
    np.testing.assert_allclose(got, _brute_force(labels, spacing, settings), atol=1e-6)
    assert 0 < (got > 0).mean() < 1


def test_sitk_wrapper_keeps_grid_and_honours_xyz_spacing(settings):
    arr = np.zeros((10, 20, 30), np.uint8)
    arr[:, :, :5] = ORGAN_BY_KEY["aorta"].label  # slab along x
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 1.0, 4.0))  # x, y, z
    img.SetOrigin((10.0, -5.0, 3.0))
    out = attention_map(img, settings)
    assert out.GetPixelID() == sitk.sitkFloat32
    assert out.GetSpacing() == img.GetSpacing() and out.GetOrigin() == img.GetOrigin()
    row = sitk.GetArrayFromImage(out)[5, 10]
    aorta = _cls(settings, "aorta")
    d = (np.arange(30) - 4) * 2.0  # x spacing 2 mm outside
    np.testing.assert_allclose(row[5:], trapezoid(d[5:], aorta.d_min, aorta.d_max, settings.ramp_mm), atol=1e-6)


def test_parameters_come_from_the_settings(tmp_path):
    raw = yaml.safe_load(config_path().read_text())
    raw["attention"]["classes"]["pancreas"]["d_max"] = 4
    raw["attention"]["ramp_mm"] = 1.0
    changed = parse_settings(raw).attention
    labels = _slab_labels("pancreas", shape=(40, 3, 3), inside_until=10)
    att = attention_array(labels, (1.0, 1.0, 1.0), changed)[:, 1, 1]
    assert att[9 + 4] == 1.0 and att[9 + 5] == 0.0  # d_max 4, ramp 1
    default = attention_array(labels, (1.0, 1.0, 1.0), load_settings().attention)[:, 1, 1]
    assert default[9 + 5] == 1.0


def test_no_structures_gives_zero(settings):
    out = attention_array(np.zeros((5, 6, 7), np.uint8), (1, 1, 1), settings)
    assert out.shape == (5, 6, 7) and not out.any()
