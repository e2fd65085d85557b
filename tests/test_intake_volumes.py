"""Series to volume on generated tiny studies: the volumes equal the generator's ground truth
geometry and HU; slice order, per-slice rescale, non-axial orientation, gaps and tilt."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lnmet.config import load_settings
from lnmet.dicom_io import VolumeGeometryError, build_volume, scan_folder
from operators.phase_selector import select_phases
from operators.series_to_volume import selection_to_volumes
from operators.study_loader import load_series
from test_intake_support import copy_series


def _assert_same_grid(img: sitk.Image, ref: sitk.Image) -> None:
    assert img.GetSize() == ref.GetSize()
    assert np.allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    assert np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    assert np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)


def _expected_hu(ref: sitk.Image) -> np.ndarray:
    # the generator stores unsigned 12-bit with intercept -1024: HU rounded and clipped to [-1024, 3071]
    return np.clip(np.rint(sitk.GetArrayFromImage(ref)), -1024, 3071)


def test_both_phases_equal_ground_truth(tiny_study_dir: Path, tiny_study) -> None:
    selection = select_phases(load_series(tiny_study_dir / "dicom"), load_settings())
    venous, arterial = selection_to_volumes(selection)
    for vol, ref, phase in ((venous, tiny_study.venous, "venous"), (arterial, tiny_study.arterial, "arterial")):
        assert vol.phase == phase and vol.series.phase == phase
        _assert_same_grid(vol.image, ref)
        arr = sitk.GetArrayFromImage(vol.image)
        assert arr.dtype == np.float32
        assert np.array_equal(arr, _expected_hu(ref))
        assert vol.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
        assert vol.frame_of_reference_uid
        assert len(vol.source_files) == len(vol.sop_instance_uids) == ref.GetSize()[2]
        z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in vol.source_files]
        assert z == sorted(z)
        assert vol.notes == []


def test_order_comes_from_positions_not_numbers_or_names(tiny_study_dir: Path, tiny_study, tmp_path: Path) -> None:
    """Instance numbers reversed and files renamed in a shuffled order: same volume."""
    src = tiny_study_dir / "dicom" / "venous"
    n = len(list(src.glob("*.dcm")))
    perm = np.random.default_rng(0).permutation(n)

    def modify(ds, k):
        ds.InstanceNumber = n - k
    copy_series(src, tmp_path / "tmp", modify)
    out = tmp_path / "shuffled"
    out.mkdir()
    for k, f in enumerate(sorted((tmp_path / "tmp").glob("*.dcm"))):
        f.rename(out / f"X{perm[k]:04d}.dcm")
    built = build_volume(scan_folder(out).series[0])
    _assert_same_grid(built.image, tiny_study.venous)
    assert np.array_equal(sitk.GetArrayFromImage(built.image), _expected_hu(tiny_study.venous))


def test_rescale_is_applied_per_slice(tiny_study_dir: Path, tiny_study, tmp_path: Path) -> None:
    """Odd slices re-encoded as signed with slope 2 and intercept -1000: same HU."""
    def modify(ds, k):
        if k % 2:
            hu = ds.pixel_array.astype(np.float64) - 1024.0
            stored = np.rint((hu + 1000.0) / 2.0).astype(np.int16)
            ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
            ds.RescaleSlope, ds.RescaleIntercept = "2", "-1000"
            ds.PixelData = stored.tobytes()
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path, modify)
    arr = sitk.GetArrayFromImage(build_volume(scan_folder(tmp_path).series[0]).image)
    exp = _expected_hu(tiny_study.venous)
    assert np.array_equal(arr[0::2], exp[0::2])
    odd = np.rint((exp[1::2] + 1000.0) / 2.0) * 2.0 - 1000.0  # what the slope-2 encoding can represent
    assert np.array_equal(arr[1::2], odd)


def test_coronal_series_is_placed_by_its_direction_cosines(tiny_study, tmp_path: Path, tiny_study_dir: Path) -> None:
    """The venous volume written as coronal slices (rows along +x, columns along -z, slices along
    +y): the volume resampled onto the axial ground-truth grid equals it exactly."""
    ref = tiny_study.venous
    arr = _expected_hu(ref)  # z, y, x
    nx, ny, nz = ref.GetSize()
    sx, sy, sz = ref.GetSpacing()
    ox, oy, oz = ref.GetOrigin()
    template = pydicom.dcmread(sorted((tiny_study_dir / "dicom" / "venous").glob("*.dcm"))[0])
    for j in range(ny):
        ds = template.copy()
        plane = arr[::-1, j, :]  # rows go from top (max z) down: column direction -z
        ds.Rows, ds.Columns = nz, nx
        ds.PixelSpacing = [f"{sz:g}", f"{sx:g}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [f"{ox:g}", f"{oy + j * sy:g}", f"{oz + (nz - 1) * sz:g}"]
        ds.InstanceNumber = j + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["coronal", str(j)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = (plane + 1024).astype(np.uint16).tobytes()
        ds.save_as(tmp_path / f"COR{j:03d}.dcm", enforce_file_format=True)
    img = build_volume(scan_folder(tmp_path).series[0]).image
    assert img.GetSize() == (nx, nz, ny)
    assert np.allclose(np.array(img.GetDirection()).reshape(3, 3), [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    back = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, -2000.0, sitk.sitkFloat32)
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)


def test_missing_slice_is_a_clear_error(tiny_study_dir: Path, tmp_path: Path) -> None:
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path)
    files = sorted(tmp_path.glob("*.dcm"))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    files[12].unlink()
    series = scan_folder(tmp_path).series[0]
    with pytest.raises(VolumeGeometryError) as err:
        build_volume(series)
    msg = str(err.value)
    assert series.series_uid in msg and "Portal venous" in msg
    assert f"gap of 6.00 mm between slices at {z[11]:.2f} and {z[13]:.2f} mm" in msg
    assert "usual step 3.00 mm" in msg


def test_gantry_tilt_is_a_clear_error(tiny_study_dir: Path, tmp_path: Path) -> None:
    tilt = math.radians(12.0)

    def modify(ds, k):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:g}", f"{y + k * 3.0 * math.tan(tilt):.4f}", f"{z:g}"]
        ds.GantryDetectorTilt = "12"
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path, modify)
    with pytest.raises(VolumeGeometryError, match=r"12\.00 degrees off the normal.*gantry tilt.*GantryDetectorTilt 12"):
        build_volume(scan_folder(tmp_path).series[0])


def test_mixed_matrix_sizes_are_a_clear_error(tiny_study_dir: Path, tmp_path: Path) -> None:
    def modify(ds, k):
        if k == 5:
            crop = ds.pixel_array[:32, :32].copy()
            ds.Rows, ds.Columns = 32, 32
            ds.PixelData = crop.tobytes()
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path, modify)
    with pytest.raises(VolumeGeometryError, match="different matrix sizes"):
        build_volume(scan_folder(tmp_path).series[0])
