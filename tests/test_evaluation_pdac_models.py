"""evaluation.pdac_models: PDAC models compared on a generated study in its four conditions, and
the held-out test seeds refused (a comparison is a choice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.pdac_models import main

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "models" / "pdac_seg" / "model.ts"


def test_models_side_by_side_on_a_tiny_study(tmp_path, capsys):
    out = tmp_path / "pdac.json"
    assert main(["--models", str(BUNDLED), str(BUNDLED), "--count", "1", "--seed-start", "150000",
                 "--preset", "tiny", "--coarse-mm", "5", "--threads", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["summary"]) == {"as generated", "registered", "coarse", "no contrast"}
    for by_model in doc["summary"].values():
        first, second = by_model.values()
        assert first == second  # the same model twice gives the same figures
        assert 0.0 <= first["kept_dice_median"] <= 1.0 and first["raw_ml"] >= first["false_ml"] >= 0.0
    # the bundled model finds this tiny study's tumour as generated
    assert doc["summary"]["as generated"][doc["models"][0]]["tumours_kept"] == 1
    assert "PDAC models on 1 studies" in capsys.readouterr().out


def test_test_seeds_are_refused(capsys):
    assert main(["--models", str(BUNDLED), "--count", "2", "--seed-start", "100000"]) == 2
    assert "100000" in capsys.readouterr().err
