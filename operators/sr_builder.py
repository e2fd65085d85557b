"""SRBuilderOperator: the TID 1500 measurement report (DICOM Comprehensive 3D SR), built in memory.

Ports:
    in  ``analysis_results`` (:class:`lnmet.results.AnalysisResults`)
    in  ``seg_dataset`` (the SEG built by SEGBuilderOperator, or None when the SEG is disabled)
    out ``sr_dataset`` (:class:`highdicom.sr.Comprehensive3DSR`; None when disabled)

Content tree (TID 1500 "Imaging Measurement Report", see docs/OUTPUTS.md for every concept):

- observation context: the device observer is the application (name, version, manufacturer);
  procedure reported: CT of abdomen;
- image library (TID 1600): the venous slices the axes were measured on;
- imaging measurements, two groups per finding (the PDAC tumour, each lymph node), sharing the
  finding's tracking UID (a node's is its results.json ``tracking_uid`` and its SEG segment's):
    * the *axes* group (TID 1501): Long Axis and Short Axis, each inferred from a two-point
      POLYLINE on the venous slice where it was measured (SCOORD: what OHIF draws; it misdraws a
      measurement whose first NUM also has a SCOORD3D); the Short Axis also carries the finding's
      centre of mass in the venous frame of reference (SCOORD3D POINT). Its tracking identifier starts with
      the OHIF/cornerstone tool name (``Cornerstone3DTools@^0.1.0:Bidirectional:``), the convention
      under which OHIF lists a measurement, and ends with the finding's name ("Lymph node 3");
    * the *volumetric* group (TID 1411, referencing the finding's own SEG segment; TID 1501 when
      the SEG is disabled): volume, mean attenuation,
      for nodes the probability of metastasis, the decision threshold and the distance to the
      nearest organ/vessel, for the tumour its maximum axial diameter; qualitative evaluations;
- report-level qualitative evaluations (TID 1500 row 12): the patient-level result (CODE
  Metastasis: Present/Absent/Presence undetermined, and a statement with the probability, the
  threshold and the method), the tumour's absence when none was found, the research-use notice,
  the quality gate's verdict (CODE Quality Assessment; a study not assessable has no probability
  and "Presence undetermined"; TEXT items: the verdict and each failed check),
  the series used for each phase, each model, the single-phase statement, the organ source
  (app.yaml ``organ_source``) and which source gave each organ/vessel class. These have no place in
  the imaging measurements: a measurement group without image coordinates stops OHIF 3.13 from
  loading the report.

Numbers are stored with their exact float value (FloatingPointValue) beside the 16-character
decimal string, so that what is read back equals what was computed.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import generate_uid

from lnmet.measurements import PlacedAxes, lymph_node_axes, tumour_axes
from lnmet.organ_sources import class_source_lines, source_summary
from lnmet.reporting import codes, dicom_common, research_notice
from lnmet.results import AnalysisResults, AnalysisResultsError
from lnmet.types import LymphNodeFinding, SeriesRef
from operators.seg_builder import PDAC_KEY, ln_segment_key, segment_numbers, segment_tracking_uids

logger = logging.getLogger(__name__)

TUMOUR_TRACKING_ID = "PDAC"
# OHIF (3.x, cornerstone adapters) lists a measurement group only when its Tracking Identifier names
# one of its tools before a colon; what follows a second colon is ignored by it and read by people.
OHIF_BIDIRECTIONAL_PREFIX = "Cornerstone3DTools@^0.1.0:Bidirectional:"


def ln_tracking_id(node: LymphNodeFinding) -> str:
    return f"Lymph node {node.index}"


def axes_tracking_id(name: str) -> str:
    """Tracking identifier of a finding's axes group (OHIF's tool prefix + the finding's name)."""
    return f"{OHIF_BIDIRECTIONAL_PREFIX}{name}"


def _num(name, value: float, unit, **kw) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, **kw)


def _slice_point(ref, k: int, y_mm: float, x_mm: float) -> tuple[list[float], list[float]]:
    """A point of slice ``k`` given in mm from the centre of its pixel (0, 0): (column, row) image
    coordinates (DICOM: 0 at the outer corner of the first pixel) and LPS mm."""
    sx, sy = ref.GetSpacing()[0], ref.GetSpacing()[1]
    col, row = x_mm / sx, y_mm / sy
    return [col + 0.5, row + 0.5], list(ref.TransformContinuousIndexToPhysicalPoint((col, row, float(k))))


def _axis_measurement(name, ends, length_mm: float, placed: PlacedAxes, results: AnalysisResults,
                      centre_mm=None) -> hd.sr.Measurement:
    """NUM ``name`` [mm] inferred from its two end points on the slice where it was measured (SCOORD
    POLYLINE, selected from that venous instance: what viewers draw) and, when given, from the
    finding's centre of mass in the venous frame of reference (SCOORD3D POINT)."""
    ref, k = results.reference, placed.slice_index
    image = [_slice_point(ref, k, y, x)[0] for y, x in ends]
    source = hd.sr.SourceImageForRegion(referenced_sop_class_uid=results.venous.sop_class_uid,
                                        referenced_sop_instance_uid=results.venous.sop_instance_uids[k])
    coordinates = [hd.sr.CoordinatesForMeasurement(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                                   graphic_data=np.array(image, dtype=float), source_image=source)]
    if centre_mm is not None:
        coordinates.append(hd.sr.CoordinatesForMeasurement3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT, graphic_data=np.array([[float(v) for v in centre_mm]]),
            frame_of_reference_uid=results.venous.frame_of_reference_uid, purpose=codes.CENTER_OF_MASS))
    return _num(name, length_mm, codes.UNIT_MM, referenced_coordinates=coordinates)


def _axes_group(uid: str, name: str, placed: PlacedAxes, long_mm: float, short_mm: float, centre_mm, finding,
                sites, results: AnalysisResults) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The axes group of a finding (TID 1501): Long Axis, then Short Axis with the centre of mass.

    The order matters to OHIF 3.13: it reads the first NUM's coordinates to decide whether the
    measurement is 2D or 3D (a SCOORD3D there makes it misplace the 2D lines), and takes the first
    SCOORD of each axis as the line to draw."""
    a = placed.axes
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=axes_tracking_id(name)),
        finding_type=finding, finding_sites=sites,
        measurements=[_axis_measurement(codes.LONG_AXIS, a.long_ends, long_mm, placed, results),
                      _axis_measurement(codes.SHORT_AXIS, a.short_ends, short_mm, placed, results, centre_mm)])


def _node_measurements(node: LymphNodeFinding, results: AnalysisResults) -> list[hd.sr.Measurement]:
    out = [_num(codes.VOLUME, node.volume_mm3, codes.UNIT_MM3),
           _num(codes.ATTENUATION, node.mean_hu_venous, codes.UNIT_HU, derivation=codes.MEAN),
           _num(codes.PROBABILITY_OF_CANCER, node.probability_positive, codes.UNIT_NONE)]
    if results.ln_threshold is not None:
        out.append(_num(codes.THRESHOLD_VALUE, results.ln_threshold, codes.UNIT_NONE))
    if node.nearest_structure:  # '' when no organ/vessel was segmented: no distance to report
        out.append(_num(codes.DISTANCE, node.distance_mm, codes.UNIT_MM))
    return out


def _node_evaluations(node: LymphNodeFinding) -> list[hd.sr.QualitativeEvaluation]:
    out = [hd.sr.QualitativeEvaluation(codes.METASTASIS, codes.PRESENT if node.positive else codes.ABSENT)]
    if node.nearest_structure:
        out.append(hd.sr.QualitativeEvaluation(codes.NEAREST_STRUCTURE, codes.structure_concept(node.nearest_structure)))
    return out


def library_images(results: AnalysisResults, headers: list[Dataset], slices: list[int]) -> list[Dataset]:
    """The venous instances of the TID 1600 image library: the slices the axes were measured on
    (the whole series is referenced by the evidence sequence already; listing its hundreds of
    slices here would only make the SR large and slow to build)."""
    keep = sorted({k for k in slices if 0 <= k < len(headers)}) or [0]
    return [headers[k] for k in keep]


def _series_text(ref: SeriesRef) -> str:
    text = (f"{ref.phase}: '{ref.series_description}' series number {ref.series_number}, "
            f"SeriesInstanceUID {ref.series_instance_uid}, acquisition time {ref.acquisition_time or 'unknown'}, "
            f"{ref.num_slices} slices; chosen because: {ref.reason}")
    if ref.derived_attributes:  # identifiers the files lacked (results.json phases.<phase>.derived_attributes)
        text += "; identifiers completed by the application: " + "; ".join(
            f"{d['attribute']} {d['value'] or ''} ({d['source']})".replace("  ", " ") for d in ref.derived_attributes)
    return text


def _text(name, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type="CONTAINS")


def patient_statement(results: AnalysisResults) -> str:
    """The patient-level result in words, with its numbers (the SR's report-level statement)."""
    p = results.patient
    prob = "no probability (no prediction could be made)" if p.probability is None else \
        f"probability {p.probability:.3f}"
    decision = {True: "metastasis predicted", False: "no metastasis predicted", None: "undetermined"}[p.positive]
    decision += " (borderline)" if p.borderline else ""
    text = (f"Patient-level lymph node metastasis: {decision}; {prob}, decision threshold {p.threshold:.3f} "
            f"(positive when probability >= threshold); method: {p.method}; volume of the largest metastatic "
            f"lymph node {p.largest_positive_ln_volume_mm3:.1f} mm3")
    if results.ln_threshold is not None:
        text += f"; a lymph node is called metastatic when its probability >= {results.ln_threshold:.3f}"
    text += f". {p.statement}" if p.statement else "."
    return text + (f" {results.patient_evidence}" if results.patient_evidence else "")


def quality_gate_items(results: AnalysisResults) -> list:
    """The quality gate in the SR's report-level evaluations: CODE "Quality Assessment" (met /
    warnings / unusable = not assessable), then TEXT items: the verdict and one per failed check.
    Nothing when no gate ran."""
    report = results.quality
    if report is None:
        return []
    value = (codes.QUALITY_UNUSABLE if not report.assessable else
             codes.QUALITY_WARNINGS if report.warnings else codes.QUALITY_MET)
    verdict = ("NOT ASSESSABLE: no patient-level prediction. " if not report.assessable else "Assessed. ") + (
        f"{sum(not c.failed for c in report.checks)} of {len(report.checks)} quality checks passed or did not apply.")
    items = [hd.sr.CodeContentItem(name=codes.QUALITY_ASSESSMENT, value=value, relationship_type="CONTAINS"),
             _text(codes.QUALITY_GATE_STATEMENT, verdict)]
    items += [_text(codes.QUALITY_GATE_STATEMENT, f"{c.name} failed ({c.severity}): {c.reason}"[:1024])
              for c in report.checks if c.failed]
    return items


def _referenced_segment(seg: Dataset | None, numbers: dict[str, int], key: str,
                        series_uid: str) -> hd.sr.ReferencedSegment | None:
    if seg is None or key not in numbers:
        return None
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
        segment_number=numbers[key],
        source_series=hd.sr.SourceSeriesForSegmentation(series_uid))


def _group(tracking: hd.sr.TrackingIdentifier, referenced_segment, **kw):
    """A TID 1411 group when a SEG segment can be referenced, else a TID 1501 group."""
    if referenced_segment is not None:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_segment=referenced_segment, **kw)
    return hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, **kw)


def organ_source_items(results: AnalysisResults) -> list[hd.sr.TextContentItem]:
    """Report-level TEXT items "Organ and vessel segmentation source": the setting and what was read,
    then one per class saying which source gave it (app.yaml ``organ_source``)."""
    src = results.organ_sources
    if src is None:
        return []
    items = [_text(codes.ORGAN_SOURCE, source_summary(src))]
    items += [_text(codes.ORGAN_SOURCE, f"{name}: {where}" + (f" ({detail})" if detail else ""))
              for name, where, detail in class_source_lines(src)]
    return items


def build_sr(results: AnalysisResults, seg: Dataset | None) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Comprehensive 3D SR of ``results``; LN and tumour groups reference their
    own segments of ``seg`` (pure function)."""
    results.validate()
    headers = dicom_common.check_source_geometry(results)
    series_uid = results.venous.series.series_instance_uid
    numbers: dict[str, int] = {}
    segment_uids: dict[str, str] = {}
    if seg is not None:
        if seg.StudyInstanceUID != headers[0].StudyInstanceUID:
            raise AnalysisResultsError(
                f"SEG {seg.SOPInstanceUID} belongs to study {seg.StudyInstanceUID}, not to the venous "
                f"series' study {headers[0].StudyInstanceUID}")
        numbers = segment_numbers(seg)
        segment_uids = segment_tracking_uids(seg)
    algorithm = hd.sr.AlgorithmIdentification(
        name=results.run.app_name[:64], version=results.run.app_version,
        parameters=[f"{k}={v}" for k, v in dicom_common.model_parameters(results).items()],
        family=codes.ALGORITHM_FAMILY, manufacturer=dicom_common.MANUFACTURER)

    groups = []
    slices: list[int] = []
    # ---------------------------------------------------------------- tumour
    tumour = results.tumour
    pancreas_site = [hd.sr.FindingSite(codes.PANCREAS)]
    placed_tumour = tumour_axes(results.pdac_mask) if tumour.found else None
    if placed_tumour is not None:
        uid = segment_uids.get(PDAC_KEY) or generate_uid()
        slices.append(placed_tumour.slice_index)
        groups.append(_axes_group(uid, TUMOUR_TRACKING_ID, placed_tumour, placed_tumour.axes.long_mm,
                                  placed_tumour.axes.short_mm, tumour.centroid_mm, codes.NEOPLASM, pancreas_site,
                                  results))
        measurements = [_num(codes.VOLUME, tumour.volume_mm3, codes.UNIT_MM3),
                        _num(codes.DIAMETER, tumour.max_axial_diameter_mm, codes.UNIT_MM, derivation=codes.MAXIMUM)]
        if tumour.mean_hu_venous is not None:
            measurements.append(_num(codes.ATTENUATION, tumour.mean_hu_venous, codes.UNIT_HU,
                                     derivation=codes.MEAN))
        groups.append(_group(hd.sr.TrackingIdentifier(uid=uid, identifier=TUMOUR_TRACKING_ID),
                             _referenced_segment(seg, numbers, PDAC_KEY, series_uid),
                             finding_type=codes.NEOPLASM, finding_sites=pancreas_site,
                             algorithm_id=algorithm, measurements=measurements,
                             qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.NEOPLASM, codes.PRESENT)]))

    # ---------------------------------------------------------------- lymph nodes
    ln_site = [hd.sr.FindingSite(dcm_codes.SCT.AbdominalLymphNode)]
    placed_nodes = lymph_node_axes(results.ln_instances)
    for node in sorted(results.lymph_nodes, key=lambda n: n.index):
        key = ln_segment_key(node)
        ref_seg = _referenced_segment(seg, numbers, key, series_uid)
        if seg is not None and ref_seg is None:
            raise AnalysisResultsError(
                f"lymph node {node.index}: the SEG has no '{key}' segment; build the SEG from the same "
                "AnalysisResults")
        placed = placed_nodes[node.index]
        slices.append(placed.slice_index)
        groups.append(_axes_group(node.tracking_uid, ln_tracking_id(node), placed, node.long_axis_mm,
                                  node.short_axis_mm, node.centroid_mm, codes.LYMPH_NODE, ln_site, results))
        groups.append(_group(
            hd.sr.TrackingIdentifier(uid=node.tracking_uid, identifier=ln_tracking_id(node)), ref_seg,
            finding_type=codes.LYMPH_NODE, finding_sites=ln_site, algorithm_id=algorithm,
            measurements=_node_measurements(node, results), qualitative_evaluations=_node_evaluations(node)))

    # ---------------------------------------------------------------- report
    app = results.run
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[app.app_name, app.app_version]),
        name=f"{app.app_name} {app.app_version}"[:64],
        manufacturer_name=dicom_common.MANUFACTURER, model_name=app.app_name[:64])
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DEVICE_OBSERVER,
                                                      observer_identifying_attributes=device))
    patient = results.patient
    if patient.method not in codes.PATIENT_METHODS:
        raise AnalysisResultsError(
            f"patient prediction method {patient.method!r}; expected one of {sorted(codes.PATIENT_METHODS)}")
    decision = {True: codes.PRESENT, False: codes.ABSENT, None: codes.PRESENCE_UNDETERMINED}[patient.positive]
    if not groups:
        # TID 1500 needs at least one measurement group: with no tumour and no node found, an
        # image-level group (TID 1501) carries the patient-level evaluation alone.
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="patient-level result"),
            algorithm_id=algorithm, qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.METASTASIS, decision)]))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=groups, referenced_images=library_images(results, headers, slices))
    notes = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    items = [hd.sr.CodeContentItem(name=codes.METASTASIS, value=decision, relationship_type="CONTAINS"),
             _text(codes.PATIENT_LEVEL_STATEMENT, patient_statement(results)),
             _text(codes.RESEARCH_USE_NOTICE, research_notice(results.synthetic_training_data))]
    if not tumour.found:  # regions set aside as not pancreatic (lnmet.tumour) may still be neoplasm elsewhere
        neoplasm = codes.PRESENCE_UNDETERMINED if tumour.selection_rule == "none_near_pancreas" else codes.ABSENT
        items.insert(1, hd.sr.CodeContentItem(name=codes.NEOPLASM, value=neoplasm, relationship_type="CONTAINS"))
    items += quality_gate_items(results)
    items.append(_text(codes.SERIES_USED, _series_text(results.venous.series)))
    if results.arterial is not None:
        items.append(_text(codes.SERIES_USED, _series_text(results.arterial)))
    if app.single_phase:
        items.append(_text(codes.SINGLE_PHASE_STATEMENT,
                           "Single-phase analysis: no arterial phase was available; the venous phase alone was used."))
    for m in results.models:
        synthetic = bool(m.metadata.get("synthetic_training_data", False))
        items.append(_text(codes.MODEL_USED,
                           f"{m.name} version {m.version}, sha256 {m.sha256}, trained on {m.trained_on}"
                           + (" (synthetic training data)" if synthetic else "")
                           + (f"; held-out: {m.held_out.summary()}" if m.held_out is not None else
                              "; no held-out figures recorded")))
    items += organ_source_items(results)
    if tumour.statement:
        items.append(_text(codes.TUMOUR_STATEMENT, tumour.statement))
    notes.ContentSequence = items
    report[0].ContentSequence.append(notes)

    evidence = list(headers) + ([seg] if seg is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=generate_uid(),
        series_number=dicom_common.SR_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=dicom_common.MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = dicom_common.series_description("SR", results.synthetic_training_data)
    dicom_common.set_series_date_time(sr)
    sr.CodingSchemeIdentificationSequence = [codes.coding_scheme_identification()]
    logger.info("SR built: %d measurement groups (%d lymph nodes, tumour %s)", len(groups), len(results.lymph_nodes),
                "found" if tumour.found else "not found")
    return sr


class SRBuilderOperator(Operator):
    """Builds the TID 1500 SR in memory (see the module docstring for ports and content)."""

    def __init__(self, fragment: Fragment, *args, enabled: bool = True, **kwargs) -> None:
        self.enabled = enabled
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("analysis_results")
        spec.input("seg_dataset")
        spec.output("sr_dataset")

    def compute(self, op_input, op_output, context) -> None:
        results: AnalysisResults = op_input.receive("analysis_results")
        seg = op_input.receive("seg_dataset")
        op_output.emit(build_sr(results, seg) if self.enabled else None, "sr_dataset")
