"""Output-distribution shift between the clean and perturbed outputs of one model, per clip.

Following Li et al. 2022 ("Robustness of Neural Architectures for Audio Event Detection"),
robustness is also described by how the output moves, not only by mAP. A tagger's output is C
independent sigmoid scores, not one distribution over C classes, so every statistic here is
either per class (Bernoulli divergences averaged over classes) or about the classes a tagging user
reads first: the clip's true labels, its top-ranked classes and the 0.5 decision threshold.

Inputs are LOGITS (N clips, C classes), clean and perturbed, in the same clip order, plus the
(N, C) bool targets. ``p = sigmoid(clean)``, ``q = sigmoid(perturbed)`` are computed in float64
with ``scipy.special.expit`` and ``1 - p`` as ``expit(-logit)`` (no cancellation). Definitions,
units and the NaN rule of each statistic are in :mod:`audiobench.metrics.definitions` (the
``STATISTICS`` records) and docs/metrics.md; the choices that are not obvious:

* ``kl`` clips p and q to [1e-7, 1 - 1e-7] (:data:`EPS`) first, so a saturated score cannot give
  an infinite divergence: one class contributes at most ~16.1 nats. Equivalently, logits are
  clipped to ±16.118. ``js`` needs no clipping (bounded by 1 bit per class);
* top-k sets are taken by a stable sort (ties go to the lower class index); ranks are average
  ranks (rank 1 = highest score), as scipy's ``rankdata``;
* a clip whose clean or perturbed logits hold NaN/±inf gets NaN for every statistic (and
  ``nonfinite`` = 1); :mod:`audiobench.metrics.condition` leaves such clips out.

:func:`summarise_shift` gives the condition-level mean / median / 90th percentile of each
statistic over the clips where it is defined.
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
from scipy.special import expit, rel_entr

from audiobench.metrics.definitions import PER_CLIP_COLUMNS, STATISTICS
from audiobench.metrics.tagging import _check, ap_auc_per_class, finite_clips

__all__ = [
    "EPS",
    "shift_statistics",
    "summarise_shift",
    "SHIFT_SUMMARY",
    "summary_value",
    "linear_quantile",
    "score_histogram",
    "delta_ap_per_class",
]

EPS = 1e-7  # probability clip for the Bernoulli KL
TOP_UNION = 10  # rank agreement over the union of the clean and perturbed top 10

#: metrics.csv name -> (per-clip statistic, summary) for every per-clip summary
SHIFT_SUMMARY: Dict[str, tuple] = {
    name: (s.name, summary) for s in STATISTICS.values() for summary, name in s.summary_names.items()
}
_QUANTILE = {"median": 0.5, "p90": 0.9}


def _sig(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(logits, dtype=np.float64)
    return expit(x), expit(-x)


def _bernoulli_kl(p, p0, q, q0) -> np.ndarray:
    """(N,) mean over classes of KL(Bern(p) || Bern(q)) in nats (p0 = 1 - p, q0 = 1 - q)."""
    p, p0, q, q0 = (np.clip(a, EPS, 1 - EPS) for a in (p, p0, q, q0))
    kl = p * np.log(p / q) + p0 * np.log(p0 / q0)
    return np.maximum(kl, 0.0).mean(axis=1)


def _bernoulli_js_bits(p, p0, q, q0) -> np.ndarray:
    """(N,) mean over classes of JS(Bern(p), Bern(q)) in bits; each term in [0, 1]."""
    m, m0 = 0.5 * (p + q), 0.5 * (p0 + q0)
    # rel_entr gives 0·log 0 = 0 and m >= p/2 > 0 wherever p > 0: no clipping needed
    js = 0.5 * (rel_entr(p, m) + rel_entr(p0, m0)) + 0.5 * (rel_entr(q, m) + rel_entr(q0, m0))
    return np.clip(js / math.log(2.0), 0.0, 1.0).mean(axis=1)


def _js_normalised(p, q) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        a = p / p.sum(axis=1, keepdims=True)
        b = q / q.sum(axis=1, keepdims=True)
    m = 0.5 * (a + b)
    js = 0.5 * rel_entr(a, m).sum(axis=1) + 0.5 * rel_entr(b, m).sum(axis=1)
    return np.maximum(js, 0.0)


def _order_and_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: class order by descending score (stable: ties keep the lower class index first)
    and the average rank (1 = highest; tied scores share the mean of their ranks) of each class."""
    n, c = x.shape
    order = np.argsort(-x, axis=1, kind="stable")
    v = np.take_along_axis(x, order, axis=1)
    new = np.ones((n, c), dtype=bool)
    new[:, 1:] = v[:, 1:] != v[:, :-1]  # first position of each tie group
    gid = np.cumsum(new.ravel()) - 1  # flat group ids over all rows (a new row always starts a group)
    pos = np.tile(np.arange(c, dtype=np.float64), n)
    first = np.flatnonzero(new.ravel())
    size = np.diff(np.append(first, n * c))
    mean_pos = pos[first] + (size - 1) / 2.0  # mean 0-based position of the group
    ranks_sorted = (mean_pos[gid] + 1.0).reshape(n, c)
    ranks = np.empty((n, c), dtype=np.float64)
    np.put_along_axis(ranks, order, ranks_sorted, axis=1)
    return order, ranks


def _topk_mask(order: np.ndarray, k: int) -> np.ndarray:
    mask = np.zeros(order.shape, dtype=bool)
    np.put_along_axis(mask, order[:, :k], True, axis=1)
    return mask


def _union_rank_agreement(p: np.ndarray, q: np.ndarray, union: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Spearman ρ, Kendall τ_b) per row of p and q restricted to the classes in ``union``.

    Average ranks within the union (ties share ranks), as scipy's ``spearmanr`` and
    ``kendalltau`` (variant b); NaN when either side is constant over the union.
    """
    n = p.shape[0]
    width = int(union.sum(axis=1).max()) if n else 0
    # the union's class indices, padded (the sort puts members first, in class order)
    idx = np.argsort(~union, axis=1, kind="stable")[:, :width]
    member = np.take_along_axis(union, idx, axis=1)
    a = np.where(member, np.take_along_axis(p, idx, axis=1), np.nan)
    b = np.where(member, np.take_along_axis(q, idx, axis=1), np.nan)
    pair = member[:, :, None] & member[:, None, :]
    da = np.sign(a[:, :, None] - a[:, None, :])
    db = np.sign(b[:, :, None] - b[:, None, :])
    da = np.where(pair, da, 0.0)
    db = np.where(pair, db, 0.0)
    # average rank (1 = highest) = 1 + #higher + #tied others / 2 = (m + 1 - Σ_k sign(a_j - a_k)) / 2
    m = member.sum(axis=1).astype(np.float64)[:, None]
    ra = np.where(member, (m + 1.0 - da.sum(axis=2)) / 2.0, 0.0)
    rb = np.where(member, (m + 1.0 - db.sum(axis=2)) / 2.0, 0.0)
    mean_r = (m + 1.0) / 2.0
    ca = np.where(member, ra - mean_r, 0.0)
    cb = np.where(member, rb - mean_r, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ca * cb).sum(axis=1) / np.sqrt((ca * ca).sum(axis=1) * (cb * cb).sum(axis=1))
        # τ_b: (concordant − discordant) / sqrt((n0 − ties_a)(n0 − ties_b)); each pair is counted twice
        s = (da * db).sum(axis=(1, 2)) / 2.0
        untied_a = (np.abs(da).sum(axis=(1, 2))) / 2.0
        untied_b = (np.abs(db).sum(axis=(1, 2))) / 2.0
        tau = s / np.sqrt(untied_a * untied_b)
    return np.clip(rho, -1.0, 1.0), np.clip(tau, -1.0, 1.0)


def shift_statistics(clean_logits, pert_logits, targets) -> Dict[str, np.ndarray]:
    """Per-clip shift statistics: {name: (N,) float64} for every column of ``PER_CLIP_COLUMNS``
    plus ``nonfinite`` (1.0 for a clip with a NaN/inf logit). See the module docstring.

    Identical clean and perturbed logits give exactly 0 for kl, js, js_normalised, top1_flip,
    true_dp, true_dlogit, true_rank_change, true_label_drop, false_alarm_new, max_false_dp and
    max_score_change, and exactly 1 for top5_jaccard, the retentions and (when the scores are
    not constant over the top-10 union) the rank correlations.
    """
    clean, targets = _check(clean_logits, targets)
    pert, _ = _check(pert_logits, targets)
    n = clean.shape[0]
    # every statistic is per clip: work in row blocks (bounded memory, cache-friendly)
    parts = [
        _shift_block(clean[i : i + _BLOCK], pert[i : i + _BLOCK], targets[i : i + _BLOCK])
        for i in range(0, max(n, 1), _BLOCK)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


_BLOCK = 2048


def _mean_over(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row mean of ``values`` over ``mask``; NaN for rows with an empty mask."""
    k = mask.sum(axis=1)
    total = np.where(mask, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k > 0, total / np.maximum(k, 1), np.nan)


def _shift_block(clean: np.ndarray, pert: np.ndarray, targets: np.ndarray) -> Dict[str, np.ndarray]:
    c = clean.shape[1]
    ok = finite_clips(clean) & finite_clips(pert)
    x = np.where(ok[:, None], np.asarray(clean, dtype=np.float64), 0.0)
    y = np.where(ok[:, None], np.asarray(pert, dtype=np.float64), 0.0)
    p, p0 = _sig(x)
    q, q0 = _sig(y)
    t = targets
    false = ~t

    out: Dict[str, np.ndarray] = {}
    out["kl"] = _bernoulli_kl(p, p0, q, q0)
    out["js"] = _bernoulli_js_bits(p, p0, q, q0)
    out["js_normalised"] = _js_normalised(p, q)
    out["top1_flip"] = (np.argmax(x, axis=1) != np.argmax(y, axis=1)).astype(np.float64)
    ox, rx = _order_and_ranks(x)
    oy, ry = _order_and_ranks(y)
    k5 = min(5, c)
    top5_x, top5_y = _topk_mask(ox, k5), _topk_mask(oy, k5)
    out["top5_jaccard"] = (top5_x & top5_y).sum(axis=1) / (top5_x | top5_y).sum(axis=1)
    union = _topk_mask(ox, min(TOP_UNION, c)) | _topk_mask(oy, min(TOP_UNION, c))
    out["top10_spearman"], out["top10_kendall"] = _union_rank_agreement(p, q, union)

    # label-focused: the clip's true labels
    out["true_dp"] = _mean_over(t, q - p)
    out["true_dlogit"] = _mean_over(t, y - x)
    out["true_rank_change"] = _mean_over(t, ry - rx)
    top1_x, top1_y = _topk_mask(ox, 1), _topk_mask(oy, 1)
    for name, kx, ky in (("top1_retention", top1_x, top1_y), ("top5_retention", top5_x, top5_y)):
        held = (t & kx).sum(axis=1)
        kept = (t & kx & ky).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(held > 0, kept / np.maximum(held, 1), np.nan)
    # compare on the logits (p >= 0.5 <=> logit >= 0): no rounding at the threshold
    detected = t & (x >= 0)
    n_det = detected.sum(axis=1)
    dropped = (detected & (y < 0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["true_label_drop"] = np.where(n_det > 0, dropped / np.maximum(n_det, 1), np.nan)
    out["false_alarm_new"] = (false & (x < 0) & (y >= 0)).sum(axis=1).astype(np.float64)
    has_false = false.any(axis=1)
    max_q_f = np.where(false, q, -np.inf).max(axis=1, initial=-np.inf)
    max_p_f = np.where(false, p, -np.inf).max(axis=1, initial=-np.inf)
    with np.errstate(invalid="ignore"):
        out["max_false_dp"] = np.where(has_false, max_q_f - max_p_f, np.nan)
    out["max_score_change"] = q.max(axis=1) - p.max(axis=1)
    # Brier of the condition's own scores: (q - t)^2 with q - 1 = -(1 - q) computed without cancellation
    out["brier"] = np.where(t, q0 * q0, q * q).mean(axis=1)

    assert list(out) == PER_CLIP_COLUMNS, "shift statistics out of step with definitions.STATISTICS"
    for name in out:
        out[name] = np.where(ok, out[name], np.nan).astype(np.float64)
    out["nonfinite"] = (~ok).astype(np.float64)
    return out


def linear_quantile(values, prob: float) -> float:
    """numpy's default (linear interpolation) quantile of the non-NaN values, with +inf allowed:
    an interpolation touching +inf gives +inf (an unreachable value is larger than any finite one),
    except at an exact order statistic, which is returned as is. NaN when no value is left."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    v = v[~np.isnan(v)]
    if not v.size:
        return math.nan
    h = (v.size - 1) * float(prob)
    lo = int(math.floor(h))
    hi = min(lo + 1, v.size - 1)
    frac = h - lo
    if frac == 0.0 or v[lo] == v[hi]:
        return float(v[lo])
    if math.isinf(v[hi]) or math.isinf(v[lo]):
        return float(v[hi]) if math.isinf(v[hi]) else float(v[lo])
    return float(np.quantile(v, prob))


def summary_value(values, summary: str) -> float:
    """One summary ("mean", "median", "p90") of the defined (non-NaN) per-clip values; NaN if none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return math.nan
    if summary == "mean":
        return float(v.mean())
    return float(np.quantile(v, _QUANTILE[summary]))


def summarise_shift(per_clip: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Condition-level summaries of the per-clip statistics, named as in ``metrics.csv``.

    Each is taken over the clips where the statistic is defined (NaN ignored, in numerator and
    denominator alike); NaN when it is defined for no clip. E.g. ``true_label_drop_rate`` is the
    mean, over the clips with a true label scored >= 0.5 clean, of the fraction of those labels
    that fell below 0.5 (a mean of per-clip fractions, not a pooled rate over labels).
    """
    return {name: summary_value(per_clip[stat], summary) for name, (stat, summary) in SHIFT_SUMMARY.items()}


def score_histogram(logits, bins: int = 20) -> np.ndarray:
    """(bins,) int64 counts of sigmoid scores on [0, 1] (equal-width bins, the last one closed),
    over every clip x class of the clips whose logits are all finite."""
    x = np.asarray(logits)
    if x.ndim != 2:
        raise ValueError(f"logits must be (N, C), got {x.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p = expit(x[finite_clips(x)].astype(np.float64, copy=False))
    counts, _ = np.histogram(p, bins=bins, range=(0.0, 1.0))
    return counts.astype(np.int64)


def delta_ap_per_class(clean_scores, pert_scores, targets) -> np.ndarray:
    """(C,) AP(perturbed) − AP(clean) per class, NaN for classes without a positive clip.

    Both APs are computed over the same clips: those whose clean AND perturbed scores are all
    finite.
    """
    clean, targets = _check(clean_scores, targets)
    pert, _ = _check(pert_scores, targets)
    ok = finite_clips(clean) & finite_clips(pert)
    ap_c, _ = ap_auc_per_class(clean[ok], targets[ok])
    ap_p, _ = ap_auc_per_class(pert[ok], targets[ok])
    return ap_p - ap_c
