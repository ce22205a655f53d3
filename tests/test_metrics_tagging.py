"""Tagging metrics: hand-computed values, equality with scikit-learn, invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from audiobench.metrics import METRICS
from audiobench.metrics.tagging import (
    ap_auc_per_class,
    average_precision_per_class,
    d_prime,
    roc_auc_per_class,
    tagging_metrics,
    tagging_per_clip,
    top_k_hits,
)


def _random_case(seed=0, n=300, c=15, decimals=1):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(n, c)), decimals)  # rounding -> many ties
    targets = rng.random((n, c)) < 0.15
    targets[:, 2] = False  # no positive
    targets[:, 3] = True  # no negative
    targets[:5, 4] = True  # a class with few positives
    targets[5:, 4] = False
    return scores, targets


def _sklearn_per_class(scores, targets):
    c = scores.shape[1]
    ap = np.full(c, np.nan)
    auc = np.full(c, np.nan)
    for j in range(c):
        y = targets[:, j]
        if y.any():
            ap[j] = average_precision_score(y, scores[:, j])
            if not y.all():
                auc[j] = roc_auc_score(y, scores[:, j])
    return ap, auc


def test_hand_computed_ap_auc():
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    targets = np.array([[1], [0], [1], [0]], dtype=bool)
    # AP = 1/2 * 1/1 + 1/2 * 2/3 ; AUC: 3 of the 4 (pos, neg) pairs ordered correctly
    assert average_precision_per_class(scores, targets)[0] == pytest.approx(0.5 + 1 / 3, abs=1e-15)
    assert roc_auc_per_class(scores, targets)[0] == pytest.approx(0.75, abs=1e-15)


def test_hand_computed_ties():
    # a positive tied with a negative at the top: one threshold holding both
    scores = np.array([[0.5], [0.5], [0.2]])
    targets = np.array([[1], [0], [1]], dtype=bool)
    # thresholds 0.5: TP 1 FP 1 (P 1/2, dR 1/2); 0.2: TP 2 FP 1 (P 2/3, dR 1/2)
    assert average_precision_per_class(scores, targets)[0] == pytest.approx(0.25 + 1 / 3, abs=1e-15)
    # pairs: (0.5 vs 0.5) tie = 1/2, (0.2 vs 0.5) = 0  -> 0.5 / 2
    assert roc_auc_per_class(scores, targets)[0] == pytest.approx(0.25, abs=1e-15)


@pytest.mark.parametrize("seed,decimals", [(0, 1), (1, 0), (2, 6)])
def test_equals_sklearn_per_class_with_ties(seed, decimals):
    scores, targets = _random_case(seed, decimals=decimals)
    ap, auc = ap_auc_per_class(scores, targets)
    ap_ref, auc_ref = _sklearn_per_class(scores, targets)
    np.testing.assert_array_equal(np.isnan(ap), np.isnan(ap_ref))
    np.testing.assert_array_equal(np.isnan(auc), np.isnan(auc_ref))
    np.testing.assert_allclose(ap, ap_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(auc, auc_ref, rtol=0, atol=1e-10)
    assert np.isnan(ap[2]) and np.isnan(auc[2]) and np.isnan(auc[3]) and not np.isnan(ap[3])


def test_float32_scores_equal_sklearn():
    scores, targets = _random_case(3, decimals=3)
    s32 = scores.astype(np.float32)
    ap, auc = ap_auc_per_class(s32, targets)
    ap_ref, auc_ref = _sklearn_per_class(s32, targets)
    np.testing.assert_allclose(ap, ap_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(auc, auc_ref, rtol=0, atol=1e-10)


def test_tagging_metrics_means_and_counts():
    scores, targets = _random_case(4)
    m = tagging_metrics(scores, targets)
    ap_ref, auc_ref = _sklearn_per_class(scores, targets)
    assert m["mAP"] == pytest.approx(np.nanmean(ap_ref), abs=1e-10)
    assert m["mAUC"] == pytest.approx(np.nanmean(auc_ref), abs=1e-10)
    assert m["d_prime"] == pytest.approx(math.sqrt(2) * norm.ppf(m["mAUC"]), abs=1e-12)
    assert m["n_classes"] == int((~np.isnan(ap_ref)).sum()) == scores.shape[1] - 1
    assert m["n_classes_auc"] == scores.shape[1] - 2
    assert m["n_clips"] == scores.shape[0] and m["nonfinite_clips"] == 0


def test_d_prime_monotone_and_anchor():
    auc = np.linspace(0.01, 0.99, 99)
    d = d_prime(auc)
    assert np.all(np.diff(d) > 0)
    assert d_prime(0.5) == 0.0
    assert d_prime(0.76) == pytest.approx(math.sqrt(2) * 0.7063, abs=1e-3)
    assert np.isnan(d_prime(np.nan))


def test_top_k_hits_hand():
    scores = np.array(
        [
            [5.0, 4, 3, 2, 1, 0, -1],  # true 0: top-1 hit
            [5.0, 4, 3, 2, 1, 0, -1],  # true 4: 5th -> top-5 hit only
            [5.0, 4, 3, 2, 1, 0, -1],  # true 5: 6th -> no hit
            [1.0, 1, 1, 1, 1, 1, 1],  # constant output: ties count against -> no hit
            [0.0, 0, 0, 0, 0, 0, 0],  # no label -> NaN
        ]
    )
    targets = np.zeros_like(scores, dtype=bool)
    targets[0, 0] = targets[1, 4] = targets[2, 5] = targets[3, 0] = True
    np.testing.assert_array_equal(top_k_hits(scores, targets, 1)[:4], [1, 0, 0, 0])
    np.testing.assert_array_equal(top_k_hits(scores, targets, 5)[:4], [1, 1, 0, 0])
    assert np.isnan(top_k_hits(scores, targets, 1)[4])
    m = tagging_metrics(scores, targets)
    assert m["top1_hit_rate"] == 0.25 and m["top5_hit_rate"] == 0.5 and m["n_labelled_clips"] == 4


def test_two_true_labels_tied_at_top_is_a_hit():
    scores = np.array([[3.0, 3.0, 1.0]])
    targets = np.array([[True, True, False]])
    assert top_k_hits(scores, targets, 1)[0] == 1.0


def test_invariant_to_clip_and_class_order():
    scores, targets = _random_case(5)
    rng = np.random.default_rng(9)
    perm = rng.permutation(scores.shape[0])
    m1 = tagging_metrics(scores, targets)
    m2 = tagging_metrics(scores[perm], targets[perm])
    for k in m1:
        assert m1[k] == pytest.approx(m2[k], abs=1e-14), k
    cperm = rng.permutation(scores.shape[1])
    ap1, auc1 = ap_auc_per_class(scores, targets)
    ap2, auc2 = ap_auc_per_class(scores[:, cperm], targets[:, cperm])
    np.testing.assert_array_equal(ap1[cperm], ap2)
    np.testing.assert_array_equal(auc1[cperm], auc2)


def test_nonfinite_clips_excluded_and_counted():
    scores, targets = _random_case(6)
    bad = scores.copy()
    bad[3, 1] = np.nan
    bad[10, 0] = np.inf
    keep = np.ones(len(bad), bool)
    keep[[3, 10]] = False
    m = tagging_metrics(bad, targets)
    ref = tagging_metrics(scores[keep], targets[keep])
    assert m["nonfinite_clips"] == 2 and m["n_clips"] == len(bad) - 2
    for k in ("mAP", "mAUC", "d_prime", "top1_hit_rate", "top5_hit_rate"):
        assert m[k] == ref[k]
    per = tagging_per_clip(bad, targets)
    assert per["nonfinite"][3] and per["nonfinite"][10] and np.isnan(per["top1_hit"][3])


def test_degenerate_inputs_give_nan_not_errors():
    m = tagging_metrics(np.full((3, 4), np.nan), np.ones((3, 4), bool))
    assert m["nonfinite_clips"] == 3 and math.isnan(m["mAP"]) and math.isnan(m["top1_hit_rate"])
    m = tagging_metrics(np.zeros((4, 3)), np.zeros((4, 3), bool))
    assert math.isnan(m["mAP"]) and m["n_classes"] == 0


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        tagging_metrics(np.zeros((3, 4)), np.zeros((3, 5), bool))


def test_registry_keeps_old_names_or_lists_them_as_retired():
    """Every metrics.csv name of earlier versions is either still registered or listed, with what
    to read instead, in CHANGED_NAMES (the docs/metrics.md table of renamed and retired names)."""
    from audiobench.metrics.definitions import CHANGED_NAMES

    old = """mAP mAUC d_prime top1_hit_rate top5_hit_rate kl_mean js_mean entropy_delta_mean
    top1_flip_rate top5_jaccard_mean spearman_mean abs_dp_mean true_label_drop_rate snr_db_mean
    nonfinite_clips bad_input_clips min_eps_median min_eps_q25 min_eps_q75""".split()
    listed = {n.strip() for key in CHANGED_NAMES for n in key.split(",")}
    for n in old:
        assert n in METRICS or n in listed, n
        if n not in METRICS:
            assert n in listed, n
    for n in ("entropy_delta_mean", "spearman_mean", "abs_dp_mean"):
        assert n not in METRICS and n in listed  # retired deliberately
    for n in ("kl_mean", "js_mean"):
        assert n in METRICS and n in listed  # kept, with a changed (documented) definition


# -- single-label data ------------------------------------------------------------------------------
def _single_label_case(seed=0, n=60, c=8):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c - 1, size=n)  # class c-1 is never a label
    targets = np.zeros((n, c), dtype=bool)
    targets[np.arange(n), labels] = True
    scores = np.round(rng.normal(size=(n, c)) + 1.5 * targets, 1)
    return scores, targets, labels


def test_is_single_label():
    from audiobench.metrics.tagging import is_single_label

    assert is_single_label(np.eye(3, dtype=bool))
    assert not is_single_label(np.array([[1, 1, 0], [0, 1, 0]], dtype=bool))
    assert not is_single_label(np.array([[0, 0, 0], [0, 1, 0]], dtype=bool))
    assert not is_single_label(np.zeros((0, 3), dtype=bool))


def test_single_label_metrics_equal_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

    from audiobench.metrics.tagging import single_label_metrics

    for seed in range(3):
        scores, targets, labels = _single_label_case(seed)
        m = single_label_metrics(scores, targets)
        pred = np.argmax(scores, axis=1)
        present = sorted(set(labels))
        assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-15)
        assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, labels=present, average="macro",
                                                       zero_division=0), abs=1e-12)
        # distinct scores -> no tie question: top-5 accuracy is scikit-learn's
        d = scores + np.arange(scores.shape[1]) * 1e-9
        assert single_label_metrics(d, targets)["top5_accuracy"] == pytest.approx(
            top_k_accuracy_score(labels, d, k=5, labels=np.arange(scores.shape[1])), abs=1e-15)


def test_single_label_hand_computed():
    from audiobench.metrics.tagging import single_label_metrics

    # 3 classes; labels 0, 0, 1, 2; predictions (argmax) 0, 1, 1, 1
    scores = np.array([[3.0, 1, 0], [1.0, 3, 0], [0.0, 3, 1], [0.0, 3, 1]])
    targets = np.zeros((4, 3), dtype=bool)
    targets[[0, 1, 2, 3], [0, 0, 1, 2]] = True
    m = single_label_metrics(scores, targets)
    assert m["accuracy"] == 0.5
    # F1: class 0: TP 1, P 2, PP 1 -> 2/3; class 1: TP 1, P 1, PP 3 -> 1/2; class 2: 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert m["top5_accuracy"] == 1.0  # 3 classes: the label is always within the top 5
    # argmax ties go to the lowest index (the documented decision rule)
    tie = np.array([[1.0, 1.0, 0.0]])
    assert single_label_metrics(tie, np.array([[False, True, False]]))["accuracy"] == 0.0


def test_mauc_resolution_is_one_misordered_pair_in_the_largest_class():
    from audiobench.metrics.tagging import mauc_resolution

    t = np.zeros((10, 3), bool)
    t[:2, 0] = True  # 2 x 8 pairs
    t[:5, 1] = True  # 5 x 5 pairs (the most)
    t[:, 2] = True  # no negative: not in the mAUC
    assert mauc_resolution(t) == 1 / (2 * 25)
    # the step it describes: swap one pair in class 1 of a perfect ranking
    scores = t * 1.0 + np.linspace(0, 0.1, 10)[:, None]
    scores[4, 1], scores[5, 1] = 0.5, 0.6  # positive 4 just below negative 5, all else in order
    assert tagging_metrics(scores, t)["mAUC"] == pytest.approx(1 - mauc_resolution(t))
    assert math.isnan(mauc_resolution(np.ones((3, 2), bool)))
