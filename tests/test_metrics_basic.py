"""Metrics against hand-computed cases and brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from lnmet import metrics


def test_dice_hand_computed():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True  # 3 voxels
    b[0, 1:] = True  # 3 voxels, 2 shared
    assert metrics.dice(a, b) == pytest.approx(2 * 2 / 6)
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(np.zeros(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(a, b[:2])


def test_instance_matching_iou_threshold():
    gt = np.zeros((1, 20), int)
    pred = np.zeros((1, 20), int)
    gt[0, 0:10] = 1            # GT 1: 10 voxels
    pred[0, 0:3] = 5           # IoU 3/10 = 0.3 exactly -> detected (>= 0.3)
    gt[0, 12:16] = 2           # GT 2: 4 voxels
    pred[0, 15:20] = 7         # overlap 1, union 8 -> 0.125, not detected
    m = metrics.match_instances(pred, gt)
    assert list(m.gt_ids) == [1, 2] and list(m.pred_ids) == [5, 7]
    assert m.iou[0, 0] == pytest.approx(0.3)
    assert m.iou[1, 1] == pytest.approx(1 / 8)
    assert list(m.gt_detected) == [True, False]
    assert list(m.pred_matched) == [True, False]
    assert m.pred_to_gt == {5: 1}
    s = metrics.detection_scores(m.n_gt, m.n_detected, m.n_pred, m.n_true_positive_pred)
    assert s["recall"] == 0.5 and s["precision"] == 0.5 and s["f1"] == pytest.approx(0.5)
    # slightly below 0.3 is not a detection
    pred[0, 2] = 0
    assert not metrics.match_instances(pred, gt).gt_detected[0]


def test_dice_per_class_is_nan_for_a_class_absent_from_both():
    from lnmet.labels import ORGAN_BY_KEY

    spleen, aorta = ORGAN_BY_KEY["spleen"].label, ORGAN_BY_KEY["aorta"].label
    pred = np.zeros((2, 6), np.uint8)
    truth = np.zeros((2, 6), np.uint8)
    pred[0, :4] = spleen   # 4 voxels, 2 shared with the truth's 2
    truth[0, 2:4] = spleen
    truth[1, :3] = aorta   # the aorta is missed
    d = metrics.dice_per_class(pred, truth)
    assert d["spleen"] == pytest.approx(2 * 2 / 6)
    assert d["aorta"] == 0.0
    assert np.isnan(d["pancreas"])  # in neither map: no figure, not a perfect one


def test_detection_counts_volume_ratio_of_each_found_node():
    gt = np.zeros((1, 30), np.int64)
    pred = np.zeros((1, 30), np.int64)
    gt[0, 0:10] = 1     # found by prediction 4, which is 12 voxels: ratio 1.2
    pred[0, 0:12] = 4
    gt[0, 20:24] = 2    # missed
    pred[0, 26:29] = 9  # a false detection
    c = metrics.detection_counts(pred, gt)
    assert (c["gt"], c["detected"], c["pred"], c["true_positive_pred"]) == (2, 1, 2, 1)
    assert c["volume_ratios"] == [pytest.approx(1.2)]
    assert (c["inter"], c["pred_voxels"], c["gt_voxels"]) == (10, 15, 14)
    assert c["dice"] == pytest.approx(2 * 10 / 29) and c["match"].pred_to_gt == {4: 1}


def test_auc_mann_whitney_with_ties():
    y = [0, 0, 1, 1, 1]
    s = [0.1, 0.5, 0.5, 0.8, 0.9]
    # pairs (pos, neg): 3*2 = 6; wins: 0.5>0.1 (1), 0.5=0.5 (0.5), 0.8 (2), 0.9 (2) -> 5.5
    assert metrics.roc_auc(y, s) == pytest.approx(5.5 / 6)
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_binary_metrics_and_threshold():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0, 1, 0, 1, 0])
    r = metrics.binary_metrics(y, p)
    assert r["sensitivity"] == 0.5 and r["specificity"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    t = metrics.best_threshold(y, s)
    assert 0.3 < t < 0.7  # perfect separation: the cut lies between the classes
    assert metrics.binary_metrics(y, s >= t)["balanced_accuracy"] == 1.0
    with pytest.raises(ValueError, match="both classes"):
        metrics.best_threshold([1, 1], [0.1, 0.2])


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = rng.normal(size=60) + y * 0.8
    t = metrics.best_threshold(y, s)
    best = max(metrics.binary_metrics(y, s >= c)["balanced_accuracy"] for c in np.unique(s))
    assert metrics.binary_metrics(y, s >= t)["balanced_accuracy"] == pytest.approx(best)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    s = rng.normal(size=80) + y
    ci1 = metrics.bootstrap_ci(metrics.roc_auc, y, s, n_resamples=300, seed=5)
    ci2 = metrics.bootstrap_ci(metrics.roc_auc, y, s, n_resamples=300, seed=5)
    assert ci1 == ci2
    auc = metrics.roc_auc(y, s)
    assert ci1[0] < auc < ci1[1]
    assert ci1[1] - ci1[0] < 0.4


def _brute_force_components(y, s):
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)


def test_fast_delong_components_match_brute_force():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=(2, 40)) + y, 1)  # rounding makes ties
    aucs, v10, v01 = metrics.delong_components(y, s)
    for r in range(2):
        auc, b10, b01 = _brute_force_components(y, s[r])
        assert aucs[r] == pytest.approx(auc)
        np.testing.assert_allclose(v10[r], b10)
        np.testing.assert_allclose(v01[r], b01)
        assert aucs[r] == pytest.approx(metrics.roc_auc(y, s[r]))


def test_delong_test_variance_and_p_value():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 100)
    a = rng.normal(size=100) + 2 * y
    b = rng.normal(size=100) + 0.2 * y
    r = metrics.delong_test(y, a, b)
    # variance from the brute-force components
    _, a10, a01 = _brute_force_components(y, a)
    _, b10, b01 = _brute_force_components(y, b)
    m, n = a10.size, a01.size
    var = (np.var(a10 - b10, ddof=1) / m) + (np.var(a01 - b01, ddof=1) / n)
    assert r.z == pytest.approx((r.auc_a - r.auc_b) / np.sqrt(var))
    assert r.p_value < 0.01
    same = metrics.delong_test(y, a, a)
    assert same.p_value == 1.0 and same.difference == 0.0
