"""Bootstrap confidence intervals over clips (percentile method, 95 % by default).

A resample draws N clips with replacement from the N clips of a condition. It is represented by
integer counts (how many times each clip was drawn), and every metric is computed with those
counts as weights — the same as duplicating clips, so each resample's AP/AUC is exactly
scikit-learn's on the duplicated data. All resamples are drawn at once from
``numpy.random.default_rng(seed)`` (:func:`resample_counts`): the same ``seed`` and N give the
same resamples to :func:`bootstrap_tagging` and :func:`bootstrap_means`, so the CIs of one
condition describe the same resampled clip sets.

Speed: per-class AP/AUC for all resamples comes from one sort per class and one pass of running
weighted sums (:mod:`audiobench.metrics._rank`), i.e. N x C x R small-integer adds — about 2.5 s
of CPU for 20,000 clips x 527 classes x 1,000 resamples (``benchmarks/bench_bootstrap.py``),
against ~5-7 hours for scikit-learn per resample.

Known behaviour of AP under the bootstrap: a clip drawn twice puts two positives at the same
score, and AP rewards that, so the resampled mAP distribution sits somewhat ABOVE the point
estimate, most for weak models (random-like scores at mAP 0.07: the whole 95 % interval lies
above the point estimate; at mAP 0.57 about 18 % of resamples fall below it; at 0.98 about 44 %).
The interval reported is the plain percentile interval, as specified; mAUC is barely affected.

Undefined values inside a resample: a class whose positives were all left out of a resample has
no AP in it (no AUC either when it has no positive or no negative left), and is skipped in that
resample's mean — the same rule as the point estimate. The interval is the (alpha/2, 1-alpha/2)
percentile of the resample values that are defined (NaN resamples are ignored); it is
(NaN, NaN) when none is.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

from audiobench.metrics._rank import _prepare, counts_dtype, weighted_ap_auc
from audiobench.metrics.tagging import _check, finite_clips, summarise_ap_auc

__all__ = [
    "resample_counts",
    "percentile_ci",
    "bootstrap_tagging_values",
    "bootstrap_tagging",
    "bootstrap_means",
    "bootstrap_shift_summary",
]

# resamples per kernel call: bounds the (N, chunk) count matrix and the (chunk, C) outputs
_CHUNK = 256


def resample_counts(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(N, R) counts: column r holds how often each of the N clips was drawn in resample r.

    Each column sums to N (a multinomial draw with equal probabilities, made as N uniform clip
    indices per resample from ``numpy.random.default_rng(seed)``). Clip-major so that the
    weights of one clip across resamples are contiguous (what the AP/AUC kernel reads).
    """
    if n < 0 or n_resamples < 0:
        raise ValueError(f"n and n_resamples must be >= 0, got {n}, {n_resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, max(n, 1), size=(n_resamples, n)) if n else np.zeros((n_resamples, 0), np.int64)
    out = np.empty((n, n_resamples), dtype=np.uint32 if n > 65535 else np.uint16)  # a count is <= n
    step = 64
    for r0 in range(0, n_resamples, step):
        r1 = min(r0 + step, n_resamples)
        flat = (idx[r0:r1] + (np.arange(r1 - r0) * n)[:, None]).ravel()
        out[:, r0:r1] = np.bincount(flat, minlength=(r1 - r0) * n).reshape(r1 - r0, n).T
    # counts above 255 are practically impossible for large n; keep 1 byte per count when possible
    return out.astype(counts_dtype(out), copy=False)


def percentile_ci(values, level: float = 0.95) -> Tuple[float, float]:
    """(lo, hi) percentile interval of the defined (non-NaN) values; (NaN, NaN) if none."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if not v.size:
        return (math.nan, math.nan)
    a = 100.0 * (1.0 - level) / 2.0
    q = [a, 100.0 - a]
    with np.errstate(invalid="ignore"):  # inf - inf while interpolating (d' of resamples with AUC 1)
        lo, hi = np.percentile(v, q)
    if np.isnan(lo) or np.isnan(hi):  # an interval end between two infinite values: take the nearest
        near = np.percentile(v, q, method="nearest")
        lo, hi = (near[0] if np.isnan(lo) else lo), (near[1] if np.isnan(hi) else hi)
    return (float(lo), float(hi))


def bootstrap_tagging_values(scores, targets, counts) -> Dict[str, np.ndarray]:
    """mAP, mAUC and d′ under each weighting: ``counts`` is (N, R) integer (see
    :func:`resample_counts`). Returns (R,) arrays. A column of ones gives exactly
    :func:`~audiobench.metrics.tagging.tagging_metrics`' values. Clips with non-finite scores
    are dropped (as in the point estimate) before weighting.
    """
    scores, targets = _check(scores, targets)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] != scores.shape[0]:
        raise ValueError(f"counts must be (N, R) with N = {scores.shape[0]}, got {counts.shape}")
    keep = finite_clips(scores)
    if not keep.all():
        scores, targets, counts = scores[keep], targets[keep], counts[keep]
    prepared = _prepare(scores, targets)
    n_r = counts.shape[1]
    out = {k: np.empty(n_r, dtype=np.float64) for k in ("mAP", "mAUC", "d_prime")}
    for r0 in range(0, n_r, _CHUNK):
        r1 = min(r0 + _CHUNK, n_r)
        ap, auc = weighted_ap_auc(scores, targets, counts[:, r0:r1], prepared=prepared)
        m_ap, m_auc, dp = summarise_ap_auc(ap, auc)
        out["mAP"][r0:r1] = m_ap
        out["mAUC"][r0:r1] = m_auc
        out["d_prime"][r0:r1] = dp
    return out


def bootstrap_tagging(
    scores, targets, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Dict[str, Tuple[float, float]]:
    """Percentile CIs over clips for ``mAP``, ``mAUC`` and ``d_prime``: {name: (lo, hi)}.

    Resamples are drawn over the clips with finite scores (the clips the point estimate uses).
    """
    scores, targets = _check(scores, targets)
    keep = finite_clips(scores)
    scores, targets = scores[keep], targets[keep]
    counts = resample_counts(scores.shape[0], n_resamples, seed)
    values = bootstrap_tagging_values(scores, targets, counts)
    return {name: percentile_ci(v, level) for name, v in values.items()}


def bootstrap_means(
    per_clip: Dict[str, np.ndarray], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Dict[str, Tuple[float, float]]:
    """Percentile CIs of NaN-aware means of per-clip values: {name: (lo, hi)}.

    ``per_clip`` maps a name to an (N,) array (all the same N, e.g. the output of
    :func:`~audiobench.metrics.shift.shift_statistics`, or ``top1_hit``). In each resample the
    mean is Σ count·value / Σ count over the clips where the value is not NaN — the weighted
    version of :func:`~audiobench.metrics.shift.summarise_shift`'s mean; NaN when no drawn clip
    has a value. Boolean arrays are treated as 0/1.
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in per_clip.items()}
    sizes = {v.shape for v in arrays.values()}
    if any(len(s) != 1 for s in sizes) or len(sizes) > 1:
        raise ValueError(f"per-clip values must all be (N,) arrays of one length, got shapes {sorted(sizes)}")
    if not arrays:
        return {}
    n = next(iter(arrays.values())).shape[0]
    counts = resample_counts(n, n_resamples, seed)
    names = list(arrays)
    vals = np.stack([arrays[k] for k in names], axis=1)  # (N, K)
    defined = ~np.isnan(vals)
    vals = np.where(defined, vals, 0.0)
    sums = np.zeros((n_resamples, len(names)))
    dens = np.zeros((n_resamples, len(names)))
    for r0 in range(0, n_resamples, _CHUNK):
        r1 = min(r0 + _CHUNK, n_resamples)
        w = counts[:, r0:r1].T.astype(np.float64)  # (r, N); integer sums are exact in float64
        sums[r0:r1] = w @ vals
        dens[r0:r1] = w @ defined.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(dens > 0, sums / np.maximum(dens, 1.0), np.nan)
    return {name: percentile_ci(means[:, i], level) for i, name in enumerate(names)}


def bootstrap_shift_summary(
    per_clip: Dict[str, np.ndarray], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Dict[str, Tuple[float, float]]:
    """CIs keyed by the ``metrics.csv`` names of :func:`~audiobench.metrics.shift.summarise_shift`
    (``kl_mean``, ..., ``true_label_drop_rate``), from the per-clip output of
    :func:`~audiobench.metrics.shift.shift_statistics`."""
    from audiobench.metrics.shift import SHIFT_SUMMARY

    ci = bootstrap_means({stat: per_clip[stat] for stat in SHIFT_SUMMARY.values()}, n_resamples, seed, level)
    return {metric: ci[stat] for metric, stat in SHIFT_SUMMARY.items()}
