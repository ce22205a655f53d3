"""Weighted per-class average precision and ROC AUC, many weightings at once (the shared kernel).

Both the point estimates (:mod:`audiobench.metrics.tagging`, one weighting of all ones) and the
bootstrap (:mod:`audiobench.metrics.bootstrap`, one integer count per clip and resample) run
through :func:`weighted_ap_auc`, so a bootstrap "resample" of all ones gives bit-for-bit the point
estimate.

Definitions (identical to scikit-learn's ``average_precision_score`` and ``roc_auc_score`` with
``sample_weight``; a count of k is the same as the clip appearing k times):

* clips are grouped by equal score (a *tie group*); thresholds are the distinct scores, from high
  to low. With TP_g / FP_g the positive / negative weight scoring >= the score of group g,
  ``AP = sum_g (TP_g - TP_{g-1}) / P * TP_g / (TP_g + FP_g)`` with P the total positive weight
  (scikit-learn's step-wise sum, no interpolation);
* ``AUC`` = probability that a positive outscores a negative, ties counting one half (the
  trapezoidal area under scikit-learn's ROC curve), i.e. the weighted Mann-Whitney statistic;
* AP is NaN when the class has no positive weight, AUC when it has no positive or no negative
  weight.

The kernel sorts each class once (shared by all weightings) and walks the sorted clips keeping a
running positive and negative weight per weighting; a tie group is evaluated only at its last
clip, so tied scores are handled exactly as scikit-learn does. Cost is N x C x R integer adds,
vectorised over the R weightings (compiled with numba, parallel over classes).
"""

from __future__ import annotations

import numba
import numpy as np

# Flag bits of a sorted position (built by _flags_kernel):
#   1: the clip is a positive of the class
#   2: the clip's tie group holds at least one positive (only those groups are thresholds that matter)
#   4: last clip of its tie group, walking from high to low score


@numba.njit(parallel=True, cache=True, nogil=True)
def _kernel(order, flags, counts, acc, ap_out, auc_out):  # pragma: no cover - compiled
    n_classes, n = order.shape
    n_w = counts.shape[1]
    for c in numba.prange(n_classes):
        cum_pos = np.zeros(n_w, acc.dtype)
        cum_neg = np.zeros(n_w, acc.dtype)
        neg_grp = np.zeros(n_w, acc.dtype)  # negative weight inside the current positive tie group
        prev_tp = np.zeros(n_w, acc.dtype)
        ap_acc = np.zeros(n_w, np.float64)
        auc_acc = np.zeros(n_w, np.float64)  # sum_g dTP_g * (FP_g - dFP_g / 2)
        for k in range(n):
            j = order[c, k]
            f = flags[c, k]
            row = counts[j]
            if f & 1:
                for r in range(n_w):
                    cum_pos[r] += row[r]
            elif f & 2:
                for r in range(n_w):
                    cum_neg[r] += row[r]
                    neg_grp[r] += row[r]
            else:
                for r in range(n_w):
                    cum_neg[r] += row[r]
            if (f & 6) == 6:  # end of a tie group holding a positive: one threshold
                for r in range(n_w):
                    tp = cum_pos[r]
                    dtp = tp - prev_tp[r]
                    if dtp > 0:
                        fp = cum_neg[r]
                        ap_acc[r] += dtp * (tp / (tp + fp))
                        auc_acc[r] += dtp * (fp - 0.5 * neg_grp[r])
                    prev_tp[r] = tp
                    neg_grp[r] = 0
        for r in range(n_w):
            p = cum_pos[r]
            q = cum_neg[r]
            if p > 0:
                ap_out[c, r] = ap_acc[r] / p
            else:
                ap_out[c, r] = np.nan
            if p > 0 and q > 0:
                pq = float(p) * float(q)
                auc_out[c, r] = (pq - auc_acc[r]) / pq
            else:
                auc_out[c, r] = np.nan


@numba.njit(parallel=True, cache=True, nogil=True)
def _flags_kernel(s_sorted, pos, flags):  # pragma: no cover - compiled
    n_classes, n = s_sorted.shape
    for c in numba.prange(n_classes):
        k = 0
        while k < n:
            e = k  # find the tie group [k, e]
            has_pos = pos[c, k]
            while e + 1 < n and s_sorted[c, e + 1] == s_sorted[c, k]:
                e += 1
                has_pos = has_pos or pos[c, e]
            for i in range(k, e + 1):
                f = np.uint8(1) if pos[c, i] else np.uint8(0)
                if has_pos:
                    f |= np.uint8(2)
                if i == e:
                    f |= np.uint8(4)
                flags[c, i] = f
            k = e + 1


def _prepare(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: clip order by descending score (C, N) and the flag bits of each position."""
    scores = np.asarray(scores)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)  # float32 is kept: same order and ties as its float64 copy
    s = np.ascontiguousarray(scores.T)  # (C, N)
    t = np.ascontiguousarray(np.asarray(targets, dtype=bool).T)
    n = s.shape[1]
    index_dtype = np.int32 if n < 2**31 - 1 else np.int64
    # descending order; the order inside a tie group is irrelevant (groups are evaluated whole)
    order = np.argsort(-s, axis=1).astype(index_dtype, copy=False)
    s_sorted = np.take_along_axis(s, order, axis=1)
    pos = np.take_along_axis(t, order, axis=1)
    flags = np.empty(s.shape, dtype=np.uint8)
    if flags.size:
        _flags_kernel(s_sorted, pos, flags)
    return order, flags


def counts_dtype(counts: np.ndarray) -> np.dtype:
    """Smallest unsigned dtype holding the counts (uint8 in practice: fast, 1 byte per clip)."""
    top = int(counts.max()) if counts.size else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def weighted_ap_auc(
    scores: np.ndarray, targets: np.ndarray, counts_nr: np.ndarray, prepared=None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class AP and AUC under R integer weightings of the clips.

    ``scores`` (N, C) finite floats, ``targets`` (N, C) bool, ``counts_nr`` (N, R) non-negative
    integer weights, clip-major (one row of R weights per clip). Returns ``(ap, auc)``, each
    (R, C) float64, NaN where undefined (see module docstring). ``prepared`` is the output of
    :func:`_prepare` for these scores/targets, to reuse the per-class sort.
    """
    counts_nr = np.asarray(counts_nr)
    if counts_nr.ndim != 2 or counts_nr.shape[0] != scores.shape[0]:
        raise ValueError(f"counts must be (N, R) with N = {scores.shape[0]}, got {counts_nr.shape}")
    if not (np.issubdtype(counts_nr.dtype, np.integer) or counts_nr.dtype == np.bool_):
        raise TypeError(f"counts must be integers, got dtype {counts_nr.dtype}")
    if counts_nr.size and counts_nr.min() < 0:
        raise ValueError("counts must be non-negative")
    counts_nr = np.ascontiguousarray(counts_nr, dtype=counts_dtype(counts_nr))
    order, flags = _prepare(scores, targets) if prepared is None else prepared
    n_classes = order.shape[0]
    n_w = counts_nr.shape[1]
    ap = np.empty((n_classes, n_w), dtype=np.float64)
    auc = np.empty((n_classes, n_w), dtype=np.float64)
    if n_classes and order.shape[1]:
        # int32 running sums vectorise twice as wide as int64; used whenever no sum can overflow
        total = int(counts_nr.sum(axis=0, dtype=np.int64).max()) if n_w else 0
        acc = np.zeros(0, dtype=np.int32 if total < 2**31 - 1 else np.int64)
        _kernel(order, flags, counts_nr, acc, ap, auc)
    else:
        ap.fill(np.nan)
        auc.fill(np.nan)
    return ap.T.copy(), auc.T.copy()
