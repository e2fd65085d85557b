"""SRBuilderOperator: the TID 1500 measurement report (DICOM Comprehensive 3D SR), built in memory.

Ports:
    in  ``analysis_results`` (:class:`lnmet.results.AnalysisResults`)
    in  ``seg_dataset`` (the SEG built by SEGBuilderOperator, or None when the SEG is disabled)
    out ``sr_dataset`` (:class:`highdicom.sr.Comprehensive3DSR`; None when disabled)

Content tree (TID 1500 "Imaging Measurement Report", see docs/OUTPUTS.md for every concept):

- observation context: the device observer is the application (name, version, manufacturer);
  procedure reported: CT;
- image library (TID 1600): the venous slices through the tumour's and each node's centre;
- imaging measurements:
    * the PDAC tumour (TID 1411, referencing the SEG's PDAC segment): volume, maximum axial
      diameter, mean attenuation; or, when no tumour was found, a TID 1501 group "Neoplasm: Absent";
    * one TID 1411 group per lymph node, tracking identifier "Lymph node <index>" + the node's
      tracking UID, referencing the SEG segment of its class (positive or negative): volume, short
      and long axis, mean attenuation (venous), probability of metastasis, distance to the nearest
      organ/vessel; qualitative evaluations "Metastasis: Present/Absent" and the nearest structure;
    * the patient-level result (TID 1501): probability, decision threshold, volume of the largest
      positive node, "Metastasis: Present/Absent/Presence undetermined", the method;
- report-level qualitative evaluations (TID 1500 row 12, TEXT): research-use notice, the series
  used for each phase, each model (version, checksum, training data), the single-phase statement.

Numbers are stored with their exact float value (FloatingPointValue) beside the 16-character
decimal string, so that what is read back equals what was computed.
"""

from __future__ import annotations

import logging

import highdicom as hd
from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import generate_uid

from lnmet.reporting import codes, dicom_common, research_notice
from lnmet.results import AnalysisResults, AnalysisResultsError
from lnmet.types import LymphNodeFinding, SeriesRef
from operators.seg_builder import LN_NEGATIVE_KEY, LN_POSITIVE_KEY, PDAC_KEY, segment_numbers

logger = logging.getLogger(__name__)

PATIENT_TRACKING_ID = "Patient-level lymph node metastasis"
TUMOUR_TRACKING_ID = "PDAC"


def ln_tracking_id(node: LymphNodeFinding) -> str:
    return f"Lymph node {node.index}"


def _num(name, value: float, unit, **kw) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, **kw)


def _node_measurements(node: LymphNodeFinding) -> list[hd.sr.Measurement]:
    out = [_num(codes.VOLUME, node.volume_mm3, codes.UNIT_MM3),
           _num(codes.SHORT_AXIS, node.short_axis_mm, codes.UNIT_MM),
           _num(codes.LONG_AXIS, node.long_axis_mm, codes.UNIT_MM),
           _num(codes.ATTENUATION, node.mean_hu_venous, codes.UNIT_HU, derivation=codes.MEAN),
           _num(codes.PROBABILITY_OF_CANCER, node.probability_positive, codes.UNIT_NONE)]
    if node.nearest_structure:  # '' when no organ/vessel was segmented: no distance to report
        out.append(_num(codes.DISTANCE_TO_NEAREST, node.distance_mm, codes.UNIT_MM))
    return out


def _node_evaluations(node: LymphNodeFinding) -> list[hd.sr.QualitativeEvaluation]:
    out = [hd.sr.QualitativeEvaluation(codes.METASTASIS, codes.PRESENT if node.positive else codes.ABSENT)]
    if node.nearest_structure:
        out.append(hd.sr.QualitativeEvaluation(codes.NEAREST_STRUCTURE, codes.structure_concept(node.nearest_structure)))
    return out


def library_images(results: AnalysisResults, headers: list[Dataset]) -> list[Dataset]:
    """The venous instances of the TID 1600 image library: the slices through the tumour's and each
    node's centre (the whole series is referenced by the evidence sequence already; listing its
    hundreds of slices here would only make the SR large and slow to build)."""
    ref = results.reference
    points = [results.tumour.centroid_mm] if results.tumour.found and results.tumour.centroid_mm else []
    points += [n.centroid_mm for n in sorted(results.lymph_nodes, key=lambda n: n.index)]
    slices = []
    for point in points:
        k = int(round(ref.TransformPhysicalPointToContinuousIndex([float(v) for v in point])[2]))
        if 0 <= k < len(headers) and k not in slices:
            slices.append(k)
    return [headers[k] for k in sorted(slices or [0])]


def _series_text(ref: SeriesRef) -> str:
    return (f"{ref.phase}: '{ref.series_description}' series number {ref.series_number}, "
            f"SeriesInstanceUID {ref.series_instance_uid}, acquisition time {ref.acquisition_time or 'unknown'}, "
            f"{ref.num_slices} slices; chosen because: {ref.reason}")


def _text(name, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type="CONTAINS")


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


def build_sr(results: AnalysisResults, seg: Dataset | None) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Comprehensive 3D SR of ``results``; LN and tumour groups reference the
    segments of ``seg`` (pure function)."""
    results.validate()
    headers = dicom_common.check_source_geometry(results)
    series_uid = results.venous.series.series_instance_uid
    numbers: dict[str, int] = {}
    if seg is not None:
        if seg.StudyInstanceUID != headers[0].StudyInstanceUID:
            raise AnalysisResultsError(
                f"SEG {seg.SOPInstanceUID} belongs to study {seg.StudyInstanceUID}, not to the venous "
                f"series' study {headers[0].StudyInstanceUID}")
        numbers = segment_numbers(seg)
    algorithm = hd.sr.AlgorithmIdentification(
        name=results.run.app_name[:64], version=results.run.app_version,
        parameters=[f"{k}={v}" for k, v in dicom_common.model_parameters(results).items()],
        family=codes.ALGORITHM_FAMILY, manufacturer=dicom_common.MANUFACTURER)

    groups = []
    # ---------------------------------------------------------------- tumour
    tumour = results.tumour
    tumour_tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=TUMOUR_TRACKING_ID)
    pancreas_site = [hd.sr.FindingSite(codes.PANCREAS)]
    if tumour.found:
        measurements = [_num(codes.VOLUME, tumour.volume_mm3, codes.UNIT_MM3),
                        _num(codes.DIAMETER, tumour.max_axial_diameter_mm, codes.UNIT_MM)]
        if tumour.mean_hu_venous is not None:
            measurements.append(_num(codes.ATTENUATION, tumour.mean_hu_venous, codes.UNIT_HU,
                                     derivation=codes.MEAN))
        groups.append(_group(tumour_tracking, _referenced_segment(seg, numbers, PDAC_KEY, series_uid),
                             finding_type=codes.NEOPLASM, finding_sites=pancreas_site,
                             algorithm_id=algorithm, measurements=measurements,
                             qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.NEOPLASM, codes.PRESENT)]))
    else:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tumour_tracking, finding_type=codes.NEOPLASM, finding_sites=pancreas_site,
            algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.NEOPLASM, codes.ABSENT)]))

    # ---------------------------------------------------------------- lymph nodes
    ln_site = [hd.sr.FindingSite(dcm_codes.SCT.AbdominalLymphNode)]
    for node in sorted(results.lymph_nodes, key=lambda n: n.index):
        key = LN_POSITIVE_KEY if node.positive else LN_NEGATIVE_KEY
        ref_seg = _referenced_segment(seg, numbers, key, series_uid)
        if seg is not None and ref_seg is None:
            raise AnalysisResultsError(
                f"lymph node {node.index} is {'positive' if node.positive else 'negative'} but the SEG has no "
                f"'{key}' segment; build the SEG from the same AnalysisResults")
        groups.append(_group(
            hd.sr.TrackingIdentifier(uid=node.tracking_uid, identifier=ln_tracking_id(node)), ref_seg,
            finding_type=codes.LYMPH_NODE, finding_sites=ln_site, algorithm_id=algorithm,
            measurements=_node_measurements(node), qualitative_evaluations=_node_evaluations(node)))

    # ---------------------------------------------------------------- patient level
    patient = results.patient
    measurements = []
    if patient.probability is not None:
        measurements.append(_num(codes.PROBABILITY_OF_CANCER, patient.probability, codes.UNIT_NONE))
    measurements.append(_num(codes.DECISION_THRESHOLD, patient.threshold, codes.UNIT_NONE))
    measurements.append(_num(codes.LARGEST_POSITIVE_LN_VOLUME, patient.largest_positive_ln_volume_mm3,
                             codes.UNIT_MM3))
    decision = {True: codes.PRESENT, False: codes.ABSENT, None: codes.PRESENCE_UNDETERMINED}[patient.positive]
    if patient.method not in codes.PATIENT_METHODS:
        raise AnalysisResultsError(
            f"patient prediction method {patient.method!r}; expected one of {sorted(codes.PATIENT_METHODS)}")
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=PATIENT_TRACKING_ID),
        finding_type=codes.METASTASIS, finding_sites=[hd.sr.FindingSite(codes.LYMPH_NODE)],
        method=codes.PATIENT_METHODS[patient.method], algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.METASTASIS, decision)]))

    # ---------------------------------------------------------------- report
    app = results.run
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[app.app_name, app.app_version]),
        name=f"{app.app_name} {app.app_version}"[:64],
        manufacturer_name=dicom_common.MANUFACTURER, model_name=app.app_name[:64])
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DEVICE_OBSERVER,
                                                      observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=groups, referenced_images=library_images(results, headers))

    notes = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    items = [_text(codes.RESEARCH_USE_NOTICE, research_notice(results.synthetic_training_data))]
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
                           + (" (synthetic training data)" if synthetic else "")))
    if tumour.statement:
        items.append(_text(codes.TUMOUR_STATEMENT, tumour.statement))
    if patient.statement:
        items.append(_text(codes.PATIENT_LEVEL_STATEMENT, patient.statement))
    notes.ContentSequence = items
    report[0].ContentSequence.append(notes)

    evidence = list(headers) + ([seg] if seg is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=generate_uid(),
        series_number=dicom_common.SR_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=dicom_common.MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = dicom_common.series_description("SR", results.synthetic_training_data)
    sr.CodingSchemeIdentificationSequence = [codes.coding_scheme_identification()]
    logger.info("SR built: %d measurement groups (%d lymph nodes)", len(groups), len(results.lymph_nodes))
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
