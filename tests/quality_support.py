"""Helpers of the quality-gate tests: the app's analysis path run in-process, and studies to run it on.

:class:`ModelChain` runs the same pure functions as the operators of the graph (phase selection,
volumes, registration, organ / tumour / node models, attention map) on a DICOM folder and returns
the quality gate's inputs, with the bundled models loaded once for many studies (a whole
``python app`` run per case would cost a minute of start-up and output building each).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from lnmet.config import Settings, load_settings
from lnmet.inference import SegmentationModel
from lnmet.model_io import read_metadata
from lnmet.quality import GateInputs, gate_inputs
from lnmet.types import ModelInfo

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def bundled_models_ready() -> bool:
    return all((MODELS / name / "model.ts").is_file() for name in ("organ_seg", "ln_seg", "ln_cls", "pdac_seg"))


class ModelChain:
    """The analysis operators' functions, models loaded once (``models`` folder, named-model layout)."""

    def __init__(self, models: Path = MODELS, settings: Settings | None = None):
        from lnmet.networks.ln_classifier import LNIdentifier

        self.settings = settings or load_settings()
        self.organ = SegmentationModel.load(models / "organ_seg" / "model.ts", "cpu")
        self.ln_seg = SegmentationModel.load(models / "ln_seg" / "model.ts", "cpu")
        self.pdac = SegmentationModel.load(models / "pdac_seg" / "model.ts", "cpu")
        self.ln_cls = LNIdentifier.load(models / "ln_cls" / "model.ts", "cpu")
        self.infos = [ModelInfo(name=n, version="", file=str(models / n / "model.ts"), sha256="", trained_on="",
                                metadata=read_metadata(models / n / "model.ts"))
                      for n in ("organ_seg", "ln_seg", "ln_cls", "pdac_seg", "patient_cls")
                      if (models / n / "model.ts").is_file()]

    def run(self, dicom_dir: Path, *, single_phase: bool = False, nodes: bool = True,
            tumour: bool = True) -> GateInputs:
        """The gate's inputs for the study in ``dicom_dir``; ``single_phase`` sets app.yaml's
        ``phase_policy.missing_arterial: single_phase``; ``nodes`` / ``tumour`` False skip the node /
        tumour models (the checks that need them then say "not applicable")."""
        parts = self.run_parts(dicom_dir, single_phase=single_phase, nodes=nodes, tumour=tumour)
        return gate_inputs(parts["registered"], parts["organs_working"], attention=parts["attention"],
                           pdac_working=parts["pdac_working"], nodes=parts["nodes"], models=self.infos)

    def run_parts(self, dicom_dir: Path, *, single_phase: bool = False, nodes: bool = True,
                  tumour: bool = True) -> dict:
        """The operators' outputs the gate reads, by port name (``nodes``: the LN findings)."""
        from lnmet.attention import attention_map
        from operators.ln_identification import identify_lymph_nodes
        from operators.ln_segmentation import segment_lymph_nodes
        from operators.organ_segmentation import segment_organs
        from operators.pdac_segmentation import segment_pdac
        from operators.phase_registration import register_and_resample
        from operators.phase_selector import select_phases
        from operators.series_to_volume import selection_to_volumes
        from operators.study_loader import load_series

        settings = self.settings
        if single_phase:
            settings = dataclasses.replace(settings, missing_arterial="single_phase")
        venous, arterial = selection_to_volumes(select_phases(load_series(dicom_dir), settings), settings)
        registered = register_and_resample(venous, arterial, settings, self.organ.spacing_mm)
        organs_working, organs = segment_organs(registered, self.organ)
        attention = attention_map(organs_working, settings.attention)
        pdac_working = segment_pdac(registered, self.pdac, organs_working)[0] if tumour else None
        found = []
        if nodes:
            probability, _ = segment_lymph_nodes(registered, attention, self.ln_seg)
            _, found = identify_lymph_nodes(registered, probability, organs, self.ln_cls, settings, attention)
        return {"registered": registered, "organs_working": organs_working, "attention": attention,
                "pdac_working": pdac_working, "nodes": found}


# ---------------------------------------------------------------------------------------------
# Writing volumes as DICOM series (for the real volumes that are not DICOM)
# ---------------------------------------------------------------------------------------------

def write_ct_series(image: sitk.Image, folder: Path, *, description: str, study_uid: str | None = None,
                    series_number: int = 1, acquisition_time: str = "101500") -> Path:
    """Write a HU volume as an axial CT Image Storage series (one file per slice, int16, slope 1,
    intercept 0) in DICOM LPS: the volume is first reoriented so that rows run along +x and columns
    along +y, whatever its direction (e.g. RAS-flipped NIfTI), keeping every voxel's position."""
    image = sitk.DICOMOrient(image, "LPS")
    arr = sitk.GetArrayFromImage(image)
    hu = np.clip(np.round(arr), -1024, 3071).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    sx, sy, sz = image.GetSpacing()
    d = image.GetDirection()
    row, col = (d[0], d[3], d[6]), (d[1], d[4], d[7])
    for k in range(hu.shape[0]):
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Quality", "QG0001", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = acquisition_time
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.Modality, ds.Manufacturer = "CT", "test"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = series_number, k + 1, description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
        ds.SliceThickness = f"{sz:.4f}"
        ds.KVP = "120"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.PixelData = hu[k].tobytes()
        pydicom.dcmwrite(folder / f"IM{k + 1:04d}.dcm", ds, enforce_file_format=True)
    return folder
