"""The patient prediction evaluation end to end on one tiny generated study with stand-in models:
the LN probability map is computed once and shared with the LN detection evaluation's cache, and
the LN chain gives the same result with the cached map as without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from app_support import make_standin_models
from evaluation.patient_prediction import main
from synthetic import GENERATOR_VERSION


def test_patient_prediction_script_on_a_tiny_study(tmp_path):
    models, _ = make_standin_models(tmp_path, ["ln_seg", "ln_cls", "pdac_seg", "patient_cls"])
    out = tmp_path / "patients.json"
    args = ["--count", "1", "--preset", "tiny", "--models", str(models), "--cache", str(tmp_path / "cache"),
            "--organs", "gt", "--json", str(out), "--threads", "2"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    row = res["patients"][0]
    assert res["summary"]["patients"] == 1 and 0.0 <= row["combined"] <= 1.0 and 0.0 <= row["pdac_dice"] <= 1.0
    cached = list((tmp_path / "cache" / f"generator_{GENERATOR_VERSION}" / "pred").glob("ln_*_gtorgans/*.nii.gz"))
    assert len(cached) == 1  # the LN probability, in the LN detection evaluation's cache layout


def test_ln_pipeline_with_a_given_probability_equals_its_own(tmp_path, tiny_study):
    from lnmet.config import load_settings
    from lnmet.networks.ln_classifier import LNPipeline

    models, _ = make_standin_models(tmp_path, ["ln_seg", "ln_cls"])
    pipe = LNPipeline.load(models / "ln_seg" / "model.ts", models / "ln_cls" / "model.ts", load_settings())
    own = pipe.run(tiny_study.venous, tiny_study.venous, tiny_study.organs)
    given = pipe.run(tiny_study.venous, tiny_study.venous, tiny_study.organs, probability=own.probability)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(own.instances), sitk.GetArrayFromImage(given.instances))
    np.testing.assert_allclose(own.probabilities, given.probabilities, rtol=1e-5)


def test_a_region_kept_away_from_the_tumour_is_not_a_tumour_found():
    """The summary tells a study with no region kept (nodes-only fallback) from one where a region
    other than the tumour was kept (Dice 0)."""
    from evaluation.patient_prediction import report

    rows = [{"label": True, "pdac_dice": 0.8, "tumour_found": True},
            {"label": False, "pdac_dice": 0.0, "tumour_found": True},
            {"label": False, "pdac_dice": 0.0, "tumour_found": False},
            {"label": True, "pdac_dice": 0.6, "tumour_found": True}]
    s = report(rows, {}, "patients")
    assert s["tumours_missed"] == 1 and s["tumours_kept_elsewhere"] == 1
    assert s["pdac_dice_mean"] == pytest.approx(0.35)
