"""Sliding-window inference: window skipping is exact, body box, grids, model lookup, model inputs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from evaluation.organ_segmentation import registered_from_study
from lnmet.attention import attention_map
from lnmet.config import load_settings
from lnmet.inference import SegmentationModel, body_bbox, labels_to_grid, model_inputs, resolve_model_path
from lnmet.metrics import dice
from lnmet.model_io import save_model
from lnmet.networks import SegmentationUNet

PATCH_XYZ = [16, 16, 8]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend badly (several times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_model(path, attention: bool, spacing=(3.0, 3.0, 3.0), seed: int = 0) -> SegmentationModel:
    torch.manual_seed(seed)
    net = SegmentationUNet(2, 2, (4, 8, 16), (1, 2, 2), attention=attention).eval()
    meta = {"name": "ln_test", "version": "0.0.1", "architecture": net.architecture(), "spacing_mm": list(spacing),
            "patch_size": PATCH_XYZ, "in_channels": 2, "channel_names": ["CT_arterial", "CT_venous"],
            "normalization": [{"clip_hu": [-200, 300], "mean": 40.0, "std": 80.0}] * 2,
            "classes": {"background": 0, "lymph_node": 1}, "num_classes": 2, "trained_on": "nothing (test)",
            "training_command": "none", "synthetic_training_data": True}
    shape = (1, 2) + tuple(PATCH_XYZ[::-1])
    example = (torch.zeros(shape), torch.ones((1, 1) + shape[2:])) if attention else (torch.zeros(shape),)
    save_model(net, path, meta, example)
    return SegmentationModel.load(path, "cpu")


def test_window_skipping_equals_the_full_sliding_window(tiny_study, tmp_path):
    model = _write_model(tmp_path / "ln.ts", attention=True)
    att = sitk.GetArrayFromImage(attention_map(tiny_study.organs, load_settings().attention))
    image = np.stack([sitk.GetArrayFromImage(tiny_study.arterial), sitk.GetArrayFromImage(tiny_study.venous)])
    kw = dict(overlap=0.25, sw_batch_size=8, restrict_to_body=False)
    skipped, s1 = model.predict_probabilities(image, att, skip_empty_attention=True, **kw)
    full, s2 = model.predict_probabilities(image, att, skip_empty_attention=False, **kw)
    assert s1.windows_total == s2.windows_total == s2.windows_run
    assert 0 < s1.windows_run < s1.windows_total  # some windows skipped, some run
    np.testing.assert_allclose(skipped, full, rtol=1e-5, atol=1e-6)
    labels, s3 = model.segment(image, att, **kw)  # argmax of the logits, without per-class probabilities
    np.testing.assert_array_equal(labels, np.argmax(full, axis=0))
    assert s3.windows_run == s1.windows_run
    # where the attention is 0 the result is the head's bias (a constant), elsewhere it varies
    zero = att == 0
    assert np.ptp(full[1][zero]) < 1e-5 and np.ptp(full[1][~zero]) > 1e-3


def test_body_bbox_keeps_the_largest_component():
    vol = np.full((20, 40, 50), -1000.0, dtype=np.float32)
    vol[3:17, 5:30, 10:45] = 40.0  # body
    vol[2:18, 36:39, 0:50] = 200.0  # table, separate and smaller
    box = body_bbox(vol, margin_vox=(1, 2, 3))
    assert box == (slice(2, 18), slice(3, 32), slice(7, 48))
    assert body_bbox(np.full((4, 5, 6), -1000.0)) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_labels_to_grid_is_smooth_and_on_the_target_grid():
    coarse = sitk.Image(30, 30, 20, sitk.sitkUInt8)
    coarse.SetSpacing((3.0, 3.0, 3.0))
    coarse.SetOrigin((-45.0, -45.0, -30.0))
    fine = sitk.Image(90, 90, 60, sitk.sitkFloat32)
    fine.SetSpacing((1.0, 1.0, 1.0))
    fine.SetOrigin((-46.0, -46.0, -31.0))

    def ball(img, centre, radius):
        idx = np.indices(img.GetSize()[::-1]).reshape(3, -1).T[:, ::-1]
        pts = np.array(img.GetOrigin()) + idx * np.array(img.GetSpacing())
        return (np.linalg.norm(pts - centre, axis=1) <= radius).reshape(img.GetSize()[::-1])

    arr = ball(coarse, (0, 0, 0), 15).astype(np.uint8) * 5
    arr[ball(coarse, (25, 25, 10), 9)] = 7
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(coarse)
    out = labels_to_grid(lab, fine)
    assert out.GetSize() == fine.GetSize() and out.GetSpacing() == fine.GetSpacing()
    assert out.GetOrigin() == fine.GetOrigin() and out.GetPixelID() == sitk.sitkUInt8
    got = sitk.GetArrayFromImage(out)
    assert set(np.unique(got)) == {0, 5, 7}
    truth = ball(fine, (0, 0, 0), 15)
    nearest = sitk.GetArrayFromImage(sitk.Resample(lab, fine, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) == 5
    assert dice(got == 5, truth) > 0.95
    assert dice(got == 5, truth) >= dice(nearest, truth)


def test_resolve_model_path(tmp_path):
    f = tmp_path / "models" / "organ_seg" / "model.ts"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    assert resolve_model_path("organ_seg", f) == f
    assert resolve_model_path("organ_seg", tmp_path / "models") == f
    assert resolve_model_path("organ_seg", app_context=SimpleNamespace(models=None, model_path=str(tmp_path / "models"))) == f
    with pytest.raises(FileNotFoundError, match="ln_seg"):
        resolve_model_path("ln_seg", tmp_path / "models")


def test_model_inputs_resample_and_single_phase(tiny_study, tmp_path):
    model = _write_model(tmp_path / "m.ts", attention=False, spacing=(4.5, 4.5, 6.0))
    registered = registered_from_study(tiny_study, (3.0, 3.0, 3.0), "perfect")  # not the model's spacing
    channels, grid = model_inputs(registered, model)
    assert grid.GetSpacing() == (4.5, 4.5, 6.0) and grid.GetOrigin() == tiny_study.venous.GetOrigin()
    assert channels.shape == (2,) + grid.GetSize()[::-1]
    assert not np.allclose(channels[0], channels[1])  # arterial and venous differ
    single = registered_from_study(tiny_study, (4.5, 4.5, 6.0), single_phase=True)
    ch1, _ = model_inputs(single, model)
    np.testing.assert_array_equal(ch1[0], ch1[1])  # venous in both channels
    np.testing.assert_allclose(ch1[1], channels[1], atol=1e-3)


def test_bundled_model_optimised_for_cpu_gives_the_plain_modules_output(tiny_study):
    """The frozen, oneDNN-optimised module the app runs (lnmet.model_io.optimized_for_cpu) is a faster
    form of the same network: on a real window of a study its logits stay within 1e-3 of the plain
    TorchScript module's and the labels are the same."""
    from lnmet.model_io import load_model
    from lnmet.normalization import normalize_ct

    path = resolve_model_path("organ_seg", Path(__file__).resolve().parent.parent / "models")
    model = SegmentationModel.load(path, "cpu")
    plain, _ = load_model(path, "cpu", optimize=False)
    assert "prim::GetAttr" in str(plain.graph)  # the plain module reads its weights as attributes,
    assert "prim::GetAttr" not in str(model.module.graph)  # the frozen one has them as constants
    z, y, x = model.patch_zyx
    image = np.stack([sitk.GetArrayFromImage(tiny_study.arterial), sitk.GetArrayFromImage(tiny_study.venous)])
    window = np.zeros((2, z, y, x), np.float32)
    cz, cy, cx = (min(a, b) for a, b in zip(image.shape[1:], (z, y, x)))
    window[:, :cz, :cy, :cx] = image[:, :cz, :cy, :cx]
    inputs = torch.from_numpy(normalize_ct(window, model.metadata["normalization"])[None])
    with torch.no_grad():
        fast, slow = model.module(inputs), plain(inputs)
    assert fast.shape == slow.shape == (1, model.num_classes, z, y, x)
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), atol=1e-3)
    assert np.array_equal(fast.argmax(1).numpy(), slow.argmax(1).numpy())
    assert float(slow.abs().max()) > 0.1  # a real output, not a blank one
