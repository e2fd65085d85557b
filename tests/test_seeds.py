"""The seed ranges and the guard that keeps every choice (training, thresholds, filters) off the
held-out test seeds 100000-149999."""

from __future__ import annotations

import json

import pytest

from lnmet.seeds import TestSeedError, cohort_seeds, is_test_seed, refuse_test_seeds, seed_set_name


def test_ranges_and_the_error_names_what_and_which():
    assert not is_test_seed(99999) and is_test_seed(100000) and is_test_seed(149999) and not is_test_seed(150000)
    refuse_test_seeds([0, 99999, 150000, 200000], "the sweep")  # training and validation seeds pass
    with pytest.raises(TestSeedError, match=r"the sweep .* 100000-149999 \(given: 100003, 149999\)"):
        refuse_test_seeds([5, 149999, 100003, 150000], "the sweep")
    many = list(range(100000, 100008))
    with pytest.raises(TestSeedError, match=r"100004 \.\.\. \(8 in all\)"):
        refuse_test_seeds(many, "x")


def test_reports_name_the_seed_set_they_measure():
    assert seed_set_name([100000, 149999]) == "held-out"
    assert seed_set_name(iter([150000, 150015])) == "validation"
    assert seed_set_name([0, 99999]) == "training"
    assert seed_set_name([99999, 100000]) == "mixed-seed"


def test_cohort_seeds_skips_rows_without_a_seed():
    patients = {"A": {"seed": 3}, "B": {"metastasis_positive": True}, "C": {"seed": 100001}, "D": "bad",
                "E": {"seed": True}}
    assert cohort_seeds(patients) == [3, 100001]
    assert cohort_seeds(patients, ["A", "B", "missing"]) == [3]


@pytest.mark.parametrize("module", ["train_segmentation", "train_ln_classifier", "train_patient_classifier"])
def test_training_commands_refuse_a_cohort_with_test_seeds(tmp_path, module):
    """Every training command stores thresholds chosen on its data: a cohort holding a test seed is
    refused before anything is read or trained (the dataset here has labels and a patients.json only)."""
    import importlib

    train = importlib.import_module(f"training.{module}")
    cohort = tmp_path / "cohort"
    ln = cohort / "Dataset502_PancreasLymphNodes"
    pdac = cohort / "Dataset503_PancreasTumour"
    for ds in (ln, pdac):
        (ds / "labelsTr").mkdir(parents=True)
        (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT_arterial", "1": "CT_venous"},
                                                     "labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"}))
        for case in ("SYN000007", "SYN100002"):
            (ds / "labelsTr" / f"{case}.nii.gz").write_bytes(b"")
    (cohort / "patients.json").write_text(json.dumps({
        "SYN000007": {"seed": 7, "metastasis_positive": False},
        "SYN100002": {"seed": 100002, "metastasis_positive": True}}))
    out = tmp_path / "m" / "model.ts"
    argv = {"train_segmentation": ["--dataset", str(ln), "--task", "lymph_nodes", "--out", str(out)],
            "train_ln_classifier": ["--dataset", str(ln), "--ln-seg-model", str(tmp_path / "none.ts"), "--out", str(out)],
            "train_patient_classifier": ["--data", str(cohort), "--ln-seg-model", str(tmp_path / "none.ts"),
                                         "--ln-cls-model", str(tmp_path / "none.ts"), "--out", str(out)]}[module]
    if module == "train_ln_classifier":  # it builds the network from the segmentation model first
        from app_support import make_standin_models

        models, _ = make_standin_models(tmp_path / "standin", ["ln_seg"])
        argv[argv.index("--ln-seg-model") + 1] = str(models / "ln_seg" / "model.ts")
    with pytest.raises(TestSeedError, match=r"training .* \(given: 100002\)"):
        train.main(argv + ["--checkpoint", str(tmp_path / "ck.pt")] if module == "train_segmentation" else argv)
    assert not out.exists()
