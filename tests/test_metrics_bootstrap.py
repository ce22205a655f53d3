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
    d_prime_ci,
    percentile_ci,
    resample_counts,
    weighted_quantiles,
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


def test_bootstrap_shift_summary_medians_match_explicit_resampling():
    from audiobench.metrics.shift import shift_statistics

    rng = np.random.default_rng(9)
    x = rng.normal(size=(40, 12))
    y = x + rng.normal(size=(40, 12))
    t = rng.random((40, 12)) < 0.2
    per = shift_statistics(x, y, t)
    counts = resample_counts(40, 60, seed=3)
    ci = bootstrap_shift_summary(per, counts=counts)
    for stat, summary, prob in (("kl", "median", 0.5), ("true_dp", "p90", 0.9)):
        vals = []
        for r in range(60):
            v = np.repeat(per[stat], counts[:, r])
            v = v[~np.isnan(v)]
            vals.append(np.quantile(v, prob) if v.size else np.nan)
        lo, hi = np.nanpercentile(vals, [2.5, 97.5])
        assert ci[f"{stat}_{summary}"] == pytest.approx((lo, hi), abs=1e-12)


def test_weighted_quantiles_equal_numpy_on_duplicated_data():
    rng = np.random.default_rng(10)
    v = np.round(rng.normal(size=200), 1)  # ties
    v[[4, 50]] = np.nan
    counts = resample_counts(200, 40, seed=1)
    probs = (0.0, 0.25, 0.5, 0.9, 1.0)
    q = weighted_quantiles(v, counts, probs)
    for r in range(40):
        d = np.repeat(v, counts[:, r])
        d = d[~np.isnan(d)]
        np.testing.assert_allclose(q[:, r], np.quantile(d, probs), rtol=0, atol=1e-13)
    ones = np.ones((200, 1), dtype=np.uint8)
    assert weighted_quantiles(v, ones, [0.5])[0, 0] == np.nanmedian(v)
    assert np.isnan(weighted_quantiles(np.full(5, np.nan), np.ones((5, 2), np.uint8), [0.5])).all()
    zero = np.zeros((3, 1), dtype=np.uint8)
    assert np.isnan(weighted_quantiles(np.arange(3.0), zero, [0.5])[0, 0])


def test_d_prime_interval_is_d_prime_of_the_mauc_interval_never_interpolated_inf():
    from audiobench.metrics.tagging import d_prime

    # 1000 resample mAUCs, the 25 largest exactly 1 (d' = inf): the 97.5th percentile lies between
    # a finite value and 1, so the old rule (percentiles of d' itself) interpolated towards +inf
    rng = np.random.default_rng(12)
    mauc = np.r_[rng.uniform(0.98, 0.999, 975), np.ones(25)]
    with np.errstate(invalid="ignore"):
        old = percentile_ci(d_prime(mauc))
    assert old[1] == math.inf
    lo, hi = percentile_ci(mauc)
    assert hi < 1.0 and d_prime_ci((lo, hi)) == (float(d_prime(lo)), float(d_prime(hi)))
    assert math.isfinite(d_prime_ci((lo, hi))[1])
    # an interval end at exactly mAUC 1: halfway to the data's largest mAUC below 1, unless the
    # point estimate itself is 1 (then d' is +inf and so is the interval's end)
    assert d_prime_ci((0.9, 1.0)) == (float(d_prime(0.9)), math.inf)
    assert d_prime_ci((0.9, 1.0), resolution=0.002, point=0.99) == (float(d_prime(0.9)), float(d_prime(0.999)))
    assert d_prime_ci((0.0, 0.4), resolution=0.002, point=0.2) == (float(d_prime(0.001)), float(d_prime(0.4)))
    assert d_prime_ci((0.95, 1.0), resolution=0.002, point=1.0)[1] == math.inf
    # bootstrap_tagging applies the same rule; a near-perfect tagger on few clips: many resamples
    # rank every class perfectly (mAUC 1), the interval still ends at a finite d'
    targets = rng.random((40, 3)) < 0.3
    targets[0], targets[1] = True, False
    scores = targets * 2.0 + rng.normal(0, 0.8, size=targets.shape)
    ci = bootstrap_tagging(scores, targets, n_resamples=300, seed=0)
    assert all(math.isfinite(v) for v in ci["d_prime"])
    scores = targets * 5.0 + rng.normal(0, 0.5, size=targets.shape)
    scores[2] = np.where(targets[2], 0.0, 5.0)  # clip 2 misranked in every class: mAUC < 1
    point = tagging_metrics(scores, targets)["mAUC"]
    ci = bootstrap_tagging(scores, targets, n_resamples=300, seed=0)
    assert point < 1.0 and ci["mAUC"][1] == 1.0 and math.isfinite(ci["d_prime"][1])
    from audiobench.metrics.tagging import mauc_resolution

    assert ci["d_prime"][1] == float(d_prime(1.0 - mauc_resolution(targets) / 2))
    assert ci["d_prime"][0] <= tagging_metrics(scores, targets)["d_prime"] <= ci["d_prime"][1]
