"""Calibration of multi-label scores: the Brier score and a multi-label expected calibration error.

Every (clip, class) pair is one binary prediction with probability ``q`` = sigmoid(logit) and
outcome ``t`` (true label or not). The ECE pools all N x C pairs into ``BINS`` equal-width bins of
``q`` on [0, 1] (a score of exactly 1 goes to the last bin) and is

    ECE = Σ_b (n_b / (N·C)) · |mean(t in b) − mean(q in b)|,

i.e. Naeini et al.'s ECE applied to each class's sigmoid output. On AudioSet-like data most pairs
sit in the lowest bin, so the ECE is dominated by how well the near-zero scores match the (low)
base rates; read it beside the Brier score.

The per-clip bin sums (:func:`ece_bin_sums`) make the ECE a function of clip weights, so the
bootstrap reuses them: a resample's ECE is that of the clip-count-weighted sums.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

__all__ = ["BINS", "ece_bin_sums", "ece_from_sums", "expected_calibration_error"]

BINS = 15


def ece_bin_sums(logits, targets, bins: int = BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per clip and bin: (count, Σq, Σt), each (N, bins) float64, over the clip's C classes."""
    x = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=bool)
    if x.ndim != 2 or t.shape != x.shape:
        raise ValueError(f"logits and targets must both be (N, C); got {x.shape} and {t.shape}")
    q = expit(x)
    b = np.minimum((q * bins).astype(np.int64), bins - 1)
    n = x.shape[0]
    flat = (b + (np.arange(n) * bins)[:, None]).ravel()
    size = n * bins
    count = np.bincount(flat, minlength=size).reshape(n, bins).astype(np.float64)
    sum_q = np.bincount(flat, weights=q.ravel(), minlength=size).reshape(n, bins)
    sum_t = np.bincount(flat, weights=t.ravel().astype(np.float64), minlength=size).reshape(n, bins)
    return count, sum_q, sum_t


def ece_from_sums(count, sum_q, sum_t):
    """ECE from (..., bins) totals; NaN when every count is zero."""
    count, sum_q, sum_t = (np.asarray(a, dtype=np.float64) for a in (count, sum_q, sum_t))
    total = count.sum(axis=-1)
    gap = np.abs(sum_t - sum_q).sum(axis=-1)  # Σ_b n_b·|mean t − mean q| = Σ_b |Σt − Σq|
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, gap / np.maximum(total, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def expected_calibration_error(logits, targets, bins: int = BINS) -> float:
    """The multi-label ECE (module docstring) of all clips given."""
    count, sum_q, sum_t = ece_bin_sums(logits, targets, bins)
    return ece_from_sums(count.sum(0), sum_q.sum(0), sum_t.sum(0))
