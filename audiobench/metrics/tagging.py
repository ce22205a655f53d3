"""Tagging quality of one condition: per-class AP / AUC, mAP, mAUC, d′, top-1 / top-5 hit rates.

Inputs are numpy arrays: ``scores`` (N clips, C classes) and ``targets`` (N, C) bool. Pass the
model's **logits** (or any monotone score): AP/AUC depend only on the order of the scores, and a
float32 sigmoid saturates to exactly 1.0 for logits above ~17, which would create ties that the
logits do not have.

Per-class AP and AUC equal scikit-learn's ``average_precision_score`` / ``roc_auc_score`` on each
column (ties included) — computed by one vectorised pass over a per-class sort
(:mod:`audiobench.metrics._rank`), the same code the bootstrap uses.

Non-finite scores: a clip with any NaN/±inf score is excluded from every metric of the condition
(its ranks would be meaningless) and counted as ``nonfinite_clips``; nothing is raised, so one
diverging clip cannot kill a long run, but it is reported.
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
from scipy.stats import norm

from audiobench.metrics._rank import weighted_ap_auc

__all__ = [
    "average_precision_per_class",
    "roc_auc_per_class",
    "ap_auc_per_class",
    "d_prime",
    "mauc_resolution",
    "finite_clips",
    "top_k_hits",
    "tagging_per_clip",
    "tagging_metrics",
    "is_single_label",
    "argmax_predictions",
    "single_label_correct",
    "f1_counts",
    "macro_f1_from_counts",
    "single_label_metrics",
]


def _check(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(f"scores and targets must both be (N, C); got {scores.shape} and {targets.shape}")
    if targets.dtype != bool:
        if not np.isin(targets, (0, 1)).all():
            raise ValueError("targets must be boolean (or 0/1)")
        targets = targets.astype(bool)
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise TypeError(f"scores must be numeric, got dtype {scores.dtype}")
    return scores, targets


def finite_clips(scores) -> np.ndarray:
    """(N,) bool: clips whose scores are all finite (the clips the metrics use)."""
    scores = np.asarray(scores)
    return np.isfinite(scores).all(axis=1)


def ap_auc_per_class(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (AP, AUC), each (C,) float64, over the clips with finite scores.

    AP is NaN for a class with no positive clip, AUC for a class with no positive or no
    negative clip. Equal to scikit-learn's per-column scores (see module docstring).
    """
    scores, targets = _check(scores, targets)
    keep = finite_clips(scores)
    if not keep.all():
        scores, targets = scores[keep], targets[keep]
    ones = np.ones((scores.shape[0], 1), dtype=np.uint8)
    ap, auc = weighted_ap_auc(scores, targets, ones)
    return ap[0], auc[0]


def average_precision_per_class(scores, targets) -> np.ndarray:
    """(C,) average precision per class (scikit-learn's step-wise AP); NaN with no positive."""
    return ap_auc_per_class(scores, targets)[0]


def roc_auc_per_class(scores, targets) -> np.ndarray:
    """(C,) ROC AUC per class (ties count 1/2); NaN with no positive or no negative."""
    return ap_auc_per_class(scores, targets)[1]


def d_prime(auc) -> np.ndarray | float:
    """d′ = √2 · Φ⁻¹(AUC) (equal-variance Gaussian model); ±inf at AUC 1 / 0, NaN for NaN."""
    out = math.sqrt(2.0) * norm.ppf(np.asarray(auc, dtype=np.float64))
    return float(out) if np.ndim(out) == 0 else out


def mauc_resolution(targets) -> float:
    """The smallest step of the mAUC below 1 on these clips: one misordered (positive, negative)
    pair in the class with the most pairs, 1 / (K · max_c P_c·N_c) over the K classes that have a
    positive and a negative clip; NaN when there is none."""
    t = np.asarray(targets, dtype=bool)
    pos = t.sum(axis=0).astype(np.float64)
    neg = t.shape[0] - pos
    both = (pos > 0) & (neg > 0)
    if not both.any():
        return math.nan
    return float(1.0 / (both.sum() * (pos[both] * neg[both]).max()))


def top_k_hits(scores, targets, k: int) -> np.ndarray:
    """(N,) float: 1.0 if some true label is among the clip's k top-scored classes, else 0.0.

    NaN for clips without any true label or with a non-finite score. Ties are broken AGAINST the
    true labels: a true label is in the top k only if fewer than k non-true classes score at
    least as high as the best true label. A constant output therefore never scores a hit (a
    broken model must not look good); with distinct scores this is the ordinary top-k.
    """
    scores, targets = _check(scores, targets)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = scores.astype(np.float64, copy=False)
    has_label = targets.any(axis=1)
    best_true = np.where(targets, s, -np.inf).max(axis=1, initial=-np.inf)
    n_rivals = ((s >= best_true[:, None]) & ~targets).sum(axis=1)
    hit = (n_rivals < k).astype(np.float64)
    hit[~has_label | ~finite_clips(s)] = np.nan
    return hit


def tagging_per_clip(scores, targets) -> Dict[str, np.ndarray]:
    """Per-clip columns for ``per_clip.csv``: ``top1_hit``, ``top5_hit`` (float, NaN for clips
    without a true label or with non-finite scores) and ``nonfinite`` (bool)."""
    scores, targets = _check(scores, targets)
    return {
        "top1_hit": top_k_hits(scores, targets, 1),
        "top5_hit": top_k_hits(scores, targets, 5),
        "nonfinite": ~finite_clips(scores),
    }


def summarise_ap_auc(ap: np.ndarray, auc: np.ndarray) -> tuple[float, float, float]:
    """(mAP, mAUC, d′) from per-class AP/AUC (NaN classes skipped; NaN when none is defined).

    The same reduction is applied to every bootstrap resample.
    """
    ap = np.asarray(ap, dtype=np.float64)
    auc = np.asarray(auc, dtype=np.float64)
    m_ap = _nanmean_last(ap)
    m_auc = _nanmean_last(auc)
    return m_ap, m_auc, d_prime(m_auc)


def _nanmean_last(x: np.ndarray):
    """Mean over the last axis ignoring NaN, NaN (no warning) when every entry is NaN."""
    ok = ~np.isnan(x)
    n = ok.sum(axis=-1)
    total = np.where(ok, x, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return float(out) if out.ndim == 0 else out


def tagging_metrics(scores, targets) -> Dict[str, float]:
    """Clip-level tagging quality of one condition.

    Returns a dict of floats:

    * ``mAP`` — mean over classes with >= 1 positive clip of the per-class AP;
    * ``mAUC`` — mean over classes with >= 1 positive and >= 1 negative clip of the per-class AUC;
    * ``d_prime`` — √2 · Φ⁻¹(mAUC);
    * ``top1_hit_rate`` / ``top5_hit_rate`` — fraction of clips with >= 1 true label whose
      top-1 / top-5 classes contain a true label (ties broken against the true label, see
      :func:`top_k_hits`);
    * ``n_clips`` — clips used (finite scores), ``n_classes`` — classes averaged in mAP,
      ``n_classes_auc`` — classes averaged in mAUC, ``n_labelled_clips`` — clips used by the hit
      rates, ``nonfinite_clips`` — clips excluded because a score was NaN/±inf.

    Every metric is NaN (never an exception) when nothing is left to average.
    """
    scores, targets = _check(scores, targets)
    keep = finite_clips(scores)
    ap, auc = ap_auc_per_class(scores, targets)
    m_ap, m_auc, dp = summarise_ap_auc(ap, auc)
    per_clip = tagging_per_clip(scores, targets)
    labelled = ~np.isnan(per_clip["top1_hit"])
    n_lab = int(labelled.sum())
    return {
        "mAP": m_ap,
        "mAUC": m_auc,
        "d_prime": dp,
        "top1_hit_rate": float(per_clip["top1_hit"][labelled].mean()) if n_lab else math.nan,
        "top5_hit_rate": float(per_clip["top5_hit"][labelled].mean()) if n_lab else math.nan,
        "n_clips": int(keep.sum()),
        "n_classes": int((~np.isnan(ap)).sum()),
        "n_classes_auc": int((~np.isnan(auc)).sum()),
        "n_labelled_clips": n_lab,
        "nonfinite_clips": int((~keep).sum()),
    }


# -- single-label data (every clip has exactly one true label) ---------------------------------------
def is_single_label(targets) -> bool:
    """True when there is at least one clip and every clip has exactly one true label."""
    t = np.asarray(targets, dtype=bool)
    return bool(t.ndim == 2 and t.shape[0] > 0 and (t.sum(axis=1) == 1).all())


def argmax_predictions(scores) -> np.ndarray:
    """(N,) int64 predicted class per clip: the top-scored class, lowest index on ties (the
    decision rule of ``accuracy`` and ``macro_f1``)."""
    return np.argmax(np.asarray(scores), axis=1).astype(np.int64)


def single_label_correct(scores, targets) -> np.ndarray:
    """(N,) float 0/1: is the argmax prediction the clip's label (any true label)?"""
    scores, targets = _check(scores, targets)
    pred = argmax_predictions(scores)
    return targets[np.arange(len(pred)), pred].astype(np.float64)


def f1_counts(scores, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-clip one-hot rows for the F1 counts of single-label data, each (N, C) uint8:
    ``true`` (the label), ``pred`` (the argmax prediction), ``hit`` (both). Summed over clips
    (or weighted by bootstrap counts) they give P_c, PP_c and TP_c of every class."""
    scores, targets = _check(scores, targets)
    n, c = scores.shape
    pred = np.zeros((n, c), dtype=np.uint8)
    pred[np.arange(n), argmax_predictions(scores)] = 1
    true = targets.astype(np.uint8)
    return true, pred, true & pred


def macro_f1_from_counts(p: np.ndarray, pp: np.ndarray, tp: np.ndarray) -> np.ndarray | float:
    """Macro F1 from class totals (last axis = classes): positives P, predicted positives PP and
    true positives TP. F1_c = 2·TP_c / (P_c + PP_c), averaged over the classes with P_c > 0 (the
    classes that are some clip's label); NaN when there is none. Equals scikit-learn's
    ``f1_score(y, pred, labels=<those classes>, average="macro")``."""
    p, pp, tp = (np.asarray(a, dtype=np.float64) for a in (p, pp, tp))
    present = p > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2.0 * tp / np.maximum(p + pp, 1.0), 0.0)
        n = present.sum(axis=-1)
        out = np.where(n > 0, f1.sum(axis=-1) / np.maximum(n, 1), np.nan)
    return float(out) if out.ndim == 0 else out


def single_label_metrics(scores, targets) -> Dict[str, float]:
    """``accuracy``, ``top5_accuracy`` and ``macro_f1`` of single-label data (clips with finite
    scores). accuracy and macro F1 use the argmax prediction (lowest class index on ties);
    top-5 accuracy breaks ties against the label, as :func:`top_k_hits`."""
    scores, targets = _check(scores, targets)
    keep = finite_clips(scores)
    scores, targets = scores[keep], targets[keep]
    if not len(scores):
        return {"accuracy": math.nan, "top5_accuracy": math.nan, "macro_f1": math.nan}
    true, pred, hit = f1_counts(scores, targets)
    return {
        "accuracy": float(single_label_correct(scores, targets).mean()),
        "top5_accuracy": float(np.nanmean(top_k_hits(scores, targets, 5))),
        "macro_f1": macro_f1_from_counts(true.sum(0), pred.sum(0), hit.sum(0)),
    }
