"""evaluation/organ_segmentation.py in the real CT's acquisition (issue 16): generated anatomy
scanned without contrast, at 3 mm voxels, one phase, through the bundled organ model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from lnmet.labels import ANATOMY_LABELS


def test_real_ct_acquisition_on_generated_anatomy(tmp_path, monkeypatch, capsys):
    import evaluation.organ_segmentation as organ_eval

    seen = []
    evaluate = organ_eval.evaluate_study

    def spy(study, model, registration, single_phase=False):
        seen.append((study, single_phase))
        return evaluate(study, model, registration, single_phase)

    monkeypatch.setattr(organ_eval, "evaluate_study", spy)
    out = tmp_path / "organs.json"
    assert organ_eval.main(["--count", "1", "--preset", "tiny", "--no-contrast", "--voxel-mm", "3",
                            "--single-phase", "--threads", "2", "--json", str(out)]) == 0
    (study, single_phase), = seen
    assert single_phase
    assert study.venous.GetSpacing() == pytest.approx((3.0, 3.0, 3.0))
    hu = sitk.GetArrayFromImage(study.venous)
    anatomy = sitk.GetArrayFromImage(study.anatomy)
    for tissue, unenhanced in (("spleen", 45.0), ("aorta", 40.0), ("liver", 55.0)):
        assert np.median(hu[anatomy == ANATOMY_LABELS[tissue]]) == pytest.approx(unenhanced, abs=1.0)
    summary = json.loads(out.read_text())["summary"]
    assert summary["studies"] == 1 and 0.0 <= summary["dice"]["aorta"] <= 1.0
    out = capsys.readouterr().out
    assert "held-out studies (seeds 100000-100000, preset tiny, 3 mm voxels, no contrast, venous phase alone)" in out


def test_acquisition_flags_refused_in_app_mode(capsys):
    import evaluation.organ_segmentation as organ_eval

    with pytest.raises(SystemExit):
        organ_eval.main(["--mode", "app", "--count", "1", "--no-contrast"])
    assert "--no-contrast: only with --mode model-grid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        organ_eval.main(["--count", "1", "--voxel-mm", "20"])
    assert "--voxel-mm 20.0: expected 0.5-6 mm" in capsys.readouterr().err


def test_report_header_names_the_acquisition():
    from argparse import Namespace

    from evaluation.organ_segmentation import acquisition_label

    plain = Namespace(voxel_mm=None, no_contrast=False, single_phase=False, registration="perfect")
    assert acquisition_label(plain) == "registration perfect"
    assert acquisition_label(Namespace(**{**vars(plain), "voxel_mm": 3.0, "single_phase": True})) == \
        "3 mm voxels, venous phase alone"


def test_slab_compares_the_whole_scan_with_the_slab_alone(tmp_path, monkeypatch, capsys):
    import evaluation.organ_segmentation as organ_eval
    import synthetic.faults as faults

    slabs = []
    cut = faults.slab_around_pancreas

    def spy(study, slab_mm):
        slabs.append(cut(study, slab_mm))
        return slabs[-1]

    monkeypatch.setattr(faults, "slab_around_pancreas", spy)
    whole_study = tmp_path / "whole.json"
    args = ["--count", "1", "--preset", "tiny", "--voxel-mm", "3", "--single-phase", "--threads", "2"]
    # a slab longer than the scan is the scan: both runs see the same input and must agree exactly
    assert organ_eval.main(args + ["--slab-mm", "10000", "--json", str(whole_study)]) == 0
    same = json.loads(whole_study.read_text())["slab"]["dice"]
    np.testing.assert_equal(same["whole"], same["slab"])  # absent classes are NaN in both
    assert 0.0 < same["whole"]["aorta"] <= 1.0
    thin = tmp_path / "thin.json"
    assert organ_eval.main(args + ["--slab-mm", "30", "--json", str(thin)]) == 0
    assert slabs[-1].venous.GetSize()[2] == 10  # 30 mm of 3 mm slices
    r = json.loads(thin.read_text())
    assert r["slab"]["slab_mm"] == 30 and set(r["slab"]["dice"]) == {"whole", "slab"}
    assert "30 mm slab" in capsys.readouterr().out
