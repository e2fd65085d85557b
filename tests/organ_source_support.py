"""Helpers of the organ-source tests: a CT volume written as a DICOM series, organ labels written
as a DICOM SEG with highdicom (as TotalSegmentator's DICOM SEG codes them), and the real CT sample.

The real CT (../shared/real-ct-validation, see its SOURCES.md) is a NIfTI: SimpleITK reads it with
the header's direction (LPS), and it is reoriented to the DICOM axial orientation (rows along +x,
columns along +y) before being written, so its voxels keep their physical places.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

ROOT = Path(__file__).resolve().parent.parent
REAL_CT_DIR = ROOT.parent / "shared" / "real-ct-validation"
REAL_CT = REAL_CT_DIR / "ct.nii.gz"
REAL_LABELS = REAL_CT_DIR / "totalsegmentator_labels.nii.gz"
# TotalSegmentator v2 `total` values of the classes this sample has (SOURCES.md: esophagus absent).
REAL_CLASSES = {"spleen": 1, "stomach": 6, "pancreas": 7, "duodenum": 19, "aorta": 52}
# How TotalSegmentator's DICOM SEG names and codes them (its totalsegmentator_snomed_mapping.csv).
TOTALSEG_CODES = {"spleen": ("78961009", "Spleen"), "stomach": ("69695003", "Stomach"),
                  "pancreas": ("15776009", "Pancreas"), "duodenum": ("38848004", "Duodenum"),
                  "aorta": ("15825003", "Aorta"), "esophagus": ("32849002", "Esophagus")}


def read_real_ct() -> tuple[sitk.Image, sitk.Image]:
    """The real CT (int16 HU) and its TotalSegmentator labels, in DICOM axial orientation."""
    ct = sitk.DICOMOrient(sitk.ReadImage(str(REAL_CT)), "LPS")
    labels = sitk.DICOMOrient(sitk.ReadImage(str(REAL_LABELS)), "LPS")
    return ct, labels


def write_ct_series(image: sitk.Image, folder: Path, *, description: str = "CT abdomen",
                    study_uid: str | None = None, frame_of_reference_uid: str | None = None,
                    series_number: int = 2, acquisition_time: str = "101500") -> list[Dataset]:
    """Write ``image`` (HU, axial, any spacing) as a CT Image Storage series, one file per slice,
    with valid UIDs; returns the datasets in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.rint(sitk.GetArrayFromImage(image)).astype(np.int16)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    row_dir, col_dir = direction[:, 0], direction[:, 1]
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    out = []
    for k in range(arr.shape[0]):
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.PatientName = "TEST^REALCT"
        ds.PatientID = "REALCT001"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20240102"
        ds.StudyTime = "101000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "test"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionDate = ds.ContentDate = ds.SeriesDate = "20240102"
        ds.AcquisitionTime = ds.ContentTime = ds.SeriesTime = acquisition_time
        ds.PixelSpacing = [f"{image.GetSpacing()[1]:.6g}", f"{image.GetSpacing()[0]:.6g}"]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.SliceThickness = f"{image.GetSpacing()[2]:.6g}"
        ds.KVP = 120
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = arr[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def write_organ_seg(masks: dict[str, np.ndarray], source_images: Sequence[Dataset], path: Path, *,
                    codes_by_name: dict[str, tuple[str, str]] | None = None,
                    labels_only: Sequence[str] = (), series_description: str = "TotalSegmentator",
                    frame_of_reference_uid: str | None = None) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of ``masks`` (name -> bool ``[z, y, x]`` on the source images' grid),
    segment labels = the names. Property types come from ``codes_by_name`` (default: TotalSegmentator's
    codes); names in ``labels_only`` get the generic type "Tissue" so that only the label says what
    they are. ``frame_of_reference_uid`` puts the SEG on another frame of reference."""
    codes_by_name = TOTALSEG_CODES if codes_by_name is None else codes_by_name
    names = [n for n, m in masks.items() if m.any()]
    descriptions = []
    for number, name in enumerate(names, start=1):
        if name in labels_only or name not in codes_by_name:
            prop = codes.SCT.Tissue
        else:
            value, meaning = codes_by_name[name]
            prop = hd.sr.CodedConcept(value, "SCT", meaning)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure"),
            segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="TotalSegmentator", version="2", family=codes.DCM.ArtificialIntelligence)))
    pixels = np.stack([masks[n].astype(np.uint8) for n in names], axis=-1)
    seg = hd.seg.Segmentation(
        source_images=list(source_images), pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=300, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="test", manufacturer_model_name="TotalSegmentator", software_versions="2",
        device_serial_number="1", omit_empty_frames=True)
    seg.SeriesDescription = series_description
    if frame_of_reference_uid is not None:
        seg.FrameOfReferenceUID = frame_of_reference_uid
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return seg


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def write_real_study(folder: Path) -> dict:
    """The real CT as a DICOM series in ``folder/ct`` and its labels as a TotalSegmentator-style SEG
    in ``folder/seg/seg.dcm``; returns the CT datasets, the labels (on the series' grid) and the
    masks per class name."""
    ct, labels = read_real_ct()
    datasets = write_ct_series(ct, folder / "ct", description="Abdomen non-contrast (as venous)")
    arr = sitk.GetArrayFromImage(labels)
    masks = {name: arr == value for name, value in REAL_CLASSES.items()}
    write_organ_seg(masks, datasets, folder / "seg" / "seg.dcm")
    return {"datasets": datasets, "labels": labels, "masks": masks}
