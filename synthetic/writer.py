"""Writes a generated study as a real DICOM study (two CT Image Storage series) with its ground truth.

Layout: ``<out>/<case_id>/dicom/{arterial,venous}/IM0001.dcm ...`` and
``<out>/<case_id>/ground_truth/{organs,anatomy,pdac,lymph_nodes,arterial_organs,displacement}.nii.gz``
plus ``study.json``. Pixel data are unsigned 12-bit with RescaleIntercept -1024 (as many scanners
write them), Explicit VR Little Endian.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from synthetic.study import GENERATOR_VERSION, SyntheticStudy, _uid

INTERCEPT = -1024.0
CONTRAST_AGENT = "Iohexol 350 mg I/ml"


def _da(d) -> str:
    return d.strftime("%Y%m%d")


def _tm(t) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def _series_datasets(study: SyntheticStudy, phase: str, image: sitk.Image, descriptions: dict[str, str] | None
                     ) -> list[Dataset]:
    hdr = study.header
    info = study.series[phase]
    arr = sitk.GetArrayFromImage(image)
    stored = np.clip(np.rint(arr - INTERCEPT), 0, 4095).astype(np.uint16)
    g = study.grid
    acq = hdr["acquisition"][phase]
    desc = info["SeriesDescription"] if descriptions is None else descriptions.get(phase, "")
    out = []
    for k in range(arr.shape[0]):
        ds = Dataset()
        # SOP common, patient, general study, patient study
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _uid(study.seed, study.preset, phase, "image", k)
        ds.InstanceCreationDate = _da(hdr["study_date"])
        ds.InstanceCreationTime = _tm(acq)
        ds.PatientName = f"SYNTHETIC^{study.case_id}"
        ds.PatientID = hdr["patient_id"]
        ds.IssuerOfPatientID = "pdac-ln-met synthetic generator"
        ds.PatientBirthDate = _da(hdr["birth_date"])
        ds.PatientSex = hdr["sex"]
        ds.PatientAge = f"{hdr['age']:03d}Y"
        ds.StudyInstanceUID = study.study_uid
        ds.StudyDate = _da(hdr["study_date"])
        ds.StudyTime = _tm(hdr["injection"])
        ds.ReferringPhysicianName = ""
        ds.StudyID = f"S{study.seed:06d}"
        ds.AccessionNumber = hdr["accession"]
        ds.StudyDescription = "CT ABDOMEN PANCREAS PROTOCOL (SYNTHETIC)"
        # general series
        ds.Modality = "CT"
        ds.SeriesInstanceUID = info["SeriesInstanceUID"]
        ds.SeriesNumber = info["SeriesNumber"]
        ds.SeriesDescription = desc
        ds.SeriesDate = _da(hdr["study_date"])
        ds.SeriesTime = _tm(acq)
        ds.BodyPartExamined = "ABDOMEN"
        ds.PatientPosition = "HFS"
        # frame of reference (one per study: both phases share the patient's table position)
        ds.FrameOfReferenceUID = study.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        # general equipment
        ds.Manufacturer = "pdac-ln-met"
        ds.ManufacturerModelName = "Synthetic CT generator"
        ds.SoftwareVersions = GENERATOR_VERSION
        ds.InstitutionName = "Synthetic data (no real patient)"
        ds.DeviceSerialNumber = "SYN-0001"
        # general image / acquisition
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.AcquisitionDate = _da(hdr["study_date"])
        ds.AcquisitionTime = _tm(acq)
        ds.ContentDate = _da(hdr["study_date"])
        ds.ContentTime = _tm(acq)
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        # image plane
        z = g.origin[2] + k * g.spacing[2]
        ds.PixelSpacing = [f"{g.spacing[1]:.6g}", f"{g.spacing[0]:.6g}"]  # row spacing (y), column spacing (x)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [f"{g.origin[0]:.4f}", f"{g.origin[1]:.4f}", f"{z:.4f}"]
        ds.SliceThickness = f"{g.spacing[2]:.6g}"
        ds.SpacingBetweenSlices = f"{g.spacing[2]:.6g}"
        ds.SliceLocation = f"{z:.4f}"
        # contrast/bolus
        ds.ContrastBolusAgent = CONTRAST_AGENT
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = 100
        ds.ContrastBolusStartTime = _tm(hdr["injection"])
        ds.ContrastBolusTotalDose = 100
        ds.ContrastFlowRate = 4
        ds.ContrastFlowDuration = 25
        ds.ContrastBolusIngredient = "IODINE"
        ds.ContrastBolusIngredientConcentration = 350
        # CT image
        ds.KVP = 120
        ds.DataCollectionDiameter = 500
        ds.ReconstructionDiameter = f"{g.spacing[0] * g.size_xyz[0]:.2f}"
        ds.GantryDetectorTilt = 0
        ds.TableHeight = 150
        ds.RotationDirection = "CW"
        ds.ExposureTime = 500
        ds.XRayTubeCurrent = 250
        ds.Exposure = 125
        ds.FilterType = "BODY"
        ds.GeneratorPower = 30
        ds.FocalSpots = 0.7
        ds.ConvolutionKernel = "STANDARD"
        ds.ScanOptions = "HELICAL MODE"
        ds.RescaleIntercept = f"{INTERCEPT:g}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.WindowCenterWidthExplanation = "ABDOMEN"
        # image pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "PDACLN_SYN_1"
        ds.file_meta = meta
        out.append(ds)
    return out


def write_dicom_series(study: SyntheticStudy, folder: Path, descriptions: dict[str, str] | None = None) -> dict[str, Path]:
    """Write both phases under ``folder/{arterial,venous}``; returns the series folders.

    ``descriptions`` overrides the SeriesDescription per phase (e.g. blank, to test selection by timing).
    """
    out = {}
    for phase, image in (("arterial", study.arterial), ("venous", study.venous)):
        d = folder / phase
        d.mkdir(parents=True, exist_ok=True)
        for k, ds in enumerate(_series_datasets(study, phase, image, descriptions)):
            ds.save_as(d / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
        out[phase] = d
    return out


def _json_default(o: Any):
    if hasattr(o, "isoformat"):
        return o.isoformat()
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    raise TypeError(type(o))


def write_ground_truth(study: SyntheticStudy, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in (("organs", study.organs), ("anatomy", study.anatomy), ("pdac", study.pdac),
                      ("lymph_nodes", study.ln_instances), ("arterial_organs", study.arterial_organs),
                      ("displacement", study.displacement)):
        sitk.WriteImage(img, str(folder / f"{name}.nii.gz"), useCompression=True)
    (folder / "study.json").write_text(json.dumps(study.summary(), indent=1, default=_json_default))


def write_study(study: SyntheticStudy, out_dir, descriptions: dict[str, str] | None = None) -> Path:
    """Write ``study`` under ``out_dir/<case_id>/`` atomically (a temporary folder renamed at the end)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / study.case_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{study.case_id}-", dir=out_dir))
    try:
        write_dicom_series(study, tmp / "dicom", descriptions)
        write_ground_truth(study, tmp / "ground_truth")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
