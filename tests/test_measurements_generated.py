"""Measurements and instances on a generated tiny study agree with the generator's own tables."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lnmet.instances import ln_instances
from lnmet.labels import ORGAN_BY_KEY
from lnmet.measurements import measure_lymph_nodes, measure_tumour
from lnmet.metrics import match_instances


def test_ln_measurements_match_the_generator_table(tiny_study):
    nodes = measure_lymph_nodes(tiny_study.ln_instances, tiny_study.venous, tiny_study.organs)
    table = {r["id"]: r for r in tiny_study.lymph_nodes if r["volume_mm3"] > 0}
    assert [n.index for n in nodes] == sorted(table)
    organs = sitk.GetArrayViewFromImage(tiny_study.organs)
    hu = sitk.GetArrayViewFromImage(tiny_study.venous)
    inst = sitk.GetArrayViewFromImage(tiny_study.ln_instances)
    for n in nodes:
        row = table[n.index]
        assert n.volume_mm3 == pytest.approx(row["volume_mm3"], rel=1e-6)
        np.testing.assert_allclose(n.centroid_mm, row["centroid_mm"], atol=3.0)  # the node's voxel centroid
        assert n.mean_hu_venous == pytest.approx(float(hu[inst == n.index].mean()), abs=1e-3)
        # distance: the gap between the node's and the structures' voxel boxes, checked by brute force
        node = np.argwhere(inst == n.index) * 3.0
        struct = np.argwhere(organs > 0)
        gaps = np.sqrt((np.maximum(np.abs(node[:, None, :] - struct[None, :, :] * 3.0) - 3.0, 0) ** 2).sum(-1))
        assert n.distance_mm == pytest.approx(gaps.min())
        near = {int(organs[tuple(struct[j])]) for j in np.flatnonzero(np.isclose(gaps.min(axis=0), gaps.min()))}
        assert ORGAN_BY_KEY[n.nearest_structure].label in near
        # and agrees with the generator's (computed on its own finer grid) within a voxel diagonal
        assert abs(n.distance_mm - row["distance_mm"]) <= 3.0 * np.sqrt(3)
        # the long axis cannot exceed the node's largest extent (generator axes) by more than a voxel diagonal
        assert 0 < n.short_axis_mm <= n.long_axis_mm <= max(row["axes_mm"]) + 3.0 * np.sqrt(2) + 1e-6


def test_instances_from_a_probability_reproduce_the_ground_truth(tiny_study):
    prob = sitk.Cast(tiny_study.ln_instances > 0, sitk.sitkFloat32)
    inst = ln_instances(prob, tiny_study.venous, 0.5, 0.0)
    m = match_instances(sitk.GetArrayFromImage(inst), sitk.GetArrayFromImage(tiny_study.ln_instances))
    assert m.n_gt > 0 and m.gt_detected.all() and m.pred_matched.all()
    # one predicted instance per GT node with IoU 1, unless two GT nodes touch
    assert np.isclose(m.iou.max(axis=1), 1.0).sum() >= m.n_gt - 1


def test_tumour_measurement_matches_the_generator(tiny_study):
    t = measure_tumour(tiny_study.pdac, tiny_study.venous)
    gen = tiny_study.patient["tumour"]
    assert t.volume_mm3 == pytest.approx(gen["volume_mm3"], rel=0.02)
    # the generator measures on a 0.5 mm grid; ours is edge to edge on the 3 mm voxels
    assert t.max_axial_diameter_mm == pytest.approx(gen["diameter_mm"], abs=6.0)
    zyx = np.argwhere(sitk.GetArrayViewFromImage(tiny_study.pdac) > 0).mean(axis=0)
    np.testing.assert_allclose(t.centroid_mm, tiny_study.pdac.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))
