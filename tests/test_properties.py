"""Property-based tests (hypothesis) of the metrics side; perturbation properties are in
tests/test_perturb_properties.py.

The example-based tests in tests/test_metrics_*.py check hand-computed values and seeded random
cases; these search small, tie-heavy and degenerate inputs (one clip, classes with no positive or
no negative, NaN rows) for counter-examples to the invariants:

* every metric of a condition (the engine's aggregation, non-finite rows and bad-input clips
  included) is invariant to the order of the clips, and per-clip columns move with their clip;
* d′ is strictly increasing in mAUC (and antisymmetric about AUC 0.5);
* per-class AP/AUC equal scikit-learn, and mAP/mAUC are their means over the defined classes;
* AP, AUC and top-k hits depend on the scores' order only (the engine scores sigmoid(logits));
* the per-clip shift statistics stay in their documented ranges (JS <= 1 bit, clipped KL, rank
  correlations in [-1, 1], fractions in [0, 1]) and vanish for identical outputs;
* a bootstrap median / percentile is the quantile of the duplicated clips it weights.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from audiobench.metrics.condition import condition_metrics, sigmoid
from audiobench.metrics.tagging import ap_auc_per_class, d_prime, tagging_metrics, top_k_hits

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tagging_case(draw, min_clips=1, max_clips=12, max_classes=6, nan_rows=True):
    """(logits on a coarse grid -> many ties, bool targets, seed) for n clips × c classes."""
    n = draw(st.integers(min_clips, max_clips))
    c = draw(st.integers(1, max_classes))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    levels = draw(st.integers(2, 9))  # few distinct values: ties everywhere
    logits = rng.integers(-levels, levels + 1, size=(n, c)).astype(np.float64) / 2.0
    density = draw(st.sampled_from([0.0, 0.2, 0.5, 1.0]))
    targets = rng.random((n, c)) < density
    if nan_rows and n > 1 and draw(st.booleans()):
        logits[rng.integers(n), rng.integers(c)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return logits, targets, seed


def _same(a, b) -> bool:
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b or abs(a - b) <= 1e-12 * max(1.0, abs(a))


@SETTINGS
@given(case=tagging_case(), data=st.data())
def test_condition_metrics_invariant_to_clip_order(case, data):
    pert, targets, seed = case
    rng = np.random.default_rng(seed + 1)
    clean = pert + rng.integers(-2, 3, size=pert.shape) / 2.0
    clean[~np.isfinite(clean)] = 0.0
    valid = rng.random(len(pert)) < 0.85  # clips flagged bad_input are left out
    perm = np.asarray(data.draw(st.permutations(range(len(pert)))))
    a = condition_metrics(clean, pert, targets, n_boot=0, seed=0, valid=valid)
    b = condition_metrics(clean[perm], pert[perm], targets[perm], n_boot=0, seed=0, valid=valid[perm])
    assert a["n_clips"] == b["n_clips"] and a["n_classes"] == b["n_classes"]
    assert a["rows"].keys() == b["rows"].keys()
    for name in a["rows"]:
        assert _same(a["rows"][name]["value"], b["rows"][name]["value"]), name
    np.testing.assert_allclose(a["ap"], b["ap"], rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(a["auc"], b["auc"], rtol=1e-12, equal_nan=True)
    for k, col in a["per_clip"].items():  # per-clip columns follow their clip
        np.testing.assert_allclose(col[perm], b["per_clip"][k], rtol=1e-12, atol=1e-15, equal_nan=True, err_msg=k)
    assert a["rows"]["nonfinite_clips"]["value"] == (valid & ~np.isfinite(pert).all(axis=1)).sum()


@SETTINGS
@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_d_prime_monotone_in_auc(a, b):
    lo, hi = min(a, b), max(a, b)
    assert d_prime(lo) <= d_prime(hi)
    if hi - lo > 1e-12:
        assert d_prime(lo) < d_prime(hi)
    if 1e-6 < a < 1 - 1e-6:  # (1 - a is exact enough to compare)
        assert abs(d_prime(1.0 - a) + d_prime(a)) < 1e-6
    assert d_prime(0.5) == 0.0 and d_prime(1.0) == math.inf and d_prime(0.0) == -math.inf


@SETTINGS
@given(case=tagging_case(min_clips=2, nan_rows=False))
def test_d_prime_of_tagging_metrics_is_that_of_its_mauc(case):
    logits, targets, _ = case
    m = tagging_metrics(sigmoid(logits), targets)
    assert _same(m["d_prime"], d_prime(m["mAUC"]))


@SETTINGS
@given(case=tagging_case(min_clips=2, nan_rows=False), data=st.data())
def test_improving_one_positive_never_lowers_mauc_or_d_prime(case, data):
    """Raising a positive clip's score (or lowering a negative's) can only raise AUC, hence d′."""
    scores, targets, _ = case
    if not (targets.any(axis=0) & ~targets.all(axis=0)).any():
        return
    i = data.draw(st.integers(0, len(scores) - 1))
    better = scores.copy()
    better[i] = np.where(targets[i], scores[i] + 1.0, scores[i] - 1.0)
    m0, m1 = tagging_metrics(scores, targets), tagging_metrics(better, targets)
    assert m1["mAUC"] >= m0["mAUC"] - 1e-12 and m1["d_prime"] >= m0["d_prime"] - 1e-9


@SETTINGS
@given(case=tagging_case(min_clips=1, nan_rows=False))
def test_ap_auc_equal_sklearn_on_tie_heavy_small_inputs(case):
    logits, targets, _ = case
    ap, auc = ap_auc_per_class(logits, targets)
    for j in range(targets.shape[1]):
        y = targets[:, j]
        if not y.any():
            assert np.isnan(ap[j]) and np.isnan(auc[j])
            continue
        assert abs(ap[j] - average_precision_score(y, logits[:, j])) < 1e-12
        if y.all():
            assert np.isnan(auc[j])
        else:
            assert abs(auc[j] - roc_auc_score(y, logits[:, j])) < 1e-12
    m = tagging_metrics(logits, targets)
    assert _same(m["mAP"], np.nanmean(ap) if (~np.isnan(ap)).any() else np.nan)
    assert _same(m["mAUC"], np.nanmean(auc) if (~np.isnan(auc)).any() else np.nan)


@SETTINGS
@given(case=tagging_case(nan_rows=False), scale=st.sampled_from([0.25, 1.0, 3.0, 8.0]), shift=st.integers(-5, 5))
def test_metrics_depend_on_score_order_only(case, scale, shift):
    """sigmoid, or any increasing map, of the logits gives the same AP, AUC and top-k hits."""
    logits, targets, _ = case
    ref = tagging_metrics(logits, targets)
    for scores in (sigmoid(logits), logits * scale + shift, np.exp(logits)):
        m = tagging_metrics(scores, targets)
        for k in ("mAP", "mAUC", "d_prime", "top1_hit_rate", "top5_hit_rate"):
            assert _same(m[k], ref[k]), k


@SETTINGS
@given(n=st.integers(1, 8), c=st.integers(1, 9), k=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_top_k_hits_equal_argsort_on_distinct_scores(n, c, k, seed):
    rng = np.random.default_rng(seed)
    scores = np.stack([rng.permutation(c) for _ in range(n)]).astype(np.float64)  # distinct per clip
    targets = rng.random((n, c)) < 0.3
    hits = top_k_hits(scores, targets, k)
    for i in range(n):
        if not targets[i].any():
            assert np.isnan(hits[i])
        else:
            top = np.argsort(-scores[i])[:k]
            assert hits[i] == float(targets[i, top].any())


@SETTINGS
@given(case=tagging_case(nan_rows=False), noise=st.sampled_from([0.0, 0.5, 3.0, 40.0]))
def test_shift_statistics_stay_in_their_documented_ranges(case, noise):
    """JS in [0, 1] bit, KL in [0, ~16.1] nats (clipped probabilities), correlations in [-1, 1],
    fractions in [0, 1]; identical outputs give no shift."""
    from audiobench.metrics.shift import shift_statistics

    clean, targets, seed = case
    rng = np.random.default_rng(seed)
    pert = clean + noise * rng.integers(-3, 4, size=clean.shape)
    s = shift_statistics(clean, pert, targets)

    def within(name, lo, hi):
        v = s[name][~np.isnan(s[name])]
        assert np.all((v >= lo) & (v <= hi)), (name, v)

    within("js", 0.0, 1.0)
    within("kl", 0.0, 16.2)
    for name in ("top10_spearman", "top10_kendall"):
        within(name, -1.0, 1.0)
    for name in ("top5_jaccard", "top1_retention", "top5_retention", "true_label_drop", "brier"):
        within(name, 0.0, 1.0)
    within("false_alarm_new", 0, clean.shape[1])
    same = shift_statistics(clean, clean, targets)
    for name in ("kl", "js", "false_alarm_new", "max_score_change"):
        assert np.all(same[name] == 0), name
    labelled = targets.any(axis=1)
    assert np.all(same["true_rank_change"][labelled] == 0) and np.isnan(same["true_rank_change"][~labelled]).all()


@SETTINGS
@given(n=st.integers(1, 30), r=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       prob=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]))
def test_weighted_quantile_is_the_quantile_of_the_duplicated_clips(n, r, seed, prob):
    from audiobench.metrics.bootstrap import weighted_quantiles

    rng = np.random.default_rng(seed)
    v = rng.integers(-3, 4, size=n).astype(np.float64)  # ties
    v[rng.random(n) < 0.2] = np.nan
    counts = rng.integers(0, 3, size=(n, r)).astype(np.uint8)
    q = weighted_quantiles(v, counts, [prob])[0]
    for k in range(r):
        d = np.repeat(v, counts[:, k])
        d = d[~np.isnan(d)]
        assert (math.isnan(q[k]) and not d.size) or abs(q[k] - np.quantile(d, prob)) < 1e-12
