"""evaluation/quality_gate.py (the gate's pass rate on held-out generated studies): its summary and
its command line, on results.json documents already on disk (the script reuses them, so no study is
generated and no model runs here)."""

from __future__ import annotations

import json

import pytest

from evaluation import quality_gate as evaluation


def _doc(status: str, spleen_hu: float) -> dict:
    passed = spleen_hu >= 65
    checks = [
        {"name": "scan_length_mm", "value": 200.0, "unit": "mm", "min": 90, "max": None, "result": "pass",
         "severity": "critical", "reason": "scan length 200 mm"},
        {"name": "venous_spleen_hu", "value": spleen_hu, "unit": "HU", "min": 65, "max": 250,
         "result": "pass" if passed else "fail", "severity": "critical", "reason": f"venous phase, spleen {spleen_hu} HU"},
    ]
    return {"status": status, "quality_gate": {"checks": checks, "assessable": passed,
                                               "failed_critical": [] if passed else ["venous_spleen_hu"]}}


def test_summary_lists_each_false_alarm_with_its_failed_check():
    s = evaluation.summarize({"SYN100000": _doc("assessed", 110.0), "SYN100001": _doc("not_assessable", 50.0)})
    assert s["studies"] == 2 and s["assessed"] == 1 and s["pass_rate"] == 0.5
    assert 0.0 < s["pass_rate_ci95"][0] < 0.5 < s["pass_rate_ci95"][1] < 1.0
    assert s["false_alarms"] == [{"case": "SYN100001", "failed": [
        {"name": "venous_spleen_hu", "value": 50.0, "reason": "venous phase, spleen 50.0 HU"}]}]
    spleen = s["checks"]["venous_spleen_hu"]
    assert spleen["failed"] == 1 and (spleen["min"], spleen["max"]) == (50.0, 110.0) and spleen["accepted"] == [65, 250]


def test_wilson_interval():
    lo, hi = evaluation.wilson_interval(49, 50)
    assert lo == pytest.approx(0.895, abs=0.005) and hi == pytest.approx(0.9965, abs=0.002)
    assert evaluation.wilson_interval(0, 0) == (0.0, 1.0)


def test_command_line_reuses_results_and_runs_studies_in_parallel(tmp_path, capsys):
    for seed, doc in ((100000, _doc("assessed", 110.0)), (100001, _doc("not_assessable", 50.0))):
        folder = tmp_path / "standard" / "results" / f"SYN{seed:06d}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(doc))
    out = tmp_path / "summary.json"
    assert evaluation.main(["--count", "2", "--jobs", "2", "--work", str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 generated studies, seeds 100000-100001 (held out) (the app with" in printed and "1 assessed, pass rate 50.0%" in printed
    assert "NOT MET" in printed
    assert "SYN100001:" in printed and "venous_spleen_hu: venous phase, spleen 50.0 HU" in printed
    assert json.loads(out.read_text())["false_alarms"][0]["case"] == "SYN100001"


def test_ground_truth_mode_judges_the_study_itself(tmp_path, capsys, monkeypatch, tiny_study):
    """--ground-truth runs the gate on the generated study's own labels, in-process, no models (the
    suite's tiny study stands in for the generated one)."""
    import synthetic
    from lnmet.quality import CHECKS

    seeds = []
    monkeypatch.setattr(synthetic, "generate_study", lambda seed, preset: seeds.append((seed, preset)) or tiny_study)
    out = tmp_path / "summary.json"
    assert evaluation.main(["--ground-truth", "--preset", "tiny", "--count", "1", "--work", str(tmp_path),
                            "--json", str(out)]) == 0
    assert seeds == [(100000, "tiny")]
    summary = json.loads(out.read_text())
    assert summary["judged"] == "ground truth, preset tiny" and summary["studies"] == 1 and not summary["errors"]
    assert set(summary["checks"]) == set(CHECKS)
    assert summary["checks"]["node_count"]["failed"] == 0  # no nodes are judged on ground truth
    assert "(ground truth, preset tiny)" in capsys.readouterr().out


def test_training_seeds_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        evaluation.main(["--seed-start", "99999", "--work", str(tmp_path)])
