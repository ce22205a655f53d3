"""Latent-space convexity and density on hand-built embeddings and heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiobench.metrics.latent import convexity_per_class, density_per_class


def _two_point_class():
    # class 0: positives at z0 = -1 and z0 = +1; class 1: a single positive; class 2: none
    emb = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 5.0], [3.0, 3.0]])
    targets = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    return emb, targets


def test_convexity_linear_head_known_fraction():
    emb, targets = _two_point_class()

    def head(z):  # logit of every class = z0 (a half-space decision region)
        return np.repeat(z[:, :1], 3, axis=1)

    # threshold 0.4: inside iff z0 >= logit(0.4) = -0.405; along a pair z0 = ±(1 - 2λ), so
    # λ in {0, ..., 0.7} (8 of 11) for (a, b) and the mirror 8 of 11 for (b, a)
    conv = convexity_per_class(emb, targets, head, threshold=0.4, n_pairs=10)
    assert conv[0] == pytest.approx(8 / 11, abs=1e-15)
    assert math.isnan(conv[1]) and math.isnan(conv[2])


def test_convexity_non_convex_head_and_torch_head():
    emb, targets = _two_point_class()
    w = torch.tensor([[10.0, 0.0]])

    def head(z):  # a torch head: logit = 10 (|z0| - 0.5): a hole around z0 = 0
        z = torch.as_tensor(z)
        return (10 * (z[:, :1].abs() - 0.5)).repeat(1, 3) + 0 * (z @ w.T)

    # threshold 0.1: inside iff |1 - 2λ| >= 0.5 - 0.2197 -> λ in {0, .1, .2, .3, .7, .8, .9, 1}
    conv = convexity_per_class(emb, targets, head, threshold=0.1)
    assert conv[0] == pytest.approx(8 / 11, abs=1e-15)
    # a head that accepts everything gives 1, one that rejects everything 0
    assert convexity_per_class(emb, targets, lambda z: np.full((len(z), 3), 9.0))[0] == 1.0
    assert convexity_per_class(emb, targets, lambda z: np.full((len(z), 3), -9.0))[0] == 0.0


def test_convexity_random_pairs_seeded_and_batched():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 4))
    targets = rng.random((40, 3)) < 0.5
    calls = []

    def head(z):
        calls.append(len(z))
        return z[:, :3] * 3

    a = convexity_per_class(emb, targets, head, seed=1, batch_size=50)
    assert max(calls) <= 50 and sum(calls) == 3 * 16 * 11
    b = convexity_per_class(emb, targets, head, seed=1)
    c = convexity_per_class(emb, targets, head, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # pairs really are drawn from the seed
    assert np.all((a >= 0) & (a <= 1))


def test_convexity_pairs_are_distinct_clips():
    # with distinct positives, a pair (a, a) would give a constant segment; a head that is
    # inside only exactly at the clips themselves (|z0| = 1) scores the 2 endpoints of 11 points
    emb = np.array([[-1.0], [1.0]])
    targets = np.ones((2, 1), bool)
    head = lambda z: np.where(np.isclose(np.abs(z), 1.0), 9.0, -9.0)  # noqa: E731
    assert convexity_per_class(emb, targets, head, n_pairs=50)[0] == pytest.approx(2 / 11)


def test_density_hand_computed():
    emb = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 10.0]])
    targets = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    # class 0 at 0, 1, 3: nearest distances 1, 1, 2
    assert density_per_class(emb, targets, k=1)[0] == pytest.approx(4 / 3)
    # k capped at 2: (1+3)/2, (1+2)/2, (3+2)/2 -> mean 2; same with tiny chunks
    assert density_per_class(emb, targets, k=5)[0] == pytest.approx(2.0)
    assert density_per_class(emb, targets, k=5, chunk=1)[0] == pytest.approx(2.0)
    d = density_per_class(emb, targets, k=2)
    assert d[1] == pytest.approx(3.0) and math.isnan(d[2])


def test_density_invariant_to_clip_order():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(30, 5))
    targets = rng.random((30, 4)) < 0.4
    perm = rng.permutation(30)
    np.testing.assert_allclose(
        density_per_class(emb, targets), density_per_class(emb[perm], targets[perm]), rtol=1e-12
    )
