"""Held-out evidence (lnmet/held_out.py): the records in the manifest are checked and tied to the
file measured, a retrained model loses them, and every output says how far the patient-level
answer can be trusted, plainly when its confidence interval does not exclude chance."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess

import pytest

from lnmet.held_out import HeldOutError, HeldOutEvidence, HeldOutFigure, patient_evidence_statement
from lnmet.model_manifest import ModelIntegrityError, build_manifest, load_manifest, verify_models, write_manifest

SETTING = "30 held-out generated studies (seeds 100000-100029) run as the app runs"


def _evidence(sha: str, auc=(0.42, 0.23, 0.63)) -> HeldOutEvidence:
    return HeldOutEvidence(sha256=sha, setting=SETTING, measured="2026-12-02", command="python -m evaluation.app_mode",
                           figures=(HeldOutFigure("patient_auc_combined", "patient-level AUC", auc[0], auc[1:], 0.5),
                                    HeldOutFigure("patient_auc_nodes_only", "AUC of the nodes-only rule", 0.64,
                                                  (0.42, 0.84), 0.5)))


def test_skill_is_shown_only_when_the_whole_interval_is_above_chance():
    assert HeldOutFigure("a", "AUC", 0.42, (0.23, 0.63), 0.5).skill_shown is False
    assert HeldOutFigure("a", "AUC", 0.64, (0.42, 0.84), 0.5).skill_shown is False
    assert HeldOutFigure("a", "AUC", 0.83, (0.69, 0.94), 0.5).skill_shown is True
    assert HeldOutFigure("a", "AUC", 0.83, None, 0.5).skill_shown is True
    assert HeldOutFigure("d", "Dice", 0.8).skill_shown is None


def test_the_patient_statement_follows_the_method_and_the_figure():
    ev = _evidence("0" * 64)
    none = patient_evidence_statement("combined", "patient_cls", "0.6.0", ev)
    assert none == (f"On {SETTING}, this patient-level answer (combined method) reached patient-level AUC 0.42 "
                    "(95% CI 0.23-0.63): no skill beyond chance was shown; do not rely on this answer.")
    good = patient_evidence_statement("combined", "patient_cls", "0.6.0", _evidence("0" * 64, (0.8, 0.7, 0.9)))
    assert good.endswith("better than chance on generated studies; it has not been measured on real patients.")
    assert "nodes-only rule 0.64 (95% CI 0.42-0.84): no skill" in patient_evidence_statement(
        "nodes_only", "patient_cls", "0.6.0", ev)
    for evidence, method in ((None, "combined"), (ev, "tumour_only")):
        assert patient_evidence_statement(method, "patient_cls", "0.6.0", evidence).startswith(
            f"No held-out figure is recorded for patient_cls 0.6.0 ({method} method)")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("setting"), "held_out has no 'setting'"),
    (lambda d: d["figures"][0].update(value=float("nan")), "'value' must be a finite number"),
    (lambda d: d["figures"][0].update(ci95=[0.5, 0.6]), "'ci95' must be \\[low, high\\] around the value"),
    (lambda d: d["figures"].append(dict(d["figures"][0])), "lists a figure twice"),
    (lambda d: d.update(figures=[]), "'figures' must be a non-empty list"),
])
def test_a_malformed_record_is_refused_naming_the_field(change, message):
    doc = _evidence("0" * 64).as_dict()
    change(doc)
    with pytest.raises(HeldOutError, match=message):
        HeldOutEvidence.from_dict(doc, "model 'patient_cls'")
    assert HeldOutEvidence.from_dict(_evidence("0" * 64).as_dict(), "x") == _evidence("0" * 64)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from app_support import make_standin_models

    return make_standin_models(tmp_path_factory.mktemp("held_out"), ["patient_cls", "ln_seg"])


def _with_record(manifest_path, name: str, sha: str | None = None) -> dict:
    doc = json.loads(manifest_path.read_text())
    for entry in doc["models"]:
        if entry["name"] == name:
            entry["held_out"] = _evidence(sha or entry["sha256"]).as_dict()
    return doc


def test_the_manifest_ties_the_figures_to_the_file_measured(bundle, tmp_path):
    models, manifest = bundle
    path = tmp_path / "model_manifest.json"
    path.write_text(json.dumps(_with_record(manifest, "patient_cls")))
    infos = verify_models(models, path)
    assert infos["patient_cls"].held_out == _evidence(infos["patient_cls"].sha256)
    assert infos["ln_seg"].held_out is None
    path.write_text(json.dumps(_with_record(manifest, "patient_cls", "f" * 64)))
    with pytest.raises(ModelIntegrityError, match="model 'patient_cls': its held-out figures were measured on file "
                                                   "ffffffffffff"):
        load_manifest(path)


def test_rebuilding_the_manifest_keeps_the_figures_of_an_unchanged_file_only(bundle, tmp_path):
    models, manifest = bundle
    previous_doc = _with_record(manifest, "patient_cls")
    path = tmp_path / "model_manifest.json"
    path.write_text(json.dumps(previous_doc))
    rebuilt = {e["name"]: e for e in build_manifest(models, load_manifest(path))["models"]}
    assert rebuilt["patient_cls"]["held_out"] == previous_doc["models"][
        [e["name"] for e in previous_doc["models"]].index("patient_cls")]["held_out"]
    retrained = copy.deepcopy(previous_doc)
    for entry in retrained["models"]:
        entry["sha256"] = "e" * 64  # as the old manifest of a file since replaced
        if "held_out" in entry:
            entry["held_out"]["sha256"] = "e" * 64
    path.write_text(json.dumps(retrained))
    rebuilt = build_manifest(models, load_manifest(path))
    assert not any("held_out" in e for e in rebuilt["models"])
    write_manifest(rebuilt, path)
    verify_models(models, path)


def test_every_output_says_how_far_the_answer_can_be_trusted(tiny_study, tiny_study_dir, tmp_path):
    """results.json (schema-valid), the SR's statement and model items and the PDF's verdict box
    carry the patient model's held-out figure; a model without one says none is recorded; a study
    without an answer gets no statement."""
    from lnmet.reporting.standin import results_from_study
    from operators.pdf_report_builder import build_pdf
    from operators.results_json_builder import build_results_document, validate_results_document
    from operators.sr_builder import build_sr, patient_statement

    results = results_from_study(tiny_study, tiny_study_dir)
    models = [dataclasses.replace(m, name="patient_cls", held_out=_evidence(m.sha256)) if i == 0 else m
              for i, m in enumerate(results.models)]
    results = dataclasses.replace(results, models=models)
    expected = patient_evidence_statement(results.patient.method, "patient_cls", models[0].version,
                                          models[0].held_out)
    assert results.patient_evidence == expected
    doc = build_results_document(results, None, None, None)
    validate_results_document(json.loads(json.dumps(doc)))
    assert doc["patient"]["held_out_evidence"] == expected
    assert doc["models"][0]["held_out"]["figures"][0] == {
        "key": "patient_auc_combined", "label": "patient-level AUC", "value": 0.42, "ci95": [0.23, 0.63],
        "chance": 0.5, "skill_shown": False}
    assert all(m["held_out"] is None for m in doc["models"][1:])
    from cohort.table import SCHEMA, build_row

    row = build_row({"study_uid": "1.2.3", "status": "done"}, doc)
    assert set(row) == set(SCHEMA.names) and row["patient_skill_shown"] is False  # the cohort table's column
    assert build_row({"study_uid": "1.2.3", "status": "done"}, build_results_document(
        dataclasses.replace(results, models=results.models[1:]), None, None, None))["patient_skill_shown"] is None
    assert patient_statement(results).endswith(expected)
    sr = build_sr(results, None)
    texts = [str(getattr(item, "TextValue", "")) for item in sr.ContentSequence[-1].ContentSequence]
    assert any(t.endswith("; no held-out figures recorded") for t in texts)
    assert any("; held-out: patient-level AUC 0.42 (95% CI 0.23-0.63)" in t for t in texts)
    pdf_path = tmp_path / "report.pdf"
    pdf_path.write_bytes(build_pdf(results).pdf_bytes)
    page1 = " ".join(subprocess.run(["pdftotext", "-layout", "-f", "1", "-l", "1", str(pdf_path), "-"],
                                    capture_output=True, text=True, check=True).stdout.split())
    assert "Held-out evidence: On 30 held-out generated studies" in page1
    assert "no skill beyond chance was shown; do not rely on this answer." in page1
    withheld = dataclasses.replace(results, patient=dataclasses.replace(results.patient, probability=None,
                                                                        positive=None))
    assert withheld.patient_evidence is None
    assert build_results_document(withheld, None, None, None)["patient"]["held_out_evidence"] is None
