"""Bootstrap CIs: weighted AP/AUC equal scikit-learn on resampled data, point = unweighted."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from audiobench.metrics._rank import weighted_ap_auc
from audiobench.metrics.bootstrap import (
    bootstrap_means,
    bootstrap_shift_summary,
    bootstrap_tagging,
    bootstrap_tagging_values,
    percentile_ci,
    resample_counts,
)
from audiobench.metrics.tagging import tagging_metrics


def _case(n=150, c=8, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    targets = rng.random((n, c)) < 0.2
    targets[:, 1] = False
    scores = np.round(rng.normal(size=(n, c)) + signal * targets, 1)  # ties
    return scores, targets


def test_resample_counts():
    c = resample_counts(50, 20, seed=3)
    assert c.shape == (50, 20) and c.dtype == np.uint8
    assert np.all(c.sum(axis=0) == 50)
    np.testing.assert_array_equal(c, resample_counts(50, 20, seed=3))
    assert not np.array_equal(c, resample_counts(50, 20, seed=4))


def test_weighted_ap_auc_equals_sklearn_with_sample_weight():
    scores, targets = _case()
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 4, size=(scores.shape[0], 3))
    ap, auc = weighted_ap_auc(scores, targets, counts)
    for r in range(3):
        w = counts[:, r]
        for j in range(scores.shape[1]):
            y = targets[:, j]
            if (w[y] > 0).any():
                assert ap[r, j] == pytest.approx(average_precision_score(y, scores[:, j], sample_weight=w), abs=1e-10)
            else:
                assert np.isnan(ap[r, j])
            if (w[y] > 0).any() and (w[~y] > 0).any():
                assert auc[r, j] == pytest.approx(roc_auc_score(y, scores[:, j], sample_weight=w), abs=1e-10)
            else:
                assert np.isnan(auc[r, j])


def test_resample_values_equal_metrics_of_duplicated_clips():
    scores, targets = _case(seed=2)
    counts = resample_counts(scores.shape[0], 4, seed=5)
    vals = bootstrap_tagging_values(scores, targets, counts)
    for r in range(4):
        idx = np.repeat(np.arange(scores.shape[0]), counts[:, r])
        ref = tagging_metrics(scores[idx], targets[idx])
        for k in ("mAP", "mAUC", "d_prime"):
            assert vals[k][r] == pytest.approx(ref[k], abs=1e-10)


def test_weights_of_ones_give_exactly_the_point_estimate():
    scores, targets = _case(seed=3)
    ones = np.ones((scores.shape[0], 5), dtype=np.uint8)
    vals = bootstrap_tagging_values(scores, targets, ones)
    point = tagging_metrics(scores, targets)
    for k in ("mAP", "mAUC", "d_prime"):
        assert np.all(vals[k] == point[k]), k  # bit for bit


def test_ci_contains_point_and_narrows_with_more_clips():
    widths = []
    for n in (200, 3200):
        scores, targets = _case(n=n, c=6, seed=4)
        point = tagging_metrics(scores, targets)
        ci = bootstrap_tagging(scores, targets, n_resamples=300, seed=0)
        for k in ("mAP", "mAUC", "d_prime"):
            lo, hi = ci[k]
            assert lo <= point[k] <= hi, (n, k, lo, point[k], hi)
        widths.append(ci["mAP"][1] - ci["mAP"][0])
    assert widths[1] < 0.5 * widths[0]  # ~1/sqrt(16) in theory


def test_bootstrap_is_seeded():
    scores, targets = _case(seed=5)
    a = bootstrap_tagging(scores, targets, n_resamples=50, seed=7)
    b = bootstrap_tagging(scores, targets, n_resamples=50, seed=7)
    c = bootstrap_tagging(scores, targets, n_resamples=50, seed=8)
    assert a == b and a != c


def test_bootstrap_ignores_nonfinite_clips():
    scores, targets = _case(seed=6)
    bad = scores.copy()
    bad[0, 0] = np.nan
    a = bootstrap_tagging(bad, targets, n_resamples=40, seed=1)
    b = bootstrap_tagging(scores[1:], targets[1:], n_resamples=40, seed=1)
    assert a == b


def test_bootstrap_means_matches_explicit_resampling():
    rng = np.random.default_rng(7)
    per = {"kl": rng.gamma(2.0, size=60), "flip": (rng.random(60) < 0.3).astype(float)}
    per["kl"][[3, 9]] = np.nan
    n_r = 200
    ci = bootstrap_means(per, n_resamples=n_r, seed=11)
    counts = resample_counts(60, n_r, seed=11)
    for name, v in per.items():
        means = [np.nanmean(v[np.repeat(np.arange(60), counts[:, r])]) for r in range(n_r)]
        ref = np.percentile(means, [2.5, 97.5])
        assert ci[name][0] == pytest.approx(ref[0], abs=1e-12)
        assert ci[name][1] == pytest.approx(ref[1], abs=1e-12)
        assert ci[name][0] <= np.nanmean(v) <= ci[name][1]


def test_bootstrap_means_all_nan_and_bad_shapes():
    ci = bootstrap_means({"x": np.full(5, np.nan)}, n_resamples=10)
    assert all(math.isnan(v) for v in ci["x"])
    with pytest.raises(ValueError):
        bootstrap_means({"a": np.zeros(3), "b": np.zeros(4)})


def test_percentile_ci():
    assert percentile_ci(np.arange(101.0)) == pytest.approx((2.5, 97.5), abs=1e-12)
    assert percentile_ci(np.r_[np.arange(101.0), np.nan], level=0.5) == pytest.approx((25, 75), abs=1e-12)
    assert all(math.isnan(v) for v in percentile_ci([np.nan, np.nan]))


def test_bootstrap_shift_summary_keys_and_containment():
    from audiobench.metrics.shift import shift_statistics, summarise_shift

    rng = np.random.default_rng(8)
    x = rng.normal(size=(120, 20))
    y = x + rng.normal(size=(120, 20))
    t = rng.random((120, 20)) < 0.2
    per = shift_statistics(x, y, t)
    ci = bootstrap_shift_summary(per, n_resamples=200, seed=2)
    point = summarise_shift(per)
    assert set(ci) == set(point)
    for k, (lo, hi) in ci.items():
        assert lo <= point[k] <= hi, k
    assert ci["kl_mean"] == pytest.approx(bootstrap_means({"kl": per["kl"]}, n_resamples=200, seed=2)["kl"], rel=1e-12)
