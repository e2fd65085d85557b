"""PDF report (pdftoppm renders the planned pages; notices, result first, node table; page 1 in
detail: tests/test_outputs_pdf_page1.py), its DICOM
Encapsulated PDF (dciodvfy, patient/study copied, sources), and results.json (schema, UIDs, no
patient identifiers)."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess

import pydicom
import pytest

from lnmet.reporting.standin import results_from_study
from operators.pdf_report_builder import build_pdf, expected_page_count
from operators.results_json_builder import (
    ResultsDocumentError,
    build_results_document,
    load_schema,
    validate_results_document,
)
from operators.seg_builder import build_seg, segment_numbers
from operators.sr_builder import build_sr
from tests.test_outputs_seg_sr import dciodvfy


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (poppler-utils) is not installed")
    return path


@pytest.fixture(scope="module")
def results(tiny_study, tiny_study_dir):
    return results_from_study(tiny_study, tiny_study_dir)


@pytest.fixture(scope="module")
def built(results):
    seg = build_seg(results)
    sr = build_sr(results, seg)
    pdf = build_pdf(results)
    return seg, sr, pdf


@pytest.fixture(scope="module")
def pdf_file(built, tmp_path_factory):
    path = tmp_path_factory.mktemp("pdf") / "report.pdf"
    path.write_bytes(built[2].pdf_bytes)
    return path


def _page_texts(pdf_file, pages: int) -> list[str]:
    exe = _tool("pdftotext")
    return [subprocess.run([exe, "-layout", "-f", str(i), "-l", str(i), str(pdf_file), "-"],
                           capture_output=True, text=True, check=True).stdout for i in range(1, pages + 1)]


def test_pdf_renders_to_the_planned_pages(results, built, pdf_file, tmp_path):
    pdf = built[2]
    n_key = int(results.tumour.found) + len(results.positive_nodes)
    assert len(pdf.key_images) == n_key
    assert pdf.page_count == expected_page_count(n_key, len(results.lymph_nodes))
    subprocess.run([_tool("pdftoppm"), "-r", "30", "-png", str(pdf_file), str(tmp_path / "page")], check=True)
    assert len(list(tmp_path.glob("page-*.png"))) == pdf.page_count


def test_pdf_content_result_first_and_notice_on_every_page(results, built, pdf_file):
    texts = _page_texts(pdf_file, built[2].page_count)
    n_key = len(built[2].key_images)
    src = pydicom.dcmread(results.venous.source_files[0], stop_before_pixels=True)
    for i, text in enumerate(texts, start=1):
        flat = " ".join(text.split())
        assert "Research use only" in flat and "not for clinical decisions" in flat, f"page {i}"
        assert "models trained on synthetic data" in flat, f"page {i}"
        assert str(src.PatientID) in flat, f"page {i}: the header names the patient"
        assert f"Page {i} of {len(texts)}" in flat
    first = " ".join(texts[0].split())
    decision = first.index("Lymph node metastasis PREDICTED") if results.patient.positive else \
        first.index("No lymph node metastasis predicted")
    assert decision < first.index("Lymph nodes, most probable first")
    assert f"{results.patient.probability:.2f}" in first and f"{results.patient.threshold:.2f}" in first
    assert f"metastatic when its probability is \u2265 {results.ln_threshold:.2f}" in first  # the node threshold
    # The series and models: the last page (page 1 says where).
    last = " ".join(texts[-1].split())
    assert f"Phases and series chosen, models: page {len(texts)}" in first
    assert last.index("Series used") < last.index("Models")
    for ref in (results.venous.series, results.arterial):
        assert ref.series_description in last
        tm = ref.acquisition_time
        assert f"{tm[0:2]}:{tm[2:4]}:{tm[4:6]}" in last
    for m in results.models:
        assert m.name in last and m.version in last
    # The node table (before the last page) lists every node, by decreasing probability.
    table = texts[-2]
    rows = [line.split() for line in table.splitlines()
            if line.split() and line.split()[0].isdigit() and len(line.split()) >= 9]
    assert [int(r[0]) for r in rows] == [n.index for n in sorted(results.lymph_nodes,
                                                                 key=lambda n: -n.probability_positive)]
    if n_key > 1:  # the other key images follow page 1
        assert "Key images" in " ".join(texts[1].split())


def test_encapsulated_pdf(results, built, tmp_path):
    pdf = built[2]
    path = tmp_path / "report.dcm"
    pdf.dataset.save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == [], errors
    assert warnings == [], warnings
    ds = pydicom.dcmread(path)
    src = pydicom.dcmread(results.venous.source_files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage and ds.Modality == "DOC"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(ds.EncapsulatedDocument)[:ds.EncapsulatedDocumentLength] == pdf.pdf_bytes
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "AccessionNumber", "StudyID"):
        assert ds.get(kw) == src.get(kw), kw
    assert ds.SeriesInstanceUID not in (results.venous.series.series_instance_uid, results.arterial.series_instance_uid)
    sources = {i.ReferencedSOPInstanceUID for i in ds.SourceInstanceSequence}
    assert sources == {k["sop_instance_uid"] for k in pdf.key_images}
    assert sources <= set(results.venous.sop_instance_uids)
    assert "research use only" in ds.DocumentTitle.lower()
    assert ds.SeriesDate and ds.SeriesTime


def test_results_json_valid_complete_and_anonymous(results, built):
    seg, sr, pdf = built
    doc = build_results_document(results, seg, sr, pdf)
    validate_results_document(json.loads(json.dumps(doc)))
    assert doc["schema_version"] == load_schema()["properties"]["schema_version"]["const"]
    assert doc["outputs"]["seg"]["sop_instance_uid"] == seg.SOPInstanceUID
    assert doc["outputs"]["sr"]["sop_instance_uid"] == sr.SOPInstanceUID
    assert doc["outputs"]["pdf_dicom"]["sop_instance_uid"] == pdf.dataset.SOPInstanceUID
    assert doc["outputs"]["pdf"]["page_count"] == pdf.page_count
    numbers = segment_numbers(seg)
    assert {s["key"]: s["number"] for s in doc["outputs"]["seg"]["segments"]} == numbers
    by_index = {n.index: n for n in results.lymph_nodes}
    probs = [n["probability_positive"] for n in doc["lymph_nodes"]]
    assert probs == sorted(probs, reverse=True)
    for entry in doc["lymph_nodes"]:
        node = by_index[entry["index"]]
        assert entry["tracking_uid"] == node.tracking_uid
        assert entry["volume_mm3"] == node.volume_mm3 and entry["short_axis_mm"] == node.short_axis_mm
        assert entry["seg_segment_number"] == numbers[f"ln:{node.index}"]  # its own segment
    assert doc["lymph_node_threshold"] == results.ln_threshold
    assert doc["patient"]["probability"] == results.patient.probability
    assert doc["phases"]["arterial"]["series_instance_uid"] == results.arterial.series_instance_uid
    assert all(m["synthetic_training_data"] for m in doc["models"]) and doc["synthetic_training_data"]
    # No patient identifiers anywhere in the document.
    src = pydicom.dcmread(results.venous.source_files[0], stop_before_pixels=True)
    text = json.dumps(doc)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        value = str(src.get(kw) or "")
        if value:
            assert value not in text, kw
            if kw == "PatientName":
                for part in value.split("^"):
                    assert len(part) < 3 or part not in text, kw


def test_results_json_schema_names_the_bad_field(results, built):
    doc = build_results_document(results, *built)
    bad = copy.deepcopy(doc)
    bad["lymph_nodes"][0]["probability_positive"] = 1.5
    with pytest.raises(ResultsDocumentError, match="lymph_nodes/0/probability_positive"):
        validate_results_document(bad)
    bad = copy.deepcopy(doc)
    bad["patient_name"] = "x"
    with pytest.raises(ResultsDocumentError, match="Additional properties"):
        validate_results_document(bad)


def test_results_json_single_phase_and_disabled_outputs(results):
    variant = dataclasses.replace(results, arterial=None, run=dataclasses.replace(results.run, single_phase=True))
    doc = build_results_document(variant, None, None, None)
    assert doc["single_phase"] is True and doc["phases"]["arterial"] is None
    assert doc["outputs"]["seg"] is None and doc["outputs"]["sr"] is None and doc["outputs"]["pdf"] is None
    assert all(n["seg_segment_number"] is None for n in doc["lymph_nodes"])


def test_borderline_decision_in_every_output(results):
    """A probability within app.yaml's borderline margin of the threshold is marked in results.json,
    in the PDF's verdict and in the SR's statement; the same result farther away is not."""
    from operators.pdf_report_builder import decision_text
    from operators.sr_builder import patient_statement

    p = results.patient
    near = dataclasses.replace(p, probability=min(1.0, p.threshold + 0.01), positive=True, borderline_margin=0.05)
    variant = dataclasses.replace(results, patient=near)
    doc = build_results_document(variant, None, None, None)
    validate_results_document(json.loads(json.dumps(doc)))
    assert doc["patient"]["borderline"] is True and doc["patient"]["borderline_margin"] == 0.05
    assert "(positive, borderline)" in decision_text(variant)[0]
    assert "metastasis predicted (borderline)" in patient_statement(variant)
    far = dataclasses.replace(near, probability=min(1.0, p.threshold + 0.2))
    variant = dataclasses.replace(results, patient=far)
    assert build_results_document(variant, None, None, None)["patient"]["borderline"] is False
    assert "borderline" not in decision_text(variant)[0] and "borderline" not in patient_statement(variant)


def test_results_json_says_how_the_tumour_was_chosen(results):
    """tumour.model_components and selection_rule: null when not known (a mask from elsewhere), else
    what the PDAC operator did; a rule outside lnmet.tumour.RULES is refused by the schema."""
    from lnmet.tumour import RULES

    doc = build_results_document(results, None, None, None)
    assert doc["tumour"]["model_components"] is None and doc["tumour"]["selection_rule"] is None
    for rule in RULES:
        variant = dataclasses.replace(results, tumour=dataclasses.replace(results.tumour, model_components=5,
                                                                          selection_rule=rule))
        doc = build_results_document(variant, None, None, None)
        validate_results_document(json.loads(json.dumps(doc)))
        assert doc["tumour"]["model_components"] == 5 and doc["tumour"]["selection_rule"] == rule
    doc["tumour"]["selection_rule"] = "largest"
    with pytest.raises(ResultsDocumentError, match="tumour/selection_rule"):
        validate_results_document(doc)


def test_pdf_findings_say_which_tumour_region_is_reported(results):
    """The findings line names how the reported tumour was chosen when the model found several
    regions, and why none is reported when all lay away from the pancreas."""
    from operators.pdf_report_builder import tumour_text

    t = dataclasses.replace(results.tumour, found=True, volume_mm3=5000.0, max_axial_diameter_mm=24.0)
    assert tumour_text(t) == "tumour (PDAC) 5.0 mL, maximum axial diameter 24 mm"
    several = dataclasses.replace(t, model_components=6, selection_rule="pancreas_overlap")
    assert tumour_text(several).endswith("(the one in the pancreas of 6 regions found)")
    single = dataclasses.replace(t, model_components=1, selection_rule="pancreas_overlap")
    assert "regions found" not in tumour_text(single)
    dropped = dataclasses.replace(t, found=False, model_components=3, selection_rule="none_near_pancreas")
    assert tumour_text(dropped) == "no tumour kept (3 regions found, all away from the pancreas)"
    assert tumour_text(dataclasses.replace(t, found=False, selection_rule="none", model_components=0)) == \
        "no tumour found"
