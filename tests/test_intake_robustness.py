"""Intake of real-world and broken DICOM (issue 15): identifiers that anonymisers leave empty are
completed or refused at intake, series of different patients, phases that look swapped by their
content, messages that say what is there, and blank or mis-scaled pixel data named at intake.

All on modified copies of the generated tiny study (and, for "non-contrast", the real volume in
../shared/real-ct-validation written to DICOM), through the functions the operators call."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from lnmet.config import load_settings
from lnmet.dicom_io import DicomInputError, PixelValueError, build_volume, scan_folder
from lnmet.phase_content import PhaseContentError, brightest_large_vessel
from operators.phase_selector import PhaseSelectionError, select_phases
from operators.series_to_volume import selection_to_volumes
from operators.study_loader import load_series
from test_intake_support import chain, copy_series, copy_study, set_attr

REAL_CT = Path(__file__).resolve().parent.parent.parent / "shared" / "real-ct-validation" / "ct.nii.gz"
NEUTRAL = set_attr(SeriesDescription="CT")
TIMES = ("AcquisitionTime", "SeriesTime", "ContentTime")


@pytest.fixture(scope="module")
def settings():
    return load_settings()


@pytest.fixture(scope="module")
def single_phase(settings):
    return dataclasses.replace(settings, missing_arterial="single_phase")


def _header(folder: Path) -> Dataset:
    return pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)


def _write_plain(src: Path, dst: Path, modify) -> Path:
    """Like copy_series, but written as is (no file-meta repair): for identifiers empty in the
    file meta too."""
    dst.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(sorted(src.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        modify(ds, k)
        ds.save_as(dst / path.name, enforce_file_format=False)
    return dst


def _blank_uids(*keywords: str):
    def modify(ds: Dataset, k: int) -> None:
        for kw in keywords:
            setattr(ds, kw, "")
            meta = {"SOPInstanceUID": "MediaStorageSOPInstanceUID", "SOPClassUID": "MediaStorageSOPClassUID"}.get(kw)
            if meta:
                setattr(ds.file_meta, meta, "")
    return modify


# ------------------------------------------------------------------ item 1: identifiers

def test_empty_identifiers_are_completed_consistently_across_folders(tiny_study_dir: Path, settings,
                                                                     tmp_path: Path) -> None:
    """Both phases, in separate folders, with empty Study/Series/SOP Instance UIDs (file meta too),
    no FrameOfReferenceUID, no SeriesNumber and no Type 2 patient attributes: one study with two
    series, UIDs derived from the content (the same in a second load and in another folder),
    written into the headers the outputs reference, and reported per series."""
    strip = chain(_blank_uids("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
                  set_attr(FrameOfReferenceUID=None, SeriesNumber=None, PatientBirthDate=None, StudyID=None))
    for phase in ("arterial", "venous"):
        _write_plain(tiny_study_dir / "dicom" / phase, tmp_path / "a" / phase, strip)
    sel = select_phases(load_series(tmp_path / "a"), settings)
    assert not sel.single_phase
    assert sel.venous.study_uid == sel.arterial.study_uid  # one study, although in two folders
    for series, ref in ((sel.venous, sel.venous_ref), (sel.arterial, sel.arterial_ref)):
        derived = {d["attribute"]: d for d in ref.derived_attributes}
        assert {"SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID",
                "PatientBirthDate", "StudyID"} <= set(derived)
        assert "file content" in derived["SOPInstanceUID"]["source"]
        assert derived["SeriesInstanceUID"]["value"] == series.series_uid == ref.series_instance_uid
        uids = {h.dataset.SOPInstanceUID for h in series.instances}
        assert len(uids) == series.num_instances and all(pydicom.uid.UID(u).is_valid for u in uids)
        for h in series.instances:
            ds = h.dataset
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (series.study_uid, series.series_uid)
            assert ds.FrameOfReferenceUID == derived["FrameOfReferenceUID"]["value"] and ds.PatientBirthDate == ""
        assert ref.series_number is None
    venous, arterial = selection_to_volumes(sel, settings)
    assert [h.SOPInstanceUID for h in venous.source_headers] == venous.sop_instance_uids
    assert {h.SeriesInstanceUID for h in venous.source_headers} == {sel.venous.series_uid}
    # Deterministic from the content: a second load, and the same files in other folders.
    for phase in ("arterial", "venous"):
        _write_plain(tmp_path / "a" / phase, tmp_path / "b" / "elsewhere" / f"x_{phase}", lambda ds, k: None)
    again = select_phases(load_series(tmp_path / "b"), settings)
    assert (again.venous.study_uid, again.venous.series_uid, again.arterial.series_uid) == (
        sel.venous.study_uid, sel.venous.series_uid, sel.arterial.series_uid)
    assert {h.sop_instance_uid for h in again.venous.instances} == {h.sop_instance_uid for h in sel.venous.instances}


def test_sop_class_empty_everywhere_is_refused_naming_it(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    for phase in ("arterial", "venous"):
        _write_plain(tiny_study_dir / "dicom" / phase, tmp_path / phase, _blank_uids("SOPClassUID"))
    with pytest.raises(PhaseSelectionError) as err:
        select_phases(load_series(tmp_path), settings)
    first = str(err.value).splitlines()[0]
    assert "no usable CT phase" in first and "SOPClassUID is empty or missing" in first


def test_reference_problems_are_refused_at_intake(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    """Two slices at different positions sharing a SOP Instance UID, or a malformed UID: refused by
    phase selection (before any pixel is decoded), naming the series, the attribute and a file."""
    copy_series(tiny_study_dir / "dicom" / "arterial", tmp_path / "dup" / "arterial")
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path / "dup" / "venous",
                lambda ds, k: setattr(ds, "SOPInstanceUID", "1.2.3.4") if k in (3, 9) else None)
    with pytest.raises(DicomInputError) as err:
        select_phases(load_series(tmp_path / "dup"), settings)
    assert "SOPInstanceUID 1.2.3.4 is shared by" in str(err.value) and "Portal venous" in str(err.value)
    copy_series(tiny_study_dir / "dicom" / "arterial", tmp_path / "bad" / "arterial",
                set_attr(FrameOfReferenceUID="1.2.abc.4"))
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path / "bad" / "venous")
    with pytest.raises(DicomInputError) as err:
        select_phases(load_series(tmp_path / "bad"), settings)
    assert "FrameOfReferenceUID '1.2.abc.4'" in str(err.value) and "not a valid DICOM UID" in str(err.value)


def test_acquisition_time_missing(tiny_study_dir: Path, settings, single_phase, tmp_path: Path) -> None:
    """A lone series without any time is used (nothing to order); two series without times and
    without rules to tell them apart: refused, naming AcquisitionTime."""
    no_time = chain(NEUTRAL, set_attr(**{k: None for k in TIMES}, AcquisitionDateTime=None))
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path / "one" / "venous", no_time)
    sel = select_phases(load_series(tmp_path / "one"), single_phase)
    assert sel.single_phase and "no AcquisitionTime/SeriesTime/ContentTime" in sel.venous_ref.reason
    copy_study(tiny_study_dir / "dicom", tmp_path / "two", no_time)
    with pytest.raises(PhaseSelectionError) as err:
        select_phases(load_series(tmp_path / "two"), settings)
    first = str(err.value).splitlines()[0]
    assert "no usable CT phase" in first and "AcquisitionTime" in first


# ------------------------------------------------------------------ item 4: bad input

def test_series_of_different_patients_are_refused_naming_both(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    copy_series(tiny_study_dir / "dicom" / "arterial", tmp_path / "arterial", set_attr(PatientID="PID-ART-77123"))
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path / "venous", set_attr(PatientID="PID-VEN-88456"))
    with pytest.raises(PhaseSelectionError) as err:
        select_phases(load_series(tmp_path), settings)
    msg = str(err.value)
    art, ven = _header(tmp_path / "arterial"), _header(tmp_path / "venous")
    assert "different PatientID" in msg and art.SeriesInstanceUID in msg and ven.SeriesInstanceUID in msg
    assert "PID-ART-77123" not in msg and "PID-VEN-88456" not in msg  # never the IDs themselves


def _swap_times(tiny_study_dir: Path, dst: Path) -> None:
    """Neutral descriptions, and each phase given the other's acquisition times."""
    art, ven = _header(tiny_study_dir / "dicom" / "arterial"), _header(tiny_study_dir / "dicom" / "venous")
    copy_series(tiny_study_dir / "dicom" / "arterial", dst / "s1",
                chain(NEUTRAL, set_attr(**{k: ven.get(k) for k in TIMES})))
    copy_series(tiny_study_dir / "dicom" / "venous", dst / "s2",
                chain(NEUTRAL, set_attr(**{k: art.get(k) for k in TIMES})))


def test_swapped_acquisition_times_are_caught_by_content(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    _swap_times(tiny_study_dir, tmp_path)
    sel = select_phases(load_series(tmp_path), settings)
    venous_uid = _header(tiny_study_dir / "dicom" / "venous").SeriesInstanceUID
    assert sel.arterial_ref.series_instance_uid == venous_uid  # the headers alone are fooled
    with pytest.raises(PhaseContentError) as err:
        selection_to_volumes(sel, settings)
    msg = str(err.value)
    assert "look swapped" in msg and sel.arterial_ref.series_instance_uid in msg
    assert sel.venous_ref.series_instance_uid in msg
    # warn: the run goes on and every output carries the warning
    venous, arterial = selection_to_volumes(sel, dataclasses.replace(settings, phase_content_check="warn"))
    assert any("look swapped" in n for n in venous.notes) and any("look swapped" in n for n in arterial.notes)
    assert arterial.series.content["brightest_vessel_hu"] < venous.series.content["brightest_vessel_hu"]


def test_correct_phases_pass_the_content_check(tiny_study_dir: Path, settings) -> None:
    sel = select_phases(load_series(tiny_study_dir / "dicom"), settings)
    venous, arterial = selection_to_volumes(sel, settings)
    assert arterial.series.content["brightest_vessel_hu"] > venous.series.content["brightest_vessel_hu"] + 50
    assert not any("swapped" in n for n in venous.notes + arterial.notes)


def test_same_acquisition_time_is_said(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    """Two series acquired at the same time are one acquisition: said so, and never "a portal-venous
    phase but no arterial phase" as if a venous phase had been recognised."""
    tm = _header(tiny_study_dir / "dicom" / "venous").AcquisitionTime
    copy_study(tiny_study_dir / "dicom", tmp_path, chain(NEUTRAL, set_attr(**{k: tm for k in TIMES})))
    with pytest.raises(PhaseSelectionError) as err:
        select_phases(load_series(tmp_path), settings)
    first, *detail = str(err.value).splitlines()
    assert "one CT acquisition usable as a phase" in first and "no arterial" in first
    assert "portal-venous phase (" not in first
    assert any("2 series acquired within 10 s of each other" in line and "one acquisition" in line
               for line in detail)


def _write_volume_as_dicom(image: sitk.Image, folder: Path, **attrs) -> Path:
    """A float HU volume written as a single-frame CT series (int16, slope 1, intercept 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.round(sitk.GetArrayFromImage(image)).astype(np.int16)
    d = np.array(image.GetDirection()).reshape(3, 3)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for z in range(arr.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "CT", study, series, frame
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesNumber, ds.InstanceNumber = 1, z + 1
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = "", "", "20240101", "120000"
        ds.AcquisitionTime = "120000"
        ds.ImagePositionPatient = list(image.TransformIndexToPhysicalPoint((0, 0, z)))
        ds.ImageOrientationPatient = [float(v) for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [image.GetSpacing()[1], image.GetSpacing()[0]]
        ds.SliceThickness = image.GetSpacing()[2]
        ds.Rows, ds.Columns = arr.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        for key, value in attrs.items():
            setattr(ds, key, value)
        ds.PixelData = arr[z].tobytes()
        ds.save_as(folder / f"IM{z + 1:04d}.dcm", enforce_file_format=True)
    return folder


def test_what_is_there_is_said_for_a_non_contrast_head_labelled_scan(single_phase, tmp_path: Path) -> None:
    """The real non-contrast volume, labelled a head CT without contrast information: the reason says
    what the headers hold (contrast unknown, HEAD), never "portal-venous", and the content check
    finds no contrast-enhanced large vessel (a warning in every output)."""
    if not REAL_CT.is_file():
        pytest.skip(f"real CT volume not found at {REAL_CT}")
    image = sitk.Cast(sitk.ReadImage(str(REAL_CT)), sitk.sitkFloat32)
    folder = _write_volume_as_dicom(image, tmp_path / "head", SeriesDescription="Head 3 mm", BodyPartExamined="HEAD")
    sel = select_phases(load_series(folder), single_phase)
    reason = sel.venous_ref.reason
    assert "contrast unknown" in reason and "BodyPartExamined HEAD" in reason and "portal-venous" not in reason
    venous, _ = selection_to_volumes(sel, single_phase)
    assert venous.series.content["brightest_vessel_hu"] is None
    assert any("no contrast-enhanced large vessel" in n for n in venous.notes)
    assert brightest_large_vessel(image).hu is None


@pytest.mark.parametrize("case, modify, expected", [
    ("blank", lambda ds, k: setattr(ds, "PixelData", bytes(len(ds.PixelData))), "every voxel is -1024 HU"),
    ("slope 1e6", set_attr(RescaleSlope="1000000"), "outside the CT range"),
])
def test_blank_or_misscaled_pixel_data_named_at_intake(tiny_study_dir: Path, settings, tmp_path: Path, case,
                                                       modify, expected) -> None:
    copy_study(tiny_study_dir / "dicom", tmp_path, modify)
    sel = select_phases(load_series(tmp_path), settings)  # headers look fine
    with pytest.raises(PixelValueError) as err:
        selection_to_volumes(sel, settings)
    assert expected in str(err.value) and sel.venous_ref.series_instance_uid in str(err.value)


def test_rescale_slope_zero_is_refused_naming_the_series(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    copy_study(tiny_study_dir / "dicom", tmp_path, set_attr(RescaleSlope="0"))
    with pytest.raises(PhaseSelectionError) as err:
        select_phases(load_series(tmp_path), settings)
    first = str(err.value).splitlines()[0]
    assert "RescaleSlope 0" in first and "Portal venous" in first and "Pancreas arterial" in first
    series = scan_folder(tmp_path).series[0]
    with pytest.raises(PixelValueError, match="every voxel is -1024 HU"):  # and if built anyway
        build_volume(series)
