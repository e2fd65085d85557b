"""evaluation/real_ct.py on the real validation volume (../shared/real-ct-validation): the report
prints every figure of issue 16's goals, and ``--generated`` puts the same organ model on generated
anatomy scanned as that volume was beside it."""

from __future__ import annotations

import json

import pytest

from evaluation import real_ct


@pytest.fixture(scope="module")
def real_json(tmp_path_factory):
    if not (real_ct.DEFAULT_DATA / "ct.nii.gz").is_file():
        pytest.skip(f"real validation volume not found at {real_ct.DEFAULT_DATA}")
    out = tmp_path_factory.mktemp("real_ct") / "real.json"
    return out


def test_real_ct_report_with_generated_anatomy_beside_it(real_json, capsys):
    assert real_ct.main(["--generated", "1", "--generated-preset", "tiny", "--json", str(real_json)]) == 0
    r = json.loads(real_json.read_text())
    assert set(r["organs"]) == set(real_ct.TOTALSEG_LABELS)
    for key, goal in real_ct.GOALS.items():
        row = r["organs"][key]
        assert row["goal"] == goal and 0.0 <= row["dice"] <= 1.0 and row["reference_ml"] > 0
    assert r["organs"]["esophagus"]["dice"] is None  # not in this volume's range
    assert r["organs"]["esophagus"]["found_by_third"] is None
    assert all(v is None or 0.0 <= v <= 1.0 for k in real_ct.GOALS for v in r["organs"][k]["found_by_third"])
    gen = r["generated_same_scan"]
    assert gen["voxel_mm"] == pytest.approx(3.0) and gen["seeds"] == [100000, 100000]
    assert all(0.0 <= gen["dice"][k] <= 1.0 for k in real_ct.GOALS)
    assert isinstance(r["lymph_nodes"]["detections"], int) and r["pdac"]["goal"] == "no component > 1 ml"
    out = capsys.readouterr().out
    assert "share of the reference found, by third of the scan (feet / middle / head): spleen " in out
    assert "generated, same scan" in out and "venous phase alone, no contrast, 3 mm voxels" in out


def test_negative_generated_count_is_refused(real_json, capsys):
    with pytest.raises(SystemExit):
        real_ct.main(["--generated", "-1"])
    assert "--generated -1: expected a number of studies >= 0" in capsys.readouterr().err


def test_found_by_third_counts_each_third_of_the_slices():
    import numpy as np

    reference = np.zeros((6, 2, 2), bool)
    reference[:4] = True  # the lower two thirds only
    predicted = np.zeros_like(reference)
    predicted[0] = True  # half of the lower third
    predicted[2:4, 0] = True  # half of the middle third
    assert real_ct.found_by_third(predicted, reference) == [0.5, 0.5, None]
