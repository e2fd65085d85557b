"""The AUC of every node parameter and identification-head measurement for the node label
(evaluation/node_separability.py, printed by ``python -m synthetic stats``)."""

from __future__ import annotations

import json
import math

import pytest

from app_support import make_standin_models


def test_parameters_are_read_generically_from_the_node_table():
    from evaluation.node_separability import node_parameters, text_fields

    row = {"id": 3, "positive": True, "station_structure": "sma", "volume_mm3": 412.5, "necrotic": False,
           "axes_mm": [12.0, 6.0, 9.0], "centroid_mm": [1.0, 2.0, 3.0], "texture_hu": 11.0,
           "appearance": {"wash_in_hu": 7.5, "rim": True, "note": "x"}, "semi_axis_lengths": [2.0, 4.0],
           "missing": None, "bad": float("nan")}
    assert node_parameters(row) == {
        "volume_mm3": 412.5, "necrotic": 0.0, "texture_hu": 11.0, "axes_mm smallest/largest": 0.5,
        "axes_mm middle/largest": 0.75, "appearance.wash_in_hu": 7.5, "appearance.rim": 1.0,
        "semi_axis_lengths smallest/largest": 0.5}
    assert text_fields([row, {"nearest_structure": "aorta"}]) == ["nearest_structure", "station_structure"]


def test_auc_table_ranks_by_separation_and_flags_constants():
    from evaluation.node_separability import auc_table

    labels = [True, True, False, False, False]
    feats = [{"up": 5, "down": 0, "same": 1, "sparse": 1}, {"up": 4, "down": 1, "same": 1},
             {"up": 1, "down": 4, "same": 1, "sparse": 0}, {"up": 2, "down": 5, "same": 1}, {"up": 3, "down": 3, "same": 1}]
    table = {r["name"]: r for r in auc_table(labels, feats)}
    assert table["up"]["auc"] == 1.0 and table["down"]["auc"] == 0.0 and table["down"]["separation"] == 1.0
    assert table["same"]["constant"] and math.isnan(table["same"]["auc"])
    assert table["sparse"]["nodes"] == 2 and table["sparse"]["auc"] == 1.0
    assert [r["name"] for r in auc_table(labels, feats)][-1] == "same"


def test_separability_of_a_tiny_cohort(tmp_path):
    """Three tiny studies with a stand-in identification model at their 3 mm: every labelled node in
    the field of view is measured once, and the head's log volume ranks the nodes exactly as the node
    table's volume does (same masks, same grid)."""
    from evaluation.node_separability import format_separability, node_separability
    from synthetic import GENERATOR_VERSION

    models, _ = make_standin_models(tmp_path, ["ln_cls"])
    res = node_separability(range(150000, 150003), tmp_path / "cache", workers=1,
                            ln_cls_model=models / "ln_cls" / "model.ts", preset="tiny")
    data = tmp_path / "cache" / f"generator_{GENERATOR_VERSION}" / "data_tiny" / "Dataset502_PancreasLymphNodes"
    rows = [r for p in sorted((data / "lymph_nodes").glob("*.json")) for r in json.loads(p.read_text())
            if r["in_field_of_view"]]
    assert res["studies"] == 3 and res["nodes"] == len(rows) > 0
    assert res["positive"] == sum(r["positive"] for r in rows)
    params = {r["name"]: r for r in res["generator_parameters"]}
    head = {r["name"]: r for r in res["head_measurements"]}
    assert {"volume_mm3", "texture_hu", "hu_shift", "axes_mm smallest/largest"} <= set(params)
    assert {"log_volume", "axial_axis_ratio", "axis_ratio_3d", "core mean CT_venous (normalised HU)",
            "core SD CT_arterial (normalised HU)"} <= set(head) and len(head) == 7
    if 0 < res["positive"] < res["nodes"]:
        assert head["log_volume"]["auc"] == pytest.approx(params["volume_mm3"]["auc"])
    text = format_separability(res)
    assert "texture_hu" in text and "best single head measurement" in text


def test_synthetic_stats_prints_the_separability(tmp_path, capsys, monkeypatch):
    """The stats command's hook: the cohort's seeds, cache and workers go to the separability, whose
    tables follow the cohort statistics (tiny studies and a stand-in model here, for speed)."""
    import evaluation.node_separability as sep
    from synthetic.__main__ import main

    models, _ = make_standin_models(tmp_path, ["ln_cls"])
    real, calls = sep.node_separability, []

    def on_tiny_studies(seeds, cache, workers):
        calls.append((list(seeds), str(cache), workers))
        return real(seeds, cache, workers, ln_cls_model=models / "ln_cls" / "model.ts", preset="tiny")

    monkeypatch.setattr(sep, "node_separability", on_tiny_studies)
    assert main(["stats", "--seed", "1000", "--count", "2", "--workers", "1",
                 "--separability-cache", str(tmp_path / "stats")]) == 0
    assert calls == [([1000, 1001], str(tmp_path / "stats"), 1)]
    out = capsys.readouterr().out
    assert out.index("AUC of LN volume") < out.index("Node separability") < out.index("log_volume")
    assert "texture_hu" in out
