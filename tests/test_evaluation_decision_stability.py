"""evaluation/decision_stability.py: the app run on a tiny generated study with app.yaml and with a
variant (the app's own path, two runs), its table and summary; bad variants and test seeds refused."""

from __future__ import annotations

import json

import pytest
import yaml

from evaluation import decision_stability as stability
from lnmet.seeds import TestSeedError


def test_variant_config_changes_only_the_named_settings(tmp_path):
    text, changes = stability.parse_variant("registration.bspline_iterations=100,patient_classifier.threshold=0.3")
    assert changes == {"registration.bspline_iterations": 100, "patient_classifier.threshold": 0.3}
    doc = yaml.safe_load(stability.write_config(changes, tmp_path / "v.yaml").read_text())
    base = yaml.safe_load(stability.DEFAULT_CONFIG_PATH.read_text())
    assert doc["registration"]["bspline_iterations"] == 100 and doc["patient_classifier"]["threshold"] == 0.3
    base["registration"]["bspline_iterations"], base["patient_classifier"]["threshold"] = 100, 0.3
    assert doc == base
    with pytest.raises(SystemExit, match="registration.no_such_setting"):
        stability.write_config({"registration.no_such_setting": 1}, tmp_path / "bad.yaml")
    with pytest.raises(Exception, match="section.key=value"):
        stability.parse_variant("bspline_iterations")


def test_summary_counts_changes_and_flips():
    def run(p, decision):
        return {"probability": p, "decision": decision, "status": "assessed", "nodes": 3}
    rows = [{"study": "A", "default": run(0.80, "positive"), "v": run(0.78, "positive")},
            {"study": "B", "default": run(0.52, "positive"), "v": run(0.47, "negative")},
            {"study": "C", "default": run(None, "not_assessable"), "v": run(None, "not_assessable")}]
    s = stability.summarize(rows, ["v"])["v"]
    assert s["studies"] == 2 and s["flipped"] == ["B"]
    assert s["max_abs_change"] == pytest.approx(0.05) and s["median_abs_change"] == pytest.approx(0.035)


def test_held_out_test_seeds_are_refused(tmp_path):
    with pytest.raises(TestSeedError):
        stability.main(["--seed-start", "100000", "--count", "1", "--variant", "registration.bspline_iterations=1",
                        "--work", str(tmp_path)])


def test_runs_the_app_with_each_variant(tiny_study_dir, tmp_path):
    """Two app runs on the tiny study: app.yaml and a variant without the B-spline stage; each run's
    patient result is read from its own results.json and cached for the next call."""
    out = tmp_path / "work"
    assert stability.main(["--study", str(tiny_study_dir), "--variant", "registration.bspline_iterations=0",
                           "--work", str(out), "--json", str(tmp_path / "s.json")]) == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    (row,) = doc["rows"]
    for name, folder in (("default", "default"), ("registration.bspline_iterations=0", "app.variant0")):
        results = json.loads((out / tiny_study_dir.name / folder / "results.json").read_text())
        withheld = (results.get("quality_gate") or {}).get("withheld_model_output") or {}
        probability = results["patient"]["probability"]
        # where the gate withheld the decision, the row holds the classifier's kept output
        assert row[name]["probability"] == (probability if probability is not None else withheld.get("probability"))
        assert row[name]["decision"] == results["patient"]["decision"]
        assert row[name]["status"] == results["status"]
    assert f"settings: {out / 'app.variant0.yaml'}" in (out / f"{tiny_study_dir.name}.app.variant0.log").read_text()
    assert f"settings: {stability.DEFAULT_CONFIG_PATH}" in (out / f"{tiny_study_dir.name}.default.log").read_text()
    summary = doc["summary"]["registration.bspline_iterations=0"]
    p0, p1 = row["default"]["probability"], row["registration.bspline_iterations=0"]["probability"]
    if p0 is not None and p1 is not None:
        assert summary["max_abs_change"] == pytest.approx(abs(p1 - p0))
    # cached: a second call runs nothing and gives the same table
    mtime = (out / tiny_study_dir.name / "default" / "results.json").stat().st_mtime
    assert stability.main(["--study", str(tiny_study_dir), "--variant", "registration.bspline_iterations=0",
                           "--work", str(out)]) == 0
    assert (out / tiny_study_dir.name / "default" / "results.json").stat().st_mtime == mtime


def test_withheld_decision_still_measures_the_model():
    """Where the gate withheld the decision, the change is measured on the classifier's kept output."""
    doc = {"status": "not_assessable", "lymph_nodes": [{}, {}],
           "patient": {"probability": None, "decision": "not_assessable"},
           "quality_gate": {"failed_critical": ["organ_connectivity"],
                            "withheld_model_output": {"probability": 0.51, "note": "NOT A DECISION"}}}
    assert stability._patient(doc) == {"probability": 0.51, "decision": "not_assessable", "status": "not_assessable",
                                       "nodes": 2, "failed_checks": ["organ_connectivity"]}
