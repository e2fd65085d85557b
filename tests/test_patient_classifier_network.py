"""Issue 6's tests of the patient-level classifier: side branch starts as the identity, TEL has 512
units, the volume feature changes the prediction, the 9 patches are taken as specified (including
a tumour touching the volume's border)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import pytest
import torch

from lnmet.networks.patient_classifier import PatientClassifier, TextureEncodingLayer
from lnmet.patches import NoTumourError, extract_tumour_patches


def test_fresh_side_branch_is_the_identity():
    torch.manual_seed(0)
    net = PatientClassifier(in_channels=2, block_inplanes=(16, 32, 64, 128)).eval()
    image = torch.randn(3, 2, 64, 64)
    mask = (torch.rand(3, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        plain = net.resnet.conv1(image)  # the plain backbone's Conv1 output
        gated = net.conv1_feature(image, mask)
        assert torch.equal(gated, plain)
        # once the branch has learnt something the mask matters
        net.side_branch[0].weight.data.normal_()
        assert not torch.allclose(net.conv1_feature(image, mask), plain)


def test_tel_has_512_units_and_features_concatenate_gap():
    tel = TextureEncodingLayer(128, dim=64, codewords=8).eval()
    out = tel(torch.randn(4, 128, 3, 3))
    assert out.shape == (4, 512)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))  # L2-normalised
    full = PatientClassifier(in_channels=1).eval()  # paper width: 512 (GAP) + 512 (TEL)
    assert full.feature_dim == 1024
    with torch.no_grad():
        f = full.features(torch.randn(2, 1, 64, 64), torch.ones(2, 1, 64, 64))
    assert f.shape == (2, 1024)


def test_volume_feature_changes_the_prediction():
    torch.manual_seed(1)
    net = PatientClassifier(in_channels=1, block_inplanes=(8, 16, 32, 64)).eval()
    image, mask = torch.randn(2, 1, 64, 64), torch.ones(2, 1, 64, 64)
    with torch.no_grad():
        small = net(image, mask, torch.tensor([[0.0], [0.0]]))
        large = net(image, mask, torch.tensor([[900.0], [900.0]]))
    assert not torch.allclose(small, large)
    only = PatientClassifier(in_channels=1, block_inplanes=(8, 16, 32, 64), mode="tumour_only").eval()
    with torch.no_grad():
        assert torch.equal(only(image, mask, torch.zeros(2, 1)), only(image, mask, torch.full((2, 1), 900.0)))
    with pytest.raises(ValueError, match="nodes_only"):
        PatientClassifier(mode="nodes_only")


def _volume(mask_fn, size=(60, 50, 40), spacing=(0.8, 0.8, 1.5)):
    z, y, x = np.mgrid[:size[2], :size[1], :size[0]].astype(float)
    X, Y, Z = x * spacing[0], y * spacing[1], z * spacing[2]
    m = mask_fn(X, Y, Z)
    img = sitk.GetImageFromArray((X + 100.0 * m).astype(np.float32))  # HU encodes x, +100 inside
    msk = sitk.GetImageFromArray(m.astype(np.uint8))
    for im in (img, msk):
        im.SetSpacing(spacing)
        im.SetOrigin((5.0, -3.0, 12.0))
    return img, msk, m


def test_nine_patches_from_the_largest_slices():
    # cone-like tumour: its axial area grows with z, so the largest axial slices are known
    def cone(X, Y, Z):
        r = 2.0 + 0.25 * Z
        return ((X - 24.0) ** 2 + (Y - 20.0) ** 2 <= r * r) & (Z >= 6.0) & (Z <= 30.0)

    img, msk, m = _volume(cone)
    p = extract_tumour_patches([img, img], msk, patch_size=32, spacing_mm=1.5)
    assert p.images.shape == (9, 2, 32, 32) and p.masks.shape == (9, 1, 32, 32)
    assert p.planes == ["axial"] * 3 + ["sagittal"] * 3 + ["coronal"] * 3
    axial = p.slice_index[:3]
    # the 3 largest axial slices of the cone are its 3 topmost slices (on the 1.5 mm tumour grid)
    assert sorted(axial) == sorted(axial)[:1] + [sorted(axial)[0] + 1, sorted(axial)[0] + 2]
    assert p.areas_mm2[0] >= p.areas_mm2[1] >= p.areas_mm2[2]
    assert all(p.areas_mm2[0] >= a for a in p.areas_mm2[:3])
    for k in range(9):
        mk = p.masks[k, 0]
        assert mk.sum() > 0
        # centred on the tumour: the mask's centroid is at the patch centre (within a pixel)
        np.testing.assert_allclose(np.argwhere(mk).mean(axis=0), [16, 16], atol=1.0)
        # tumour pixels are 100 HU above the surrounding tissue (same x) in the image patch
        assert p.images[k, 0][mk > 0].mean() > p.images[k, 0][mk == 0].mean() + 50
    # axial patches: columns run along x (HU = x mm + offset), rows along y
    assert np.median(np.diff(p.images[0, 0, 16, :])) == pytest.approx(1.5, abs=1e-3)


def test_tumour_touching_the_volume_border_is_padded():
    def at_border(X, Y, Z):  # a ball cut by the x = 0 face of the volume
        return (X - 2.0) ** 2 + (Y - 20.0) ** 2 + (Z - 30.0) ** 2 <= 64.0

    img, msk, m = _volume(at_border)
    assert m[:, :, 0].any()
    p = extract_tumour_patches([img], msk, patch_size=32, spacing_mm=1.0, pad_hu=-1024.0)
    assert len(p) == 9
    for k in range(9):
        if p.planes[k] == "sagittal":
            continue  # sagittal slices are parallel to the cut face
        patch = p.images[k, 0]
        assert (patch == -1024.0).any()  # outside the volume: padding
        assert (patch > -1024.0).any()
        mk = p.masks[k, 0]
        assert mk.sum() > 0 and not (mk[patch == -1024.0] > 0).any()  # no tumour in the padding
        # centred on the visible tumour's centroid
        np.testing.assert_allclose(np.argwhere(mk).mean(axis=0), [16, 16], atol=1.0)


def test_small_tumour_repeats_slices_and_empty_mask_is_an_error():
    def thin(X, Y, Z):
        return ((X - 20.0) ** 2 + (Y - 20.0) ** 2 <= 25.0) & (np.abs(Z - 30.0) < 0.7)

    img, msk, _ = _volume(thin)  # one axial slice of 1.5 mm
    p = extract_tumour_patches([img], msk, patch_size=16, spacing_mm=1.5)
    assert len(p) == 9 and len(set(p.slice_index[:3])) == 1
    with pytest.raises(NoTumourError, match="empty"):
        extract_tumour_patches([img], sitk.Image(msk.GetSize(), sitk.sitkUInt8), patch_size=16)
