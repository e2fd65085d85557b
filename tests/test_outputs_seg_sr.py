"""DICOM SEG and TID 1500 SR built from a generated tiny study (ground truth as stand-in for the
model outputs): dciodvfy finds no error, and what is read back with highdicom equals what was
written (label maps frame by frame, every SR measurement, the references)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes as dcm_codes

from lnmet.labels import ORGAN_CLASSES
from lnmet.reporting import codes
from lnmet.reporting.standin import results_from_study
from lnmet.results import AnalysisResultsError
from lnmet.types import TumourFinding
from operators.seg_builder import (
    ALL_SEGMENT_KEYS,
    LN_NEGATIVE_KEY,
    LN_POSITIVE_KEY,
    PDAC_KEY,
    build_seg,
    omitted_segments,
    segment_numbers,
)
from operators.sr_builder import PATIENT_TRACKING_ID, TUMOUR_TRACKING_ID, build_sr, ln_tracking_id


def dciodvfy(path) -> tuple[list[str], list[str]]:
    """(errors, warnings) reported by dciodvfy for a file."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


@pytest.fixture(scope="module")
def results(tiny_study, tiny_study_dir):
    return results_from_study(tiny_study, tiny_study_dir)


@pytest.fixture(scope="module")
def seg_file(results, tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    build_seg(results).save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def sr_file(results, seg_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    build_sr(results, pydicom.dcmread(seg_file)).save_as(path, enforce_file_format=True)
    return path


def expected_masks(results) -> dict[str, np.ndarray]:
    organs = sitk.GetArrayFromImage(results.organs)
    lns = sitk.GetArrayFromImage(results.ln_instances)
    out = {f"organ:{c.key}": organs == c.label for c in ORGAN_CLASSES}
    out[PDAC_KEY] = sitk.GetArrayFromImage(results.pdac_mask) > 0
    out[LN_POSITIVE_KEY] = np.isin(lns, [n.index for n in results.positive_nodes])
    out[LN_NEGATIVE_KEY] = np.isin(lns, [n.index for n in results.negative_nodes])
    return out


# ---------------------------------------------------------------------------------------- SEG
def test_seg_passes_dciodvfy(seg_file):
    errors, warnings = dciodvfy(seg_file)
    assert errors == [], errors
    assert warnings == [], warnings  # none today; docs/OUTPUTS.md lists what to expect otherwise


def test_seg_frames_rebuild_the_label_maps(results, seg_file):
    seg = hd.seg.segread(seg_file)
    numbers = segment_numbers(seg)
    masks = expected_masks(results)
    assert results.positive_nodes and results.negative_nodes, "the tiny study should have both LN classes"
    # The generator's pancreas label includes the tumour: overlapping segments must survive.
    assert (masks["organ:pancreas"] & masks[PDAC_KEY]).any()
    for key, mask in masks.items():
        if not mask.any():
            assert key not in numbers
            continue
        planes = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=results.venous.sop_instance_uids,
            segment_numbers=[numbers[key]], combine_segments=False)
        assert planes.shape == mask.shape + (1,)
        np.testing.assert_array_equal(planes[..., 0].astype(bool), mask, err_msg=key)


def test_seg_references_and_identification(results, seg_file):
    seg = pydicom.dcmread(seg_file)
    src = pydicom.dcmread(results.venous.source_files[0], stop_before_pixels=True)
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID == results.venous.frame_of_reference_uid
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.PatientID == src.PatientID
    assert "RESEARCH" in seg.SeriesDescription.upper()
    referenced = {item.ReferencedSOPInstanceUID
                  for series in seg.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
    assert referenced == set(results.venous.sop_instance_uids)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == results.venous.series.series_instance_uid
    # Every frame's source image is one of the venous instances.
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert uid in referenced
    for item in seg.SegmentSequence:
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == results.run.app_name and algo.AlgorithmVersion == results.run.app_version
        assert "synthetic_training_data=true" in algo.AlgorithmParameters
        assert item.SegmentAlgorithmType == "AUTOMATIC"


def test_seg_coded_concepts(results, seg_file):
    seg = pydicom.dcmread(seg_file)
    by_key = {item.TrackingID: item for item in seg.SegmentSequence}
    for c in ORGAN_CLASSES:
        item = by_key[f"organ:{c.key}"]
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.ANATOMICAL_STRUCTURE.value
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodingSchemeDesignator) == (c.snomed_code, "SCT")
        if c.snomed_modifier:
            assert prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == c.snomed_modifier[0]
    pdac = by_key[PDAC_KEY]
    assert pdac.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert pdac.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert pdac.AnatomicRegionSequence[0].CodeValue == "15776009"
    pos, neg = by_key[LN_POSITIVE_KEY], by_key[LN_NEGATIVE_KEY]
    assert pos.SegmentedPropertyTypeCodeSequence[0].CodeValue == "14799000"  # Neoplasm, Secondary
    assert pos.AnatomicRegionSequence[0].CodeValue == "59441001"  # in a lymph node
    assert neg.SegmentedPropertyTypeCodeSequence[0].CodeValue == "59441001"
    assert [int(i.SegmentNumber) for i in seg.SegmentSequence] == list(range(1, len(seg.SegmentSequence) + 1))


def test_seg_omits_empty_segments(results):
    # All nodes negative: no "positive LN" segment, numbers stay consecutive.
    negative = [dataclasses.replace(n, positive=False, probability_positive=0.1) for n in results.lymph_nodes]
    seg = build_seg(dataclasses.replace(results, lymph_nodes=negative))
    numbers = segment_numbers(seg)
    assert LN_POSITIVE_KEY not in numbers and LN_POSITIVE_KEY in omitted_segments(seg)
    assert sorted(numbers.values()) == list(range(1, len(numbers) + 1))
    assert set(numbers) | set(omitted_segments(seg)) == set(ALL_SEGMENT_KEYS)


def test_seg_refuses_labels_off_the_reference_grid(results):
    shifted = sitk.Image(results.organs)
    shifted.SetOrigin([o + 5.0 for o in results.organs.GetOrigin()])
    with pytest.raises(AnalysisResultsError, match="organs: not on the venous reference grid"):
        build_seg(dataclasses.replace(results, organs=shifted))


# ---------------------------------------------------------------------------------------- SR
def test_sr_passes_dciodvfy(sr_file):
    errors, warnings = dciodvfy(sr_file)
    assert errors == [], errors
    # The only warnings: the private coding scheme 99LNMET is not a DICOM defined term.
    assert all("99LNMET" in w for w in warnings), warnings


def _report(path) -> hd.sr.MeasurementReport:
    return hd.sr.MeasurementReport.from_sequence([hd.sr.srread(path)])


def _value(group, name) -> float:
    found = group.get_measurements(name=name)
    assert len(found) == 1, name
    return found[0].value


def _evaluation(group, name) -> str:
    found = [q for q in group.get_qualitative_evaluations() if q.name == name]
    assert len(found) == 1, name
    return found[0].value


def test_sr_lymph_node_groups_equal_the_computed_values(results, seg_file, sr_file):
    seg = pydicom.dcmread(seg_file)
    numbers = segment_numbers(seg)
    report = _report(sr_file)
    for node in results.lymph_nodes:
        groups = report.get_volumetric_roi_measurement_groups(tracking_uid=node.tracking_uid)
        assert len(groups) == 1, node.index
        g = groups[0]
        assert str(g.tracking_identifier) == ln_tracking_id(node)
        assert g.finding_type == codes.LYMPH_NODE
        ref = g.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [numbers[LN_POSITIVE_KEY if node.positive else LN_NEGATIVE_KEY]]
        assert ref.source_series_for_segmentation.value == results.venous.series.series_instance_uid
        assert _value(g, codes.VOLUME) == node.volume_mm3
        assert _value(g, codes.SHORT_AXIS) == node.short_axis_mm
        assert _value(g, codes.LONG_AXIS) == node.long_axis_mm
        assert _value(g, codes.ATTENUATION) == node.mean_hu_venous
        assert _value(g, codes.PROBABILITY_OF_CANCER) == node.probability_positive
        assert _value(g, codes.DISTANCE_TO_NEAREST) == node.distance_mm
        assert g.get_measurements(name=codes.VOLUME)[0].unit == codes.UNIT_MM3
        assert _evaluation(g, codes.METASTASIS) == (codes.PRESENT if node.positive else codes.ABSENT)
        assert _evaluation(g, codes.NEAREST_STRUCTURE).value == \
            [c.snomed_code for c in ORGAN_CLASSES if c.key == node.nearest_structure][0]


def test_sr_tumour_and_patient_groups(results, seg_file, sr_file):
    report = _report(sr_file)
    seg = pydicom.dcmread(seg_file)
    tumour = [g for g in report.get_volumetric_roi_measurement_groups()
              if str(g.tracking_identifier) == TUMOUR_TRACKING_ID]
    assert len(tumour) == 1
    t = results.tumour
    assert _value(tumour[0], codes.VOLUME) == t.volume_mm3
    assert _value(tumour[0], codes.DIAMETER) == t.max_axial_diameter_mm
    assert _value(tumour[0], codes.ATTENUATION) == t.mean_hu_venous
    assert tumour[0].referenced_segment.referenced_segment_numbers == [segment_numbers(seg)[PDAC_KEY]]
    patient = [g for g in report.get_image_measurement_groups()
               if str(g.tracking_identifier) == PATIENT_TRACKING_ID]
    assert len(patient) == 1
    p = results.patient
    assert _value(patient[0], codes.PROBABILITY_OF_CANCER) == p.probability
    assert _value(patient[0], codes.DECISION_THRESHOLD) == p.threshold
    assert _value(patient[0], codes.LARGEST_POSITIVE_LN_VOLUME) == p.largest_positive_ln_volume_mm3
    assert _evaluation(patient[0], codes.METASTASIS) == (codes.PRESENT if p.positive else codes.ABSENT)
    assert patient[0].method == codes.PATIENT_METHODS[p.method]


def test_sr_references_context_and_notices(results, seg_file, sr_file):
    sr = pydicom.dcmread(sr_file)
    seg = pydicom.dcmread(seg_file)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == results.venous.series.study_instance_uid
    evidence = {item.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == set(results.venous.sop_instance_uids) | {seg.SOPInstanceUID}
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == codes.PRIVATE_SCHEME
    def context_item(code) -> list:
        return [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == code.value]

    assert context_item(dcm_codes.DCM.ObserverType)[0].ConceptCodeSequence[0].CodeValue == dcm_codes.DCM.Device.value
    assert context_item(dcm_codes.DCM.DeviceObserverName)[0].TextValue == \
        f"{results.run.app_name} {results.run.app_version}"
    notes = sr.ContentSequence[-1]
    assert notes.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
    texts = [i.TextValue for i in notes.ContentSequence]
    assert any("Research use only" in t and "synthetic" in t for t in texts)
    assert any(results.venous.series.series_instance_uid in t for t in texts)
    assert any(results.arterial.series_instance_uid in t for t in texts)
    for m in results.models:
        assert any(m.name in t and m.version in t and m.sha256 in t for t in texts)
    assert not any("Single-phase" in t for t in texts)
    library = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    assert library, "TID 1600 image library missing"
    images = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
              for group in library[0].ContentSequence for i in group.ContentSequence if i.ValueType == "IMAGE"}
    assert images <= set(results.venous.sop_instance_uids)
    ref = results.reference
    for node in results.lymph_nodes:  # the slice through every node's centre is in the library
        k = int(round(ref.TransformPhysicalPointToContinuousIndex(node.centroid_mm)[2]))
        assert results.venous.sop_instance_uids[k] in images


def test_sr_without_tumour_single_phase_and_undetermined_patient(results, seg_file):
    variant = dataclasses.replace(
        results, arterial=None, run=dataclasses.replace(results.run, single_phase=True),
        pdac_mask=sitk.Image(results.pdac_mask.GetSize(), sitk.sitkUInt8),
        tumour=TumourFinding(found=False, statement="no tumour found"),
        patient=dataclasses.replace(results.patient, probability=None, positive=None, method="nodes_only"))
    variant.pdac_mask.CopyInformation(results.pdac_mask)
    seg = build_seg(variant)
    assert PDAC_KEY in omitted_segments(seg)
    sr = build_sr(variant, seg)
    report = hd.sr.MeasurementReport.from_sequence([sr])
    tumour = [g for g in report.get_image_measurement_groups() if str(g.tracking_identifier) == TUMOUR_TRACKING_ID]
    assert len(tumour) == 1 and _evaluation(tumour[0], codes.NEOPLASM) == codes.ABSENT
    patient = [g for g in report.get_image_measurement_groups()
               if str(g.tracking_identifier) == PATIENT_TRACKING_ID][0]
    assert patient.get_measurements(name=codes.PROBABILITY_OF_CANCER) == []
    assert _evaluation(patient, codes.METASTASIS) == dcm_codes.DCM.PresenceUndetermined
    texts = [i.TextValue for i in sr.ContentSequence[-1].ContentSequence]
    assert any(t.startswith("Single-phase analysis") for t in texts)
