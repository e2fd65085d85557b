"""What the output builders write for a study the quality gate found not assessable (and for one it
passed with a warning): results.json, the PDF's first page, the SR, the SEG.

Stand-in results of the generated tiny study (ground-truth labels, lnmet.reporting.standin) go
through :func:`operators.quality_gate.gate_results` with a report whose checks failed, so the
builders' behaviour is tested independently of what the models produce.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pydicom
import pytest

from lnmet.quality import CRITICAL, FAIL, PASS, WARNING, QualityCheck, QualityReport
from lnmet.reporting import codes
from lnmet.reporting.standin import results_from_study
from lnmet.results import AnalysisResultsError
from operators.pdf_report_builder import build_pdf
from operators.quality_gate import gate_results
from operators.results_json_builder import build_results_document
from operators.seg_builder import build_seg
from operators.sr_builder import build_sr
from tests.test_outputs_seg_sr import dciodvfy

WIDTH_FAIL = QualityCheck("body_width_mm", 150.0, "mm", 200.0, None, FAIL, CRITICAL,
                          "body width 150 mm, below the accepted >= 200 mm")
LENGTH_PASS = QualityCheck("scan_length_mm", 120.0, "mm", 90.0, None, PASS, CRITICAL,
                           "scan length 120 mm (accepted >= 90 mm)")
ESOPHAGUS_WARN = QualityCheck("volume_esophagus_ml", 0.0, "mL", 0.5, 150.0, FAIL, WARNING,
                              "esophagus: none segmented, volume 0.0 mL, below the accepted 0.5 to 150 mL")


@pytest.fixture(scope="module")
def standin(tiny_study, tiny_study_dir):
    return results_from_study(tiny_study, tiny_study_dir, patient_probability=0.81)


@pytest.fixture(scope="module")
def not_assessable(standin):
    return gate_results(standin, QualityReport(checks=[LENGTH_PASS, WIDTH_FAIL, ESOPHAGUS_WARN]))


@pytest.fixture(scope="module")
def built(not_assessable):
    seg = build_seg(not_assessable)
    return seg, build_sr(not_assessable, seg), build_pdf(not_assessable)


def _items(sr):
    for item in sr.ContentSequence:
        yield item
        if "ContentSequence" in item:
            yield from _items(item)


def test_gate_withholds_the_decision(standin, not_assessable):
    assert not_assessable.status == "not_assessable" and standin.status == "assessed"
    p = not_assessable.patient
    assert p.probability is None and p.positive is None and "body_width_mm" in p.statement
    assert not_assessable.quality.withheld_probability == pytest.approx(0.81)
    assert not_assessable.lymph_nodes == standin.lymph_nodes, "node findings are kept for review"
    warnings = not_assessable.run.warnings
    assert any("volume_esophagus_ml" in w for w in warnings) and not any("body_width_mm" in w for w in warnings)
    with pytest.raises(AnalysisResultsError, match="not assessable"):
        dataclasses.replace(not_assessable, patient=standin.patient).validate()


def test_results_json(not_assessable, built):
    doc = build_results_document(not_assessable, *built)
    assert doc["status"] == "not_assessable"
    assert doc["patient"]["decision"] == "not_assessable" and doc["patient"]["probability"] is None
    gate = doc["quality_gate"]
    assert gate["failed_critical"] == ["body_width_mm"] and gate["warnings"] == ["volume_esophagus_ml"]
    assert [c["name"] for c in gate["checks"]] == ["scan_length_mm", "body_width_mm", "volume_esophagus_ml"]
    assert gate["checks"][1] == {"name": "body_width_mm", "value": 150.0, "unit": "mm", "min": 200.0, "max": None,
                                 "result": "fail", "severity": "critical", "reason": WIDTH_FAIL.reason}
    assert gate["withheld_model_output"]["probability"] == pytest.approx(0.81)
    assert "NOT A DECISION" in gate["withheld_model_output"]["note"]


def test_assessed_with_a_warning(standin):
    results = gate_results(standin, QualityReport(checks=[LENGTH_PASS, ESOPHAGUS_WARN]))
    assert results.status == "assessed" and results.patient == standin.patient
    doc = build_results_document(results, None, None, None)
    assert doc["status"] == "assessed" and doc["patient"]["probability"] == pytest.approx(0.81)
    assert doc["quality_gate"]["withheld_model_output"] is None
    sr = build_sr(results, None)
    values = [i.ConceptCodeSequence[0].CodeValue for i in _items(sr) if i.ValueType == "CODE"
              and i.ConceptNameCodeSequence[0].CodeValue == codes.QUALITY_ASSESSMENT.value]
    assert values == [codes.QUALITY_WARNINGS.value]


def test_pdf_first_thing_on_page_one(built, tmp_path):
    exe = shutil.which("pdftotext")
    if exe is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    path = tmp_path / "report.pdf"
    path.write_bytes(built[2].pdf_bytes)
    first = subprocess.run([exe, "-layout", "-f", "1", "-l", "1", str(path), "-"], capture_output=True, text=True,
                           check=True).stdout
    lines = [line.strip() for line in first.splitlines() if line.strip()]
    assert lines[1].startswith("NOT ASSESSABLE"), lines[:3]  # line 0 is the page header (patient)
    text = " ".join(first.split())
    assert "body_width_mm: body width 150 mm, below the accepted >= 200 mm" in text
    assert text.index("NOT ASSESSABLE") < text.index("Lymph node metastasis prediction")
    assert "Not assessable: no patient-level prediction" in text and "0.81" not in text
    assert "PREDICTED" not in text


def test_sr_carries_it_and_stays_valid(not_assessable, built, tmp_path):
    _, sr, _ = built
    items = list(_items(sr))
    quality = [i for i in items if i.ValueType == "CODE"
               and i.ConceptNameCodeSequence[0].CodeValue == codes.QUALITY_ASSESSMENT.value]
    assert [q.ConceptCodeSequence[0].CodeValue for q in quality] == [codes.QUALITY_UNUSABLE.value]
    texts = [str(i.TextValue) for i in items if i.ValueType == "TEXT"
             and i.ConceptNameCodeSequence[0].CodeValue == codes.QUALITY_GATE_STATEMENT.value]
    assert texts[0].startswith("NOT ASSESSABLE")
    assert any(t.startswith("body_width_mm failed (critical)") for t in texts)
    assert any(t.startswith("volume_esophagus_ml failed (warning)") for t in texts)
    decisions = [i.ConceptCodeSequence[0].CodeValue for i in items if i.ValueType == "CODE"
                 and i.ConceptNameCodeSequence[0].CodeValue == codes.METASTASIS.value]
    assert codes.PRESENCE_UNDETERMINED.value in decisions
    probabilities = [i for i in items if i.ValueType == "NUM"
                     and i.ConceptNameCodeSequence[0].CodeValue == codes.PROBABILITY_OF_CANCER.value]
    assert len(probabilities) == len(not_assessable.lymph_nodes), "no patient-level probability"
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert not errors, errors


def test_seg_is_still_written(not_assessable, built):
    seg, _, _ = built
    labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert "Pancreas" in labels and pydicom.uid.UID(seg.SOPInstanceUID).is_valid
