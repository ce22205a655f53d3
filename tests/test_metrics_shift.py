"""Output-shift statistics: hand-computed values, identical inputs, NaN handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from audiobench.metrics.shift import (
    SHIFT_SUMMARY,
    delta_ap_per_class,
    score_histogram,
    shift_statistics,
    summarise_shift,
)


def _bkl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _h(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_identical_inputs_give_exactly_zero_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 527)) * 4
    t = rng.random((50, 527)) < 0.01
    s = shift_statistics(x, x.copy(), t)
    for k in ("kl", "js", "abs_dp", "entropy_delta", "top1_flip"):
        assert np.all(s[k] == 0.0), k
    assert np.all(s["top5_jaccard"] == 1.0)
    assert np.all(s["spearman"] == 1.0)
    assert np.all(s["true_label_drop"][~np.isnan(s["true_label_drop"])] == 0.0)
    summ = summarise_shift(s)
    assert summ["kl_mean"] == 0 and summ["top1_flip_rate"] == 0 and summ["spearman_mean"] == 1


def test_hand_computed_two_classes():
    clean = np.array([[0.0, 0.0]])  # p = (1/2, 1/2)
    pert = np.array([[math.log(3), -math.log(3)]])  # q = (3/4, 1/4)
    t = np.array([[True, False]])
    s = shift_statistics(clean, pert, t)
    assert s["kl"][0] == pytest.approx(_bkl(0.5, 0.75) + _bkl(0.5, 0.25), abs=1e-12)
    assert s["kl"][0] == pytest.approx(math.log(4 / 3), abs=1e-12)
    a, b = np.array([0.5, 0.5]), np.array([0.75, 0.25])
    m = (a + b) / 2
    js = 0.5 * np.sum(a * np.log(a / m)) + 0.5 * np.sum(b * np.log(b / m))
    assert s["js"][0] == pytest.approx(js, abs=1e-12)
    assert s["entropy_delta"][0] == pytest.approx(_h(0.75) - math.log(2), abs=1e-12)
    assert s["abs_dp"][0] == pytest.approx(0.25, abs=1e-12)
    assert s["top1_flip"][0] == 0.0  # argmax on ties: class 0 both times
    assert s["spearman"][0] != s["spearman"][0]  # clean is constant -> NaN
    # label 0: clean 0.5 (>= 0.5, detected), perturbed 0.75 -> not dropped
    assert s["true_label_drop"][0] == 0.0 and s["true_below"][0] == 0.0


def test_hand_computed_rankings_7_classes():
    clean = np.array([[7.0, 6, 5, 4, 3, 2, 1], [7.0, 6, 5, 4, 3, 2, 1], [1.0, 2, 2, 3, 0, 0, 5]])
    pert = np.array([[1.0, 2, 3, 4, 5, 6, 7], [7.0, 6, 5, 4, 3, 1, 2], [2.0, 2, 1, 3, 0, 1, 4]])
    t = np.zeros((3, 7), bool)
    s = shift_statistics(clean, pert, t)
    np.testing.assert_array_equal(s["top1_flip"], [1, 0, 0])
    # clip 0: top5 {0..4} vs {2..6}: 3 shared of 7; clip 1: same top 5
    assert s["top5_jaccard"][0] == pytest.approx(3 / 7, abs=1e-15)
    assert s["top5_jaccard"][1] == 1.0
    assert s["spearman"][0] == pytest.approx(-1.0, abs=1e-12)
    for i in range(3):  # ties in clip 2: average ranks, as scipy
        assert s["spearman"][i] == pytest.approx(spearmanr(clean[i], pert[i]).statistic, abs=1e-12)
    assert np.all(np.isnan(s["true_label_drop"])) and np.all(np.isnan(s["true_below"]))


def test_true_label_drop_and_below():
    clean = np.array([[1.0, 2.0, -1.0, 0.0], [-1.0, -2.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    pert = np.array([[-1.0, 3.0, -2.0, 0.0], [-1.0, -2.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    t = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    s = shift_statistics(clean, pert, t)
    # clip 0: detected clean {0, 1}; 0 falls below -> 1/2; below perturbed {0, 2} of 3 labels
    assert s["true_label_drop"][0] == 0.5 and s["true_below"][0] == pytest.approx(2 / 3)
    # clip 1: no true label detected clean -> NaN drop; both labels below -> 1
    assert np.isnan(s["true_label_drop"][1]) and s["true_below"][1] == 1.0
    assert np.isnan(s["true_label_drop"][2]) and np.isnan(s["true_below"][2])
    assert summarise_shift(s)["true_label_drop_rate"] == 0.5


def test_kl_of_saturated_scores_is_clipped_not_infinite():
    clean = np.array([[60.0, -60.0]])
    pert = np.array([[-60.0, 60.0]])
    s = shift_statistics(clean, pert, np.zeros((1, 2), bool))
    e = 1e-7
    assert s["kl"][0] == pytest.approx(2 * _bkl(1 - e, e), rel=1e-9)
    assert np.isfinite(s["js"][0]) and s["js"][0] <= math.log(2) + 1e-12


def test_nonfinite_clip_is_nan_and_ignored_in_summary():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6))
    y = x + rng.normal(size=(4, 6))
    y_bad = y.copy()
    y_bad[2, 3] = np.nan
    s = shift_statistics(x, y_bad, np.ones((4, 6), bool))
    assert s["nonfinite"][2] == 1.0 and s["nonfinite"].sum() == 1
    assert all(np.isnan(s[k][2]) for k in SHIFT_SUMMARY.values())
    keep = [0, 1, 3]
    ref = summarise_shift(shift_statistics(x[keep], y[keep], np.ones((3, 6), bool)))
    got = summarise_shift(s)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-15, nan_ok=True), k


def test_summary_is_nan_aware_mean():
    per = {stat: np.array([1.0, np.nan, 3.0]) for stat in SHIFT_SUMMARY.values()}
    out = summarise_shift(per)
    assert set(out) == set(SHIFT_SUMMARY) and all(v == 2.0 for v in out.values())
    per = {stat: np.array([np.nan]) for stat in SHIFT_SUMMARY.values()}
    assert all(math.isnan(v) for v in summarise_shift(per).values())


def test_score_histogram():
    logits = np.array([[0.0, 100.0, -100.0, math.log(0.26 / 0.74)], [0.1, np.nan, 0.0, 0.0]])
    h = score_histogram(logits, bins=20)
    assert h.dtype == np.int64 and h.shape == (20,) and h.sum() == 4  # NaN clip left out
    assert h[10] == 1 and h[19] == 1 and h[0] == 1 and h[5] == 1


def test_delta_ap_per_class():
    rng = np.random.default_rng(2)
    clean = rng.normal(size=(80, 5))
    pert = clean + rng.normal(size=(80, 5))
    t = rng.random((80, 5)) < 0.3
    t[:, 4] = False
    d = delta_ap_per_class(clean, pert, t)
    assert np.isnan(d[4])
    for j in range(4):
        ref = average_precision_score(t[:, j], pert[:, j]) - average_precision_score(t[:, j], clean[:, j])
        assert d[j] == pytest.approx(ref, abs=1e-10)
    assert np.all(delta_ap_per_class(clean, clean, t)[:4] == 0)


def test_spearman_and_jaccard_match_references_on_tied_data():
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(size=(40, 30)), 0)  # heavy ties
    y = np.round(x + rng.normal(size=(40, 30)), 0)
    s = shift_statistics(x, y, np.zeros((40, 30), bool))
    for i in range(40):
        assert s["spearman"][i] == pytest.approx(spearmanr(x[i], y[i]).statistic, abs=1e-12)
        top_x = set(np.argsort(-x[i], kind="stable")[:5])
        top_y = set(np.argsort(-y[i], kind="stable")[:5])
        assert s["top5_jaccard"][i] == pytest.approx(len(top_x & top_y) / len(top_x | top_y))
