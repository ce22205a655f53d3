"""Multi-label ECE and the Brier score: hand-computed values and the per-clip sums the bootstrap uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logit

from audiobench.metrics.calibration import BINS, ece_bin_sums, ece_from_sums, expected_calibration_error
from audiobench.metrics.shift import shift_statistics


def test_ece_hand_computed():
    # scores 0.05, 0.05 (one true) in bin 0; 0.95 (true), 0.95 (false) in bin 14
    q = np.array([[0.05, 0.95], [0.05, 0.95]])
    t = np.array([[True, True], [False, False]])
    ece = expected_calibration_error(logit(q), t)
    # bin 0: mean t 0.5, mean q 0.05 -> |0.45| * 2/4; bin 14: 0.5 vs 0.95 -> 0.45 * 2/4
    assert ece == pytest.approx(0.45, abs=1e-12)


def test_ece_of_a_calibrated_construction_is_small_and_bins_are_closed_at_one():
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 1, size=(4000, 10))
    t = rng.random((4000, 10)) < q  # outcomes drawn at the stated probability
    assert expected_calibration_error(logit(q), t) < 0.02
    count, sum_q, _ = ece_bin_sums(np.array([[np.inf, -np.inf, 0.0]]), np.zeros((1, 3), bool))
    assert count[0, BINS - 1] == 1 and count[0, 0] == 1 and count[0, BINS // 2] == 1


def test_ece_of_weighted_sums_equals_ece_of_duplicated_clips():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 7)) * 3
    t = rng.random((30, 7)) < 0.3
    w = rng.integers(0, 4, size=30)
    sums = ece_bin_sums(x, t)
    weighted = ece_from_sums(*(w @ s for s in sums))
    idx = np.repeat(np.arange(30), w)
    assert weighted == pytest.approx(expected_calibration_error(x[idx], t[idx]), abs=1e-12)
    assert math.isnan(ece_from_sums(np.zeros(BINS), np.zeros(BINS), np.zeros(BINS)))


def test_brier_per_clip_hand_computed():
    x = np.array([[0.0, logit(0.9), logit(0.2)]])
    t = np.array([[True, False, False]])
    s = shift_statistics(x, x, t)
    assert s["brier"][0] == pytest.approx((0.25 + 0.81 + 0.04) / 3, abs=1e-12)
