"""DICOM intake on the real samples in ../shared/dicom-samples (files nobody in this project wrote)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lnmet.dicom_io import (
    CT_IMAGE_STORAGE,
    DicomDecodeError,
    DicomInputError,
    VolumeGeometryError,
    build_volume,
    decode_frames_hu,
    plan_slices,
    scan_folder,
)


def test_transfer_syntaxes_all_decode_to_the_same_slice(dicom_samples: Path) -> None:
    """Every encoding of the GE slice decodes; lossless ones equal the uncompressed reference and
    lossy ones stay close to it (the .53/.55 processes go through the GDCM fallback)."""
    folder = dicom_samples / "ct-transfer-syntaxes"
    reference = decode_frames_hu(str(folder / "CTImage.dcm"))[0]
    lossless = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                "1.2.840.10008.1.2.4.90"}
    seen = set()
    for path in sorted(folder.glob("CTImage.dcm_*")):
        ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        seen.add(ts)
        hu = decode_frames_hu(str(path))
        assert hu.shape == (1, 512, 512), path.name
        diff = np.abs(hu[0] - reference)
        if ts in lossless:
            assert diff.max() == 0, f"{path.name}: lossless syntax {ts} differs from the reference"
        else:
            # lossy 8/12-bit re-encodings: same anatomy, bounded error
            assert np.corrcoef(hu[0].ravel(), reference.ravel())[0, 1] > 0.98, path.name
    assert {"1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55"} <= seen


def test_jpeg_processes_pydicom_cannot_decode_match_process_2_4(dicom_samples: Path) -> None:
    """The .53/.55 files decode (GDCM fallback) to the same values as the .51 encoding of the same
    12-bit data, within one rescale step."""
    folder = dicom_samples / "ct-transfer-syntaxes"
    base = decode_frames_hu(str(next(folder.glob("*1.2.840.10008.1.2.4.51.dcm"))))[0]
    slope = float(pydicom.dcmread(next(folder.glob("*1.2.840.10008.1.2.4.51.dcm")), stop_before_pixels=True).RescaleSlope)
    for uid in ("1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55"):
        hu = decode_frames_hu(str(next(folder.glob(f"*{uid}.dcm"))))[0]
        assert np.abs(hu - base).max() <= slope + 1e-3
        assert np.abs(hu - base).mean() < 0.5


def test_other_sample_files_decode(dicom_samples: Path) -> None:
    folder = dicom_samples / "ct-transfer-syntaxes"
    for name in ("CT1_J2KR", "CT2_J2KR", "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm"):
        ds = pydicom.dcmread(folder / name, stop_before_pixels=True)
        hu = decode_frames_hu(str(folder / name))
        assert hu.shape == (int(ds.get("NumberOfFrames", 1) or 1), ds.Rows, ds.Columns)
        assert -3100 < hu.min() < hu.max() < 4000


@pytest.mark.parametrize("syntax, name", [
    ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level"),
    ("1.2.840.10008.1.2.4.55", "JPEG Full Progression, Non-Hierarchical (Process 10 and 12)"),
])
def test_undecodable_pixel_data_names_the_syntax_and_file(dicom_samples: Path, tmp_path: Path, syntax: str,
                                                          name: str) -> None:
    """A file neither pydicom nor GDCM can decode: the error names the file and the syntax (UID and name)."""
    src = next((dicom_samples / "ct-transfer-syntaxes").glob("*1.2.840.10008.1.2.4.55.dcm"))
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = syntax
    frags = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    # keep the encapsulation valid but make the codestream garbage
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + bytes(len(frags[0]) - 2)])
    out = tmp_path / "broken.dcm"
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(DicomDecodeError) as err:
        decode_frames_hu(str(out))
    msg = str(err.value)
    assert str(out) in msg and syntax in msg and name in msg


def test_abdomen_j2k_with_empty_uids_loads_as_a_volume(dicom_samples: Path, caplog, tmp_path: Path) -> None:
    """Empty Study/Series/SOP UIDs: completed with a warning (SOP UIDs from the file meta, Study and
    Series UIDs derived from the content), written into the in-memory headers, the same wherever the
    files lie; and the volume matches the headers (20 slices, 2 mm apart, 0.977 mm pixels)."""
    folder = dicom_samples / "abdomen-ct-j2k-siemens"
    with caplog.at_level(logging.WARNING, logger="lnmet.dicom_io"):
        result = scan_folder(folder)
    assert len(result.series) == 1 and not result.skipped
    series = result.series[0]
    assert series.uids_synthesized and series.series_uid and series.study_uid
    derived = {d.attribute: d for d in series.derived}
    assert set(derived) == {"SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"}
    assert "file meta" in derived["SOPInstanceUID"].source and derived["SeriesInstanceUID"].value == series.series_uid
    assert any("lack identifiers" in r.message and "SeriesInstanceUID" in r.message for r in caplog.records)
    for h in series.instances:  # what the output builders will reference
        ds = h.dataset
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (series.study_uid, series.series_uid)
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID and ds.SOPClassUID == CT_IMAGE_STORAGE
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "copy")
    again = scan_folder(moved).series[0]
    assert (again.study_uid, again.series_uid) == (series.study_uid, series.series_uid)  # content, not path
    built = build_volume(series)
    img = built.image
    assert img.GetSize() == (512, 512, 20)
    assert np.allclose(img.GetSpacing(), (0.9765625, 0.9765625, 2.0))
    z = sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in folder.iterdir()
               if p.name.startswith("CT."))
    assert np.allclose(img.GetOrigin(), (-249.51171875, -437.51171875, z[0]))
    assert np.allclose(img.GetDirection(), np.eye(3).ravel())
    # SOP Instance UIDs come from the file meta; slice k is the file at the k-th position.
    for k in (0, 7, 19):
        ds = pydicom.dcmread(built.source_files[k])
        assert built.sop_instance_uids[k] == ds.file_meta.MediaStorageSOPInstanceUID
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(z[k])
        expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(sitk.GetArrayViewFromImage(img)[k], expected)
    arr = sitk.GetArrayViewFromImage(img)
    assert arr.dtype == np.float32 and arr.min() == -1024.0  # unsigned 12-bit with intercept -1024


def test_duplicate_resolved_and_gap_detected(dicom_samples: Path, caplog) -> None:
    """CT26/CT28 share position and InstanceNumber 21: one is kept by the documented rule; the
    remaining positions have gaps of 107.5-115 mm: a clear error naming series, positions and gap."""
    folder = dicom_samples / "ct-duplicate-and-missing-slices"
    series = scan_folder(folder).series
    assert len(series) == 1 and series[0].num_instances == 11
    with caplog.at_level(logging.WARNING, logger="lnmet.dicom_io"), pytest.raises(VolumeGeometryError) as err:
        build_volume(series[0])
    msg = str(err.value)
    assert series[0].series_uid in msg
    assert "gap of 115.00 mm between slices at -237.50 and -122.50 mm" in msg
    assert "duplicate" in msg
    dup = [r.message for r in caplog.records if "same position" in r.message]
    assert len(dup) == 1
    uids = {p.name: str(pydicom.dcmread(folder / p.name, stop_before_pixels=True).SOPInstanceUID)
            for p in folder.iterdir()}
    keep = max(("CT26.dcm", "CT28.dcm"), key=lambda n: tuple(int(x) for x in uids[n].split(".")))
    drop = ({"CT26.dcm", "CT28.dcm"} - {keep}).pop()
    assert f"kept {keep}" in dup[0] and f"dropped {drop}" in dup[0]


def test_duplicate_rule_keeps_highest_instance_number_independent_of_file_order(dicom_samples: Path,
                                                                               tmp_path: Path) -> None:
    """On evenly spaced real slices (CT21, CT22, CT27: 17.5 mm apart) plus a duplicate of CT22 with a
    higher InstanceNumber: the duplicate wins whatever the file names, and the volume builds."""
    src = dicom_samples / "ct-duplicate-and-missing-slices"
    for order, names in enumerate((("a", "b", "c", "d"), ("d", "c", "b", "a"))):
        folder = tmp_path / f"run{order}"
        folder.mkdir()
        for n, f in zip(names[:3], ("CT21.dcm", "CT22.dcm", "CT27.dcm")):
            shutil.copy(src / f, folder / f"{n}.dcm")
        dup = pydicom.dcmread(src / "CT22.dcm")
        dup.InstanceNumber = int(dup.InstanceNumber) + 100
        dup.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["dup"])
        dup.file_meta.MediaStorageSOPInstanceUID = dup.SOPInstanceUID
        dup.PixelData = (dup.pixel_array + 7).astype(dup.pixel_array.dtype).tobytes()
        dup.save_as(folder / f"{names[3]}.dcm")
        series = scan_folder(folder).series[0]
        built = build_volume(series)
        assert built.image.GetSize()[2] == 3
        assert np.isclose(built.image.GetSpacing()[2], 17.5)
        assert built.sop_instance_uids[1] == str(dup.SOPInstanceUID)
        assert any("dropped" in n and "InstanceNumber" in n for n in built.notes)
        ref = pydicom.dcmread(src / "CT22.dcm")
        expected = (ref.pixel_array + 7) * float(ref.RescaleSlope) + float(ref.RescaleIntercept)
        assert np.array_equal(sitk.GetArrayViewFromImage(built.image)[1], expected.astype(np.float32))


def test_unreadable_files_are_skipped_and_counted(dicom_samples: Path, tmp_path: Path, caplog) -> None:
    src = dicom_samples / "abdomen-ct-j2k-siemens"
    for p in sorted(src.iterdir())[:5]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "truncated.dcm").write_bytes((src / sorted(p.name for p in src.iterdir())[0]).read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="lnmet.dicom_io"):
        result = scan_folder(tmp_path)
    assert result.files_seen == 7 and len(result.skipped) == 2
    assert {Path(p).name for p, _ in result.skipped} == {"notes.txt", "truncated.dcm"}
    assert any("skipped 2 of 7" in r.message for r in caplog.records)
    assert sum(s.num_instances for s in result.series) == 5


def test_folder_without_dicom_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DicomInputError, match="no readable DICOM file"):
        scan_folder(tmp_path)
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(DicomInputError, match=r"1 file\(s\) found, 1 skipped"):
        scan_folder(tmp_path)
    with pytest.raises(DicomInputError, match="not found"):
        scan_folder(tmp_path / "missing")


def test_enhanced_multiframe_is_refused_clearly(dicom_samples: Path) -> None:
    series = [s for s in scan_folder(dicom_samples / "ct-transfer-syntaxes").series
              if s.first.number_of_frames > 1]
    assert series
    with pytest.raises(VolumeGeometryError, match="Enhanced/multi-frame CT is not supported"):
        plan_slices(series[0])
