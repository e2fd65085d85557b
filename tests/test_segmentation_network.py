"""SegmentationUNet (shapes, deep supervision, attention gating of Eq. 3), model files, normalisation."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from lnmet.model_io import ModelFileError, load_model, save_model
from lnmet.networks import SegmentationUNet, load_segmentation_unet
from lnmet.normalization import compute_ct_normalization, normalize_ct

FILTERS = (4, 8, 16, 32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend badly (several times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
STRIDES = (1, 2, 2, (1, 2, 2))


def _net(attention: bool, seed: int = 0, out_channels: int = 3) -> SegmentationUNet:
    torch.manual_seed(seed)
    return SegmentationUNet(2, out_channels, FILTERS, STRIDES, attention=attention)


def _metadata(net: SegmentationUNet, name: str = "test_seg") -> dict:
    return {"name": name, "version": "0.0.1", "architecture": net.architecture(), "spacing_mm": [3.0, 3.0, 3.0],
            "patch_size": [32, 32, 16], "in_channels": 2, "channel_names": ["CT_arterial", "CT_venous"],
            "normalization": [{"clip_hu": [-200, 300], "mean": 40.0, "std": 80.0}] * 2,
            "classes": {"background": 0, "a": 1, "b": 2}, "num_classes": net.out_channels,
            "trained_on": "nothing (test)", "training_command": "none", "synthetic_training_data": True}


def test_shapes_and_deep_supervision_outputs():
    net = _net(False)
    x = torch.randn(2, 2, 16, 32, 24)
    net.train()
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == len(FILTERS) - 1 == net.num_outputs
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 32, 24), (2, 3, 8, 16, 12), (2, 3, 4, 8, 6)]
    net.eval()
    with torch.no_grad():
        y = net(x)
        feat = net.decoder_features(x)
    assert tuple(y.shape) == (2, 3, 16, 32, 24)
    assert tuple(feat.shape) == (2, FILTERS[0], 16, 32, 24)
    torch.testing.assert_close(y, outs[0].detach(), atol=1e-4, rtol=1e-4)  # same weights, same top output
    # encoder strides are the constructor's (stride 1 at the first level)
    assert net.architecture()["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]


def test_zero_attention_gives_the_head_bias_everywhere():
    net = _net(True).eval()
    x = torch.randn(1, 2, 16, 32, 32)
    with torch.no_grad():
        y = net(x, torch.zeros(1, 1, 16, 32, 32))
    bias = net.heads[0].conv.conv.bias.detach()
    torch.testing.assert_close(y, bias.view(1, -1, 1, 1, 1).expand_as(y))
    with torch.no_grad():
        assert not torch.allclose(net(x, torch.ones(1, 1, 16, 32, 32)), y)


def test_attention_gates_only_before_the_heads():
    """With attention 1 everywhere the attention network equals the plain one with the same weights;
    with attention 0 in one half, only that half changes (the ungated feature flows on)."""
    plain, gated = _net(False, seed=3), _net(True, seed=4)
    gated.load_state_dict(plain.state_dict())
    plain.eval(), gated.eval()
    x = torch.randn(1, 2, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gated(x, torch.ones(1, 1, 16, 32, 32)), plain(x))
        half = torch.ones(1, 1, 16, 32, 32)
        half[..., :16] = 0
        y_half, y_plain = gated(x, half), plain(x)
    bias = gated.heads[0].conv.conv.bias.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(y_half[..., :16], bias.expand_as(y_half[..., :16]))
    torch.testing.assert_close(y_half[..., 16:], y_plain[..., 16:])
    # every deep-supervision head is gated (its attention area-down-sampled)
    gated.train()
    outs = gated(x, torch.zeros(1, 1, 16, 32, 32))
    for head, out in zip(gated.heads, outs):
        torch.testing.assert_close(out, head.conv.conv.bias.view(1, -1, 1, 1, 1).expand_as(out))
    with pytest.raises(ValueError, match="attention map"):
        gated(x)


def test_model_file_round_trip(tmp_path):
    net = _net(True).eval()
    x, a = torch.randn(1, 2, 16, 32, 32), torch.rand(1, 1, 16, 32, 32)
    path = tmp_path / "m" / "model.ts"
    sha = save_model(net, path, _metadata(net), (x, a))
    assert len(sha) == 64 and path.is_file() and path.stat().st_size < 2e6
    module, meta = load_model(path)
    assert meta["name"] == "test_seg" and meta["architecture"]["attention"] is True and meta["created"]
    x2, a2 = torch.randn(1, 2, 8, 16, 24), torch.rand(1, 1, 8, 16, 24)  # another size than traced
    with torch.no_grad():
        torch.testing.assert_close(module(x2, a2), net(x2, a2), atol=1e-5, rtol=1e-4)
    eager, _ = load_segmentation_unet(path)
    with torch.no_grad():
        torch.testing.assert_close(eager.eval().decoder_features(x, a), net.decoder_features(x, a))


def test_model_file_errors_name_the_file(tmp_path):
    net = _net(False)
    meta = _metadata(net)
    del meta["spacing_mm"]
    with pytest.raises(ModelFileError, match="spacing_mm"):
        save_model(net, tmp_path / "a.ts", meta, (torch.zeros(1, 2, 16, 16, 16),))
    assert not (tmp_path / "a.ts").exists()
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.ts")
    bad = tmp_path / "corrupt.ts"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ModelFileError, match="corrupt.ts"):
        load_model(bad)
    # a file whose metadata lacks a key
    good = tmp_path / "good.ts"
    save_model(net, good, _metadata(net), (torch.zeros(1, 2, 16, 16, 16),))
    with zipfile.ZipFile(good) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    meta_name = next(n for n in entries if n.endswith("extra/metadata.json"))
    broken = json.loads(entries[meta_name])
    del broken["normalization"]
    entries[meta_name] = json.dumps(broken).encode()
    edited = tmp_path / "edited.ts"
    with zipfile.ZipFile(edited, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    with pytest.raises(ModelFileError, match=r"edited\.ts.*normalization"):
        load_model(edited)


def test_normalize_ct_numpy_and_torch():
    params = [{"clip_hu": [-100, 200], "mean": 50.0, "std": 50.0}, {"clip_hu": [0, 100], "mean": 0.0, "std": 10.0}]
    hu = np.array([[[[-500.0, 100.0, 1000.0]]], [[[-5.0, 50.0, 300.0]]]], dtype=np.float32)
    got = normalize_ct(hu, params)
    np.testing.assert_allclose(got[0].ravel(), [-3.0, 1.0, 3.0])
    np.testing.assert_allclose(got[1].ravel(), [0.0, 5.0, 10.0])
    assert got.dtype == np.float32 and hu[0, 0, 0, 0] == -500  # input untouched
    t = normalize_ct(torch.from_numpy(hu)[None], params)  # batch [B, C, ...]
    np.testing.assert_allclose(t[0].numpy(), got)
    with pytest.raises(ValueError, match="one entry per channel"):
        normalize_ct(hu, params[:1])


def test_compute_ct_normalization_percentiles():
    rng = np.random.default_rng(0)
    values = rng.normal(40, 20, size=(2, 100000)).astype(np.float32)
    values[1] *= 2
    params = compute_ct_normalization([values[:, :50000], values[:, 50000:]], ["CT_arterial", "CT_venous"])
    assert params[0]["channel"] == "CT_arterial"
    lo, hi = params[0]["clip_hu"]
    assert lo == pytest.approx(np.percentile(values[0], 0.5), abs=1e-3)
    assert hi == pytest.approx(np.percentile(values[0], 99.5), abs=1e-3)
    assert params[0]["mean"] == pytest.approx(40, abs=0.5) and params[0]["std"] == pytest.approx(20, rel=0.05)
    assert params[1]["std"] == pytest.approx(40, rel=0.05)
