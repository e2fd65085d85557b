"""LN identification network: shapes, backbone initialised from the segmentation model file,
attention gating, crop size rule, batched inference equal to one-by-one inference."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lnmet.model_io import save_model
from lnmet.networks.ln_classifier import (CentrePooling, LNClassifier, LNIdentifier, default_crop_size, make_crops, node_centres,
                                          total_stride)
from lnmet.networks.segmentation import SegmentationUNet

NORM = [{"channel": "CT_arterial", "clip_hu": [-200.0, 300.0], "mean": 50.0, "std": 80.0},
        {"channel": "CT_venous", "clip_hu": [-200.0, 300.0], "mean": 60.0, "std": 80.0}]


def seg_metadata(net: SegmentationUNet, spacing: float, patch_xyz=(32, 32, 32)) -> dict:
    return {"name": "ln_seg", "version": "0.0.1", "architecture": net.architecture(), "spacing_mm": [spacing] * 3,
            "patch_size": list(patch_xyz), "in_channels": 2, "channel_names": ["CT_arterial", "CT_venous"],
            "normalization": NORM, "classes": {"background": 0, "lymph_node": 1}, "num_classes": 2,
            "trained_on": "unit test (random weights)", "training_command": "tests", "synthetic_training_data": True}


def write_seg_model(path, spacing=3.0, attention=True, patch_xyz=(32, 32, 32), seed=0) -> SegmentationUNet:
    """A tiny LN segmentation model file with random weights (what the classifier starts from)."""
    torch.manual_seed(seed)
    net = SegmentationUNet(2, 2, [4, 8, 16], [1, 2, 2], attention=attention)
    for p in net.parameters():  # non-trivial affine norms too
        p.data.add_(0.01 * torch.randn_like(p))
    shape = tuple(patch_xyz[::-1])
    example = (torch.zeros((1, 2) + shape), torch.ones((1, 1) + shape))
    save_model(net, path, seg_metadata(net, spacing, patch_xyz), example if attention else example[:1])
    return net


def test_shapes_and_head():
    net = LNClassifier(SegmentationUNet(2, 2, [4, 8], [1, 2], attention=True)).eval()
    logits = net(torch.randn(3, 2, 16, 16, 16), torch.rand(3, 1, 16, 16, 16))
    assert logits.shape == (3, 2)
    lin1, act, lin2 = net.head
    # global average + centre-weighted average of the 4 decoder channels
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (8, 32, 2)
    assert isinstance(act, torch.nn.LeakyReLU)
    paper = LNClassifier(SegmentationUNet(2, 2, [4, 8], [1, 2], attention=True), pooling="average")
    assert paper.head[0].in_features == 4
    rebuilt = LNClassifier.from_architecture(net.architecture())
    assert rebuilt.pooling == "average+centre" and rebuilt.head[0].in_features == 8
    with pytest.raises(TypeError, match="SegmentationUNet"):
        LNClassifier(torch.nn.Conv3d(1, 1, 1))


def test_centre_pooling_weights_the_crop_centre():
    feat = torch.zeros(1, 1, 9, 9, 9)
    feat[0, 0, 4, 4, 4] = 1.0  # a node at the centre
    centre, average = CentrePooling()(feat).item(), feat.mean().item()
    assert centre > 20 * average
    corner = torch.zeros(1, 1, 9, 9, 9)
    corner[0, 0, 0, 0, 0] = 1.0
    assert CentrePooling()(corner).item() < 0.01 * centre
    ones = torch.ones(2, 3, 6, 8, 10)
    assert torch.allclose(CentrePooling()(ones), torch.ones(2, 3, 1, 1, 1))  # weights sum to 1


def test_backbone_loads_segmentation_weights(tmp_path):
    seg = write_seg_model(tmp_path / "ln_seg.ts").eval()
    cls, meta = LNClassifier.from_segmentation_model(tmp_path / "ln_seg.ts")
    assert meta["name"] == "ln_seg"
    state = seg.state_dict()
    for k, v in cls.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k
    cls.eval()
    x, a = torch.randn(2, 2, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(cls.backbone.decoder_features(x, a), seg.decoder_features(x, a))
        # a fresh backbone gives other features: the weights really came from the file
        fresh = SegmentationUNet(2, 2, [4, 8, 16], [1, 2, 2], attention=True).eval()
        assert not torch.allclose(fresh.decoder_features(x, a), seg.decoder_features(x, a))


def test_attention_gates_the_features():
    net = LNClassifier(SegmentationUNet(2, 2, [4, 8], [1, 2], attention=True)).eval()
    with torch.no_grad():
        zero = torch.zeros(2, 1, 16, 16, 16)
        out = net(torch.randn(2, 2, 16, 16, 16), zero)
        # zero attention everywhere: pooled feature 0, logits are the head's response to 0 for any image
        torch.testing.assert_close(out[0], out[1])
        torch.testing.assert_close(out[0], net.head(torch.zeros(1, 8))[0])
    plain = LNClassifier(SegmentationUNet(2, 2, [4, 8], [1, 2], attention=False)).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, torch.zeros(1, 1, 16, 16, 16)), plain(x, torch.ones(1, 1, 16, 16, 16)))


def test_crop_size_rule():
    small = SegmentationUNet(2, 2, [8, 16, 32, 64, 128], [1, 2, 2, 2, (1, 2, 2)])
    assert total_stride(small) == (8, 16, 16)
    assert default_crop_size(small, (1.5, 1.5, 1.5)) == (48, 48, 48)  # >= 65 x 65 x 64 mm
    paper = SegmentationUNet(2, 2, [32, 64, 128, 256, 320, 320], [1, 2, 2, 2, 2, (1, 2, 2)])
    assert default_crop_size(paper, (0.68, 0.68, 0.80)) == (96, 96, 80)


def test_crops_pad_at_the_border_and_normalise():
    image = np.full((2, 10, 12, 14), 100.0, np.float32)
    att = np.ones((10, 12, 14), np.float32)
    imgs, atts = make_crops(image, att, [(0.0, 0.0, 0.0)], (4, 4, 4), NORM)
    assert imgs.shape == (1, 2, 4, 4, 4) and atts.shape == (1, 1, 4, 4, 4)
    # voxel 2 of the crop is the centre: [0, 2) lies outside the volume -> air (clipped at -200) and 0
    assert imgs[0, 1, 0, 0, 0] == pytest.approx((-200.0 - 60.0) / 80.0)
    assert imgs[0, 1, 2, 2, 2] == pytest.approx((100.0 - 60.0) / 80.0)
    assert atts[0, 0, 0, 0, 0] == 0.0 and atts[0, 0, 3, 3, 3] == 1.0
    # single-phase training crops: the venous HU in the arterial channel, normalised as arterial
    image[0] = -50.0
    two, _ = make_crops(image, None, [(5, 6, 7), (5, 6, 7)], (4, 4, 4), NORM, copy_channel=[None, (1, 0)])
    assert two[0, 0, 2, 2, 2] == pytest.approx((-50.0 - 50.0) / 80.0)
    assert two[1, 0, 2, 2, 2] == pytest.approx((100.0 - 50.0) / 80.0)
    np.testing.assert_array_equal(two[0, 1], two[1, 1])


def test_identifier_batched_equals_single_and_centres(tmp_path):
    write_seg_model(tmp_path / "ln_seg.ts", spacing=2.0)
    net, seg_meta = LNClassifier.from_segmentation_model(tmp_path / "ln_seg.ts")
    meta = dict(seg_meta, name="ln_cls", architecture=net.architecture((16, 16, 16)), patch_size=[16, 16, 16],
                classes={"negative": 0, "positive": 1}, decision_threshold=0.4)
    save_model(net, tmp_path / "ln_cls.ts", meta, (torch.zeros(1, 2, 16, 16, 16), torch.ones(1, 1, 16, 16, 16)))
    ident = LNIdentifier.load(tmp_path / "ln_cls.ts", "cpu")
    assert ident.threshold == 0.4 and ident.crop_zyx == (16, 16, 16) and ident.uses_attention
    rng = np.random.default_rng(0)
    image = rng.normal(40, 50, (2, 20, 24, 28)).astype(np.float32)
    att = rng.random((20, 24, 28)).astype(np.float32)
    centres = [(5, 6, 7), (10, 12, 14), (19, 0, 27)]
    batched = ident.predict(image, att, centres, batch_size=3)
    single = np.array([ident.predict(image, att, [c], batch_size=1)[0] for c in centres])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    assert batched.shape == (3,) and np.all((batched >= 0) & (batched <= 1))
    with pytest.raises(ValueError, match="attention"):
        ident.predict(image, None, centres)

    # centroids of reference-grid instances as working-grid voxel positions
    ref = sitk.Image([40, 40, 20], sitk.sitkUInt16)
    ref.SetSpacing((1.0, 1.0, 2.0))
    arr = np.zeros((20, 40, 40), np.uint16)
    arr[4:7, 10:13, 20:23] = 1  # centroid (5, 11, 21) in reference voxels
    inst = sitk.GetImageFromArray(arr)
    inst.CopyInformation(ref)
    work = sitk.Image([20, 20, 20], sitk.sitkFloat32)
    work.SetSpacing((2.0, 2.0, 2.0))
    ids, c = node_centres(inst, work)
    assert ids == [1]
    np.testing.assert_allclose(c[0], [5.0, 5.5, 10.5])
