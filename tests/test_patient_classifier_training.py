"""A few iterations of the patient classifier training command on generated tiny studies: the LN
chain runs once and is cached, the training loss falls, the model file carries the thresholds, and
the nodes-only mode exports its rule."""

from __future__ import annotations

import json

import pytest
import torch

from lnmet.config import load_settings
from lnmet.model_io import read_metadata, save_model
from lnmet.networks.ln_classifier import LNClassifier, LNIdentifier
from lnmet.networks.patient_classifier import PatientModel
from synthetic.nnunet import export_nnunet
from test_ln_classifier_network import write_seg_model
from training import train_patient_classifier as tpc


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("patient_cohort")
    export_nnunet(root, [0, 1, 2, 3], preset="tiny")  # 2 negative, 2 positive patients
    seg = write_seg_model(root / "ln_seg_tmp.ts", spacing=3.0, patch_xyz=(64, 64, 40))
    with torch.no_grad():  # a quick LN model: the whole tiny volume in one window
        seg.heads[0].conv.conv.bias.copy_(torch.tensor([4.0, -4.0]))
    from test_ln_classifier_network import seg_metadata

    save_model(seg, root / "ln_seg.ts", seg_metadata(seg, 3.0, (64, 64, 40)),
               (torch.zeros(1, 2, 40, 64, 64), torch.ones(1, 1, 40, 64, 64)))
    net, meta = LNClassifier.from_segmentation_model(root / "ln_seg.ts")
    meta = dict(meta, name="ln_cls", architecture=net.architecture((16, 16, 16)), patch_size=[16, 16, 16],
                classes={"negative": 0, "positive": 1}, decision_threshold=0.5)
    save_model(net, root / "ln_cls.ts", meta, (torch.zeros(1, 2, 16, 16, 16), torch.ones(1, 1, 16, 16, 16)))
    return root


def _args(cohort, tmp_path, mode="combined", extra=()):
    return ["--data", str(cohort), "--ln-seg-model", str(cohort / "ln_seg.ts"), "--ln-cls-model",
            str(cohort / "ln_cls.ts"), "--mode", mode, "--out", str(tmp_path / mode / "model.ts"),
            "--cache", str(cohort / "cache"), "--patch-size", "32", "--patch-spacing", "3",
            "--block-inplanes", "4", "8", "16", "32", "--iterations", "12", "--batch-size", "8", "--lr", "0.02",
            "--val-fraction", "0.25", "--val-every", "6", "--threads", "2", "--no-augmentation", *extra]


def test_training_caches_ln_volumes_and_reduces_the_loss(cohort, tmp_path, monkeypatch):
    # two processes can fill the LN volume cache side by side (every 2nd case each), then stop
    for shard in ("0/2", "1/2"):
        done = tpc.main(_args(cohort, tmp_path, extra=("--volumes-only", "--shard", shard)))
        assert done["model"] is None and done["volumes"] == 2
    assert not (tmp_path / "combined" / "model.ts").exists()
    caches = list((cohort / "cache").glob("ln_volumes_*"))
    assert len(caches) == 1
    cached = {f.stem: json.loads(f.read_text()) for f in caches[0].glob("*.json")}
    assert sorted(cached) == ["SYN000000", "SYN000001", "SYN000002", "SYN000003"]
    with pytest.raises(ValueError, match="--shard needs --volumes-only"):
        tpc.main(_args(cohort, tmp_path, extra=("--shard", "1/2")))

    summary = tpc.main(_args(cohort, tmp_path))
    assert summary["final_train_loss"] < summary["initial_train_loss"]
    assert all(c["largest_positive_volume_mm3"] >= 0 for c in cached.values())
    meta = read_metadata(tmp_path / "combined" / "model.ts")
    assert meta["mode"] == "combined" and meta["architecture"]["block_inplanes"] == [4, 8, 16, 32]
    assert meta["patch_size"] == [32, 32] and meta["spacing_mm"] == [3.0, 3.0]
    assert 0.0 <= meta["decision_threshold"] <= 1.0 and meta["nodes_only_threshold_mm3"] > 0
    assert meta["ln_volume_source"]["ln_cls_sha256"] and meta["synthetic_training_data"] is True
    assert meta["ln_volume_source"]["instance_filter"]["rim_fat_hu"] == load_settings().ln_detection.rim_fat_hu
    assert meta["validation"]["patients"] == 2
    model = PatientModel.load(tmp_path / "combined" / "model.ts", "cpu")
    assert model.mode == "combined" and model.patch_size == 32

    # re-training reads the cached volumes instead of running the LN chain again
    def no_chain(*a, **k):
        raise AssertionError("the LN chain ran although its volumes are cached")

    monkeypatch.setattr(LNIdentifier, "load", no_chain)
    again = tpc.main(_args(cohort, tmp_path, "tumour_only"))
    assert again["mode"] == "tumour_only"
    assert read_metadata(tmp_path / "tumour_only" / "model.ts")["architecture"]["mode"] == "tumour_only"


def test_nodes_only_mode_exports_the_rule(cohort, tmp_path):
    summary = tpc.main(_args(cohort, tmp_path, "nodes_only"))
    meta = read_metadata(tmp_path / "nodes_only" / "model.ts")
    assert meta["mode"] == "nodes_only" and meta["architecture"]["type"] == "NodesOnlyRule"
    assert meta["nodes_only_threshold_mm3"] == pytest.approx(summary["nodes_only_threshold_mm3"])
    model = PatientModel.load(tmp_path / "nodes_only" / "model.ts", "cpu")
    t = model.nodes_only_threshold_mm3
    assert model.predict(None, None, None, 2 * t)[0] == pytest.approx(2 / 3)


def test_missing_labels_are_named(tmp_path):
    (tmp_path / "Dataset503_PancreasTumour" / "labelsTr").mkdir(parents=True)
    (tmp_path / "Dataset503_PancreasTumour" / "labelsTr" / "SYN1.nii.gz").write_bytes(b"")
    (tmp_path / "patients.json").write_text(json.dumps({"SYN1": {"metastasis_positive": "yes"}}))
    with pytest.raises(ValueError, match="metastasis_positive"):
        tpc.read_patients(tmp_path)


def test_ln_probability_is_cached_for_a_new_identification_model(cohort, tmp_path, monkeypatch):
    """A new LN identification model (or instance filter) reruns the chain from the cached LN
    probability maps, without the segmentation network, and gives the same volumes."""
    from lnmet.inference import SegmentationModel

    def args(cache):
        a = _args(cohort, tmp_path, extra=("--volumes-only",))
        a[a.index("--cache") + 1] = str(cache)
        return a

    tpc.main(args(tmp_path / "cache"))
    probs = list((tmp_path / "cache").glob("ln_probability_*_gtorgans/*.nii.gz"))
    assert len(probs) == 4
    first = {f.stem: json.loads(f.read_text()) for f in next((tmp_path / "cache").glob("ln_volumes_*")).glob("*.json")}
    for folder in (tmp_path / "cache").glob("ln_volumes_*"):  # as if the identification model changed
        for f in folder.glob("*.json"):
            f.unlink()

    def no_network(*a, **k):
        raise AssertionError("the LN segmentation ran although its probability maps are cached")

    monkeypatch.setattr(SegmentationModel, "predict_probabilities", no_network)
    tpc.main(args(tmp_path / "cache"))
    again = {f.stem: json.loads(f.read_text()) for f in next((tmp_path / "cache").glob("ln_volumes_*")).glob("*.json")}
    assert again == first


def test_patches_from_the_pdac_models_masks_are_cached(cohort, tmp_path, monkeypatch):
    """``--pdac-model``: the patches come from the PDAC model's masks (as at inference, the primary
    tumour against the pancreas), each mask is computed once and cached, and a second training on the
    cohort does not load the model again."""
    import numpy as np
    import SimpleITK as sitk

    from lnmet.inference import SegmentationModel

    calls = []

    def central_box(model, venous, arterial):  # stands in for the model's mask: a box in the middle
        calls.append(model)  # (where the tiny studies' pancreas is) and a larger false one in a corner
        arr = np.zeros(sitk.GetArrayViewFromImage(venous).shape, np.uint8)
        z, y, x = (s // 2 for s in arr.shape)
        arr[z - 2:z + 2, y - 3:y + 3, x - 3:x + 3] = 1
        arr[0:5, 0:8, 0:8] = 1
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(venous)
        return img

    monkeypatch.setattr(SegmentationModel, "load", classmethod(lambda cls, *a, **k: "pdac model"))
    monkeypatch.setattr(tpc, "predicted_labels", central_box)
    pdac = ("--pdac-model", str(cohort / "ln_seg.ts"))
    tpc.main(_args(cohort, tmp_path, extra=pdac))
    assert calls == ["pdac model"] * 4
    meta = read_metadata(tmp_path / "combined" / "model.ts")
    masks = meta["patches"]["training_masks"]
    assert masks["source"].startswith("PDAC model") and masks["pancreas"] == "ground truth organsTr"
    assert masks["rules"] == {"pancreas_overlap": 4}  # the central box, not the larger corner one
    cached = sorted((cohort / "cache").glob("pdac_masks_*/*.nii.gz"))
    assert [f.name for f in cached] == [f"SYN00000{i}.nii.gz" for i in range(4)]
    assert int(sitk.GetArrayFromImage(sitk.ReadImage(str(cached[0]))).sum()) == 4 * 6 * 6 + 5 * 8 * 8  # raw map

    def no_model(*a, **k):
        raise AssertionError("the PDAC model ran although its masks are cached")

    monkeypatch.setattr(SegmentationModel, "load", no_model)
    monkeypatch.setattr(tpc, "predicted_labels", no_model)
    again = tpc.main(_args(cohort, tmp_path, "tumour_only", extra=pdac))
    assert again["mode"] == "tumour_only"
