"""Every number of one (model, condition): arrays in, numbers out.

:func:`condition_metrics` is the single place that turns the clean and perturbed logits of one
model under one condition into the rows of ``metrics.csv``, the per-clip columns of
``per_clip.csv`` and the per-class AP/AUC of ``per_class.csv``. The aggregator (from stored units)
and ``verify-run`` (from ``scores.npz``) both call it, so a recomputation uses the same code. The
rows it emits are exactly the registry's (:mod:`audiobench.metrics.definitions`): the
``condition`` and ``per-clip`` metrics that apply to the data (multi-label, or single-label when
every clip has exactly one true label).

All bootstrap intervals of one condition come from ONE set of resamples
(:func:`~audiobench.metrics.bootstrap.resample_counts` with the run's seed over the clips used).
"""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np

from audiobench.metrics.definitions import MIN_EPS_MISSED_CLEAN, PER_CLIP_COLUMNS, condition_metric_names

#: per_clip.csv columns of the shift statistics, in order (written for every condition)
PER_CLIP_SHIFT = list(PER_CLIP_COLUMNS)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def finite_rows(logits: np.ndarray) -> np.ndarray:
    return np.isfinite(logits).all(axis=1)


def condition_metrics(clean_logits: np.ndarray, logits: np.ndarray, targets: np.ndarray, *, n_boot: int, seed: int,
                      valid: np.ndarray, single_label: bool | None = None, level: float = 0.95) -> Dict[str, Any]:
    """All numbers of one (model, condition).

    ``clean_logits`` and ``logits`` (N, C), ``targets`` (N, C) bool, ``valid`` (N,) bool (False:
    clip refused as bad input). Clips with a non-finite clean or perturbed logit are left out of
    every metric and counted in ``nonfinite_clips``. ``single_label=None`` detects single-label
    data from ``targets`` (all N clips: every one has exactly one true label), so every condition
    of a run gets the same rows. ``n_boot`` resamples (0: no intervals) seeded by ``seed``.

    Returns ``rows`` ({metric: {"value", and with n_boot "ci_low", "ci_high"}}), ``per_clip``
    ({PER_CLIP_SHIFT column: (N,) float64, NaN for clips not used}), ``ap`` / ``auc`` (C,),
    ``n_clips`` (used), ``n_classes`` (classes with a positive among them), ``use`` (N,) bool and
    ``single_label``.
    """
    from audiobench.metrics import calibration, shift, tagging

    clean_logits = np.asarray(clean_logits, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if single_label is None:
        single_label = tagging.is_single_label(targets)
    finite = finite_rows(logits) & finite_rows(clean_logits)
    use = valid & finite
    x = logits[use]
    scores = sigmoid(x)
    t = targets[use]
    n_clips = int(use.sum())

    tm = tagging.tagging_metrics(scores, t)
    values: Dict[str, float] = {name: float(tm[name]) for name in ("mAP", "mAUC", "d_prime", "top1_hit_rate",
                                                                    "top5_hit_rate")}
    bins = calibration.ece_bin_sums(x, t)
    values["ece"] = calibration.ece_from_sums(*(b.sum(axis=0) for b in bins))
    values["nonfinite_clips"] = float((valid & ~finite).sum())
    per_clip = shift.shift_statistics(clean_logits[use], x, t)
    values.update(shift.summarise_shift(per_clip))
    if single_label:
        values.update(tagging.single_label_metrics(scores, t))

    names = condition_metric_names(bool(single_label))
    missing = [n for n in names if n not in values]
    if missing:  # the registry and this function must agree (a test checks both directions)
        raise RuntimeError(f"condition_metrics computes no value for registered metric(s) {missing}")
    rows: Dict[str, Dict[str, float]] = {name: {"value": float(values[name])} for name in names}

    if n_boot > 0 and n_clips > 1:
        for name, (lo, hi) in _intervals(scores, x, t, per_clip, bins, bool(single_label), n_boot, seed,
                                         level, values["mAUC"]).items():
            rows[name].update(ci_low=float(lo), ci_high=float(hi))

    full_clip = {k: np.full(len(logits), np.nan) for k in PER_CLIP_SHIFT}
    for k in PER_CLIP_SHIFT:
        full_clip[k][use] = per_clip[k]
    return {
        "rows": rows, "n_clips": n_clips, "n_classes": int(tm["n_classes"]), "per_clip": full_clip,
        "ap": tagging.average_precision_per_class(scores, t), "auc": tagging.roc_auc_per_class(scores, t),
        "use": use, "single_label": bool(single_label),
    }


def _intervals(scores, logits, targets, per_clip, bins, single_label: bool, n_boot: int, seed: int,
               level: float, point_mauc: float) -> Dict[str, tuple]:
    """Percentile intervals of every metric with ``has_ci``, all from the same resamples."""
    from audiobench.metrics import bootstrap, calibration, tagging

    n = scores.shape[0]
    counts = bootstrap.resample_counts(n, n_boot, seed)
    ci: Dict[str, tuple] = {}
    tag = bootstrap.bootstrap_tagging_values(scores, targets, counts)
    ci["mAP"] = bootstrap.percentile_ci(tag["mAP"], level)
    ci["mAUC"] = bootstrap.percentile_ci(tag["mAUC"], level)
    ci["d_prime"] = bootstrap.d_prime_ci(ci["mAUC"], resolution=tagging.mauc_resolution(targets), point=point_mauc)
    hits = tagging.tagging_per_clip(scores, targets)
    per_clip_means = {"top1_hit_rate": hits["top1_hit"], "top5_hit_rate": hits["top5_hit"]}
    if single_label:
        per_clip_means["accuracy"] = tagging.single_label_correct(scores, targets)
        per_clip_means["top5_accuracy"] = hits["top5_hit"]
    ci.update(bootstrap.bootstrap_means(per_clip_means, level=level, counts=counts))
    w = counts.T.astype(np.float64)  # (R, N)
    ece = calibration.ece_from_sums(*(w @ b for b in bins))
    ci["ece"] = bootstrap.percentile_ci(ece, level)
    ci.update(bootstrap.bootstrap_shift_summary(per_clip, level=level, counts=counts))
    if single_label:
        true, pred, hit = tagging.f1_counts(scores, targets)
        present = true.any(axis=0)  # F1 is averaged over these classes only
        f1 = tagging.macro_f1_from_counts(*(w @ a[:, present].astype(np.float64) for a in (true, pred, hit)))
        ci["macro_f1"] = bootstrap.percentile_ci(f1, level)
    return ci


def min_eps_summary(min_eps: np.ndarray) -> Dict[str, float]:
    """The min-eps rows of one condition from the per-clip min-eps of the clips used.

    Per clip: NaN = no true label (nothing defined); ``MIN_EPS_MISSED_CLEAN`` (−1; 0 in runs of
    earlier versions) = no true label in the top k already clean (nothing to attack); +inf = not
    broken by PGD at eps_max (unreachable); else the eps found. The quantiles are numpy's linear
    ones over the ATTACKED clips (found and unreachable), with +inf kept as a value larger than
    any other (:func:`~audiobench.metrics.shift.linear_quantile`); each group is also counted.
    """
    from audiobench.metrics.shift import linear_quantile

    me = np.asarray(min_eps, dtype=np.float64).ravel()
    me = me[~np.isnan(me)]
    missed = me <= 0  # −1 now; 0 was how earlier versions recorded a clip missed clean
    attacked = me[~missed]
    q = (lambda p: linear_quantile(attacked, p) if attacked.size else math.nan)
    return {
        "min_eps_median": q(0.5), "min_eps_q25": q(0.25), "min_eps_q75": q(0.75),
        "min_eps_attacked_clips": float(attacked.size),
        "min_eps_unreachable_clips": float(np.isinf(attacked).sum()),
        "min_eps_missed_clean_clips": float(missed.sum()),
    }


__all__ = ["PER_CLIP_SHIFT", "MIN_EPS_MISSED_CLEAN", "condition_metrics", "min_eps_summary", "sigmoid",
           "finite_rows"]
