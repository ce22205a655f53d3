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

d′ interval: d′ = √2·Φ⁻¹(mAUC) is increasing in mAUC, so its interval is d′ of the mAUC
interval's ends (:func:`d_prime_ci`), never a percentile interpolated between a finite d′ and the
+inf of a resample whose mAUC is 1. On small sets many resamples rank every class perfectly and
the mAUC interval reaches exactly 1 (or 0), where d′ is unbounded; that end is then taken halfway
between 1 and the largest mAUC below 1 the data can produce (:func:`~audiobench.metrics.tagging.
mauc_resolution`: one misordered pair in the class with the most positive-negative pairs), the
analogue of signal detection theory's 1/(2N) rule. The interval is therefore finite, except when
the point estimate itself is 1 (or 0): then d′ is +inf (−inf) and that end is open (±inf) too.

Medians and 90th percentiles of per-clip statistics (:func:`weighted_quantiles`) are numpy's
linear-interpolation quantiles of each resample's duplicated clips, from one sort per statistic.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import numba
import numpy as np

from audiobench.metrics._rank import _prepare, counts_dtype, weighted_ap_auc
from audiobench.metrics.tagging import _check, d_prime, finite_clips, mauc_resolution, summarise_ap_auc

__all__ = [
    "resample_counts",
    "percentile_ci",
    "bootstrap_tagging_values",
    "bootstrap_tagging",
    "bootstrap_means",
    "bootstrap_shift_summary",
    "weighted_means",
    "weighted_quantiles",
    "d_prime_ci",
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
    out = {name: percentile_ci(v, level) for name, v in values.items()}
    point = bootstrap_tagging_values(scores, targets, np.ones((scores.shape[0], 1), dtype=np.uint8))["mAUC"][0]
    out["d_prime"] = d_prime_ci(out["mAUC"], resolution=mauc_resolution(targets), point=point)
    return out


def d_prime_ci(mauc_ci: Tuple[float, float], resolution: float | None = None,
               point: float | None = None) -> Tuple[float, float]:
    """The d′ interval of an mAUC interval: (d′(lo), d′(hi)) — d′ is increasing in mAUC, so this
    is the percentile interval of d′ without interpolating towards an infinite resample value.

    With the data's mAUC ``resolution`` (the smallest step of mAUC below 1), an end at exactly 1
    (0) becomes d′(1 − resolution/2) (d′(resolution/2)) unless the ``point`` estimate is itself 1
    (0): then that end stays ±inf, open-ended like the point estimate (module docstring)."""
    lo, hi = (float(v) for v in mauc_ci)
    if resolution is not None and math.isfinite(resolution) and resolution > 0:
        half = resolution / 2.0
        if hi == 1.0 and point != 1.0:
            hi = 1.0 - half
        if lo == 0.0 and point != 0.0:
            lo = half
    return (float(d_prime(lo)), float(d_prime(hi)))


def weighted_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(R, K) NaN-aware weighted means: ``values`` (N, K) (NaN = undefined for that clip),
    ``counts`` (N, R). Resample r's mean of column k is Σ count·value / Σ count over the clips
    where the value is defined; NaN when no drawn clip has one."""
    vals = np.asarray(values, dtype=np.float64)
    counts = np.asarray(counts)
    n_r = counts.shape[1]
    defined = ~np.isnan(vals)
    vals = np.where(defined, vals, 0.0)
    sums = np.zeros((n_r, vals.shape[1]))
    dens = np.zeros((n_r, vals.shape[1]))
    for r0 in range(0, n_r, _CHUNK):
        r1 = min(r0 + _CHUNK, n_r)
        w = counts[:, r0:r1].T.astype(np.float64)  # (r, N); integer sums are exact in float64
        sums[r0:r1] = w @ vals
        dens[r0:r1] = w @ defined.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dens > 0, sums / np.maximum(dens, 1.0), np.nan)


@numba.njit(cache=True, nogil=True)
def _order_stat_kernel(counts, order, js, out):  # pragma: no cover - compiled
    """counts (N, R) clip-major; order (M,) the clips with a value, by ascending value; js (P, R)
    0-based order statistics wanted, ascending in p for every r. out (P, R): the position in
    ``order`` holding each (the first whose running count exceeds j). One pass over the sorted
    clips, vectorised over resamples (each clip's counts are one contiguous row)."""
    m = order.shape[0]
    n_p, n_r = js.shape
    cum = np.zeros(n_r, np.int64)
    nxt = np.zeros(n_r, np.int64)
    for u in range(m):
        row = counts[order[u]]
        for r in range(n_r):
            cum[r] += row[r]
            while nxt[r] < n_p and cum[r] > js[nxt[r], r]:
                out[nxt[r], r] = u
                nxt[r] += 1
    for r in range(n_r):  # a target past the total (no clip drawn): the last position
        while nxt[r] < n_p:
            out[nxt[r], r] = m - 1
            nxt[r] += 1


def weighted_quantiles(values, counts, probs) -> np.ndarray:
    """(len(probs), R) quantiles of ``values`` (N,) under each weighting of ``counts`` (N, R):
    numpy's default linear-interpolation quantile of the data with clip i repeated count[i, r]
    times, NaN values left out (NaN when no drawn clip has a value).

    One sort of the values serves every resample: walking the clips in value order with the
    running count locates the two order statistics each quantile interpolates between.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    counts = np.asarray(counts)
    probs = np.asarray([float(x) for x in probs], dtype=np.float64)
    n_r = counts.shape[1]
    out = np.full((len(probs), n_r), np.nan)
    keep = ~np.isnan(v)
    if not keep.any() or n_r == 0 or not len(probs):
        return out
    rows = np.flatnonzero(keep)
    order = rows[np.argsort(v[rows], kind="stable")]  # clips with a value, by ascending value
    s = v[order]
    counts = np.ascontiguousarray(counts)
    total = counts[rows].sum(axis=0, dtype=np.int64)  # (R,) defined clips drawn
    h = (total - 1).astype(np.float64)[None, :] * probs[:, None]  # numpy's "linear" virtual index
    j0 = np.floor(h)
    gamma = h - j0
    j1 = np.minimum(j0 + 1, total - 1)
    js = np.concatenate([j0, j1]).astype(np.int64)
    rank = np.argsort(js, axis=0, kind="stable")  # the kernel walks each resample once, in order
    pos_sorted = np.empty(js.shape, dtype=np.int64)
    _order_stat_kernel(counts, order, np.ascontiguousarray(np.take_along_axis(js, rank, axis=0)), pos_sorted)
    pos = np.empty_like(pos_sorted)
    np.put_along_axis(pos, rank, pos_sorted, axis=0)
    a, b = s[pos[: len(probs)]], s[pos[len(probs):]]
    with np.errstate(invalid="ignore"):
        diff = b - a
        q = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)  # numpy's _lerp
        q = np.where(a == b, a, q)  # equal neighbours (also +inf, +inf): no inf - inf
    out[:] = np.where(total[None, :] > 0, q, np.nan)
    return out


def bootstrap_means(
    per_clip: Dict[str, np.ndarray], n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
    counts: np.ndarray | None = None,
) -> Dict[str, Tuple[float, float]]:
    """Percentile CIs of NaN-aware means of per-clip values: {name: (lo, hi)}.

    ``per_clip`` maps a name to an (N,) array (all the same N, e.g. the output of
    :func:`~audiobench.metrics.shift.shift_statistics`, or ``top1_hit``). In each resample the
    mean is Σ count·value / Σ count over the clips where the value is not NaN — the weighted
    version of :func:`~audiobench.metrics.shift.summarise_shift`'s mean; NaN when no drawn clip
    has a value. Boolean arrays are treated as 0/1. ``counts`` (N, R) reuses resamples drawn
    elsewhere (then ``n_resamples`` and ``seed`` are not used).
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in per_clip.items()}
    sizes = {v.shape for v in arrays.values()}
    if any(len(s) != 1 for s in sizes) or len(sizes) > 1:
        raise ValueError(f"per-clip values must all be (N,) arrays of one length, got shapes {sorted(sizes)}")
    if not arrays:
        return {}
    n = next(iter(arrays.values())).shape[0]
    if counts is None:
        counts = resample_counts(n, n_resamples, seed)
    elif counts.shape[0] != n:
        raise ValueError(f"counts must be (N, R) with N = {n}, got {counts.shape}")
    names = list(arrays)
    means = weighted_means(np.stack([arrays[k] for k in names], axis=1), counts)
    return {name: percentile_ci(means[:, i], level) for i, name in enumerate(names)}


def bootstrap_shift_summary(
    per_clip: Dict[str, np.ndarray], n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
    counts: np.ndarray | None = None,
) -> Dict[str, Tuple[float, float]]:
    """CIs keyed by the ``metrics.csv`` names of :func:`~audiobench.metrics.shift.summarise_shift`
    (means, medians and 90th percentiles), from the per-clip output of
    :func:`~audiobench.metrics.shift.shift_statistics`; every summary uses the same resamples."""
    from audiobench.metrics.shift import _QUANTILE, SHIFT_SUMMARY

    stats = sorted({stat for stat, _ in SHIFT_SUMMARY.values()})
    n = len(np.asarray(per_clip[stats[0]]))
    if counts is None:
        counts = resample_counts(n, n_resamples, seed)
    means = bootstrap_means({s: per_clip[s] for s in stats}, level=level, counts=counts)
    out: Dict[str, Tuple[float, float]] = {}
    quantiles: Dict[str, np.ndarray] = {}
    for name, (stat, summary) in SHIFT_SUMMARY.items():
        if summary == "mean":
            out[name] = means[stat]
            continue
        if stat not in quantiles:
            quantiles[stat] = weighted_quantiles(per_clip[stat], counts, (_QUANTILE["median"], _QUANTILE["p90"]))
        row = 0 if summary == "median" else 1
        out[name] = percentile_ci(quantiles[stat][row], level)
    return out
