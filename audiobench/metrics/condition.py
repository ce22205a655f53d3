"""Every number of one (model, condition): arrays in, numbers out.

:func:`condition_metrics` is the single place that turns the clean and perturbed logits of one
model under one condition into the rows of ``metrics.csv``, the per-clip columns of
``per_clip.csv`` and the per-class AP/AUC of ``per_class.csv``. The aggregator (from stored units)
and ``verify-run`` (from ``scores.npz``) both call it, so a recomputation uses the same code.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np

PER_CLIP_SHIFT = ["kl", "js", "entropy_delta", "top1_flip", "top5_jaccard", "spearman", "abs_dp", "true_label_drop"]
SHIFT_MEAN_NAMES = {
    "kl": "kl_mean", "js": "js_mean", "entropy_delta": "entropy_delta_mean", "top1_flip": "top1_flip_rate",
    "top5_jaccard": "top5_jaccard_mean", "spearman": "spearman_mean", "abs_dp": "abs_dp_mean",
    "true_label_drop": "true_label_drop_rate",
}


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def finite_rows(logits: np.ndarray) -> np.ndarray:
    return np.isfinite(logits).all(axis=1)


def condition_metrics(clean_logits: np.ndarray, logits: np.ndarray, targets: np.ndarray, *, n_boot: int, seed: int,
                      valid: np.ndarray) -> Dict[str, Any]:
    """All numbers of one (model, condition): metric rows, per-clip shift columns, per-class AP."""
    from audiobench.metrics import bootstrap, shift, tagging

    finite = finite_rows(logits) & finite_rows(clean_logits)
    use = valid & finite
    scores = sigmoid(logits[use])
    t = targets[use]
    tm = tagging.tagging_metrics(scores, t)
    rows: Dict[str, Dict[str, float]] = {}
    for name in ("mAP", "mAUC", "d_prime", "top1_hit_rate", "top5_hit_rate"):
        rows[name] = {"value": float(tm[name])}
    n_classes = int(tm["n_classes"])
    n_clips = int(use.sum())
    per_clip = shift.shift_statistics(clean_logits[use], logits[use], t)
    summary = shift.summarise_shift(per_clip)
    for k, name in SHIFT_MEAN_NAMES.items():
        rows[name] = {"value": float(summary[name])}
    if n_boot > 0 and n_clips > 1:
        ci = bootstrap.bootstrap_tagging(scores, t, n_resamples=n_boot, seed=seed)
        for name, (lo, hi) in ci.items():
            if name in rows:
                rows[name].update(ci_low=float(lo), ci_high=float(hi))
        ci = bootstrap.bootstrap_means({k: per_clip[k] for k in PER_CLIP_SHIFT}, n_resamples=n_boot, seed=seed)
        for k, (lo, hi) in ci.items():
            name = SHIFT_MEAN_NAMES.get(k, k)
            if name in rows:
                rows[name].update(ci_low=float(lo), ci_high=float(hi))
    rows["nonfinite_clips"] = {"value": float((valid & ~finite).sum())}
    full_clip = {k: np.full(len(logits), np.nan) for k in PER_CLIP_SHIFT}
    for k in PER_CLIP_SHIFT:
        full_clip[k][use] = per_clip[k]
    return {
        "rows": rows, "n_clips": n_clips, "n_classes": n_classes, "per_clip": full_clip,
        "ap": tagging.average_precision_per_class(scores, t), "auc": tagging.roc_auc_per_class(scores, t),
        "use": use,
    }


def min_eps_summary(min_eps: np.ndarray) -> Dict[str, float]:
    """Summary rows of the per-clip min-eps values of the clips used (NaN: clip without a label;
    inf: never broken up to eps_max)."""
    me = np.asarray(min_eps, dtype=np.float64)
    me = me[~np.isnan(me)]
    # "inverted_cdf" picks an observed value (no interpolation with inf -> no NaN)
    q = (lambda p: float(np.quantile(me, p, method="inverted_cdf")) if len(me) else math.nan)
    return {"min_eps_median": q(0.5), "min_eps_q25": q(0.25), "min_eps_q75": q(0.75)}
