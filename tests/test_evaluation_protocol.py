"""The paper's protocol command (evaluation/protocol.py): nested cross-validation of the LN
segmentation variants and the patient classifiers with the paper's tests, on its tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation import protocol


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol")
    res_path = out / "res.json"
    assert protocol.main(["--preset", "tiny", "--out", str(out), "--threads", "1", "--json", str(res_path)]) == 0
    return {"out": out, "res": json.loads(res_path.read_text())}


def test_tiny_protocol_prints_the_papers_tables(tiny_run, capsys):
    res = tiny_run["res"]
    preset = protocol.PRESETS["tiny"]
    assert res["patients"] == preset.count == len(res["patients_rows"]) and res["folds"] == 5
    # the folds: disjoint, every patient once, each round trained without its test patients
    folds = res["fold_cases"]
    flat = [c for f in folds for c in f]
    assert len(flat) == len(set(flat)) == preset.count
    cv = next(tiny_run["out"].glob("generator_*/cv_tiny_5folds_seed0"))
    for k, test in enumerate(folds):
        trained_on = {p.name[: -len(".nii.gz")] for p in (cv / f"fold{k}" / "data" / protocol.LN_DATASET
                                                          / "labelsTr").iterdir()}
        assert trained_on == set(flat) - set(test)
        done = sorted(p.parent.name.rsplit("_", 1)[0] for p in (cv / f"fold{k}" / "models").glob("*/done.json"))
        assert done == ["ln_cls", "ln_seg_no_ins", "ln_seg_ours", "ln_seg_plain", "patient_cls_combined",
                        "patient_cls_tumour_only"]
        assert sorted(r["case"] for r in res["patients_rows"] if r["fold"] == k) == sorted(test)
    for part in ("agnostic", "positive", "negative"):
        t3 = res["table3"][part]
        assert set(t3) == set(protocol.VARIANTS)
        for key in ("plain", "no_ins"):
            assert 0.0 <= t3[key]["p_dice"] <= 1.0 and 0.0 <= t3[key]["p_f1"] <= 1.0
    for method, r in res["table4"]["methods"].items():
        lo, hi = r["balanced_accuracy"]["ci95"]
        assert lo <= r["balanced_accuracy"]["value"] <= hi or not np.isfinite(lo)
        if method != "combined":
            assert 0.0 <= r["p_balanced_accuracy_bootstrap_wilcoxon"] <= 1.0
    assert len(res["table2"]["auc_per_fold"]) == 5
    text = protocol.format_tables(res)
    for words in ("Table 2 style", "Table 3 style", "Table 4 style", "Ours w/o INS", "Plain U-Net", "ClsfromPDAC",
                  "class-aware Pos", "ref"):
        assert words in text


@pytest.fixture
def no_retraining(monkeypatch):
    """Any training command called fails the test: everything must come from the cache."""
    from training import train_ln_classifier, train_patient_classifier, train_segmentation

    def no_training(*a, **k):
        raise AssertionError("a model was trained again although it is cached")

    for module in (train_segmentation, train_ln_classifier, train_patient_classifier):
        monkeypatch.setattr(module, "main", no_training)


def test_a_second_run_reuses_every_trained_model(tiny_run, no_retraining, capsys):
    assert protocol.main(["--preset", "tiny", "--out", str(tiny_run["out"]), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "    training " not in out  # the line each training prints as it starts
    # each fold's test figures are printed as it ends, from that fold's own patients
    assert out.count("its test patients:") == 5
    for k in range(5):
        rows = [r for r in tiny_run["res"]["patients_rows"] if r["fold"] == k]
        summary = protocol.fold_summary(rows, tiny_run["res"]["segmentation_validation"][k],
                                        tiny_run["res"]["segmentation_sampling"][k])
        assert summary in out and summary.count("its validation Dice") == len(protocol.VARIANTS)
        assert summary.count("patches had no attended voxel") == len(protocol.VARIANTS)
        n_gt = sum(r["segmentation"]["ours"]["agnostic"]["counts"][0] for r in rows)
        n_nodes = sum(len(r["gt_nodes"]["labels"]) for r in rows)
        assert f"of {n_gt} nodes" in summary and f"({n_nodes} nodes," in summary
        assert f"({len(rows)} patients," in summary


def test_only_some_folds_gives_their_patients_tables_marked_partial(tiny_run, no_retraining, tmp_path, capsys):
    """Finished folds of a long run can be read on their own, from the cache, while the rest go on."""
    res_path = tmp_path / "partial.json"
    assert protocol.main(["--preset", "tiny", "--out", str(tiny_run["out"]), "--threads", "1", "--only-fold", "4",
                          "2", "--json", str(res_path)]) == 0
    out = capsys.readouterr().out
    res, full = json.loads(res_path.read_text()), tiny_run["res"]
    assert res["folds_run"] == [2, 4] and out.count("its test patients:") == 2
    wanted = sorted(r["case"] for r in full["patients_rows"] if r["fold"] in (1, 3))
    assert sorted(r["case"] for r in res["patients_rows"]) == wanted
    by_case = {r["case"]: r for r in full["patients_rows"]}
    for r in res["patients_rows"]:  # the same per-patient figures as in the full run
        assert r["scores"] == by_case[r["case"]]["scores"]
        assert r["segmentation"] == by_case[r["case"]]["segmentation"]
    assert res["table4"]["patients"] == len(wanted) and len(res["table2"]["auc_per_fold"]) == 2
    assert res["segmentation_validation"] == [full["segmentation_validation"][k] for k in (1, 3)]
    assert f"PARTIAL: only folds 2, 4 of 5; every figure below is on their {len(wanted)} test patients" in out
    assert "pooled test predictions of the 2 folds" in out
    assert "PARTIAL" not in protocol.format_tables(full)
    with pytest.raises(SystemExit) as stop:
        protocol.main(["--preset", "tiny", "--out", str(tmp_path), "--only-fold", "6"])
    assert stop.value.code == 2 and "folds are numbered 1-5" in capsys.readouterr().err


def test_an_interrupted_segmentation_training_resumes_from_its_checkpoint(tiny_run, tmp_path, capsys, caplog):
    """The full run takes many hours: a training cut short goes on from its checkpoint, not from zero."""
    from training import train_segmentation

    fold = next((tiny_run["out"]).rglob("fold0/data"))
    argv = ["--dataset", str(fold / protocol.LN_DATASET), "--task", "lymph_nodes", *protocol.PRESETS["tiny"].
            segmentation_args[:-2], "--checkpoint-every", "2", "--seed", "0", "--val-fraction", "0.2", "--threads", "1"]
    argv[argv.index("--iterations") + 1] = "2"
    first = protocol.trained(tmp_path, "ln_seg_ours", argv, train_segmentation.main)
    folder = first.parent
    assert (folder / "checkpoint.pt").is_file() and "resuming" not in capsys.readouterr().out
    (folder / "done.json").unlink()  # as if stopped after its last checkpoint, before it was recorded done
    first.unlink()
    caplog.set_level("INFO")
    again = protocol.trained(tmp_path, "ln_seg_ours", argv, train_segmentation.main)
    assert again == first and again.is_file() and (folder / "done.json").is_file()
    assert "resuming from its checkpoint" in capsys.readouterr().out
    assert "resumed from" in caplog.text and "at iteration 2 of 2" in caplog.text


def test_the_full_plan_prints_every_training_command_and_its_time(tmp_path, capsys):
    assert protocol.main(["--preset", "full", "--plan", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    full = protocol.PRESETS["full"]
    assert out.count("python -m training.train_segmentation") == len(protocol.VARIANTS)
    assert "--no-attention" in out and "--no-ins" in out and "train_ln_classifier" in out
    hours = full.folds * sum(full.minutes_per_fold.values()) / 60
    assert f"{hours:.1f} h for {full.folds} folds" in out
    assert not any(tmp_path.iterdir())  # a plan trains and generates nothing


def test_more_segmentation_iterations_change_the_commands_and_the_estimate(tmp_path, capsys):
    full = protocol.PRESETS["full"]
    default = int(full.segmentation_args[full.segmentation_args.index("--iterations") + 1])
    more = 2 * default
    assert protocol.main(["--preset", "full", "--plan", "--segmentation-iterations", str(more), "--out",
                          str(tmp_path)]) == 0
    out = capsys.readouterr().out
    seg = [line for line in out.splitlines() if "training.train_segmentation" in line]
    assert len(seg) == 3 and all(f"--iterations {more} " in line and f" {default} " not in line for line in seg)
    before = next(v for k, v in full.minutes_per_fold.items() if k.startswith("3 LN segmentation"))
    fixed = 3 * protocol.SEGMENTATION_FIXED_MINUTES
    assert f"3 LN segmentation models ({more} iterations each): {fixed + 2 * (before - fixed):.0f} min" in out
    with pytest.raises(SystemExit):
        protocol.main(["--preset", "full", "--plan", "--segmentation-iterations", "0"])
    assert "--segmentation-iterations 0" in capsys.readouterr().err


def test_the_tables_say_which_segmentation_model_did_not_learn(tiny_run):
    res = json.loads(json.dumps(tiny_run["res"]))
    text = protocol.format_tables(res)
    stuck = [(k, key) for k, fold in enumerate(res["segmentation_validation"]) for key in protocol.VARIANTS
             if fold[key]["predicted_instances"] == 0]
    assert ("Did not learn" in text) == bool(stuck)
    res["segmentation_validation"][2]["no_ins"]["predicted_instances"] = 0  # as fold 3's model of a real run
    res["segmentation_validation"][2]["plain"]["predicted_instances"] = 7
    text = protocol.format_tables(res)
    assert "Did not learn at 4 iterations" in text and "Ours w/o INS in fold 3" in text
    assert "Plain U-Net (w/o attention) in fold 3" not in text


def test_the_tables_say_what_informative_negative_selection_rejected(tiny_run):
    """Where every patch holds attended voxels, INS rejects nothing and "w/o INS" is "ours" trained
    again: the tables must say so rather than present the difference as the effect of INS."""
    res = json.loads(json.dumps(tiny_run["res"]))
    sampling = res["segmentation_sampling"]
    assert len(sampling) == 5 and all(fold["ours"]["uninformative"] == 0 for fold in sampling)  # INS at work
    drawn = [fold["no_ins"] for fold in sampling]
    bad, total = sum(d["uninformative"] for d in drawn), sum(d["patches"] for d in drawn)
    assert total == 5 * 4 * 2  # 4 iterations of batch 2 per fold (the tiny preset)
    text = protocol.format_tables(res)
    assert f"Ours w/o INS drew {bad} of {total} training patches" in text
    for fold in sampling:
        fold["no_ins"]["uninformative"] = 0
    assert "any difference between the two is run-to-run noise" in protocol.format_tables(res)
    sampling[0]["no_ins"]["uninformative"] = 3
    text = protocol.format_tables(res)
    assert f"drew 3 of {total} training patches" in text and "run-to-run noise" not in text
    for fold in sampling:  # models trained before the counts were recorded: no sentence
        fold["no_ins"] = None
    assert "Informative negative selection" not in protocol.format_tables(res)


def test_the_protocol_refuses_test_seeds(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        protocol.main(["--preset", "tiny", "--seed-start", "99995", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "100000-149999" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_stratified_folds():
    labels = {f"C{i:02d}": i % 3 == 0 for i in range(23)}
    folds = protocol.stratified_folds(labels, 5, seed=1)
    assert sorted(c for f in folds for c in f) == sorted(labels)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    positives = [sum(labels[c] for c in f) for f in folds]
    assert max(positives) - min(positives) <= 1
    assert folds == protocol.stratified_folds(labels, 5, seed=1)
    with pytest.raises(ValueError, match="cannot make 5 folds"):
        protocol.stratified_folds({"a": True, "b": False}, 5)


def test_wilcoxon_and_table4_on_known_predictions():
    assert protocol.wilcoxon_p([1, 2, 3], [1, 2, 3]) == 1.0
    assert protocol.wilcoxon_p([0.9] * 12, [0.1] * 12) < 0.01
    assert protocol.wilcoxon_p([np.nan, 1.0], [0.5, np.nan]) == 1.0
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.5
    rows = []
    for i, label in enumerate(y):
        noise = float(rng.random())
        scores = {"combined": 0.8 if label else 0.2, "nodes_only": noise, "tumour_only": 0.5}
        rows.append({"label": bool(label), "scores": scores,
                     "predicted": {k: bool(v >= 0.5) for k, v in scores.items()}})
    t4 = protocol.table4(rows)
    comb, nodes = t4["methods"]["combined"], t4["methods"]["nodes_only"]
    assert comb["balanced_accuracy"]["value"] == 1.0 and comb["auc"]["value"] == 1.0
    assert nodes["p_balanced_accuracy_bootstrap_wilcoxon"] < 0.05 and nodes["delong_vs_combined_p"] < 0.05
    assert t4["methods"]["tumour_only"]["auc"]["value"] == 0.5
