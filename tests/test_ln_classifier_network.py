"""LN identification network: shapes, backbone initialised from the segmentation model file,
attention gating, crop size rule, batched inference equal to one-by-one inference."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lnmet.model_io import save_model
from lnmet.networks.ln_classifier import (CentrePooling, LNClassifier, LNIdentifier, MaskPooling, NodeDescriptors,
                                          default_crop_size, make_crops,
                                          mask_crops, node_centres, total_stride)
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


def test_node_pooling_averages_over_the_node_only():
    feat = torch.zeros(1, 2, 8, 8, 8)
    feat[0, 0, 2:4, 2:4, 2:4] = 3.0  # the node
    feat[0, 1] = 1.0
    feat[0, 1, 6, 6, 6] = 100.0  # bright voxel outside the node
    mask = torch.zeros(1, 1, 8, 8, 8)
    mask[0, 0, 2:4, 2:4, 2:4] = 1.0
    torch.testing.assert_close(MaskPooling()(feat, mask).flatten(), torch.tensor([3.0, 1.0]))
    assert torch.count_nonzero(MaskPooling()(feat, torch.zeros_like(mask))) == 0  # empty mask: zeros
    net = LNClassifier(SegmentationUNet(2, 2, [4, 8], [1, 2], attention=True), pooling="average+node").eval()
    assert net.uses_node_mask and net.head[0].in_features == 8
    x, a = torch.randn(2, 2, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)
    small, large = torch.zeros(2, 1, 16, 16, 16), torch.zeros(2, 1, 16, 16, 16)
    small[:, :, 7:9, 7:9, 7:9] = 1
    large[:, :, 4:12, 4:12, 4:12] = 1
    with torch.no_grad():
        assert net(x, a, small).shape == (2, 2)
        assert not torch.allclose(net(x, a, small), net(x, a, large))  # the mask matters
    with pytest.raises(ValueError, match="mask"):
        net(x, a)
    assert LNClassifier.from_architecture(net.architecture()).uses_node_mask


def test_node_descriptors_measure_the_node():
    z, y, x = np.mgrid[:24, :24, :24]
    sphere = ((z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 <= 25).astype(np.float32)
    oval = (((z - 12) / 3) ** 2 + ((y - 12) / 3) ** 2 + ((x - 12) / 8) ** 2 <= 1).astype(np.float32)  # 3:3:8
    mask = torch.from_numpy(np.stack([sphere, oval])[:, None])
    image = torch.zeros(2, 2, 24, 24, 24)
    image[:, 1] = 5.0  # outside the nodes: must not count
    image[:, 1][mask[:, 0] > 0] = torch.tensor([1.0, -1.0]).repeat(int(mask.sum()))[: int(mask.sum())]
    image[:, 0][mask[:, 0] > 0] = 2.0
    desc = NodeDescriptors(2, (1.5, 1.5, 1.5))
    raw = desc.raw(image, mask)
    log_volume, axial, ratio3d, mean0, mean1, sd0, sd1 = raw.T
    np.testing.assert_allclose(torch.exp(log_volume).numpy(), mask.sum(dim=(1, 2, 3, 4)).numpy() * 1.5 ** 3, rtol=1e-4)
    assert axial[0] > 0.95 and ratio3d[0] > 0.95  # round
    assert 0.3 < axial[1] < 0.45 and 0.3 < ratio3d[1] < 0.45  # short/long 3/8
    np.testing.assert_allclose(mean0.numpy(), [2.0, 2.0], atol=1e-5)
    assert abs(mean1[0]) < 0.1 and sd0.max() < 0.01 and sd1.min() > 0.95  # alternating +-1 inside
    # a mask one voxel too large (into the fat around the node): the intensities stay the node's
    grown = torch.nn.functional.max_pool3d(mask, 3, 1, 1)
    leaky = image.clone()
    leaky[:, 0][(grown[:, 0] > 0) & (mask[:, 0] == 0)] = -10.0
    np.testing.assert_allclose(desc.raw(leaky, grown)[:, 3].numpy(), [2.0, 2.0], atol=1e-5)
    desc.set_statistics(raw.mean(0), raw.std(0))
    std = desc(image, mask)
    torch.testing.assert_close(std, (raw - raw.mean(0)) / raw.std(0).clamp_min(1e-6))
    net = LNClassifier(SegmentationUNet(2, 2, [4, 8], [1, 2], attention=True), pooling="average+node",
                       descriptors=True, spacing_zyx=(1.5, 1.5, 1.5))
    assert net.head[0].in_features == 8 + 7
    net.descriptors.set_statistics(raw.mean(0), raw.std(0))
    rebuilt = LNClassifier.from_architecture(net.architecture())
    rebuilt.load_state_dict(net.state_dict())  # statistics travel as buffers
    torch.testing.assert_close(rebuilt.descriptors(image, mask), std)
    with pytest.raises(ValueError, match="mask"):
        LNClassifier(SegmentationUNet(2, 2, [4, 8], [1, 2]), pooling="average", descriptors=True)


def test_mask_crops_follow_the_image_crops():
    labels = np.zeros((10, 12, 14), np.uint16)
    labels[4:7, 5:8, 6:9] = 3
    labels[0:2, 0:2, 0:2] = 5
    masks = mask_crops(labels, [3, 5], [(5, 6, 7), (5, 6, 7)], (6, 6, 6))
    assert masks.shape == (2, 1, 6, 6, 6) and masks.dtype == np.float32
    assert masks[0].sum() == 27 and masks[0, 0, 2:5, 2:5, 2:5].all()  # node 3, centred like make_crops
    # node 5 lies outside that crop: only the centre voxel is kept (never an empty mask)
    assert masks[1].sum() == 1 and masks[1, 0, 3, 3, 3] == 1


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


def test_identifier_with_node_pooling_uses_the_instance_map(tmp_path):
    write_seg_model(tmp_path / "ln_seg.ts", spacing=2.0)
    net, seg_meta = LNClassifier.from_segmentation_model(tmp_path / "ln_seg.ts", pooling="average+node")
    torch.manual_seed(1)
    for p in net.head.parameters():
        p.data.normal_(0, 1.0)
    meta = dict(seg_meta, name="ln_cls", architecture=net.architecture((16, 16, 16)), patch_size=[16, 16, 16],
                classes={"negative": 0, "positive": 1}, decision_threshold=0.5)
    ones = torch.ones(1, 1, 16, 16, 16)
    save_model(net, tmp_path / "ln_cls.ts", meta, (torch.zeros(1, 2, 16, 16, 16), ones, ones))
    ident = LNIdentifier.load(tmp_path / "ln_cls.ts", "cpu")
    assert ident.uses_node_mask
    rng = np.random.default_rng(0)
    image = rng.normal(40, 50, (2, 20, 24, 28)).astype(np.float32)
    att = rng.random((20, 24, 28)).astype(np.float32)
    labels = np.zeros((20, 24, 28), np.uint16)
    labels[4:7, 5:8, 6:9] = 1
    labels[9:12, 11:14, 13:17] = 2
    centres = [(5, 6, 7), (10, 12, 14.5)]
    batched = ident.predict(image, att, centres, 2, labels, [1, 2])
    single = [ident.predict(image, att, [c], 1, labels, [i])[0] for c, i in zip(centres, [1, 2])]
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    grown = labels.copy()
    grown[3:8, 4:9, 5:10][grown[3:8, 4:9, 5:10] == 0] = 1  # same centre, larger node
    assert ident.predict(image, att, centres[:1], 1, grown, [1])[0] != pytest.approx(batched[0], abs=1e-6)
    with pytest.raises(ValueError, match="instance map"):
        ident.predict(image, att, centres)
