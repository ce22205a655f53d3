"""Output-distribution shift between clean and perturbed outputs of one model, per clip.

Following the analysis of Li et al. 2022 ("Robustness of Neural Architectures for Audio Event
Detection"), robustness is also described by how the whole 527-class output moves, not only by
mAP. Inputs are LOGITS, (N clips, C classes), clean and perturbed, in the same clip order;
``p = sigmoid(clean)``, ``q = sigmoid(perturbed)`` computed stably in float64 (``scipy.special
.expit``; ``1 - p`` is computed as ``expit(-logit)``, not by subtraction). Natural logarithms
throughout (nats).

Per-clip statistics (:func:`shift_statistics`):

* ``kl`` — Σ_c KL(Bernoulli(p_c) ‖ Bernoulli(q_c)); p and q are clipped to [1e-7, 1 - 1e-7]
  first, so a saturated score cannot produce an infinite divergence (each class contributes at
  most ~16 nats);
* ``js`` — Jensen-Shannon divergence between p/Σp and q/Σq (the score vectors normalised to sum
  1), in [0, ln 2] (NaN only if every score of a clip underflows to 0, i.e. all logits < -745);
* ``entropy_delta`` — mean over classes of the binary entropy H(q_c) minus that of H(p_c);
* ``top1_flip`` — 1.0 if the top-scored class changed (``argmax``, lowest index on ties);
* ``top5_jaccard`` — |top5(p) ∩ top5(q)| / |top5(p) ∪ top5(q)| (top 5 by a stable sort: ties
  go to the lower class index); top-min(5, C) when C < 5;
* ``spearman`` — Spearman rank correlation of the C scores (average ranks for ties); NaN when
  either output is constant over the classes;
* ``abs_dp`` — mean over classes of |q_c − p_c|;
* ``true_label_drop`` — of the clip's true labels scored >= 0.5 clean, the fraction scored
  < 0.5 perturbed; NaN when no true label was scored >= 0.5 clean (nothing could drop);
* ``true_below`` — fraction of the clip's true labels scored < 0.5 perturbed; NaN without labels;
* ``nonfinite`` — 1.0 when the clean or perturbed logits of the clip hold NaN/±inf; every
  other statistic of that clip is then NaN.

:func:`summarise_shift` averages them over clips ignoring NaN (so clips where a statistic is
undefined do not count, for either the numerator or the denominator).
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
from scipy.special import entr, expit, rel_entr

from audiobench.metrics.tagging import _check, ap_auc_per_class, finite_clips

__all__ = [
    "EPS",
    "shift_statistics",
    "summarise_shift",
    "SHIFT_SUMMARY",
    "score_histogram",
    "delta_ap_per_class",
]

EPS = 1e-7  # probability clip for the Bernoulli KL

#: summary metric name -> per-clip statistic it averages
SHIFT_SUMMARY: Dict[str, str] = {
    "kl_mean": "kl",
    "js_mean": "js",
    "entropy_delta_mean": "entropy_delta",
    "top1_flip_rate": "top1_flip",
    "top5_jaccard_mean": "top5_jaccard",
    "spearman_mean": "spearman",
    "abs_dp_mean": "abs_dp",
    "true_label_drop_rate": "true_label_drop",
}


def _sig(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(logits, dtype=np.float64)
    return expit(x), expit(-x)


def _bernoulli_kl(p, p0, q, q0) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    p0 = np.clip(p0, EPS, 1 - EPS)
    q = np.clip(q, EPS, 1 - EPS)
    q0 = np.clip(q0, EPS, 1 - EPS)
    return (p * np.log(p / q) + p0 * np.log(p0 / q0)).sum(axis=1)


def _js(p, q) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        a = p / p.sum(axis=1, keepdims=True)
        b = q / q.sum(axis=1, keepdims=True)
    m = 0.5 * (a + b)
    # rel_entr handles 0·log 0 = 0; m >= a/2 > 0 wherever a > 0
    js = 0.5 * rel_entr(a, m).sum(axis=1) + 0.5 * rel_entr(b, m).sum(axis=1)
    return np.maximum(js, 0.0)


def _order_and_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: class order by descending score (stable: ties keep the lower class index first)
    and the average rank (1 = highest; tied scores share the mean of their ranks) of each class.

    One sort serves both the top-k sets and Spearman (ranks of -x have the same correlation).
    """
    n, c = x.shape
    order = np.argsort(-x, axis=1, kind="stable")
    v = np.take_along_axis(x, order, axis=1)
    new = np.ones((n, c), dtype=bool)
    new[:, 1:] = v[:, 1:] != v[:, :-1]  # first position of each tie group
    # flat group ids over all rows (a new row always starts a group)
    gid = np.cumsum(new.ravel()) - 1
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


def _spearman(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of rank arrays (Spearman's rho with average ranks)."""
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        zx = rx / np.sqrt((rx * rx).mean(axis=1, keepdims=True))
        zy = ry / np.sqrt((ry * ry).mean(axis=1, keepdims=True))
        # Pearson r of standardised ranks written as 1 - mean((zx - zy)^2) / 2: equal ranks give
        # exactly 1 (no rounding from a product of square roots)
        rho = 1.0 - 0.5 * ((zx - zy) ** 2).mean(axis=1)
    return np.clip(rho, -1.0, 1.0)


def shift_statistics(clean_logits, pert_logits, targets) -> Dict[str, np.ndarray]:
    """Per-clip shift statistics (each an (N,) float64 array); see the module docstring.

    Identical clean and perturbed logits give exactly kl = js = abs_dp = entropy_delta = 0,
    top1_flip = 0, top5_jaccard = 1, spearman = 1 (when the scores are not all equal),
    true_label_drop = 0.
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


def _shift_block(clean: np.ndarray, pert: np.ndarray, targets: np.ndarray) -> Dict[str, np.ndarray]:
    c = clean.shape[1]
    ok = finite_clips(clean) & finite_clips(pert)
    x = np.where(ok[:, None], np.asarray(clean, dtype=np.float64), 0.0)
    y = np.where(ok[:, None], np.asarray(pert, dtype=np.float64), 0.0)
    p, p0 = _sig(x)
    q, q0 = _sig(y)

    out: Dict[str, np.ndarray] = {}
    out["kl"] = _bernoulli_kl(p, p0, q, q0)
    out["js"] = _js(p, q)
    h_p = (entr(p) + entr(p0)).mean(axis=1)
    h_q = (entr(q) + entr(q0)).mean(axis=1)
    out["entropy_delta"] = h_q - h_p
    out["top1_flip"] = (np.argmax(x, axis=1) != np.argmax(y, axis=1)).astype(np.float64)
    k = min(5, c)
    ox, rx = _order_and_ranks(x)
    oy, ry = _order_and_ranks(y)
    ma, mb = _topk_mask(ox, k), _topk_mask(oy, k)
    out["top5_jaccard"] = (ma & mb).sum(axis=1) / (ma | mb).sum(axis=1)
    out["spearman"] = _spearman(rx, ry)
    out["abs_dp"] = np.abs(q - p).mean(axis=1)

    # compare on the scores themselves (p >= 0.5 <=> logit >= 0)
    detected = targets & (p >= 0.5)
    n_det = detected.sum(axis=1)
    dropped = (detected & (q < 0.5)).sum(axis=1)
    n_true = targets.sum(axis=1)
    below = (targets & (q < 0.5)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["true_label_drop"] = np.where(n_det > 0, dropped / np.maximum(n_det, 1), np.nan)
        out["true_below"] = np.where(n_true > 0, below / np.maximum(n_true, 1), np.nan)

    for name in out:
        out[name] = np.where(ok, out[name], np.nan).astype(np.float64)
    out["nonfinite"] = (~ok).astype(np.float64)
    return out


def summarise_shift(per_clip: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Condition-level means of the per-clip statistics, named as in ``metrics.csv``.

    Each is the mean over clips where the statistic is defined (NaN ignored); NaN when it is
    defined for no clip. ``true_label_drop_rate`` is thus the mean, over clips that had a true
    label detected (>= 0.5) clean, of the fraction of those labels lost under the perturbation.
    """
    out: Dict[str, float] = {}
    for metric, stat in SHIFT_SUMMARY.items():
        v = np.asarray(per_clip[stat], dtype=np.float64)
        v = v[~np.isnan(v)]
        out[metric] = float(v.mean()) if v.size else math.nan
    return out


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
