"""Arterial-to-venous registration on a generated tiny study: TRE at the generator's landmarks and
Dice of the warped arterial organ labels (the full held-out figures come from
evaluation/registration_accuracy.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lnmet.config import load_settings
from lnmet.geometry import working_grid
from lnmet.registration import THREADS_ENV, register_phases, registration_threads, transform_points, warp_labels
from operators.phase_registration import register_and_resample
from operators.phase_selector import select_phases
from operators.series_to_volume import selection_to_volumes
from operators.study_loader import load_series


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 2.0 * np.logical_and(x, y).sum() / max(1, x.sum() + y.sum())


@pytest.fixture(scope="module")
def volumes(tiny_study_dir: Path):
    return selection_to_volumes(select_phases(load_series(tiny_study_dir / "dicom"), load_settings()))


def test_registration_reduces_tre_and_aligns_organs(volumes, tiny_study) -> None:
    venous, arterial = volumes
    reg = register_and_resample(venous, arterial, load_settings(), target_spacing_mm=1.5)
    p = np.array([lm["venous_mm"] for lm in tiny_study.landmarks])
    q = np.array([lm["arterial_mm"] for lm in tiny_study.landmarks])
    before = np.linalg.norm(p - q, axis=1).mean()
    after = np.linalg.norm(transform_points(reg.transform, p) - q, axis=1).mean()
    assert before > 2.0  # the generator misaligned the phases
    assert after < before / 2.5 and after < 1.5, (before, after)
    organs = sitk.GetArrayFromImage(tiny_study.organs)
    warped = sitk.GetArrayFromImage(warp_labels(tiny_study.arterial_organs, tiny_study.organs, reg.transform))
    unwarped = sitk.GetArrayFromImage(tiny_study.arterial_organs)
    for label in (1, 3, 5):  # spleen, stomach, pancreas
        assert _dice(warped, organs, label) > _dice(unwarped, organs, label)
        assert _dice(warped, organs, label) > 0.9
    # outputs on the working grid made from the venous image at the requested spacing
    grid = working_grid(venous.image, (1.5, 1.5, 1.5))
    for img in (reg.working_venous, reg.working_arterial):
        assert img.GetSize() == grid.GetSize() and img.GetSpacing() == grid.GetSpacing()
        assert img.GetOrigin() == grid.GetOrigin() and img.GetDirection() == grid.GetDirection()
    assert reg.reference is venous.image and not reg.single_phase
    assert reg.registration_metrics["metric_final"] < reg.registration_metrics["metric_initial"]  # MI is negated
    assert reg.registration_metrics["same_frame_of_reference"] == 1.0


def test_registration_is_deterministic(tiny_study, monkeypatch) -> None:
    """Fixed sampling seed, one thread: two runs give the same transform, bit for bit, also where
    ITK's other filters were given several threads (as a cohort worker does)."""
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
    assert registration_threads() == 1
    s = load_settings().registration
    quick = dataclasses.replace(s, affine_iterations=30, bspline_iterations=10)
    a = register_phases(tiny_study.venous, tiny_study.arterial, quick)
    b = register_phases(tiny_study.venous, tiny_study.arterial, quick)
    p = np.array([lm["venous_mm"] for lm in tiny_study.landmarks])
    moved = transform_points(a.transform, p) - p
    assert np.abs(moved).max() > 0.5  # the transform is not the identity
    assert np.array_equal(transform_points(a.transform, p), transform_points(b.transform, p))
    for k in range(a.transform.GetNumberOfTransforms()):
        assert a.transform.GetNthTransform(k).GetParameters() == b.transform.GetNthTransform(k).GetParameters()
    assert a.metrics["threads"] == 1.0


def test_registration_threads_follow_their_own_variable(monkeypatch) -> None:
    """A caller that wants speed over reproducibility sets the registration's own variable."""
    assert THREADS_ENV == "PDAC_LN_REGISTRATION_THREADS"
    monkeypatch.setenv(THREADS_ENV, "3")
    assert registration_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "0")
    assert registration_threads() == 1


def test_single_phase_skips_registration(volumes) -> None:
    venous, _ = volumes
    reg = register_and_resample(venous, None, load_settings(), target_spacing_mm=(2.0, 2.0, 3.0))
    assert reg.single_phase and reg.transform is None and reg.working_arterial is None and reg.arterial is None
    assert reg.working_venous.GetSpacing() == (2.0, 2.0, 3.0)
    # working venous is the venous image resampled (identity) onto the working grid
    p = reg.working_venous.TransformIndexToPhysicalPoint((10, 12, 8))
    assert reg.working_venous.GetPixel((10, 12, 8)) == pytest.approx(
        sitk.Resample(venous.image, reg.working_venous, sitk.Transform(), sitk.sitkLinear, -1024.0).GetPixel((10, 12, 8)))
    assert venous.image.TransformPhysicalPointToContinuousIndex(p) is not None


def _textured_volume(shift_slices: int) -> tuple[sitk.Image, sitk.Image]:
    """A smooth random texture (64 x 64 x 40 voxels of 3 mm) and the same texture moved
    ``shift_slices`` slices along z: two "phases" overlapping over 40 - shift_slices slices."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    a = (ndimage.gaussian_filter(rng.normal(size=(40, 64, 64)), 3) * 3000).astype(np.float32)
    fixed, moving = sitk.GetImageFromArray(a), sitk.GetImageFromArray(a)
    for img in (fixed, moving):
        img.SetSpacing((3.0, 3.0, 3.0))
    moving.SetOrigin((0.0, 0.0, 3.0 * shift_slices))
    return fixed, moving


@pytest.mark.parametrize("shift_slices, when", [(40, "at the start of registration"),
                                                (30, "during the B-spline stage")])
def test_registration_failure_is_a_clear_error(shift_slices, when) -> None:
    """Volumes that do not overlap, and volumes overlapping by 10 slices whose B-spline stage moves
    the arterial one off the venous one (ITK: "All samples map outside moving image buffer"), both
    end in a RegistrationError that says when and what to check, not ITK's raw exception."""
    from lnmet.registration import RegistrationError

    fixed, moving = _textured_volume(shift_slices)
    with pytest.raises(RegistrationError) as caught:
        register_phases(fixed, moving, load_settings().registration)
    message = str(caught.value)
    assert when in message and "All samples map outside moving image buffer" in message
    assert "ITK ERROR" not in message and "0x" not in message and "\n" not in message
    assert "same body region" in message


def test_registration_failure_names_the_series(volumes) -> None:
    """Through the operator's function the error names both series (number, description), so the
    user knows which pair the phase selector chose; the study's identifiers stay out."""
    from lnmet.registration import RegistrationError

    venous, arterial = volumes
    fixed, moving = _textured_volume(40)
    far = dataclasses.replace(arterial, image=moving)
    with pytest.raises(RegistrationError) as caught:
        register_and_resample(dataclasses.replace(venous, image=fixed), far, load_settings())
    message = str(caught.value)
    assert f"arterial: series {arterial.series.series_number} '{arterial.series.series_description}'" in message
    assert f"venous: series {venous.series.series_number} '{venous.series.series_description}'" in message
    assert arterial.series.study_instance_uid not in message
