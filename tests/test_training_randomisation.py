"""Domain randomisation of segmentation training patches (issue 16): each part changes what it
claims to change, and the training command records what it used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnmet.labels import ANATOMY_LABELS as L
from training.randomisation import DomainRandomiser, RandomisationSettings, tissue_medians

OFF = dict(probability=0.0, slab_probability=0.0, blur_probability=0.0, noise_probability=0.0, partial_probability=0.0)


def _phantom(shape=(24, 32, 32)):
    """Two channels (arterial, venous): fat everywhere, an enhanced aorta tube and a liver block."""
    tissue = np.full(shape, L["body_fat"], np.uint8)
    tissue[:, 10:16, 10:16] = L["aorta"]
    tissue[:, 18:30, 4:28] = L["liver"]
    img = np.empty((2,) + shape, np.float32)
    for c, (aorta, liver) in enumerate(((320.0, 75.0), (170.0, 110.0))):
        img[c] = -100.0
        img[c][tissue == L["aorta"]] = aorta
        img[c][tissue == L["liver"]] = liver
    label = (tissue == L["aorta"]).astype(np.uint8)
    return img, label, tissue


def _randomiser(**kw) -> DomainRandomiser:
    s = RandomisationSettings(**{**OFF, **kw})
    return DomainRandomiser(s, ["arterial", "venous"], (1.5, 1.5, 1.5), np.random.default_rng(0))


def test_tissue_medians_per_channel():
    img, _, tissue = _phantom()
    med = tissue_medians(img, tissue)
    assert med[0, L["aorta"]] == 320.0 and med[1, L["liver"]] == 110.0
    assert np.isnan(med[0, L["spleen"]])


def test_no_contrast_moves_enhanced_tissue_to_native_hu():
    img, label, tissue = _phantom()
    r = _randomiser(probability=1.0, no_contrast_probability=1.0, random_hu_probability=0.0, organ_shift_hu=0.0)
    out, _ = r(img.copy(), label, tissue, tissue_medians(img, tissue), [-1024, -1024])
    core = (slice(None), slice(12, 14), slice(12, 14))
    for c in range(2):  # the aorta of a non-contrast scan is blood, about 42 HU, in both channels
        assert np.median(out[c][core]) == pytest.approx(42.0, abs=6.0)
    assert r.stats["no_contrast"] == 1


def test_a_lesion_only_contrast_shows_is_unlabelled_on_a_non_contrast_patch():
    """The PDAC setting: a non-contrast patch keeps no label (nothing to see), a contrast one keeps it."""
    img, label, tissue = _phantom()
    med = tissue_medians(img, tissue)
    r = _randomiser(probability=1.0, no_contrast_probability=1.0, random_hu_probability=0.0,
                    clear_label_without_contrast=True)
    out, lab = r(img.copy(), label, tissue, med, [-1024, -1024])
    assert label.any() and not lab.any() and r.stats["label_cleared"] == 1
    assert np.median(out[1][:, 12:14, 12:14]) < 80.0  # the patch is a non-contrast one
    r = _randomiser(probability=1.0, no_contrast_probability=0.0, random_hu_probability=0.0,
                    clear_label_without_contrast=True)
    _, lab = r(img.copy(), label, tissue, med, [-1024, -1024])
    assert (lab == label).all() and r.stats["label_cleared"] == 0
    r = _randomiser(probability=1.0, no_contrast_probability=1.0, random_hu_probability=0.0)  # the default
    _, lab = r(img.copy(), label, tissue, med, [-1024, -1024])
    assert (lab == label).all()


def test_random_hu_gives_arbitrary_tissue_values_and_keeps_air():
    img, label, tissue = _phantom()
    tissue[:2] = L["background_air"]
    img[:, :2] = -1000.0
    r = _randomiser(probability=1.0, random_hu_probability=1.0)
    meds = []
    for _ in range(8):
        out, _ = r(img.copy(), label, tissue, tissue_medians(img, tissue), [-1024, -1024])
        meds.append(np.median(out[1][:, 12:14, 12:14]))
        assert np.median(out[0][0]) == pytest.approx(-1000.0, abs=1.0)  # air is fixed
    assert np.ptp(meds) > 100.0


def test_slab_removes_detail_along_z_only():
    rng = np.random.default_rng(3)
    img = rng.normal(0, 50, (2, 40, 16, 16)).astype(np.float32)
    r = _randomiser(slab_probability=1.0, slab_mm=(4.5, 5.0))
    out, _ = r(img.copy(), np.zeros((40, 16, 16), np.uint8), None, None, [-1024, -1024])
    dz_before = np.abs(np.diff(img, axis=1)).mean()
    dz_after = np.abs(np.diff(out, axis=1)).mean()
    assert dz_after < 0.4 * dz_before
    assert out.shape == img.shape


def test_partial_coverage_pads_the_image_and_clears_the_labels():
    img, label, tissue = _phantom()
    r = _randomiser(partial_probability=1.0)
    out, lab = r(img.copy(), label, tissue, None, [-1024, -1000])
    cleared = np.nonzero((out[0] == -1024).all(axis=(1, 2)))[0]
    assert 0 < cleared.size < img.shape[1]
    assert (out[1][cleared] == -1000).all() and not lab[cleared].any()
    assert label[cleared].any()  # the input is not changed


def test_misalignment_warps_the_arterial_channel_only_within_its_bound():
    """As the app's registration leaves it: the arterial channel moved smoothly by at most
    ``misalign_mm``, the venous channel and the label untouched; with the edge setting the arterial
    channel is air beyond a slice near one end."""
    shape = (24, 32, 32)
    x_mm = np.broadcast_to(np.arange(shape[2], dtype=np.float32) * 1.5, shape)
    img = np.stack([x_mm, x_mm]).copy()  # each voxel's value: its x position in mm
    label = np.zeros(shape, np.uint8)
    label[8:16, 8:16, 8:16] = 1
    r = _randomiser(misalign_probability=1.0, misalign_mm=2.0, arterial_edge_probability=0.0)
    moved = []
    for _ in range(5):
        out, lab = r(img.copy(), label, None, None, [-1024, -1024])
        inner = (slice(None), slice(None), slice(2, -2))  # away from the clamped x borders
        shift = np.abs(out[0] - img[0])[inner]
        assert shift.max() <= 2.0 + 1e-3 and np.array_equal(out[1], img[1]) and np.array_equal(lab, label)
        moved.append(shift.max())
    assert max(moved) > 0.5 and r.stats["misaligned"] == 5 and r.stats["arterial_edge"] == 0
    r = _randomiser(misalign_probability=1.0, misalign_mm=0.0, arterial_edge_probability=1.0, arterial_edge_fraction=0.25)
    out, lab = r(img.copy(), label, None, None, [-1024, -1024])
    air = np.all(out[0] == -1024, axis=(1, 2))
    assert 1 <= air.sum() <= 6 and (air[:air.sum()].all() or air[-air.sum():].all())  # slabs at one end
    assert np.array_equal(out[1], img[1]) and np.array_equal(lab, label) and r.stats["arterial_edge"] == 1


def test_training_records_the_randomisation(tmp_path):
    """A few iterations of the organ training on a randomised tiny export: the model's metadata says
    which randomisation (with a setting changed on the command line) and which acquisitions it was
    trained with."""
    from lnmet.model_io import read_metadata
    from synthetic.nnunet import export_nnunet
    from training.train_segmentation import main as train_main

    torch.set_num_threads(1)
    export_nnunet(tmp_path / "nn", range(0, 2), "tiny", acquisition="random")
    out = tmp_path / "organ_seg" / "model.ts"
    summary = train_main(["--dataset", str(tmp_path / "nn" / "Dataset501_PancreasOrgans"), "--task", "organs",
                          "--out", str(out), "--iterations", "4", "--spacing", "3", "3", "3", "--patch-size", "32",
                          "32", "16", "--filters", "4", "8", "16", "--threads", "1", "--val-fraction", "0",
                          "--checkpoint", str(tmp_path / "ck.pt"), "--randomise", "misalign_probability=1"])
    meta = read_metadata(out)
    dr = meta["training"]["domain_randomisation"]
    assert dr["no_contrast_probability"] > 0 and dr["random_hu_probability"] > 0
    assert dr["misalign_probability"] == 1.0 and summary["randomiser"]["misaligned"] == 4 * 2
    assert meta["training"]["tissue_maps"] == 2
    assert meta["training"]["acquisition"]["cases"] == 2
    assert summary["randomiser"]["patches"] == 4 * 2
    with pytest.raises(SystemExit, match="misalign_mm"):  # a bad setting is named before any work
        train_main(["--dataset", str(tmp_path / "nn" / "Dataset501_PancreasOrgans"), "--task", "organs",
                    "--out", str(tmp_path / "x.ts"), "--randomise", "misalign_mm=far"])
