"""An :class:`AnalysisResults` made from a generated study's ground truth.

Until the models of the pipeline exist (and for demos and tests of the output builders after),
the ground truth of a synthetic study stands in for the model outputs: organ labels, PDAC mask,
LN instances and LN classes. The probabilities are made up (a deterministic function of the node's
class and index), the run info says so in its warnings, and the models listed are placeholders that
declare synthetic training data. Nothing here is a measurement of model performance.
"""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk
from pydicom.uid import generate_uid

from lnmet.dicom_io import build_volume, scan_folder
from lnmet.measurements import measure_lymph_nodes, measure_tumour
from lnmet.results import AnalysisResults, RunInfo
from lnmet.types import (
    LymphNodeFinding,
    ModelInfo,
    PatientPrediction,
    PhaseVolume,
    SeriesRef,
    TumourFinding,
)

STANDIN_WARNING = ("stand-in results: ground-truth labels of a synthetic study with made-up "
                   "probabilities, not model outputs")


def load_phase(series_dir: str | os.PathLike, phase: str, reason: str = "stand-in") -> PhaseVolume:
    """Read the one CT series of a folder into a :class:`PhaseVolume` with the project's DICOM
    intake library (:mod:`lnmet.dicom_io`), as the pipeline's SeriesToVolume does."""
    scan = scan_folder(series_dir)
    if len(scan.series) != 1:
        raise ValueError(f"{series_dir}: expected exactly one series, found {len(scan.series)}")
    series = scan.series[0]
    built = build_volume(series)
    ref = SeriesRef(
        phase=phase, study_instance_uid=series.study_uid, series_instance_uid=series.series_uid,
        series_description=series.description, series_number=series.series_number, modality=series.modality,
        acquisition_time=series.acquisition_time_tm, num_slices=len(built.source_files), reason=reason)
    return PhaseVolume(
        phase=phase, image=built.image, series=ref, source_files=built.source_files,
        sop_instance_uids=built.sop_instance_uids, sop_class_uid=series.sop_class_uid,
        frame_of_reference_uid=str(series.get("FrameOfReferenceUID", "") or ""), notes=built.notes)


def _on_grid(img: sitk.Image, ref: sitk.Image, pixel_id: int) -> sitk.Image:
    out = sitk.Cast(img, pixel_id)
    out.CopyInformation(ref)
    return out


def results_from_study(study, study_dir: str | os.PathLike, *, single_phase: bool = False,
                       patient_probability: float = 0.73, threshold: float = 0.5,
                       ln_threshold: float = 0.5) -> AnalysisResults:
    """Stand-in :class:`AnalysisResults` from a generated study (``synthetic.generate_study``)
    and the folder ``write_study`` wrote it to."""
    study_dir = Path(study_dir)
    venous = load_phase(study_dir / "dicom" / "venous", "venous",
                        reason="SeriesDescription matched the venous rule (stand-in)")
    arterial = None
    if not single_phase:
        arterial = load_phase(study_dir / "dicom" / "arterial", "arterial",
                              reason="SeriesDescription matched the arterial rule (stand-in)").series
    ref = venous.image
    organs = _on_grid(study.organs, ref, sitk.sitkUInt8)
    pdac = _on_grid(study.pdac, ref, sitk.sitkUInt8)
    lns = _on_grid(study.ln_instances, ref, sitk.sitkUInt16)
    table = {int(n["id"]): n for n in study.lymph_nodes}
    nodes = []
    for m in measure_lymph_nodes(lns, ref, organs):
        positive = bool(table.get(m.index, {}).get("positive", m.index % 2 == 1))
        # Made-up probabilities on the right side of 0.5, varying with the index (deterministic).
        prob = (0.62 + 0.3 * ((m.index * 37) % 10) / 10.0) if positive else (0.05 + 0.35 * ((m.index * 53) % 10) / 10.0)
        nodes.append(LymphNodeFinding(
            index=m.index, tracking_uid=generate_uid(), volume_mm3=m.volume_mm3, short_axis_mm=m.short_axis_mm,
            long_axis_mm=m.long_axis_mm, mean_hu_venous=m.mean_hu_venous, centroid_mm=m.centroid_mm,
            nearest_structure=m.nearest_structure, distance_mm=m.distance_mm,
            probability_positive=float(round(prob, 4)), positive=positive))
    t = measure_tumour(pdac, ref)
    if t is not None:
        tumour = TumourFinding(found=True, volume_mm3=t.volume_mm3, max_axial_diameter_mm=t.max_axial_diameter_mm,
                               centroid_mm=t.centroid_mm, mean_hu_venous=t.mean_hu_venous,
                               statement="PDAC segmented (stand-in: ground truth)")
    else:
        tumour = TumourFinding(found=False, statement="no tumour found")
    largest = max((n.volume_mm3 for n in nodes if n.positive), default=0.0)
    patient = PatientPrediction(
        probability=patient_probability, threshold=threshold, positive=patient_probability >= threshold,
        method="combined", largest_positive_ln_volume_mm3=largest,
        statement="stand-in probability (made up for testing the outputs)")
    models = [ModelInfo(name=name, version="0.0.0-standin", file=f"models/{name}/model.ts",
                        sha256="0" * 64, trained_on="synthetic studies (stand-in)",
                        metadata={"synthetic_training_data": True})
              for name in ("organ_seg", "ln_seg", "ln_cls", "pdac_seg", "patient_cls")]
    run = RunInfo(app_name="PDAC LN Metastasis", app_version="0.1.0", single_phase=single_phase,
                  phase_selection_log=[f"venous: {venous.series.series_description} ({venous.series.reason})"]
                  + ([] if arterial is None else [f"arterial: {arterial.series_description} ({arterial.reason})"]),
                  device="cpu", timings_s={"stand-in": 0.0}, warnings=[STANDIN_WARNING])
    return AnalysisResults(venous=venous, arterial=arterial, organs=organs, pdac_mask=pdac, tumour=tumour,
                           ln_instances=lns, lymph_nodes=nodes, patient=patient, models=models, run=run,
                           ln_threshold=ln_threshold)
