"""Phase selection on generated tiny studies: rules, timing fallback, decoys, several studies,
single-phase policy and unusable input."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from lnmet.config import load_settings
from lnmet.dicom_io import DicomInputError
from operators.phase_selector import PhaseSelectionError, select_phases
from operators.study_loader import load_series
from test_intake_support import copy_series, copy_study, set_attr


@pytest.fixture(scope="module")
def settings():
    return load_settings()


@pytest.fixture(scope="module")
def uids(tiny_study_dir: Path) -> dict[str, str]:
    return {p: str(pydicom.dcmread(next((tiny_study_dir / "dicom" / p).glob("*.dcm")),
                                   stop_before_pixels=True).SeriesInstanceUID) for p in ("arterial", "venous")}


def _select(folder: Path, settings):
    return select_phases(load_series(folder), settings)


def test_rules_choose_each_phase(tiny_study_dir: Path, tiny_study, uids, settings) -> None:
    sel = _select(tiny_study_dir / "dicom", settings)
    assert sel.venous_ref.series_instance_uid == uids["venous"] == tiny_study.series["venous"]["SeriesInstanceUID"]
    assert sel.arterial_ref.series_instance_uid == uids["arterial"]
    assert not sel.single_phase
    assert "rules.venous[0]" in sel.venous_ref.reason and "rules.arterial[0]" in sel.arterial_ref.reason
    assert sel.venous_ref.num_slices == tiny_study.venous.GetSize()[2]
    assert sel.venous_ref.acquisition_time == tiny_study.series["venous"]["AcquisitionTime"]
    assert sel.venous.series_uid == uids["venous"]  # the loader's series object travels on
    assert any("venous:" in line for line in sel.log)


def test_blank_descriptions_timing_decides(tiny_study_dir: Path, uids, settings, tmp_path: Path) -> None:
    """No description: the earlier acquisition is arterial, whatever the series numbers say."""
    # blank descriptions, and series numbers swapped so that numbering would mislead
    for phase, number in (("arterial", 9), ("venous", 2)):
        copy_series(tiny_study_dir / "dicom" / phase, tmp_path / phase,
                    set_attr(SeriesDescription="", SeriesNumber=number))
    sel = _select(tmp_path, settings)
    assert sel.arterial_ref.series_instance_uid == uids["arterial"]
    assert sel.venous_ref.series_instance_uid == uids["venous"]
    assert "timing fallback" in sel.arterial_ref.reason and "timing fallback" in sel.venous_ref.reason
    assert "AcquisitionTime" in sel.arterial_ref.reason


def test_timing_without_acquisition_time_uses_series_time(tiny_study_dir: Path, uids, settings,
                                                          tmp_path: Path) -> None:
    copy_study(tiny_study_dir / "dicom", tmp_path, set_attr(SeriesDescription=None, AcquisitionTime=None,
                                                          AcquisitionDateTime=None, AcquisitionDate=None))
    sel = _select(tmp_path, settings)
    assert sel.arterial_ref.series_instance_uid == uids["arterial"]
    assert sel.venous_ref.series_instance_uid == uids["venous"]
    assert "SeriesTime" in sel.venous_ref.reason


def test_timing_ignores_non_contrast_series(tiny_study_dir: Path, uids, settings, tmp_path: Path) -> None:
    """A blank-description pre-contrast series acquired first (no ContrastBolusAgent) is not arterial."""
    copy_study(tiny_study_dir / "dicom", tmp_path, set_attr(SeriesDescription=""))
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path / "native", set_attr(
        SeriesDescription="", ContrastBolusAgent=None, ContrastBolusRoute=None, ContrastBolusVolume=None,
        ContrastBolusStartTime=None, ContrastBolusTotalDose=None, ContrastFlowRate=None, ContrastFlowDuration=None,
        ContrastBolusIngredient=None, ContrastBolusIngredientConcentration=None, SeriesNumber=1,
        AcquisitionTime="080000", AcquisitionDateTime=None, SeriesTime="080000", ContentTime="080000"),
        new_uids=True, tag="native")
    sel = _select(tmp_path, settings)
    assert sel.arterial_ref.series_instance_uid == uids["arterial"]
    assert sel.venous_ref.series_instance_uid == uids["venous"]
    assert any("no ContrastBolusAgent" in line for line in sel.log)


def _decoys(tiny_study_dir: Path, dst: Path) -> None:
    """Series that would win every tie (SeriesNumber 1, description matching the venous rule) but
    must never be chosen: localizer, derived reformat, secondary capture, multi-frame, SEG/SR-like."""
    src = tiny_study_dir / "dicom" / "venous"
    copy_series(src, dst / "localizer", set_attr(SeriesNumber=1, SeriesDescription="Portal venous topogram",
                                                 ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
                new_uids=True, tag="loc")
    copy_series(src, dst / "derived", set_attr(SeriesNumber=1, SeriesDescription="Portal venous MPR",
                                               ImageType=["DERIVED", "SECONDARY", "MPR"]), new_uids=True, tag="mpr")
    copy_series(src, dst / "sc", set_attr(SeriesNumber=1, SeriesDescription="Portal venous dose report",
                                          SOPClassUID=SecondaryCaptureImageStorage), new_uids=True, tag="sc")
    copy_series(src, dst / "sr", set_attr(SeriesNumber=1, SeriesDescription="Portal venous SR", Modality="SR"),
                new_uids=True, tag="sr")


def test_decoys_are_never_chosen(tiny_study_dir: Path, uids, settings, tmp_path: Path) -> None:
    copy_study(tiny_study_dir / "dicom", tmp_path / "study")
    _decoys(tiny_study_dir, tmp_path / "study")
    (tmp_path / "study" / "README.txt").write_text("not DICOM")
    sel = _select(tmp_path, settings)
    assert sel.venous_ref.series_instance_uid == uids["venous"]
    assert sel.arterial_ref.series_instance_uid == uids["arterial"]
    refused = [line for line in sel.log if "refused" in line]
    assert any("localizer" in line for line in refused)
    assert any("derived" in line for line in refused)
    assert any("Secondary Capture" in line for line in refused)
    assert any("modality SR" in line for line in refused)


def test_decoys_never_chosen_by_timing_either(tiny_study_dir: Path, uids, settings, tmp_path: Path) -> None:
    copy_study(tiny_study_dir / "dicom", tmp_path / "study", set_attr(SeriesDescription=""))
    _decoys(tiny_study_dir, tmp_path / "study")
    for d in ("localizer", "derived", "sc", "sr"):  # and make the decoys the earliest acquisitions
        copy_series(tmp_path / "study" / d, tmp_path / "study" / d,
                    set_attr(SeriesDescription="", AcquisitionTime="070000", AcquisitionDateTime=None))
    sel = _select(tmp_path, settings)
    assert sel.venous_ref.series_instance_uid == uids["venous"]
    assert sel.arterial_ref.series_instance_uid == uids["arterial"]


def test_several_studies_most_recent_with_both_phases(tiny_study_dir: Path, uids, settings, tmp_path: Path) -> None:
    """A prior study (both phases, a year earlier) and a later venous-only study: the current
    two-phase study is chosen and the choice is logged."""
    copy_study(tiny_study_dir / "dicom", tmp_path / "current")
    prior_uid = str(generate_uid(entropy_srcs=["prior"]))
    for phase in ("arterial", "venous"):
        copy_series(tiny_study_dir / "dicom" / phase, tmp_path / "prior" / phase,
                    set_attr(StudyInstanceUID=prior_uid, StudyDate="20000101", SeriesDate="20000101",
                             AcquisitionDate="20000101", ContentDate="20000101", AcquisitionDateTime=None),
                    new_uids=True, tag=f"prior-{phase}")
    later_uid = str(generate_uid(entropy_srcs=["later"]))
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path / "later" / "venous",
                set_attr(StudyInstanceUID=later_uid, StudyDate="20991231", SeriesDate="20991231",
                         AcquisitionDate="20991231", ContentDate="20991231", AcquisitionDateTime=None),
                new_uids=True, tag="later-venous")
    sel = _select(tmp_path, settings)
    assert sel.venous_ref.series_instance_uid == uids["venous"]
    assert sel.arterial_ref.series_instance_uid == uids["arterial"]
    assert any("3 studies in the input" in line and "most recent study with both phases" in line for line in sel.log)


def test_several_two_phase_studies_most_recent_wins(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    copy_study(tiny_study_dir / "dicom", tmp_path / "current")
    newer_uid = str(generate_uid(entropy_srcs=["newer"]))
    for phase in ("arterial", "venous"):
        copy_series(tiny_study_dir / "dicom" / phase, tmp_path / "newer" / phase,
                    set_attr(StudyInstanceUID=newer_uid, StudyDate="20991231", SeriesDate="20991231",
                             AcquisitionDate="20991231", ContentDate="20991231", AcquisitionDateTime=None),
                    new_uids=True, tag=f"newer-{phase}")
    sel = _select(tmp_path, settings)
    assert sel.venous_ref.study_instance_uid == newer_uid
    assert sel.arterial_ref.study_instance_uid == newer_uid


def test_venous_only_is_an_error_by_default(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    shutil.copytree(tiny_study_dir / "dicom" / "venous", tmp_path / "venous")
    assert settings.missing_arterial == "error"
    with pytest.raises(PhaseSelectionError, match="no arterial") as err:
        _select(tmp_path, settings)
    assert "phase_policy.missing_arterial" in str(err.value)


def test_venous_only_runs_single_phase_when_configured(tiny_study_dir: Path, uids, settings, tmp_path: Path) -> None:
    shutil.copytree(tiny_study_dir / "dicom" / "venous", tmp_path / "venous")
    sel = _select(tmp_path, dataclasses.replace(settings, missing_arterial="single_phase"))
    assert sel.single_phase and sel.arterial is None and sel.arterial_ref is None
    assert sel.venous_ref.series_instance_uid == uids["venous"]
    assert any("single-phase" in line for line in sel.log)


def test_no_ct_is_an_error(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    copy_series(tiny_study_dir / "dicom" / "venous", tmp_path / "sc",
                set_attr(SOPClassUID=SecondaryCaptureImageStorage, Modality="OT"), new_uids=True, tag="ot")
    with pytest.raises(PhaseSelectionError, match="no usable CT phase") as err:
        _select(tmp_path, settings)
    assert "modality OT" in str(err.value)


def test_one_slice_is_an_error(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    src = sorted((tiny_study_dir / "dicom" / "venous").glob("*.dcm"))[10]
    shutil.copy(src, tmp_path / src.name)
    with pytest.raises(PhaseSelectionError, match=r"1 slice\(s\), fewer than series_selection.min_slices"):
        _select(tmp_path, settings)


def test_empty_and_unreadable_input_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DicomInputError, match="no readable DICOM"):
        load_series(tmp_path)
    (tmp_path / "x.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(DicomInputError, match="no readable DICOM"):
        load_series(tmp_path)


def test_series_with_a_gap_is_refused_with_the_reason(tiny_study_dir: Path, settings, tmp_path: Path) -> None:
    copy_study(tiny_study_dir / "dicom", tmp_path)
    victim = sorted((tmp_path / "venous").glob("*.dcm"))[20]
    z = float(pydicom.dcmread(victim, stop_before_pixels=True).ImagePositionPatient[2])
    victim.unlink()
    with pytest.raises(PhaseSelectionError) as err:
        _select(tmp_path, settings)
    msg = str(err.value)
    assert "gap of 6.00 mm" in msg and f"{z - 3:.2f} and {z + 3:.2f} mm" in msg
