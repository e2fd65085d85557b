"""The synthetic study generator: determinism, DICOM fidelity, ground truth and cohort statistics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lnmet.config import load_settings
from synthetic import generate_study
from synthetic.cohort import cohort_statistics

ROOT = Path(__file__).resolve().parent.parent


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def _series(study_dir: Path, phase: str) -> list[pydicom.Dataset]:
    files = sorted((study_dir / "dicom" / phase).glob("*.dcm"))
    return [pydicom.dcmread(f) for f in files]


def test_same_seed_gives_identical_study(tiny_study):
    again = generate_study(seed=7, preset="tiny")
    for name in ("venous", "arterial", "organs", "anatomy", "pdac", "ln_instances", "arterial_organs"):
        np.testing.assert_array_equal(_arr(getattr(tiny_study, name)), _arr(getattr(again, name)), err_msg=name)
    assert again.lymph_nodes == tiny_study.lymph_nodes
    assert again.patient == tiny_study.patient
    assert again.study_uid == tiny_study.study_uid


def test_different_seeds_give_different_patients(tiny_study):
    other = generate_study(seed=8, preset="tiny")
    assert not np.array_equal(_arr(other.organs), _arr(tiny_study.organs))
    assert other.study_uid != tiny_study.study_uid


def test_dicom_pixels_rescaled_equal_the_hu_volume(tiny_study, tiny_study_dir):
    for phase in ("arterial", "venous"):
        slices = _series(tiny_study_dir, phase)
        hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
        np.testing.assert_array_equal(hu, _arr(getattr(tiny_study, phase)))


def test_dicom_geometry_matches_ground_truth(tiny_study, tiny_study_dir):
    gt = json.loads((tiny_study_dir / "ground_truth" / "study.json").read_text())
    spacing = np.array(gt["geometry"]["spacing_mm"])
    origin = np.array(gt["geometry"]["origin_mm"])
    organs = sitk.ReadImage(str(tiny_study_dir / "ground_truth" / "organs.nii.gz"))
    np.testing.assert_allclose(organs.GetSpacing(), spacing, atol=1e-6)
    np.testing.assert_allclose(organs.GetOrigin(), origin, atol=1e-3)
    np.testing.assert_array_equal(_arr(organs), _arr(tiny_study.organs))
    for phase in ("arterial", "venous"):
        slices = _series(tiny_study_dir, phase)
        assert len(slices) == gt["geometry"]["size_xyz"][2]
        for k, ds in enumerate(slices):
            np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
            np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                       origin + [0, 0, k * spacing[2]], atol=1e-3)
            np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [spacing[1], spacing[0]], atol=1e-6)
            assert (ds.Columns, ds.Rows) == tuple(gt["geometry"]["size_xyz"][:2])
            assert float(ds.SliceThickness) == pytest.approx(spacing[2])


def test_dicom_headers_describe_a_two_phase_study(tiny_study_dir):
    art, ven = _series(tiny_study_dir, "arterial"), _series(tiny_study_dir, "venous")
    assert {ds.StudyInstanceUID for ds in art + ven} == {art[0].StudyInstanceUID}
    assert len({ds.SeriesInstanceUID for ds in art} | {ds.SeriesInstanceUID for ds in ven}) == 2
    assert len({ds.SOPInstanceUID for ds in art + ven}) == len(art) + len(ven)
    assert art[0].FrameOfReferenceUID == ven[0].FrameOfReferenceUID
    for ds in (art[0], ven[0]):
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert ds.ContrastBolusAgent and ds.Modality == "CT" and ds.PatientID and ds.PatientName
    assert art[0].AcquisitionTime < ven[0].AcquisitionTime
    assert art[0].SeriesTime < ven[0].SeriesTime
    assert "arterial" in art[0].SeriesDescription.lower() and "venous" in ven[0].SeriesDescription.lower()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_reports_no_errors(tiny_study_dir):
    for phase in ("arterial", "venous"):
        files = sorted((tiny_study_dir / "dicom" / phase).glob("*.dcm"))
        for f in (files[0], files[len(files) // 2], files[-1]):
            out = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
            report = out.stdout + out.stderr
            assert "Error" not in report, report


def test_ground_truth_is_consistent(tiny_study, tiny_study_dir):
    organs, inst, pdac = _arr(tiny_study.organs), _arr(tiny_study.ln_instances), _arr(tiny_study.pdac)
    assert set(np.unique(organs)) <= set(range(11))
    assert {5}.issubset(set(np.unique(organs)))  # the pancreas is in the tiny field of view
    assert pdac.any() and np.all(organs[pdac > 0] == 5)  # the tumour belongs to the pancreas class
    in_fov = [n for n in tiny_study.lymph_nodes if n["in_field_of_view"]]
    assert set(np.unique(inst)) - {0} == {n["id"] for n in in_fov}
    assert np.all(organs[inst > 0] == 0)  # nodes lie outside every organ/vessel
    voxel = float(np.prod(tiny_study.grid.spacing))
    for n in in_fov:
        assert n["volume_mm3"] == pytest.approx((inst == n["id"]).sum() * voxel, rel=1e-6)
    gt = json.loads((tiny_study_dir / "ground_truth" / "study.json").read_text())
    assert gt["patient"]["metastasis_positive"] == tiny_study.patient["metastasis_positive"]
    assert len(gt["lymph_nodes"]) == len(tiny_study.lymph_nodes)


def test_deformation_ground_truth_is_consistent(tiny_study):
    lm = tiny_study.landmarks
    assert len(lm) >= 20
    ven = np.array([p["venous_mm"] for p in lm])
    art = np.array([p["arterial_mm"] for p in lm])
    shift = np.linalg.norm(art - ven, axis=1)
    assert 1.0 < shift.max() <= 12.0  # a few mm, up to about 10 mm
    # the displacement field, sampled at the venous landmarks, points to their arterial positions
    disp = tiny_study.displacement
    for p, q in zip(ven, art):
        u = np.array(disp.EvaluateAtPhysicalPoint(tuple(p), sitk.sitkLinear))
        np.testing.assert_allclose(p + u, q, atol=0.3)
    # the arterial image really is misaligned, and the aligned arterial phase is not
    organs, art_organs = _arr(tiny_study.organs), _arr(tiny_study.arterial_organs)
    assert (organs != art_organs).mean() > 0.001


def test_lymph_nodes_lie_in_the_table7_ranges():
    attention = load_settings().attention
    keys = {c.key: c for c in attention.classes}
    rows = [n for seed in (21, 22, 23) for n in generate_study(seed, "tiny").lymph_nodes]
    assert len(rows) >= 5
    in_range = [n for n in rows if keys[n["nearest_structure"]].d_min <= n["distance_mm"] <= keys[n["nearest_structure"]].d_max
                and n["max_distance_mm"] <= keys[n["nearest_structure"]].d_max + attention.ramp_mm]
    assert len(in_range) / len(rows) >= 0.8


def test_small_cohort_statistics_follow_the_paper():
    s = cohort_statistics(range(5000, 5016), workers=2)
    assert s["patients"] == 16
    assert 0.2 <= s["positive_patient_fraction"] <= 0.75
    assert 2.0 <= s["lns_per_patient"] <= 4.6
    assert s["positive_lns_in_negative_patients"] == 0
    assert s["positive_ln_volume_mm3"][0] > s["negative_ln_volume_mm3"][0]
    assert 0.5 < s["ln_volume_auc"] < 1.0  # larger, but classes overlap
    assert 15.0 <= s["tumour_diameter_mm"][0] <= 45.0
    assert s["ln_voxels_in_table7_range_fraction"] >= 0.8


def test_cli_generate_and_nnunet_export(tmp_path):
    env_py = sys.executable
    out = subprocess.run([env_py, "-m", "synthetic", "generate", "--seed", "3", "--count", "1", "--preset", "tiny",
                          "--out", str(tmp_path / "studies"), "--blank-descriptions"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    case = tmp_path / "studies" / "SYN000003"
    assert len(list((case / "dicom" / "venous").glob("*.dcm"))) == 40
    assert pydicom.dcmread(next((case / "dicom" / "arterial").glob("*.dcm"))).SeriesDescription == ""
    out = subprocess.run([env_py, "-m", "synthetic", "export-nnunet", "--seed", "3", "--count", "1", "--preset", "tiny",
                          "--out", str(tmp_path / "nnunet"), "--workers", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    root = tmp_path / "nnunet"
    ds = json.loads((root / "Dataset501_PancreasOrgans" / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT_arterial", "1": "CT_venous"} and ds["numTraining"] == 1
    ven = sitk.ReadImage(str(root / "Dataset502_PancreasLymphNodes" / "imagesTr" / "SYN000003_0001.nii.gz"))
    dicom_ven = generate_study(3, "tiny").venous
    np.testing.assert_array_equal(_arr(ven), _arr(dicom_ven))
    labels = _arr(sitk.ReadImage(str(root / "Dataset502_PancreasLymphNodes" / "labelsTr" / "SYN000003.nii.gz")))
    inst = _arr(sitk.ReadImage(str(root / "Dataset502_PancreasLymphNodes" / "instancesTr" / "SYN000003.nii.gz")))
    np.testing.assert_array_equal(labels, (inst > 0).astype(labels.dtype))
    patients = json.loads((root / "patients.json").read_text())
    assert "SYN000003" in patients and isinstance(patients["SYN000003"]["metastasis_positive"], bool)
