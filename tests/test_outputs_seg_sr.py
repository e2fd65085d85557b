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
from lnmet.measurements import lymph_node_axes
from operators.seg_builder import (
    FIXED_SEGMENT_KEYS,
    PDAC_KEY,
    build_seg,
    ln_segment_key,
    omitted_segments,
    segment_numbers,
    segment_tracking_uids,
)
from operators.sr_builder import TUMOUR_TRACKING_ID, axes_tracking_id, build_sr, ln_tracking_id


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
    for node in results.lymph_nodes:
        out[ln_segment_key(node)] = lns == node.index
    return out


def assert_frames_rebuild(seg, results, masks: dict[str, np.ndarray]) -> None:
    """Each non-empty mask is its segment's frames read back on the venous series; an empty one has
    no segment."""
    numbers = segment_numbers(seg)
    for key, mask in masks.items():
        if not mask.any():
            assert key not in numbers
            continue
        planes = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=results.venous.sop_instance_uids,
            segment_numbers=[numbers[key]], combine_segments=False)
        assert planes.shape == mask.shape + (1,)
        np.testing.assert_array_equal(planes[..., 0].astype(bool), mask, err_msg=key)


# ---------------------------------------------------------------------------------------- SEG
def test_seg_passes_dciodvfy(seg_file):
    errors, warnings = dciodvfy(seg_file)
    assert errors == [], errors
    assert warnings == [], warnings  # none today; docs/OUTPUTS.md lists what to expect otherwise


def test_seg_frames_rebuild_the_label_maps(results, seg_file):
    seg = hd.seg.segread(seg_file)
    masks = expected_masks(results)
    assert results.positive_nodes and results.negative_nodes, "the tiny study should have both LN classes"
    # The generator's pancreas label includes the tumour: overlapping segments must survive.
    assert (masks["organ:pancreas"] & masks[PDAC_KEY]).any()
    assert seg.SegmentsOverlap == "YES"
    assert_frames_rebuild(seg, results, masks)


def test_seg_without_overlap_is_one_label_map_and_rebuilds_the_same_masks(results, tmp_path):
    # The tumour and the nodes cut out of the organ map: no voxel in two segments, so the SEG is
    # built from one label map (the other path of build_seg) and must still give every mask back.
    organs = sitk.GetArrayFromImage(results.organs)
    organs[(sitk.GetArrayFromImage(results.pdac_mask) > 0) | (sitk.GetArrayFromImage(results.ln_instances) > 0)] = 0
    apart = sitk.GetImageFromArray(organs)
    apart.CopyInformation(results.organs)
    separate = dataclasses.replace(results, organs=apart)
    path = tmp_path / "seg.dcm"
    build_seg(separate).save_as(path, enforce_file_format=True)
    seg = hd.seg.segread(path)
    assert seg.SegmentsOverlap == "NO"
    assert_frames_rebuild(seg, separate, expected_masks(separate))


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
        if f"organ:{c.key}" not in by_key:  # a class absent from this study has no segment
            continue
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
    for node in results.lymph_nodes:  # one segment per node, its tracking UID the node's own
        item = by_key[ln_segment_key(node)]
        assert item.TrackingUID == node.tracking_uid
        if node.positive:
            assert item.SegmentLabel == f"Lymph node {node.index}, metastatic (predicted)"
            assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "14799000"  # Neoplasm, Secondary
            assert item.AnatomicRegionSequence[0].CodeValue == "59441001"  # in a lymph node
        else:
            assert item.SegmentLabel == f"Lymph node {node.index}, non-metastatic (predicted)"
            assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "59441001"
    assert len({i.TrackingUID for i in seg.SegmentSequence}) == len(seg.SegmentSequence)
    assert [int(i.SegmentNumber) for i in seg.SegmentSequence] == list(range(1, len(seg.SegmentSequence) + 1))
    # Nodes by decreasing probability after the organs and the tumour.
    node_items = [i for i in seg.SegmentSequence if i.TrackingID.startswith("ln:")]
    probs = {ln_segment_key(n): n.probability_positive for n in results.lymph_nodes}
    assert [probs[i.TrackingID] for i in node_items] == sorted(probs.values(), reverse=True)
    assert seg.SeriesDate and seg.SeriesTime


def test_seg_omits_empty_segments(results):
    # An organ class with no voxel: no segment for it, numbers stay consecutive.
    organs = sitk.Image(results.organs)
    arr = sitk.GetArrayFromImage(organs)
    arr[arr == 1] = 0  # no spleen
    no_spleen = sitk.GetImageFromArray(arr)
    no_spleen.CopyInformation(results.organs)
    seg = build_seg(dataclasses.replace(results, organs=no_spleen))
    numbers = segment_numbers(seg)
    before = omitted_segments(build_seg(results))
    assert "organ:spleen" not in before, "the tiny study should have a spleen"
    assert "organ:spleen" not in numbers and set(omitted_segments(seg)) == set(before) | {"organ:spleen"}
    assert sorted(numbers.values()) == list(range(1, len(numbers) + 1))
    assert set(numbers) - {ln_segment_key(n) for n in results.lymph_nodes} | set(omitted_segments(seg)) == \
        set(FIXED_SEGMENT_KEYS)


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


def _segment_volumes(results, seg_file) -> dict[int, float]:
    """Segment number -> volume in mm3 counted from the SEG's own frames."""
    seg = hd.seg.segread(seg_file)
    voxel = float(np.prod(results.reference.GetSpacing()))
    out = {}
    for item in seg.SegmentSequence:
        planes = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=results.venous.sop_instance_uids,
            segment_numbers=[int(item.SegmentNumber)], combine_segments=False)
        out[int(item.SegmentNumber)] = float(planes.astype(bool).sum()) * voxel
    return out


def test_sr_lymph_node_groups_equal_the_computed_values(results, seg_file, sr_file):
    seg = pydicom.dcmread(seg_file)
    numbers = segment_numbers(seg)
    volumes = _segment_volumes(results, seg_file)
    report = _report(sr_file)
    for node in results.lymph_nodes:
        groups = report.get_volumetric_roi_measurement_groups(tracking_uid=node.tracking_uid)
        assert len(groups) == 1, node.index
        g = groups[0]
        assert str(g.tracking_identifier) == ln_tracking_id(node)
        assert g.finding_type == codes.LYMPH_NODE
        ref = g.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [numbers[ln_segment_key(node)]]  # its own segment
        assert ref.source_series_for_segmentation.value == results.venous.series.series_instance_uid
        assert _value(g, codes.VOLUME) == node.volume_mm3
        # The volume in the SR is the volume of the segment it references.
        assert _value(g, codes.VOLUME) == pytest.approx(volumes[numbers[ln_segment_key(node)]], rel=1e-9)
        assert _value(g, codes.ATTENUATION) == node.mean_hu_venous
        assert _value(g, codes.PROBABILITY_OF_CANCER) == node.probability_positive
        assert _value(g, codes.THRESHOLD_VALUE) == results.ln_threshold
        assert _value(g, codes.DISTANCE) == node.distance_mm
        assert g.get_measurements(name=codes.VOLUME)[0].unit == codes.UNIT_MM3
        assert _evaluation(g, codes.METASTASIS) == (codes.PRESENT if node.positive else codes.ABSENT)
        assert _evaluation(g, codes.NEAREST_STRUCTURE).value == \
            [c.snomed_code for c in ORGAN_CLASSES if c.key == node.nearest_structure][0]


def test_sr_axes_groups_carry_coordinates_on_the_measured_slice(results, sr_file):
    """Long/short axis as two-point polylines on the venous slice they were measured on, their
    lengths the reported values; the centre of mass as a SCOORD3D point; read back by highdicom."""
    report = _report(sr_file)
    ref = results.reference
    sx, sy = ref.GetSpacing()[0], ref.GetSpacing()[1]
    placed = lymph_node_axes(results.ln_instances)
    for node in results.lymph_nodes:
        [g] = report.get_image_measurement_groups(tracking_uid=node.tracking_uid)
        assert str(g.tracking_identifier) == axes_tracking_id(ln_tracking_id(node))
        assert str(g.tracking_identifier).startswith("Cornerstone3DTools@^0.1.0:Bidirectional:")
        names = [m.name for m in g.get_measurements()]
        assert names == [codes.LONG_AXIS, codes.SHORT_AXIS]  # OHIF reads the first NUM's coordinates
        for name, value in ((codes.LONG_AXIS, node.long_axis_mm), (codes.SHORT_AXIS, node.short_axis_mm)):
            [m] = g.get_measurements(name=name)
            assert m.value == value
            coords = m.referenced_coordinates
            line = coords[0]
            assert line.value_type.value == "SCOORD" and line.graphic_type.value == "POLYLINE"
            assert line.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
                results.venous.sop_instance_uids[placed[node.index].slice_index]
            (c0, r0), (c1, r1) = line.value
            length = float(np.hypot((c1 - c0) * sx, (r1 - r0) * sy))
            assert length == pytest.approx(value, abs=1e-4), (node.index, name)  # GraphicData is float32
            # The line lies on the node on that slice.
            lns = sitk.GetArrayViewFromImage(results.ln_instances)[placed[node.index].slice_index]
            mid = (int((r0 + r1) / 2), int((c0 + c1) / 2))
            assert lns[mid] == node.index or name == codes.LONG_AXIS
        [short] = g.get_measurements(name=codes.SHORT_AXIS)
        centre = [c for c in short.referenced_coordinates if c.value_type.value == "SCOORD3D"]
        assert len(centre) == 1 and centre[0].graphic_type.value == "POINT"
        assert centre[0].ReferencedFrameOfReferenceUID == results.venous.frame_of_reference_uid
        np.testing.assert_allclose(centre[0].value.ravel(), node.centroid_mm, atol=1e-4)


def test_sr_tumour_group_and_patient_level_result(results, seg_file, sr_file):
    report = _report(sr_file)
    seg = pydicom.dcmread(seg_file)
    tumour = [g for g in report.get_volumetric_roi_measurement_groups()
              if str(g.tracking_identifier) == TUMOUR_TRACKING_ID]
    assert len(tumour) == 1
    t = results.tumour
    assert _value(tumour[0], codes.VOLUME) == t.volume_mm3
    [diameter] = tumour[0].get_measurements(name=codes.DIAMETER)
    assert diameter.value == t.max_axial_diameter_mm and diameter.derivation == codes.MAXIMUM
    assert _value(tumour[0], codes.ATTENUATION) == t.mean_hu_venous
    assert tumour[0].referenced_segment.referenced_segment_numbers == [segment_numbers(seg)[PDAC_KEY]]
    # Its tracking UID is the PDAC segment's; its axes group shares it; the long axis is the maximum diameter.
    uid = segment_tracking_uids(seg)[PDAC_KEY]
    assert str(tumour[0].tracking_uid) == uid
    [axes] = report.get_image_measurement_groups(tracking_uid=uid)
    assert axes.get_measurements(name=codes.LONG_AXIS)[0].value == pytest.approx(t.max_axial_diameter_mm, abs=1e-9)
    # The patient-level result is a report-level evaluation (no measurement group without coordinates:
    # OHIF 3.13 cannot load a report that has one).
    sr = pydicom.dcmread(sr_file)
    groups = report.get_image_measurement_groups()
    assert all(str(g.tracking_identifier).startswith("Cornerstone3DTools@") for g in groups)
    notes = sr.ContentSequence[-1]
    [metastasis] = [i for i in notes.ContentSequence if i.ValueType == "CODE"
                    and i.ConceptNameCodeSequence[0].CodeValue == codes.METASTASIS.value]
    p = results.patient
    assert metastasis.ConceptCodeSequence[0].CodeValue == (codes.PRESENT if p.positive else codes.ABSENT).value
    [statement] = [i.TextValue for i in notes.ContentSequence
                   if i.ConceptNameCodeSequence[0].CodeValue == codes.PATIENT_LEVEL_STATEMENT.value]
    assert f"probability {p.probability:.3f}" in statement and f"decision threshold {p.threshold:.3f}" in statement
    assert f"probability >= {results.ln_threshold:.3f}" in statement
    assert sr.SeriesDate and sr.SeriesTime


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
    texts = [i.TextValue for i in notes.ContentSequence if i.ValueType == "TEXT"]
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
    placed = lymph_node_axes(results.ln_instances)
    for node in results.lymph_nodes:  # the slice every node's axes were measured on is in the library
        assert results.venous.sop_instance_uids[placed[node.index].slice_index] in images


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
    assert not [g for g in report.get_image_measurement_groups() + report.get_volumetric_roi_measurement_groups()
                if TUMOUR_TRACKING_ID in str(g.tracking_identifier)]
    notes = sr.ContentSequence[-1].ContentSequence
    codes_found = {i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeValue
                   for i in notes if i.ValueType == "CODE"}
    assert codes_found[codes.NEOPLASM.value] == codes.ABSENT.value
    assert codes_found[codes.METASTASIS.value] == dcm_codes.DCM.PresenceUndetermined.value
    texts = [i.TextValue for i in notes if i.ValueType == "TEXT"]
    assert any("no probability" in t for t in texts)
    assert any(t.startswith("Single-phase analysis") for t in texts)
    # regions found but all away from the pancreas: not "absent", and the statement says why
    set_aside = dataclasses.replace(variant, tumour=TumourFinding(
        found=False, statement="The PDAC segmentation model found 3 regions, all more than 10 mm from the pancreas",
        model_components=3, selection_rule="none_near_pancreas"))
    notes = build_sr(set_aside, seg).ContentSequence[-1].ContentSequence
    codes_found = {i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeValue
                   for i in notes if i.ValueType == "CODE"}
    assert codes_found[codes.NEOPLASM.value] == dcm_codes.DCM.PresenceUndetermined.value
    assert any(i.TextValue.startswith("The PDAC segmentation model found 3 regions") for i in notes
               if i.ValueType == "TEXT")


def test_sr_with_nothing_found_carries_the_patient_result_alone(results, tmp_path):
    """No tumour and no node (e.g. a scan outside the abdomen): TID 1500 still needs one measurement
    group, so an image-level group carries the patient-level evaluation; the SR is valid DICOM."""
    empty_ln = sitk.Image(results.ln_instances.GetSize(), results.ln_instances.GetPixelID())
    empty_ln.CopyInformation(results.ln_instances)
    variant = dataclasses.replace(
        results, lymph_nodes=[], ln_instances=empty_ln,
        pdac_mask=sitk.Image(results.pdac_mask.GetSize(), sitk.sitkUInt8),
        tumour=TumourFinding(found=False, statement="no tumour found"),
        patient=dataclasses.replace(results.patient, probability=None, positive=None, method="nodes_only"))
    variant.pdac_mask.CopyInformation(results.pdac_mask)
    path = tmp_path / "sr.dcm"
    build_sr(variant, build_seg(variant)).save_as(path, enforce_file_format=True)
    report = hd.sr.MeasurementReport.from_sequence([pydicom.dcmread(path)])
    assert not report.get_volumetric_roi_measurement_groups() and not report.get_planar_roi_measurement_groups()
    (group,) = report.get_image_measurement_groups()
    assert "patient-level result" in str(group.tracking_identifier)
    evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
    assert evaluations[codes.METASTASIS.value] == dcm_codes.DCM.PresenceUndetermined.value, evaluations
    errors, _ = dciodvfy(path)
    assert not errors, errors
