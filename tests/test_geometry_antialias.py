"""Anti-aliased resampling onto the working grid (app.yaml ``working_grid.antialias``)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lnmet.config import SettingsError, config_path, load_settings, parse_settings
from lnmet.geometry import antialiased, resample_image, working_grid
from lnmet.types import PhaseVolume, RegisteredPhases
from operators.patient_classifier import tumour_patch_sources

FINE = (0.703125, 0.703125, 1.0)


def _image(array: np.ndarray, spacing=FINE) -> sitk.Image:
    img = sitk.GetImageFromArray(array.astype(np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin((-20.0, 5.0, 3.0))
    return img


def _interior(img: sitk.Image, margin: int = 4) -> np.ndarray:
    return sitk.GetArrayFromImage(img)[margin:-margin, margin:-margin, margin:-margin]


def test_noise_of_a_fine_series_falls_to_about_a_coarse_voxels_and_the_mean_stays():
    rng = np.random.default_rng(0)
    fine = _image(40.0 + 12.0 * rng.standard_normal((60, 96, 96)))
    grid = working_grid(fine, (1.5, 1.5, 1.5))
    plain = _interior(resample_image(fine, grid))
    smooth = _interior(resample_image(fine, grid, antialias=True))
    # Averaging 0.7 x 0.7 x 1 mm voxels into 1.5 mm ones (about 6.9 of them) divides white noise by
    # about 2.6 (12 -> 4.6 HU); linear interpolation alone averages 8 neighbours unevenly (12 -> 6.9).
    assert 6.0 < plain.std() < 8.0
    assert 3.8 < smooth.std() < 5.4
    assert abs(smooth.mean() - 40.0) < 0.5


def test_an_edge_stays_where_it_is():
    z, y, x = np.meshgrid(np.arange(40), np.arange(64), np.arange(64), indexing="ij")
    fine = _image(np.where(x * FINE[0] < 22.0, -100.0, 60.0))
    grid = working_grid(fine, (1.5, 1.5, 1.5))
    row = sitk.GetArrayFromImage(resample_image(fine, grid, antialias=True))[10, 20]
    xs = np.arange(row.size) * 1.5
    crossing = np.interp(-20.0, row, xs)  # half way between -100 and 60 HU
    assert abs(crossing - 22.0) < 0.5
    assert row[0] == pytest.approx(-100.0, abs=0.5) and row[-3] == pytest.approx(60.0, abs=0.5)


def test_nothing_changes_when_the_target_is_not_coarser():
    rng = np.random.default_rng(1)
    coarse = _image(rng.standard_normal((20, 24, 24)), spacing=(1.5, 1.5, 1.5))
    same = antialiased(coarse, (1.5, 1.5, 1.5))
    assert np.array_equal(sitk.GetArrayFromImage(same), sitk.GetArrayFromImage(coarse))
    # Only the axes that get coarser are smoothed: 1.5 mm slices stay as they are.
    thick = _image(np.tile(np.arange(8.0)[:, None, None] * 50.0, (1, 24, 24)), spacing=(0.7, 0.7, 1.5))
    out = sitk.GetArrayFromImage(antialiased(thick, (1.5, 1.5, 1.5)))
    assert np.allclose(out[:, 12, 12], np.arange(8.0) * 50.0, atol=1e-3)


def _raw_settings() -> dict:
    import yaml

    return yaml.safe_load(config_path().read_text())


def test_the_setting_is_read_and_a_bad_value_is_named():
    raw = _raw_settings()
    raw["working_grid"] = {"antialias": True}
    assert parse_settings(raw).working_grid_antialias is True
    raw["working_grid"] = {"antialias": "yes"}
    with pytest.raises(SettingsError, match="working_grid.antialias"):
        parse_settings(raw)
    raw.pop("working_grid")
    assert parse_settings(raw).working_grid_antialias is False
    assert isinstance(load_settings().working_grid_antialias, bool)


def _registered(antialias: bool) -> RegisteredPhases:
    rng = np.random.default_rng(2)
    ven = _image(12.0 * rng.standard_normal((30, 48, 48)))
    art = _image(12.0 * rng.standard_normal((30, 48, 48)))
    grid = working_grid(ven, (1.5, 1.5, 1.5))
    def phase(name: str, img: sitk.Image) -> PhaseVolume:
        return PhaseVolume(phase=name, image=img, series=None, source_files=[], sop_instance_uids=[],
                           sop_class_uid="", frame_of_reference_uid="1.2.3")

    return RegisteredPhases(venous=phase("venous", ven), arterial=phase("arterial", art),
                            working_venous=resample_image(ven, grid, antialias=antialias),
                            working_arterial=resample_image(art, grid, antialias=antialias),
                            transform=sitk.TranslationTransform(3, (1.0, 0.0, 0.0)), single_phase=False,
                            antialias=antialias)


def test_tumour_patches_come_from_the_smoothed_working_images_when_antialiasing():
    reg = _registered(True)
    venous, arterial, transform = tumour_patch_sources(reg, 1.5)
    assert transform is None  # the working arterial image is registered already
    assert np.array_equal(sitk.GetArrayFromImage(venous), sitk.GetArrayFromImage(reg.working_venous))
    assert np.array_equal(sitk.GetArrayFromImage(arterial), sitk.GetArrayFromImage(reg.working_arterial))
    # Coarser patches than the working grid: smoothed further.
    venous3, _, _ = tumour_patch_sources(reg, 3.0)
    assert sitk.GetArrayFromImage(venous3).std() < sitk.GetArrayFromImage(reg.working_venous).std()

    plain = _registered(False)
    venous, arterial, transform = tumour_patch_sources(plain, 1.5)
    assert venous is plain.venous.image and arterial is plain.arterial.image and transform is plain.transform
