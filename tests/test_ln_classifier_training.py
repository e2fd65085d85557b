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
    assert ident.uses_node_mask and meta["architecture"]["head"]["pooling"] == "average+node"
    labels = np.zeros((20, 20, 20), np.uint16)
    labels[9:12, 9:12, 9:12] = 1
    probs = ident.predict(np.zeros((2, 20, 20, 20), np.float32), np.ones((20, 20, 20), np.float32), [(10, 10, 10)],
                          instances=labels, ids=[1])
    assert probs.shape == (1,) and 0 <= probs[0] <= 1


def test_bad_crop_size_is_named(cohort, tmp_path):
    with pytest.raises(ValueError, match="crop-size"):
        main(["--dataset", str(cohort / LYMPH_NODES), "--ln-seg-model", str(cohort / "ln_seg.ts"),
              "--out", str(tmp_path / "x.ts"), "--crop-size", "15", "16", "16", "--iterations", "1"])


def test_node_regions_give_the_crops_of_the_whole_case(cohort):
    """Training keeps only a region per node; a crop from it (jitter included) equals the same crop
    of the whole case."""
    from lnmet.config import load_settings
    from lnmet.networks.ln_classifier import make_crops, mask_crops
    from training.datasets import TASKS, list_cases, load_case, read_dataset_json
    from training.train_ln_classifier import node_samples, node_table

    ds = cohort / LYMPH_NODES
    meta = read_dataset_json(ds)
    case_id = list_cases(ds, meta)[0]
    case = load_case(ds, case_id, meta, TASKS["lymph_nodes"], (3.0, 3.0, 3.0), load_settings().attention)
    crop, shift = (8, 8, 8), np.array([2.0, -2.0, 1.0])
    samples = node_samples(case, node_table(ds, case_id), 0, (14, 14, 14))
    assert samples and all(s.image.shape[1:] == (14, 14, 14) for s in samples)
    norm = [{"clip_hu": [-1000.0, 1000.0], "mean": 0.0, "std": 100.0}] * case.image.shape[0]
    inst = case.instances
    ids = [i for i in np.unique(inst) if i]  # node_samples goes through the ids in this order
    for s, i in zip(samples, ids):
        full_centre = np.argwhere(inst == i).mean(axis=0)
        a, _ = make_crops(case.image, None, [full_centre + shift], crop, norm)
        b, _ = make_crops(s.image, None, [s.centre_zyx + shift], crop, norm)
        np.testing.assert_array_equal(a, b)
        # the node's own mask: this instance only, the same voxels as in the whole case
        assert s.mask.sum() == (inst == i).sum()
        np.testing.assert_array_equal(mask_crops(s.mask, [1], [s.centre_zyx + shift], crop),
                                      mask_crops(inst, [i], [full_centre + shift], crop))


def test_spatial_augmentation_moves_image_and_attention_together():
    import torch

    from training.train_ln_classifier import build_spatial_augmentation

    aug = build_spatial_augmentation(3, (8, 8, 8))
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(size=(2, 8, 8, 8)).astype(np.float32))
    attention = (image[:1] > 0.5).float()
    changed = 0
    for _ in range(8):
        out = torch.as_tensor(aug(torch.cat([image, attention])))
        np.testing.assert_array_equal(out[-1:].numpy(), (out[:1] > 0.5).float().numpy())
        changed += int(not torch.equal(out[:2], image))
    assert changed > 0


def test_mask_border_jitter_stays_at_the_border():
    import torch

    from training.train_ln_classifier import jitter_mask_borders

    masks = torch.zeros(6, 1, 12, 12, 12)
    masks[:, :, 3:9, 3:9, 3:9] = 1.0
    out = jitter_mask_borders(masks, np.random.default_rng(0), prob=1.0, max_grow=0.6, max_shrink=0.2)
    assert not torch.equal(out, masks)
    core = torch.zeros_like(masks)
    core[:, :, 4:8, 4:8, 4:8] = 1.0
    assert torch.all(out[core > 0] == 1)  # the node's inside is kept
    ring = torch.zeros_like(masks)
    ring[:, :, 2:10, 2:10, 2:10] = 1.0
    assert torch.all(out[ring == 0] == 0)  # it grows by one voxel at most
    assert torch.equal(jitter_mask_borders(masks, np.random.default_rng(0), prob=0.0), masks)
