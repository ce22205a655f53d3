"""Latent-space checks for models that expose an embedding and a classification head.

From J. B. Li, S. Qu, X. Li, P.-Y. Huang, F. Metze, "On Adversarial Robustness of Large-scale
Audio Visual Learning", ICASSP 2022 (arXiv:2203.12122; code lijuncheng16/AudioSetDoneRight):

* **convexity** of a class — is the region the head assigns to the class convex in the latent
  space? For random pairs (a, b) of distinct positive clips of the class, the fraction of
  interpolations λ·a + (1−λ)·b (λ on a grid, endpoints included) that the head still scores
  >= ``threshold`` (0.1 by default) for that class. 1.0 = every segment stays inside.
* **density** of a class — mean Euclidean distance from each positive clip's embedding to its k
  nearest other positives of the class (smaller = a tighter cluster).

Both are (C,) float64 arrays with NaN for classes with fewer than 2 positive clips.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.special import expit
from threadpoolctl import threadpool_limits

__all__ = ["convexity_per_class", "density_per_class"]


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _check(embeddings, targets) -> tuple[np.ndarray, np.ndarray]:
    emb = _as_numpy(embeddings)
    targets = np.asarray(_as_numpy(targets)).astype(bool)
    if emb.ndim != 2 or targets.ndim != 2 or emb.shape[0] != targets.shape[0]:
        raise ValueError(f"embeddings must be (N, D) and targets (N, C); got {emb.shape} and {targets.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings hold NaN or inf")
    return emb, targets


def convexity_per_class(
    embeddings,
    targets,
    head_fn: Callable,
    *,
    n_pairs: int = 16,
    lambdas=np.linspace(0.0, 1.0, 11),
    threshold: float = 0.1,
    seed: int = 0,
    batch_size: int = 4096,
) -> np.ndarray:
    """(C,) fraction of head scores >= ``threshold`` along segments between positive clips.

    ``embeddings`` (N, D) numpy (or torch) array, ``targets`` (N, C) bool. ``head_fn`` maps an
    (M, D) float32 numpy array of embeddings to (M, C) logits (numpy or torch); it is called in
    batches of at most ``batch_size`` rows. Wrap a torch head as e.g.
    ``lambda z: head(torch.from_numpy(z).to(device))``. Scores are ``sigmoid(logits)[:, c]``.

    For each class c with >= 2 positives, ``n_pairs`` ordered pairs (a, b) of distinct positive
    clips are drawn uniformly at random from ``numpy.random.default_rng([seed, c])`` (a stream
    per class: the pairs of a class do not depend on the other classes; pairs may repeat when the
    class has few positives). Each pair gives ``len(lambdas)`` points λ·a + (1−λ)·b; the value is
    the fraction of all ``n_pairs * len(lambdas)`` points scored >= ``threshold`` for class c.
    NaN for classes with fewer than 2 positives.
    """
    emb, targets = _check(embeddings, targets)
    lam = np.asarray(lambdas, dtype=np.float64).ravel()
    if n_pairs < 1 or lam.size < 1:
        raise ValueError(f"need n_pairs >= 1 and at least one lambda, got {n_pairs} and {lam.size}")
    if np.any((lam < 0) | (lam > 1)):
        raise ValueError("lambdas must lie in [0, 1]")
    n_classes = targets.shape[1]
    out = np.full(n_classes, np.nan)
    emb64 = emb.astype(np.float64)

    classes, points = [], []
    for c in range(n_classes):
        pos = np.flatnonzero(targets[:, c])
        if pos.size < 2:
            continue
        rng = np.random.default_rng([seed, c])
        ia = rng.integers(0, pos.size, size=n_pairs)
        # b uniform over the other positives: shift by 1..n-1 modulo n
        ib = (ia + rng.integers(1, pos.size, size=n_pairs)) % pos.size
        a, b = emb64[pos[ia]], emb64[pos[ib]]  # (P, D)
        z = lam[None, :, None] * a[:, None, :] + (1.0 - lam)[None, :, None] * b[:, None, :]
        classes.append(c)
        points.append(z.reshape(-1, emb.shape[1]))
    if not classes:
        return out

    z_all = np.concatenate(points).astype(np.float32)
    owner = np.repeat(np.asarray(classes), [p.shape[0] for p in points])
    inside = np.empty(z_all.shape[0], dtype=bool)
    for i0 in range(0, z_all.shape[0], batch_size):
        i1 = min(i0 + batch_size, z_all.shape[0])
        logits = _as_numpy(head_fn(z_all[i0:i1])).astype(np.float64)
        if logits.ndim != 2 or logits.shape != (i1 - i0, n_classes):
            raise ValueError(f"head_fn must return ({i1 - i0}, {n_classes}) logits, got {logits.shape}")
        inside[i0:i1] = expit(logits[np.arange(i1 - i0), owner[i0:i1]]) >= threshold
    per = inside.reshape(len(classes), -1)
    out[np.asarray(classes)] = per.mean(axis=1)
    return out


def density_per_class(embeddings, targets, k: int = 5, *, chunk: int = 1024) -> np.ndarray:
    """(C,) mean distance from each positive clip to its k nearest other positives of the class.

    Euclidean distance in the embedding space (float64): neighbours are found with the
    ``|a|² + |b|² − 2a·b`` form and their distances then computed directly. ``k`` is capped at
    (positives − 1); NaN for classes with fewer than 2 positives. Distances are computed in row chunks of
    ``chunk`` clips, so a class with many positives does not need an n² matrix at once.
    """
    emb, targets = _check(embeddings, targets)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    emb = emb.astype(np.float64)
    out = np.full(targets.shape[1], np.nan)
    # many small Gram matrices: a multi-threaded BLAS spends far more time waking its threads
    # than multiplying (x50 slower measured on a busy 2-core machine), so use one thread here
    with threadpool_limits(limits=1, user_api="blas"):
        for c in range(targets.shape[1]):
            out[c] = _density_one(emb[targets[:, c]], k, chunk)
    return out


def _density_one(x: np.ndarray, k: int, chunk: int) -> float:
    n = x.shape[0]
    if n < 2:
        return np.nan
    kk = min(k, n - 1)
    sq = (x * x).sum(axis=1)
    total = 0.0
    for i0 in range(0, n, chunk):
        i1 = min(i0 + chunk, n)
        d2 = sq[i0:i1, None] + sq[None, :] - 2.0 * (x[i0:i1] @ x.T)
        d2[np.arange(i1 - i0), np.arange(i0, i1)] = np.inf  # not its own neighbour
        # pick neighbours with the fast Gram form, then measure them exactly (a - b)
        nb = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
        diff = x[i0:i1, None, :] - x[nb]
        total += np.sqrt((diff * diff).sum(axis=2)).mean(axis=1).sum()
    return total / n
