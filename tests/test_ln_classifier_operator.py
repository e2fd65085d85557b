"""LN identification on a generated study: instances from a probability map match the ground truth,
measurements agree with the generator's LN table, probabilities come from the model's crops, the
positive class follows the model's threshold or app.yaml's override, attention recomputed from the
organs when not given."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from evaluation.organ_segmentation import registered_from_study
from lnmet.attention import attention_map
from lnmet.config import load_settings
from lnmet.metrics import match_instances
from lnmet.model_io import save_model
from lnmet.networks.ln_classifier import LNClassifier, LNIdentifier, node_centres
from lnmet.types import LNFindings
from operators.ln_identification import identify_lymph_nodes, model_info
from test_ln_classifier_network import write_seg_model


@pytest.fixture(scope="module")
def identifier(tmp_path_factory):
    d = tmp_path_factory.mktemp("ln_cls")
    write_seg_model(d / "ln_seg.ts", spacing=3.0)
    net, seg_meta = LNClassifier.from_segmentation_model(d / "ln_seg.ts", pooling="average+node", descriptors=True)
    meta = dict(seg_meta, name="ln_cls", architecture=net.architecture((16, 16, 16)), patch_size=[16, 16, 16],
                classes={"negative": 0, "positive": 1}, decision_threshold=0.5)
    ones = torch.ones(1, 1, 16, 16, 16)
    save_model(net, d / "ln_cls.ts", meta, (torch.zeros(1, 2, 16, 16, 16), ones, ones))
    return LNIdentifier.load(d / "ln_cls.ts", "cpu")


def _gt_probability(study, grid_like: sitk.Image) -> sitk.Image:
    """A probability map that is 1 inside the ground-truth nodes (the working grid equals the
    tiny study's own grid here)."""
    p = sitk.Cast(study.ln_instances > 0, sitk.sitkFloat32)
    p.CopyInformation(grid_like)
    return p


def test_identification_on_ground_truth_probability(tiny_study, identifier):
    settings = load_settings()
    registered = registered_from_study(tiny_study, identifier.spacing_mm)
    prob = _gt_probability(tiny_study, registered.working_venous)
    instances, nodes = identify_lymph_nodes(registered, prob, tiny_study.organs, identifier, settings)
    assert instances.GetPixelID() == sitk.sitkUInt16 and instances.GetSize() == tiny_study.venous.GetSize()
    gt = sitk.GetArrayFromImage(tiny_study.ln_instances)
    m = match_instances(sitk.GetArrayFromImage(instances), gt)
    present = [r for r in tiny_study.lymph_nodes if r["volume_mm3"] >= settings.ln_detection.min_volume_mm3]
    assert m.n_gt >= len(present) > 0 and m.gt_detected.all() and m.pred_matched.all()
    table = {r["id"]: r for r in tiny_study.lymph_nodes}
    for n in nodes:
        row = table[m.pred_to_gt[n.index]]
        assert n.volume_mm3 == pytest.approx(row["volume_mm3"], rel=0.02)  # GT map -> generator's volume
        np.testing.assert_allclose(n.centroid_mm, row["centroid_mm"], atol=3.0)  # one 3 mm voxel
        assert n.nearest_structure and np.isfinite(n.distance_mm) and n.distance_mm >= 0
        assert n.long_axis_mm >= n.short_axis_mm > 0
        assert 0.0 <= n.probability_positive <= 1.0 and n.positive == (n.probability_positive >= 0.5)
    assert len({n.tracking_uid for n in nodes}) == len(nodes)
    # probabilities are the identifier's on crops centred on each node, with the organs' attention map
    att = sitk.GetArrayFromImage(attention_map(tiny_study.organs, settings.attention))
    image = np.stack([sitk.GetArrayFromImage(registered.working_arterial), sitk.GetArrayFromImage(registered.working_venous)])
    ids, centres = node_centres(instances, registered.working_venous)
    labels = sitk.GetArrayFromImage(instances)  # the tiny study's working grid is its own grid
    assert instances.GetSize() == registered.working_venous.GetSize()
    expected = identifier.predict(image, att, centres, 8, labels, ids)
    np.testing.assert_allclose([n.probability_positive for n in nodes], expected, rtol=1e-4, atol=1e-5)
    # the same result with the attention map given instead of recomputed
    att_img = sitk.GetImageFromArray(att)
    att_img.CopyInformation(registered.working_venous)
    _, again = identify_lymph_nodes(registered, prob, tiny_study.organs, identifier, settings, attention=att_img)
    np.testing.assert_allclose([n.probability_positive for n in again], expected, rtol=1e-4, atol=1e-5)

    # app.yaml's positive_threshold overrides the model's threshold
    low = dataclasses.replace(settings, ln_detection=dataclasses.replace(settings.ln_detection, positive_threshold=0.0))
    _, all_pos = identify_lymph_nodes(registered, prob, tiny_study.organs, identifier, low)
    assert all(n.positive for n in all_pos)
    findings = LNFindings(ln_instances=instances, lymph_nodes=all_pos, organs=tiny_study.organs, threshold=0.0,
                          model=model_info(identifier))
    assert findings.largest_positive_volume_mm3 == pytest.approx(max(n.volume_mm3 for n in all_pos))
    assert findings.model.name == "ln_cls" and len(findings.model.sha256) == 64


def test_empty_probability_and_organs_off_grid(tiny_study, identifier):
    settings = load_settings()
    registered = registered_from_study(tiny_study, identifier.spacing_mm)
    zero = sitk.Image(registered.working_venous.GetSize(), sitk.sitkFloat32)
    zero.CopyInformation(registered.working_venous)
    instances, nodes = identify_lymph_nodes(registered, zero, tiny_study.organs, identifier, settings)
    assert nodes == [] and sitk.GetArrayViewFromImage(instances).max() == 0
    small = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    with pytest.raises(ValueError, match="reference"):
        identify_lymph_nodes(registered, zero, small, identifier, settings)
