"""ResultsJSONBuilderOperator: results.json, the machine-readable result of one study.

Ports:
    in  ``analysis_results`` (:class:`lnmet.results.AnalysisResults`)
    in  ``seg_dataset`` (the SEG, or None), ``sr_dataset`` (the SR, or None),
        ``pdf_document`` (:class:`lnmet.results.PdfDocument`, or None)
    out ``results_document`` (dict, valid against ``lnmet/schemas/results.schema.json``; None when disabled)

The document lists the UIDs and paths (relative to the output folder) of the objects the publisher
writes, so it is built after the other three builders. It never holds the patient's name, ID, birth
date or accession number: the study is identified by its UIDs. Field by field description:
docs/OUTPUTS.md and the schema itself.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from typing import Any

import jsonschema
from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.dataset import Dataset

from lnmet.reporting import (
    PDF_DICOM_PATH,
    PDF_PATH,
    RESULTS_JSON_PATH,
    SEG_PATH,
    SR_PATH,
    research_notice,
)
from lnmet.results import AnalysisResults, PdfDocument
from lnmet.schemas import RESULTS_SCHEMA, load_results_schema
from lnmet.types import SeriesRef
from operators.seg_builder import (PDAC_KEY, ln_segment_key, nodes_in_report_order, omitted_segments,
                                   segment_numbers)
from operators.sr_builder import ln_tracking_id

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1.8.0"


class ResultsDocumentError(ValueError):
    """results.json does not match its schema; the message names the field."""


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema of results.json (package data: lnmet/schemas/results.schema.json)."""
    return load_results_schema()


def validate_results_document(doc: dict[str, Any]) -> None:
    """Raise :class:`ResultsDocumentError` naming the first field that does not match the schema."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(document)"
        raise ResultsDocumentError(f"results.json field '{where}': {e.message} ({RESULTS_SCHEMA})")


def _series(ref: SeriesRef) -> dict[str, Any]:
    return {"series_instance_uid": ref.series_instance_uid, "series_description": ref.series_description,
            "series_number": ref.series_number, "modality": ref.modality,
            "acquisition_time": ref.acquisition_time, "num_slices": ref.num_slices, "reason": ref.reason,
            "derived_attributes": [dict(d) for d in ref.derived_attributes], "content": ref.content}


def _dicom_output(ds: Dataset, path: str) -> dict[str, Any]:
    return {"path": path, "sop_class_uid": str(ds.SOPClassUID), "sop_instance_uid": str(ds.SOPInstanceUID),
            "series_instance_uid": str(ds.SeriesInstanceUID), "series_number": int(ds.SeriesNumber)}


WITHHELD_NOTE = ("NOT A DECISION: the patient classifier's output on a study the quality gate found not assessable; "
                 "kept for research only")


def quality_gate_section(results: AnalysisResults) -> dict[str, Any] | None:
    """results.json ``quality_gate``: every check with its value, range and result (None when no gate ran)."""
    report = results.quality
    if report is None:
        return None
    withheld = None
    if not report.assessable:
        withheld = {"probability": report.withheld_probability, "note": WITHHELD_NOTE}
    return {"assessable": report.assessable, "summary": report.summary(),
            "checks": [c.as_dict() for c in report.checks],
            "failed_critical": [c.name for c in report.blocking], "warnings": [c.name for c in report.warnings],
            "withheld_model_output": withheld}


def organ_source_entry(results: AnalysisResults) -> dict[str, Any] | None:
    """results.json ``organ_source``: the setting and, per organ/vessel class, which source gave it
    (``model``, ``input_seg`` or ``nifti``) with the segment, file or model; None when not recorded."""
    src = results.organ_sources
    if src is None:
        return None
    return {"setting": src.setting, "description": src.description, "merge_rule": src.merge_rule,
            "classes": {key: {"source": source, "detail": src.detail.get(key, "")}
                        for key, source in src.per_class.items()}}


def build_results_document(results: AnalysisResults, seg: Dataset | None, sr: Dataset | None,
                           pdf: PdfDocument | None) -> dict[str, Any]:
    """Build and validate results.json's content (pure function)."""
    results.validate()
    numbers = segment_numbers(seg) if seg is not None else {}
    t = results.tumour
    p = results.patient
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "notice": research_notice(results.synthetic_training_data),
        "research_use_only": True,
        "app": {"name": results.run.app_name, "version": results.run.app_version},
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "study": {"study_instance_uid": results.venous.series.study_instance_uid,
                  "frame_of_reference_uid": results.venous.frame_of_reference_uid},
        "single_phase": results.run.single_phase,
        "phases": {"venous": _series(results.venous.series),
                   "arterial": _series(results.arterial) if results.arterial is not None else None},
        "phase_selection_log": list(results.run.phase_selection_log),
        "models": [{"name": m.name, "version": m.version, "file": m.file, "sha256": m.sha256,
                    "trained_on": m.trained_on,
                    "synthetic_training_data": bool(m.metadata.get("synthetic_training_data", False)),
                    "held_out": m.held_out.as_dict(derived=True) if m.held_out is not None else None}
                   for m in results.models],
        "synthetic_training_data": results.synthetic_training_data,
        "tumour": {"found": t.found, "volume_mm3": float(t.volume_mm3),
                   "max_axial_diameter_mm": float(t.max_axial_diameter_mm),
                   "centroid_mm": [float(v) for v in t.centroid_mm] if t.centroid_mm is not None else None,
                   "mean_hu_venous": float(t.mean_hu_venous) if t.mean_hu_venous is not None else None,
                   "statement": t.statement, "seg_segment_number": numbers.get(PDAC_KEY) if t.found else None,
                   "model_components": t.model_components, "selection_rule": t.selection_rule},
        "lymph_nodes": [
            {"index": n.index, "tracking_uid": n.tracking_uid, "class": "positive" if n.positive else "negative",
             "positive": n.positive, "probability_positive": float(n.probability_positive),
             "volume_mm3": float(n.volume_mm3), "short_axis_mm": float(n.short_axis_mm),
             "long_axis_mm": float(n.long_axis_mm), "mean_hu_venous": float(n.mean_hu_venous),
             "centroid_mm": [float(v) for v in n.centroid_mm], "nearest_structure": n.nearest_structure or None,
             "distance_mm": float(n.distance_mm) if n.nearest_structure else None,
             "seg_segment_number": numbers.get(ln_segment_key(n)),
             "sr_tracking_id": ln_tracking_id(n)}
            for n in nodes_in_report_order(results)],
        "lymph_node_threshold": None if results.ln_threshold is None else float(results.ln_threshold),
        "patient": {"probability": float(p.probability) if p.probability is not None else None,
                    "threshold": float(p.threshold), "positive": p.positive,
                    "decision": ("not_assessable" if results.status == "not_assessable" else
                                 {True: "positive", False: "negative", None: "undetermined"}[p.positive]),
                    "method": p.method,
                    "largest_positive_ln_volume_mm3": float(p.largest_positive_ln_volume_mm3),
                    "statement": p.statement,
                    "borderline": bool(p.borderline and results.status != "not_assessable"),
                    "borderline_margin": float(p.borderline_margin),
                    "held_out_evidence": results.patient_evidence},
        "outputs": {
            "seg": None if seg is None else {
                **_dicom_output(seg, SEG_PATH),
                "segments": [{"number": int(item.SegmentNumber), "key": str(item.TrackingID),
                              "label": str(item.SegmentLabel)} for item in seg.SegmentSequence],
                "omitted_segments": omitted_segments(seg)},
            "sr": None if sr is None else _dicom_output(sr, SR_PATH),
            "pdf": None if pdf is None else {"path": PDF_PATH, "page_count": pdf.page_count,
                                             "key_images": list(pdf.key_images)},
            "pdf_dicom": None if pdf is None else _dicom_output(pdf.dataset, PDF_DICOM_PATH),
            "results_json": {"path": RESULTS_JSON_PATH},
        },
        "device": results.run.device,
        "timings_s": {k: float(v) for k, v in results.run.timings_s.items()},
        "warnings": list(results.run.warnings),
        "status": results.status,
        "quality_gate": quality_gate_section(results),
        "organ_source": organ_source_entry(results),
    }
    validate_results_document(doc)
    return doc


class ResultsJSONBuilderOperator(Operator):
    """Builds results.json's content (see the module docstring for ports)."""

    def __init__(self, fragment: Fragment, *args, enabled: bool = True, **kwargs) -> None:
        self.enabled = enabled
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("analysis_results")
        spec.input("seg_dataset")
        spec.input("sr_dataset")
        spec.input("pdf_document")
        spec.output("results_document")

    def compute(self, op_input, op_output, context) -> None:
        results: AnalysisResults = op_input.receive("analysis_results")
        seg = op_input.receive("seg_dataset")
        sr = op_input.receive("sr_dataset")
        pdf = op_input.receive("pdf_document")
        doc = build_results_document(results, seg, sr, pdf) if self.enabled else None
        op_output.emit(doc, "results_document")
