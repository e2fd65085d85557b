"""DICOM helpers shared by the SEG, SR and Encapsulated PDF builders.

- the series numbers and descriptions of the outputs (all say research use);
- the equipment identification (manufacturer = the application);
- the algorithm identification (name, version, family, parameters including the models and whether
  they were trained on synthetic data);
- copying the Patient and General Study modules from a source instance;
- a check that the venous source instances and the reference grid agree slice by slice, so that
  frame ``k`` of an output really lies on source instance ``k``.
"""

from __future__ import annotations

import datetime as _dt

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from lnmet.reporting import RESEARCH_NOTICE, research_notice
from lnmet.reporting.codes import ALGORITHM_FAMILY
from lnmet.results import AnalysisResults, AnalysisResultsError

# Series numbers of the outputs (high, so that they sort after the acquired series).
SEG_SERIES_NUMBER = 9101
SR_SERIES_NUMBER = 9102
PDF_SERIES_NUMBER = 9103

MANUFACTURER = "lnmet research application"

# Patient module attributes copied from the source (Type 2 ones are written empty when absent).
PATIENT_ATTRIBUTES_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
PATIENT_ATTRIBUTES_OPTIONAL = ("IssuerOfPatientID", "OtherPatientIDsSequence", "PatientAge",
                               "PatientWeight", "PatientSize", "PatientIdentityRemoved",
                               "DeidentificationMethod")
STUDY_ATTRIBUTES_TYPE2 = ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
STUDY_ATTRIBUTES_OPTIONAL = ("StudyDescription", "IssuerOfAccessionNumberSequence")


def series_description(kind: str, synthetic: bool) -> str:
    """A SeriesDescription (LO, <= 64 characters) that says research use."""
    suffix = " RESEARCH USE ONLY" + (" synthetic-trained" if synthetic else "")
    text = f"LN-met AI {kind} -{suffix}"
    return text[:64]


def content_description(synthetic: bool) -> str:
    """A short statement (LO, <= 64 characters) for ContentDescription attributes."""
    text = "Not for clinical decisions" + ("; models trained on synthetic data" if synthetic else "")
    return text[:64]


def software_versions(results: AnalysisResults) -> str:
    return f"{results.run.app_name} {results.run.app_version}"[:64]


def model_parameters(results: AnalysisResults) -> dict[str, str]:
    """Algorithm parameters: every model (name, version, checksum prefix, training data)."""
    params: dict[str, str] = {
        "research_use": RESEARCH_NOTICE,
        "synthetic_training_data": "true" if results.synthetic_training_data else "false",
        "single_phase": "true" if results.run.single_phase else "false",
    }
    for m in results.models:
        synthetic = bool(m.metadata.get("synthetic_training_data", False))
        params[f"model {m.name}"] = (
            f"version {m.version}; sha256 {m.sha256[:12]}; trained on {m.trained_on}"
            f"{' (synthetic)' if synthetic else ''}")
    return params


def algorithm_identification(results: AnalysisResults) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification (DICOM SEG / SR): the application, its version, AI family and the
    models with their training data."""
    return hd.AlgorithmIdentificationSequence(
        name=results.run.app_name[:64],
        family=ALGORITHM_FAMILY,
        version=results.run.app_version,
        source=research_notice(results.synthetic_training_data)[:64],
        parameters=model_parameters(results),
    )


def now_dicom() -> tuple[str, str]:
    """Current local date (DA) and time (TM)."""
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def set_series_date_time(ds: Dataset) -> None:
    """SeriesDate/SeriesTime of a new output series: when it was made (its ContentDate/ContentTime
    when set, so that the two agree; else now). PACS worklists and viewers sort and show series by them."""
    date, time = now_dicom()
    ds.SeriesDate = str(getattr(ds, "ContentDate", "") or date)
    ds.SeriesTime = str(getattr(ds, "ContentTime", "") or time)


def copy_patient_and_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient and General Study modules of ``source`` into ``target`` (same patient,
    same study). Type 2 attributes absent from the source are written empty."""
    for kw in PATIENT_ATTRIBUTES_TYPE2 + STUDY_ATTRIBUTES_TYPE2:
        setattr(target, kw, getattr(source, kw, None) or "")
    for kw in PATIENT_ATTRIBUTES_OPTIONAL + STUDY_ATTRIBUTES_OPTIONAL:
        if kw in source:
            setattr(target, kw, source[kw].value)
    if not getattr(source, "StudyInstanceUID", None):
        raise AnalysisResultsError("venous source instance has no StudyInstanceUID; cannot place outputs in its study")
    target.StudyInstanceUID = source.StudyInstanceUID
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet


def check_source_geometry(results: AnalysisResults, tolerance_mm: float = 0.05) -> list[Dataset]:
    """Return the venous headers after checking that header ``k`` lies on slice ``k`` of the
    reference grid (position, orientation, pixel spacing, size) and belongs to the venous series."""
    ref = results.reference
    headers = results.source_headers()
    direction = np.array(ref.GetDirection()).reshape(3, 3)
    expected_iop = np.concatenate([direction[:, 0], direction[:, 1]])
    series_uid = results.venous.series.series_instance_uid
    for k, (ds, path) in enumerate(zip(headers, results.venous.source_files)):
        if ds.SeriesInstanceUID != series_uid:
            raise AnalysisResultsError(
                f"{path}: SeriesInstanceUID {ds.SeriesInstanceUID} differs from the venous series {series_uid}")
        if ds.SOPInstanceUID != results.venous.sop_instance_uids[k]:
            raise AnalysisResultsError(
                f"{path}: SOPInstanceUID differs from sop_instance_uids[{k}] of the venous PhaseVolume")
        if int(ds.Rows) != ref.GetSize()[1] or int(ds.Columns) != ref.GetSize()[0]:
            raise AnalysisResultsError(
                f"{path}: {ds.Rows}x{ds.Columns} pixels, expected {ref.GetSize()[1]}x{ref.GetSize()[0]} "
                "(the reference grid)")
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        expected = np.array(ref.TransformIndexToPhysicalPoint((0, 0, k)))
        if np.abs(ipp - expected).max() > tolerance_mm:
            raise AnalysisResultsError(
                f"{path}: ImagePositionPatient {ipp.round(3).tolist()} is not slice {k} of the reference "
                f"grid ({expected.round(3).tolist()}); source_files must follow the volume's slice order")
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        if np.abs(iop - expected_iop).max() > 1e-3:
            raise AnalysisResultsError(
                f"{path}: ImageOrientationPatient {iop.round(4).tolist()} differs from the reference "
                f"grid's direction {expected_iop.round(4).tolist()}")
    return headers
