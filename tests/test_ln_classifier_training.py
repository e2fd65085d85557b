"""A few iterations of the LN identification training command on generated tiny studies: the loss
on the training nodes falls, the model file carries what inference needs (crop, threshold chosen on
validation nodes, normalisation and channels of the segmentation model it started from)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lnmet.model_io import read_metadata, sha256_file
from lnmet.networks.ln_classifier import LNIdentifier
from synthetic.nnunet import LYMPH_NODES, export_nnunet
from test_ln_classifier_network import write_seg_model
from training.train_ln_classifier import main


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("ln_cohort")
    export_nnunet(root, [0, 1, 4, 5], preset="tiny")  # nodes of both classes
    write_seg_model(root / "ln_seg.ts", spacing=3.0)
    return root


def test_training_reduces_the_loss_and_exports(cohort, tmp_path):
    out = tmp_path / "ln_cls" / "model.ts"
    args = ["--dataset", str(cohort / LYMPH_NODES), "--ln-seg-model", str(cohort / "ln_seg.ts"), "--out", str(out),
            "--crop-size", "16", "16", "16", "--iterations", "12", "--batch-size", "4", "--lr", "0.05",
            "--no-augmentation", "--val-fraction", "0.25", "--val-every", "6", "--threads", "2", "--seed", "1"]
    summary = main(args)
    assert summary["final_train_loss"] < summary["initial_train_loss"]
    meta = read_metadata(out)
    seg_meta = read_metadata(cohort / "ln_seg.ts")
    assert meta["name"] == "ln_cls" and meta["architecture"]["type"] == "LNClassifier"
    assert meta["patch_size"] == [16, 16, 16] and meta["crop"]["extent_mm"] == [48.0, 48.0, 48.0]
    assert meta["crop"]["is_paper_preset"] is False
    assert meta["normalization"] == seg_meta["normalization"] and meta["channel_names"] == seg_meta["channel_names"]
    assert meta["initialised_from"]["sha256"] == sha256_file(cohort / "ln_seg.ts")
    assert 0.0 <= meta["decision_threshold"] <= 1.0 and meta["decision_threshold"] == summary["threshold"]
    assert meta["synthetic_training_data"] is True and "synthetic" in meta["trained_on"]
    assert "--ln-seg-model" in meta["training_command"]
    assert meta["training"]["momentum"] == 0.95
    # validation is on held-out cases: every node of the validation cases counted
    tables = {p.stem: json.loads(p.read_text()) for p in (cohort / LYMPH_NODES / "lymph_nodes").glob("*.json")}
    n_nodes = sum(1 for rows in tables.values() for r in rows if r["volume_mm3"] > 0)
    assert meta["validation"]["nodes"] + meta["training"]["train_nodes"] == n_nodes
    # the exported file works for inference
    ident = LNIdentifier.load(out, "cpu")
    probs = ident.predict(np.zeros((2, 20, 20, 20), np.float32), np.ones((20, 20, 20), np.float32), [(10, 10, 10)])
    assert probs.shape == (1,) and 0 <= probs[0] <= 1


def test_bad_crop_size_is_named(cohort, tmp_path):
    with pytest.raises(ValueError, match="crop-size"):
        main(["--dataset", str(cohort / LYMPH_NODES), "--ln-seg-model", str(cohort / "ln_seg.ts"),
              "--out", str(tmp_path / "x.ts"), "--crop-size", "15", "16", "16", "--iterations", "1"])
