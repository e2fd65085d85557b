"""benchmarks/bench_app.py compares what a user reads, baseline against this checkout, also when the
baseline is an older checkout whose results.json predates the quality gate's ``status``."""

from __future__ import annotations

import json

from benchmarks.bench_app import _print_result_differences


def _doc(status: str | None, decision: str, nodes: list[tuple[float, float]]) -> dict:
    doc = {"schema_version": "1.8.0" if status else "1.2.0",
           "patient": {"decision": decision, "probability": 0.4},
           "tumour": {"volume_mm3": 1000.0},
           "lymph_nodes": [{"index": i + 1, "positive": p > 0.5, "centroid_mm": [float(i), 0.0, 0.0],
                            "volume_mm3": v, "probability_positive": p} for i, (v, p) in enumerate(nodes)]}
    if status:
        doc["status"] = status
    return doc


def test_an_older_baseline_without_status_is_compared(tmp_path, capsys):
    for name, doc in (("old", _doc(None, "positive", [(120.0, 0.7)])),
                      ("new", _doc("assessed", "negative", [(100.0, 0.2), (50.0, 0.6)]))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(doc))
    _print_result_differences(tmp_path / "old", tmp_path / "new")
    out = capsys.readouterr().out
    assert "status n/a (schema 1.2.0) -> assessed; decision positive -> negative" in out
    assert "lymph nodes 1 -> 2 (positive 1 -> 1)" in out
    assert "node 1 -> 1 (centroids 0.0 mm apart): 120 -> 100 mm3, p 0.700 -> 0.200" in out
