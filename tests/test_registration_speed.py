"""The registration's speed settings: sampling capped per level, and the arterial phase resampled
through the transform sampled as a displacement field (the same image as through the transform)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lnmet.config import SettingsError, load_settings, parse_settings
from lnmet.geometry import resample_image, working_grid
from lnmet.registration import _sampling_fraction, displacement_field, registration_image, transform_points
from test_config import ROOT, _with


def _smooth_transform(reference: sitk.Image) -> sitk.Transform:
    """An affine plus a B-spline with a 60 mm mesh and displacements of a few mm, as registration gives."""
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.02, 0.01, 0.0, -0.01, 0.99, 0.02, 0.0, 0.0, 1.01))
    affine.SetTranslation((1.5, -2.0, 0.7))
    extent = [n * s for n, s in zip(reference.GetSize(), reference.GetSpacing())]
    bspline = sitk.BSplineTransformInitializer(reference, [max(1, round(e / 60.0)) for e in extent], 3)
    params = np.random.default_rng(0).normal(0.0, 2.0, len(bspline.GetParameters()))
    bspline.SetParameters(params.tolist())
    composite = sitk.CompositeTransform([affine])
    composite.AddTransform(bspline)
    return composite


def test_displacement_field_maps_every_grid_point_like_the_transform():
    reference = sitk.Image([64, 64, 40], sitk.sitkFloat32)
    reference.SetSpacing((3.0, 3.0, 3.0))
    reference.SetOrigin((-96.0, -90.0, -60.0))
    transform = _smooth_transform(reference)
    grid = working_grid(reference, (1.5, 1.5, 1.5))
    field = displacement_field(transform, grid, 3.0)
    size = np.array(grid.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    inside = np.random.default_rng(1).integers(0, size, (500, 3))
    points = np.array([grid.TransformIndexToPhysicalPoint([int(v) for v in idx]) for idx in np.vstack([corners, inside])])
    error = np.linalg.norm(transform_points(transform, points) - transform_points(field, points), axis=1)
    assert error.max() < 0.05, f"field differs from the transform by up to {error.max():.3f} mm"


def test_resampling_through_the_field_gives_the_same_image(tiny_study):
    transform = _smooth_transform(tiny_study.venous)
    grid = working_grid(tiny_study.venous, (1.5, 1.5, 1.5))
    exact = sitk.GetArrayFromImage(resample_image(tiny_study.arterial, grid, transform))
    fast = sitk.GetArrayFromImage(resample_image(tiny_study.arterial, grid, displacement_field(transform, grid, 3.0)))
    diff = np.abs(exact - fast)
    assert np.percentile(diff, 99.9) < 2.0 and diff.mean() < 0.1, "HU differ beyond the FOV's edge voxels"


def test_samples_are_capped_per_level():
    reg = load_settings(ROOT / "app.yaml").registration
    fixed = sitk.Image([120, 120, 67], sitk.sitkFloat32)
    voxels = 120 * 120 * 67
    assert _sampling_fraction(reg, fixed, 1) * voxels == pytest.approx(reg.max_samples)
    assert _sampling_fraction(reg, fixed, 4) == reg.sampling_fraction  # coarse levels keep the fraction
    assert parse_settings(_with("registration.max_samples!", None)).registration.max_samples is None
    with pytest.raises(SettingsError, match="registration.max_samples"):
        parse_settings(_with("registration.max_samples", 10))


def test_fine_images_are_block_averaged_to_the_registration_grid():
    image = sitk.Image([200, 200, 60], sitk.sitkInt16) + 40
    image.SetSpacing((0.7, 0.7, 1.0))
    out = registration_image(image, 3.0)
    assert out.GetSpacing() == (3.0, 3.0, 3.0) and out.GetSize() == (47, 47, 20)
    assert float(sitk.GetArrayViewFromImage(out)[5:-5, 5:-5, 5:-5].mean()) == pytest.approx(40.0, abs=0.01)
