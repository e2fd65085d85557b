"""The LN detection evaluation script end to end on one tiny generated study with stand-in models:
the cohort and predictions are cached per generator version, every figure and the instance-filter
sweep are written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app_support import make_standin_models
from evaluation.ln_detection import SWEEP_MIN_VOLUMES_MM3, SWEEP_MIN_VOXELS, SWEEP_THRESHOLDS, main
from lnmet.config import load_settings
from lnmet.instances import ln_instances
from synthetic import GENERATOR_VERSION


def test_ln_detection_script_on_a_tiny_study(tmp_path, monkeypatch):
    """Here the tiny preset's field scanned at 4 mm (``--voxel-mm``), as the coarse-scan sweep runs."""
    import SimpleITK as sitk

    import evaluation.ln_detection as ln_detection
    import lnmet.instances

    rims = []  # every instance map of the script (main figures and sweeps) takes app.yaml's fat-rim trim

    def recording_ln_instances(*args):
        rims.append(args[5] if len(args) > 5 else "not given")
        return ln_instances(*args)

    monkeypatch.setattr(ln_detection, "ln_instances", recording_ln_instances)
    monkeypatch.setattr(lnmet.instances, "ln_instances", recording_ln_instances)
    models, _ = make_standin_models(tmp_path, ["ln_seg", "ln_cls"])
    out = tmp_path / "eval.json"
    assert main(["--count", "1", "--seed-start", "150000", "--preset", "tiny", "--voxel-mm", "4", "--models",
                 str(models), "--cache", str(tmp_path / "cache"), "--organs", "gt", "--sweep", "--json", str(out),
                 "--threads", "2"]) == 0
    version_cache = tmp_path / "cache" / f"generator_{GENERATOR_VERSION}"
    data = version_cache / "data_tiny_4mm"
    patients = json.loads((data / "patients.json").read_text())
    assert [r["generator_version"] for r in patients.values()] == [GENERATOR_VERSION]
    venous = sitk.ReadImage(str(next((data / "Dataset502_PancreasLymphNodes" / "imagesTr").glob("*_0001.nii.gz"))))
    assert venous.GetSpacing() == (4.0, 4.0, 4.0)
    assert list((version_cache / "pred").glob("ln_*_gtorgans/*.nii.gz"))
    res = json.loads(out.read_text())
    assert len(rims) > 2 * len(SWEEP_THRESHOLDS) * len(SWEEP_MIN_VOLUMES_MM3) + len(SWEEP_MIN_VOXELS)
    assert set(rims) == {load_settings().ln_detection.rim_fat_hu}
    det = res["detection"]["ln_seg"]
    assert det["studies"] == 1 and det["gt"] == sum(1 for _ in res["studies"][0]["gt_nodes"]["labels"])
    sweep = res["sweeps"]["ln_seg"]
    det_settings = load_settings().ln_detection
    assert det_settings.min_density_hu is not None  # the app checks density: the sweep has it off and on
    assert len(sweep) == 2 * len(SWEEP_THRESHOLDS) * len(SWEEP_MIN_VOLUMES_MM3)
    # the sweep repeats the main figures at app.yaml's own setting, with and without the density check
    for density, figures in ((det_settings.min_density_hu, det), (None, res["detection"]["ln_seg_no_density_check"])):
        same = [r for r in sweep if r["probability_threshold"] == det_settings.probability_threshold
                and r["min_volume_mm3"] == det_settings.min_volume_mm3 and r["min_density_hu"] == density][0]
        for k in ("recall", "precision"):
            assert (np.isnan(same[k]) and np.isnan(figures[k])) or same[k] == figures[k]
    assert det["pred"] <= res["detection"]["ln_seg_no_density_check"]["pred"]
    # the min_voxels sweep: app.yaml's value repeats the main figures; more voxels, never more nodes
    by_n = {r["min_voxels"]: r for r in res["sweeps"]["min_voxels"]}
    assert sorted(by_n) == list(SWEEP_MIN_VOXELS)
    assert by_n[det_settings.min_voxels]["pred"] == det["pred"]
    assert all(by_n[a]["pred"] >= by_n[b]["pred"] for a, b in zip(SWEEP_MIN_VOXELS, SWEEP_MIN_VOXELS[1:]))
    ratios = res["studies"][0]["ln_seg"]["volume_ratios"]  # one per true detection, 0.3 IoU bounds it
    assert len(ratios) == det["true_positive_pred"] and all(0.3 <= v <= 1 / 0.3 for v in ratios)
    assert set(res["goals"]) >= {"recall_at_least_0.8", "precision_at_least_0.5", "identification_auc_gt_at_least_0.85"}
    # identification: every segmented instance, and those matching a true node on their own
    seg = res["studies"][0]["segmented_nodes"]
    ident = res["identification"]
    assert ident["segmented_instances"]["nodes"] == det["pred"] == len(seg["true_node"])
    assert ident["segmented_true_nodes"]["nodes"] == sum(seg["true_node"]) == det["true_positive_pred"]


def test_filter_rule_keeps_a_margin_on_recall():
    from evaluation.ln_detection import choose_filter

    def row(thr, vol, recall, precision):
        return {"probability_threshold": thr, "min_volume_mm3": vol, "recall": recall, "precision": precision,
                "f1": 2 * recall * precision / (recall + precision)}

    sweep = [row(0.5, 80.0, 0.80, 0.90),  # best F1, but recall only at the goal: not chosen
             row(0.5, 35.0, 0.87, 0.70), row(0.4, 35.0, 0.87, 0.68),
             row(0.5, 20.0, 0.92, 0.45)]  # recall high, precision below 0.5
    assert choose_filter(sweep) == sweep[1]
    assert choose_filter(sweep, min_recall=0.8) == sweep[0]
    assert choose_filter(sweep, min_recall=0.95) is None


def test_min_voxels_rule_keeps_recall():
    from evaluation.ln_detection import choose_min_voxels

    def row(n, recall, precision):
        return {"min_voxels": n, "recall": recall, "precision": precision,
                "f1": 2 * recall * precision / (recall + precision)}

    sweep = [row(1, 0.80, 0.40), row(2, 0.79, 0.50), row(3, 0.79, 0.50), row(4, 0.70, 0.80)]
    assert choose_min_voxels(sweep) == 2  # 4 has the best F1 but loses recall; 2 and 3 tie: the smaller
    assert choose_min_voxels(sweep, margin=0.2) == 4
    assert choose_min_voxels([row(1, 0.8, 0.5), row(2, 0.7, 0.9)]) == 1


def test_sweep_refuses_the_held_out_test_seeds(tmp_path, capsys):
    """The sweep chooses app.yaml's filter: on a test seed it stops before generating anything."""
    with pytest.raises(SystemExit) as stop:
        main(["--count", "2", "--seed-start", "149999", "--preset", "tiny", "--cache", str(tmp_path / "cache"),
              "--organs", "gt", "--sweep"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--sweep" in err and "149999" in err and "100000-149999" in err and "150000" in err
    assert not (tmp_path / "cache").exists()
