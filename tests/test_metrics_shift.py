"""Output-shift statistics: hand-computed values, scipy references, and the constructions that broke
the old single-label definitions (issue 14): a uniform drop of every score, true labels pushed to
0.01, one outlier clip, top-1 flips between two wrong classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logit
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import average_precision_score

from audiobench.metrics.definitions import PER_CLIP_COLUMNS, STATISTICS
from audiobench.metrics.shift import (
    SHIFT_SUMMARY,
    delta_ap_per_class,
    linear_quantile,
    score_histogram,
    shift_statistics,
    summarise_shift,
)


def _bkl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _bjs_bits(p, q):
    m = (p + q) / 2
    return (0.5 * _bkl(p, m) + 0.5 * _bkl(q, m)) / math.log(2)


def _sig(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def test_columns_follow_the_registry():
    s = shift_statistics(np.zeros((2, 3)), np.ones((2, 3)), np.eye(2, 3, dtype=bool))
    assert list(s) == PER_CLIP_COLUMNS + ["nonfinite"] and set(PER_CLIP_COLUMNS) == set(STATISTICS)
    assert set(SHIFT_SUMMARY) == {n for st in STATISTICS.values() for n in st.summary_names.values()}


def test_identical_inputs_give_exactly_no_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 527)) * 4
    t = rng.random((50, 527)) < 0.01
    t[:, 0] = True
    s = shift_statistics(x, x.copy(), t)
    for k in ("kl", "js", "js_normalised", "top1_flip", "true_dp", "true_dlogit", "true_rank_change",
              "false_alarm_new", "max_false_dp", "max_score_change"):
        assert np.all(s[k] == 0.0), k
    for k in ("top5_jaccard", "top10_spearman", "top10_kendall"):
        assert np.all(s[k] == 1.0), k
    for k in ("top1_retention", "top5_retention"):
        v = s[k][~np.isnan(s[k])]
        assert v.size and np.all(v == 1.0), k
    assert np.all(s["true_label_drop"][~np.isnan(s["true_label_drop"])] == 0.0)
    summ = summarise_shift(s)
    assert summ["kl_mean"] == summ["kl_median"] == summ["kl_p90"] == 0 and summ["top1_flip_rate"] == 0
    assert summ["top10_spearman_mean"] == 1


def test_hand_computed_two_classes():
    clean = np.array([[0.0, 0.0]])  # p = (1/2, 1/2)
    pert = np.array([[math.log(3), -math.log(3)]])  # q = (3/4, 1/4)
    t = np.array([[True, False]])
    s = shift_statistics(clean, pert, t)
    # per-class Bernoulli divergences, averaged over the 2 classes
    assert s["kl"][0] == pytest.approx((_bkl(0.5, 0.75) + _bkl(0.5, 0.25)) / 2, abs=1e-14)
    assert s["js"][0] == pytest.approx((_bjs_bits(0.5, 0.75) + _bjs_bits(0.5, 0.25)) / 2, abs=1e-14)
    a, b = np.array([0.5, 0.5]), np.array([0.75, 0.25])
    m = (a + b) / 2
    assert s["js_normalised"][0] == pytest.approx(0.5 * np.sum(a * np.log(a / m)) + 0.5 * np.sum(b * np.log(b / m)),
                                                  abs=1e-14)
    assert s["top1_flip"][0] == 0.0  # argmax on ties: class 0 both times
    # the true label went 0.5 -> 0.75 (logit 0 -> ln 3), and from rank 1.5 (tie) to 1
    assert s["true_dp"][0] == pytest.approx(0.25) and s["true_dlogit"][0] == pytest.approx(math.log(3))
    assert s["true_rank_change"][0] == -0.5
    assert s["true_label_drop"][0] == 0.0 and s["top1_retention"][0] == 1.0
    # the non-true class 0.5 -> 0.25: no new false alarm, largest non-true score -0.25
    assert s["false_alarm_new"][0] == 0 and s["max_false_dp"][0] == pytest.approx(-0.25)
    assert s["max_score_change"][0] == pytest.approx(0.25)
    assert s["brier"][0] == pytest.approx(((0.75 - 1) ** 2 + 0.25**2) / 2)
    assert np.isnan(s["top10_spearman"][0])  # clean constant over the union


def test_hand_computed_rankings_7_classes():
    clean = np.array([[7.0, 6, 5, 4, 3, 2, 1], [7.0, 6, 5, 4, 3, 2, 1], [1.0, 2, 2, 3, 0, 0, 5]])
    pert = np.array([[1.0, 2, 3, 4, 5, 6, 7], [7.0, 6, 5, 4, 3, 1, 2], [2.0, 2, 1, 3, 0, 1, 4]])
    t = np.zeros((3, 7), bool)
    s = shift_statistics(clean, pert, t)
    np.testing.assert_array_equal(s["top1_flip"], [1, 0, 0])
    # clip 0: top5 {0..4} vs {2..6}: 3 shared of 7; clip 1: same top 5
    assert s["top5_jaccard"][0] == pytest.approx(3 / 7, abs=1e-15) and s["top5_jaccard"][1] == 1.0
    # fewer than 10 classes: the union is every class, so these are the ordinary correlations
    assert s["top10_spearman"][0] == pytest.approx(-1.0, abs=1e-12) and s["top10_kendall"][0] == pytest.approx(-1.0)
    for i in range(3):  # ties in clip 2: average ranks / tau-b, as scipy
        assert s["top10_spearman"][i] == pytest.approx(spearmanr(clean[i], pert[i]).statistic, abs=1e-12)
        assert s["top10_kendall"][i] == pytest.approx(kendalltau(clean[i], pert[i]).statistic, abs=1e-12)
    for k in ("true_dp", "true_rank_change", "top1_retention", "top5_retention", "true_label_drop"):
        assert np.all(np.isnan(s[k])), k  # no true labels


def test_top10_union_correlations_equal_scipy_on_the_union_with_ties():
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(size=(40, 60)), 0)  # heavy ties
    y = np.round(x + rng.normal(size=(40, 60)), 0)
    s = shift_statistics(x, y, np.zeros((40, 60), bool))
    for i in range(40):
        u = sorted(set(np.argsort(-x[i], kind="stable")[:10]) | set(np.argsort(-y[i], kind="stable")[:10]))
        assert s["top10_spearman"][i] == pytest.approx(spearmanr(_sig(x[i, u]), _sig(y[i, u])).statistic, abs=1e-12)
        assert s["top10_kendall"][i] == pytest.approx(kendalltau(_sig(x[i, u]), _sig(y[i, u])).statistic, abs=1e-12)
        top_x, top_y = set(np.argsort(-x[i], kind="stable")[:5]), set(np.argsort(-y[i], kind="stable")[:5])
        assert s["top5_jaccard"][i] == pytest.approx(len(top_x & top_y) / len(top_x | top_y))


def test_true_label_statistics_hand_computed():
    # 6 classes; clip 0: labels {0, 2}; clip 1: label {5}; clip 2: no label
    clean = np.array([[3.0, 2.0, 1.0, -1.0, -2.0, -3.0],
                      [3.0, 2.0, 1.0, -1.0, -2.0, 0.5],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    pert = np.array([[-2.5, 2.0, 1.0, 0.2, -2.0, -3.0],   # label 0 falls from rank 1 to 5; class 3 rises over 0.5
                     [3.0, 2.0, 1.0, -1.0, -2.0, -1.5],   # label 5 falls below 0.5, rank 4 -> 5
                     [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    t = np.zeros((3, 6), bool)
    t[0, [0, 2]] = True
    t[1, 5] = True
    s = shift_statistics(clean, pert, t)
    # clip 0: ranks clean label0 1, label2 3; perturbed: order 1(2.0), 2(1.0), 3(0.2), 4(-2), 0(-2.5), 5(-3)
    assert s["true_rank_change"][0] == pytest.approx(((5 - 1) + (2 - 3)) / 2)
    assert s["true_dlogit"][0] == pytest.approx((-5.5 + 0) / 2)
    assert s["true_dp"][0] == pytest.approx(((_sig(-2.5) - _sig(3.0)) + 0) / 2)
    assert s["top1_retention"][0] == 0.0  # label 0 was top-1 and lost it
    assert s["top5_retention"][0] == 1.0  # labels 0 and 2 in the clean top 5; label 0 still 5th
    assert s["true_label_drop"][0] == 0.5  # both >= 0.5 clean; label 0 dropped below
    assert s["false_alarm_new"][0] == 1  # class 3: -1 -> 0.2
    assert s["max_false_dp"][0] == pytest.approx(0.0)  # class 1 stays the largest non-true score
    # clip 1: label 5 rank 4 -> 5 (0.5 -> -0.5), not top-1 clean, in the top 5 clean and perturbed
    assert s["true_rank_change"][1] == 1.0 and np.isnan(s["top1_retention"][1]) and s["top5_retention"][1] == 1.0
    assert s["true_label_drop"][1] == 1.0 and s["false_alarm_new"][1] == 0
    for k in ("true_dp", "true_dlogit", "true_rank_change", "top1_retention", "top5_retention", "true_label_drop"):
        assert np.isnan(s[k][2]), k  # no label
    assert s["false_alarm_new"][2] == 0 and s["max_false_dp"][2] == 0.0


def test_top5_retention_counts_labels_leaving_the_top5():
    clean = np.array([[5.0, 4, 3, 2, 1, 0, -1, -2]])
    pert = np.array([[5.0, -3, 3, 2, 1, 0, -1, -2]])  # label 1 leaves the top 5
    t = np.zeros((1, 8), bool)
    t[0, [1, 3]] = True
    s = shift_statistics(clean, pert, t)
    # label 1: rank 2 -> 8; label 3: rank 4 -> 3
    assert s["top5_retention"][0] == 0.5 and s["true_rank_change"][0] == pytest.approx((6 - 1) / 2)


def test_max_false_dp_undefined_when_every_class_is_true():
    s = shift_statistics(np.zeros((1, 3)), np.ones((1, 3)), np.ones((1, 3), bool))
    assert np.isnan(s["max_false_dp"][0]) and s["false_alarm_new"][0] == 0


def test_kl_of_saturated_scores_is_clipped_not_infinite():
    clean = np.array([[60.0, -60.0]])
    pert = np.array([[-60.0, 60.0]])
    s = shift_statistics(clean, pert, np.zeros((1, 2), bool))
    e = 1e-7
    assert s["kl"][0] == pytest.approx(_bkl(1 - e, e), rel=1e-9)  # the mean of two equal terms
    assert s["kl"][0] < 16.2
    assert s["js"][0] == pytest.approx(1.0, abs=1e-12)  # JS of two opposite certainties: 1 bit
    assert np.isfinite(s["js_normalised"][0]) and s["js_normalised"][0] <= math.log(2) + 1e-12


def test_js_is_bounded_by_one_bit_and_symmetric():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 20)) * 10
    y = rng.normal(size=(30, 20)) * 10
    t = np.zeros((30, 20), bool)
    a, b = shift_statistics(x, y, t), shift_statistics(y, x, t)
    assert np.all((a["js"] >= 0) & (a["js"] <= 1))
    np.testing.assert_allclose(a["js"], b["js"], rtol=1e-12)
    p, q = _sig(x), _sig(y)
    m = (p + q) / 2

    def kl2(u, v):
        return u * np.log2(u / v) + (1 - u) * np.log2((1 - u) / (1 - v))

    ref = (0.5 * kl2(p, m) + 0.5 * kl2(q, m)).mean(axis=1)
    np.testing.assert_allclose(a["js"], ref, rtol=1e-9, atol=1e-15)


# -- the constructions that broke the old definitions -----------------------------------------------
def _real_like(seed=0, n=20, c=527):
    """Clean logits like a tagger's: most classes far below 0, the true labels high."""
    rng = np.random.default_rng(seed)
    t = np.zeros((n, c), bool)
    for i in range(n):
        t[i, rng.choice(c, size=1 + i % 2, replace=False)] = True
    x = rng.normal(-6, 1.5, size=(n, c))
    x[t] = rng.uniform(1.0, 4.0, size=t.sum())
    return x, t


def test_uniform_halving_of_every_score_is_seen():
    x, t = _real_like()
    y = logit(_sig(x) / 2)  # every score halved: the sum-normalised vectors do not change
    s = shift_statistics(x, y, t)
    assert np.all(s["js"] > 1e-4) and np.all(s["kl"] > 1e-3)
    np.testing.assert_allclose(s["js_normalised"], 0.0, atol=1e-12)  # why the old js_mean is retired
    assert np.all(s["true_dp"] < -0.3)
    assert np.nanmean(s["true_label_drop"]) == 1.0  # every label above 0.5 (they are in 0.73-0.98) falls below
    assert np.all(s["top10_spearman"] == 1.0) and np.all(s["true_rank_change"] == 0)  # order unchanged


def test_true_labels_pushed_to_001_move_the_rank_statistics_hard():
    x, t = _real_like(1)
    y = x.copy()
    y[t] = logit(0.01)
    s = shift_statistics(x, y, t)
    assert np.all(s["true_rank_change"] > 5)  # from the top to below the bulk's upper tail
    # a label moved from the top to the bottom of the ~11-class union: rho <= 0.5 (0.5 for one label)
    assert np.all(s["top10_spearman"] <= 0.5 + 1e-12) and np.all(s["top5_retention"] == 0)
    assert np.all(s["top1_retention"][~np.isnan(s["top1_retention"])] == 0)
    # the retired all-class Spearman barely moves on the same construction
    rho_all = [spearmanr(x[i], y[i]).statistic for i in range(len(x))]
    assert min(rho_all) > 0.99


def test_one_outlier_clip_moves_the_mean_not_the_median():
    x, t = _real_like(2)
    rng = np.random.default_rng(4)
    y = x + rng.normal(0, 0.1, size=x.shape)
    y_out = y.copy()
    y_out[0] = -x[0]  # one clip's output turned inside out
    a, b = summarise_shift(shift_statistics(x, y, t)), summarise_shift(shift_statistics(x, y_out, t))
    assert b["kl_mean"] > 5 * a["kl_mean"]
    assert b["kl_median"] == pytest.approx(a["kl_median"], rel=0.2)
    assert b["js_median"] == pytest.approx(a["js_median"], rel=0.2)


def test_flips_between_wrong_classes_are_not_true_label_changes():
    # clip 0: a wrong class on top clean (class 1), another wrong class on top perturbed (class 2);
    # the true label (class 0) keeps its score and rank 3
    clean = np.array([[2.0, 5.0, 4.0, -3.0, -4.0, -5.0], [5.0, 1.0, 0.0, -3.0, -4.0, -5.0]])
    pert = np.array([[2.0, 4.0, 5.0, -3.0, -4.0, -5.0], [5.0, 1.0, 0.0, -3.0, -4.0, -5.0]])
    t = np.zeros((2, 6), bool)
    t[:, 0] = True
    s = shift_statistics(clean, pert, t)
    assert s["top1_flip"][0] == 1.0  # the old statistic counts it
    assert np.isnan(s["top1_retention"][0]) and s["true_rank_change"][0] == 0 and s["true_dp"][0] == 0
    summ = summarise_shift(s)
    assert summ["top1_flip_rate"] == 0.5 and summ["top1_retention_rate"] == 1.0


# -- NaN handling and summaries --------------------------------------------------------------------
def test_nonfinite_clip_is_nan_and_ignored_in_summary():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6))
    y = x + rng.normal(size=(4, 6))
    y_bad = y.copy()
    y_bad[2, 3] = np.nan
    s = shift_statistics(x, y_bad, np.ones((4, 6), bool))
    assert s["nonfinite"][2] == 1.0 and s["nonfinite"].sum() == 1
    assert all(np.isnan(s[k][2]) for k in PER_CLIP_COLUMNS)
    keep = [0, 1, 3]
    ref = summarise_shift(shift_statistics(x[keep], y[keep], np.ones((3, 6), bool)))
    got = summarise_shift(s)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-15, nan_ok=True), k


def test_summaries_are_nan_aware_mean_median_p90():
    per = {stat: np.array([1.0, np.nan, 3.0, 10.0]) for stat in STATISTICS}
    out = summarise_shift(per)
    assert set(out) == set(SHIFT_SUMMARY)
    for name, (stat, summary) in SHIFT_SUMMARY.items():
        expect = {"mean": 14 / 3, "median": 3.0, "p90": float(np.quantile([1.0, 3.0, 10.0], 0.9))}[summary]
        assert out[name] == pytest.approx(expect), name
    per = {stat: np.array([np.nan]) for stat in STATISTICS}
    assert all(math.isnan(v) for v in summarise_shift(per).values())


def test_linear_quantile_matches_numpy_and_keeps_infinity():
    rng = np.random.default_rng(2)
    for n in (1, 2, 4, 7, 50):
        v = rng.gamma(2.0, size=n)
        for p in (0.25, 0.5, 0.75, 0.9):
            assert linear_quantile(v, p) == float(np.quantile(v, p))
    v = np.array([0.1, 0.2, np.inf, np.inf])
    assert linear_quantile(v, 0.5) == math.inf  # between 0.2 and inf
    assert linear_quantile(v, 0.25) == pytest.approx(np.quantile([0.1, 0.2, 5.0, 5.0], 0.25))
    assert linear_quantile(np.array([0.1, 0.2, 0.3, np.inf]), 0.5) == pytest.approx(0.25)
    assert linear_quantile(np.array([0.1, np.inf, np.inf]), 0.5) == math.inf
    assert linear_quantile(np.array([0.1, 0.3, np.inf]), 0.5) == 0.3  # an exact order statistic
    assert math.isnan(linear_quantile(np.array([np.nan]), 0.5))


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
