"""The evaluations' "as the app runs" mode (evaluation/app_chain.py and app_mode.py) on one tiny generated study with
stand-in models: the study and the chain's outputs are cached per generator version and reused by
every script, and the scores are right when the outputs are the ground truth itself.
(That the chain gives the real app's results is checked in test_app_integration.py.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from app_support import make_standin_models
from synthetic import GENERATOR_VERSION

APP_MODELS = ["organ_seg", "ln_seg", "ln_cls", "pdac_seg", "patient_cls"]


@pytest.fixture(scope="module")
def app_cache(tmp_path_factory):
    """One tiny study (seed 100000) through the chain, with the plain-model ablation and a
    tumour-only model, by the all-in-one command (its DICOM dropped afterwards); its JSON output."""
    from evaluation.app_mode import main

    root = tmp_path_factory.mktemp("app_mode")
    models, _ = make_standin_models(root, APP_MODELS)
    out = root / "all.json"
    ln_seg = str(models / "ln_seg" / "model.ts")
    assert main(["--count", "1", "--preset", "tiny", "--models", str(models), "--cache", str(root / "cache"),
                 "--threads", "2", "--baseline-model", ln_seg, "--tumour-only-model",
                 str(models / "patient_cls" / "model.ts"), "--drop-dicom", "--json", str(out)]) == 0
    return {"root": root, "models": models, "cache": root / "cache", "json": json.loads(out.read_text())}


def test_one_run_per_study_serves_every_script(app_cache, monkeypatch, capsys):
    import evaluation.app_chain as app_chain
    from evaluation import ln_detection, organ_segmentation, patient_prediction, registration_accuracy

    version = app_cache["cache"] / f"generator_{GENERATOR_VERSION}"
    study = version / "studies_tiny" / "SYN100000"
    assert (study / "ground_truth" / "study.json").is_file() and not (study / "dicom").exists()  # --drop-dicom
    runs = list(version.glob("app_tiny_*/SYN100000/result.json"))
    assert len(runs) == 1
    result = json.loads(runs[0].read_text())
    assert result["preset"] == "tiny" and result["generator_version"] == GENERATOR_VERSION
    assert set(result["seconds"]) >= {"intake", "registration", "organs", "ln_segmentation", "patient"}

    def no_rerun(*a, **k):
        raise AssertionError("the chain ran again although its outputs are cached")

    monkeypatch.setattr(app_chain, "run_chain", no_rerun)
    common = ["--mode", "app", "--count", "1", "--preset", "tiny", "--models", str(app_cache["models"]),
              "--app-cache", str(app_cache["cache"])]
    ln = app_cache["root"] / "ln.json"
    baseline = str(app_cache["models"] / "ln_seg" / "model.ts")
    assert ln_detection.main(common + ["--baseline-model", baseline, "--json", str(ln)]) == 0
    assert organ_segmentation.main(common) == 0
    assert patient_prediction.main(common + ["--tumour-only-model", str(app_cache["models"] / "patient_cls" / "model.ts")]) == 0
    registration_accuracy.main(common)  # exit status: its goals (untrained models do not matter to it)
    printed = capsys.readouterr().out
    assert "as the app runs" in printed and "generating" not in printed and "running the app's chain" not in printed
    det = json.loads(ln.read_text())["detection"]
    assert det["ln_seg"]["gt"] == det["baseline"]["gt"] == len(result["gt_nodes"]["ids"])
    assert det["ln_seg"]["pred"] == len(result["findings"])


def test_app_mode_refuses_the_model_grid_options(app_cache, capsys):
    from evaluation import ln_detection

    with pytest.raises(SystemExit):
        ln_detection.main(["--mode", "app", "--preset", "tiny", "--organs", "gt", "--app-cache", str(app_cache["cache"])])
    assert "--mode app runs the app's own chain" in capsys.readouterr().err


def test_scores_of_outputs_equal_to_the_ground_truth(app_cache):
    """Outputs replaced by the ground truth score perfectly (Dice 1, every node found once at its true
    volume, PDAC Dice 1); nodes grown by one voxel along x are found larger than they are."""
    from evaluation.app_chain import score_case

    version = app_cache["cache"] / f"generator_{GENERATOR_VERSION}"
    study = version / "studies_tiny" / "SYN100000"
    run = next(version.glob("app_tiny_*/SYN100000"))
    fake = app_cache["root"] / "fake"
    shutil.copytree(run, fake)
    gt = study / "ground_truth"
    shutil.copy(gt / "organs.nii.gz", fake / "organs.nii.gz")
    shutil.copy(gt / "pdac.nii.gz", fake / "pdac.nii.gz")
    inst = sitk.ReadImage(str(gt / "lymph_nodes.nii.gz"))
    sitk.WriteImage(inst, str(fake / "ln_instances.nii.gz"))
    result = json.loads((fake / "result.json").read_text())
    arr = sitk.GetArrayFromImage(inst)
    ids = [int(i) for i in np.unique(arr) if i]
    result["findings"] = [{"index": i, "volume_mm3": 1.0, "probability": 0.5, "positive": True, "short_axis_mm": 1.0}
                          for i in ids]
    scored = score_case({"seed": 100000, "result": result, "study": study, "outputs": fake})
    assert all(v == 1.0 for v in scored["organ_dice"].values() if np.isfinite(v))
    ln = scored["ln_seg"]
    assert ln["gt"] == ln["detected"] == ln["pred"] == ln["true_positive_pred"] == len(ids) > 0
    assert ln["volume_ratios"] == [1.0] * len(ids) and ln["dice"] == 1.0
    assert scored["segmented_nodes"]["true_node"] == [True] * len(ids)
    positives = {int(r["id"]) for r in json.loads((gt / "study.json").read_text())["lymph_nodes"] if r["positive"]}
    assert scored["segmented_nodes"]["labels"] == [i in positives for i in ids]
    assert scored["patient"]["pdac_dice"] == 1.0 and scored["patient"]["tumour_found"]

    grown = sitk.GrayscaleDilate(inst, [1, 0, 0])
    sitk.WriteImage(grown, str(fake / "ln_instances.nii.gz"))
    ratios = score_case({"seed": 100000, "result": result, "study": study, "outputs": fake})["ln_seg"]["volume_ratios"]
    assert ratios and all(r > 1.0 for r in ratios)


def test_a_dropped_dicom_is_generated_again(app_cache):
    """The chain needs the DICOM again (e.g. new models): the same study is written again."""
    from evaluation.app_chain import ensure_study

    version = app_cache["cache"] / f"generator_{GENERATOR_VERSION}"
    before = json.loads((version / "studies_tiny" / "SYN100000" / "ground_truth" / "study.json").read_text())
    case = ensure_study(version, 100000, "tiny")
    assert sorted(p.name for p in (case / "dicom").iterdir()) == ["arterial", "venous"]
    assert json.loads((case / "ground_truth" / "study.json").read_text()) == before


def test_a_tumour_only_model_is_added_without_running_the_chain(app_cache, tmp_path, monkeypatch):
    """A tumour-only model asked for after the chain ran is scored from the cached outputs (the venous
    intake and the cached PDAC mask): the same probability as inside the chain, no chain run."""
    import evaluation.app_chain as app_chain
    from lnmet.config import load_settings

    cache = tmp_path / "cache"
    shutil.copytree(app_cache["cache"], cache)
    result_path = next((cache / f"generator_{GENERATOR_VERSION}").glob("app_tiny_*/SYN100000/result.json"))
    result = json.loads(result_path.read_text())
    in_chain = result.pop("tumour_only")
    result_path.write_text(json.dumps(result))

    def no_rerun(*a, **k):
        raise AssertionError("the chain ran again for a tumour-only model")

    monkeypatch.setattr(app_chain, "run_chain", no_rerun)
    models = app_chain.AppModels.from_folder(app_cache["models"],
                                             tumour_only=app_cache["models"] / "patient_cls" / "model.ts")
    _, rows = app_chain.app_results(cache, [100000], models, load_settings(), "tiny", drop_dicom=True)
    added = rows[0]["result"]["tumour_only"]
    assert added["sha"] == in_chain["sha"] and added["threshold"] == in_chain["threshold"]
    assert added["probability"] == pytest.approx(in_chain["probability"], abs=1e-5)
    assert json.loads(result_path.read_text())["tumour_only"] == added  # stored for the next script
    assert not (cache / f"generator_{GENERATOR_VERSION}" / "studies_tiny" / "SYN100000" / "dicom").exists()


def test_held_out_figures_go_beside_the_models_measured(app_cache, tmp_path):
    """evaluation.record_held_out puts the app mode's figures in the manifest, tied to each file's
    SHA-256 (the app then reads them back); a summary on non-held-out seeds, or on another model file,
    is refused."""
    from evaluation.record_held_out import RecordError, evidence_from_summary, main
    from lnmet.model_manifest import load_manifest, verify_models

    summary = app_cache["root"] / "all.json"
    manifest = tmp_path / "model_manifest.json"
    shutil.copy(app_cache["root"] / "model_manifest.json", manifest)
    assert main([str(summary), "--manifest", str(manifest)]) == 0
    infos = verify_models(app_cache["models"], manifest)
    recorded = infos["ln_seg"].held_out
    det = app_cache["json"]["summary"]["ln"]["detection"]["ln_seg"]
    assert recorded is not None and recorded.sha256 == infos["ln_seg"].sha256
    assert recorded.figure("node_recall").value == pytest.approx(det["recall"])
    assert recorded.setting.startswith("1 held-out generated studies (seeds 100000-100000, generator "
                                       f"{GENERATOR_VERSION}, tiny preset)")
    assert infos["organ_seg"].held_out.figure("organ_dice_mean") is not None

    doc = json.loads(summary.read_text())
    entries = load_manifest(manifest)
    elsewhere = {**doc, "provenance": {**doc["provenance"], "seeds": [150000]}}
    with pytest.raises(RecordError, match="held-out seeds"):
        evidence_from_summary(elsewhere, entries)
    other = {**doc, "provenance": {**doc["provenance"], "models": {
        **doc["provenance"]["models"], "ln_seg": {"version": "x", "sha256": "a" * 64}}}}
    with pytest.raises(RecordError, match="model 'ln_seg': the summary measured file aaaaaaaaaaaa"):
        evidence_from_summary(other, entries)
    # --only: a summary whose other files differ still records the one model named; the rest keep theirs
    assert set(evidence_from_summary(other, entries, only={"organ_seg"})) == {"organ_seg"}
    kept = json.loads(manifest.read_text())
    for entry in kept["models"]:
        if entry["name"] != "organ_seg" and "held_out" in entry:
            entry["held_out"]["setting"] = "an earlier measurement"
    manifest.write_text(json.dumps(kept))
    assert main([str(summary), "--manifest", str(manifest), "--only", "organ_seg"]) == 0
    after = {e["name"]: e["held_out"]["setting"] for e in json.loads(manifest.read_text())["models"]
             if "held_out" in e}
    assert len(after) >= 3
    assert after["organ_seg"].startswith("1 held-out generated studies")
    assert {v for k, v in after.items() if k != "organ_seg"} == {"an earlier measurement"}
    assert main([str(summary), "--manifest", str(manifest), "--only", "spleen_seg"]) == 1
