"""Property-based tests (hypothesis) of the perturbations: random waveforms, levels and seeds."""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from audiobench.perturb import PERTURBATIONS  # noqa: E402
from audiobench.perturb.base import realised_snr_db  # noqa: E402
from audiobench.perturb.noise import GaussianNoise, add_noise_at_snr  # noqa: E402
from audiobench.perturb.occlusion import Occlusion, occlusion_mask  # noqa: E402
from perturb_helpers import SR, TinyConvTagger, LinearTagger, one_thread, rng_for  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None)
MODEL = TinyConvTagger()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _wave(seed: int, batch: int, samples: int, amp: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(batch, samples, generator=g) * 2 - 1) * amp).float()


def _targets(seed: int, batch: int, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.rand(batch, n, generator=g) < 0.4


@SETTINGS
@given(
    kind=st.sampled_from(["pgd", "fgsm", "apgd"]),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.0, 2.0),
    amp=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
    batch=st.integers(1, 3),
    restarts=st.integers(1, 2),
)
def test_attacks_inside_ball_and_range(kind, norm, eps, amp, seed, batch, restarts):
    x = _wave(seed, batch, 400, amp)
    x0 = x.clone()
    kw = dict(eps=eps, norm=norm)
    if kind != "fgsm":
        kw.update(steps=3, restarts=restarts)
    y = PERTURBATIONS.get(kind)(**kw)(x, model=MODEL, targets=_targets(seed, batch), rng=rng_for(range(batch), seed=seed))
    assert torch.equal(x, x0)
    d = y.double() - x.double()
    if norm == "linf":
        assert float(d.abs().max()) <= eps + 1e-7
    else:
        # The projection is exact in real arithmetic; storing x + delta in float32 rounds each
        # sample by at most half an ulp of 1 (2**-24), so the realised norm may exceed eps by at
        # most sqrt(samples) * 2**-24 (the L2 analogue of the 1e-7 slack of the linf check).
        slack = x.shape[1] ** 0.5 * 2.0 ** -24
        assert float(d.norm(dim=1).max()) <= eps * (1 + 1e-5) + slack
    assert float(y.abs().max()) <= 1.0
    if eps == 0:
        assert torch.equal(x, y)


@SETTINGS
@given(
    snr=st.floats(-20.0, 60.0),
    amp=st.floats(1e-3, 1.0),
    seed=st.integers(0, 2**31),
    batch=st.integers(1, 4),
    samples=st.integers(16, 2000),
)
def test_gaussian_realised_snr(snr, amp, seed, batch, samples):
    x = _wave(seed, batch, samples, amp)
    y = add_noise_at_snr(x, snr, rng_for(range(batch), seed=seed), clamp=False)
    assert float((realised_snr_db(x, y) - snr).abs().max()) < 0.1
    # the registered class is the same noise, clamped
    z = GaussianNoise(snr_db=snr)(x, rng=rng_for(range(batch), seed=seed))
    assert torch.equal(z, y.clamp(-1, 1))


@SETTINGS
@given(
    pattern=st.sampled_from(["alternate", "first", "middle", "last", "random", "first-concat", "alternate-concat", "random-concat"]),
    level=st.floats(0.001, 0.2),
    fraction=st.floats(0.0, 1.0),
    samples=st.integers(10, 3000),
    seed=st.integers(0, 2**31),
    batch=st.integers(1, 3),
)
def test_occlusion_fraction_exact(pattern, level, fraction, samples, seed, batch):
    base = pattern.replace("-concat", "")
    kw = {"alternate": dict(period_s=level), "random": dict(period_s=level, fraction=fraction)}.get(base, dict(span_s=level))
    p = Occlusion(pattern=pattern, **kw).with_sample_rate(SR)
    x = _wave(seed, batch, samples, 0.4) + 0.5  # strictly positive: zeros mark the masked samples
    y = p(x, rng=rng_for(range(batch), seed=seed))
    counts = (y == 0).sum(dim=1)
    L = int(round(level * SR))
    if base == "alternate":
        pairs = samples // (2 * L)
        expected = pairs * L + max(0, samples - pairs * 2 * L - L)
    elif base == "random":
        expected = round(fraction * samples)
    else:
        expected = min(L, samples)
    assert counts.tolist() == [expected] * batch
    if not pattern.endswith("-concat"):
        m = occlusion_mask(pattern, samples, SR, rng=rng_for(range(batch), seed=seed), batch=batch, **kw)
        assert torch.equal(m, y == 0) and torch.equal(y[~m], x[~m])


@SETTINGS
@given(
    kind=st.sampled_from(["gaussian", "occlusion", "pgd", "apgd", "fgsm"]),
    seed=st.integers(0, 2**31),
    level=st.floats(0.0, 0.1),
    norm=st.sampled_from(["linf", "l2"]),
)
def test_identical_across_batch_sizes(kind, seed, level, norm):
    # LinearTagger's per-clip arithmetic does not depend on the batch, so attacks must be bit-identical
    g = torch.Generator().manual_seed(seed)
    model = LinearTagger(torch.randn(300, generator=g) * 0.1, 0.1)
    x = _wave(seed, 8, 300, 0.5)
    t = _targets(seed, 8, n=1)
    if kind == "gaussian":
        p = GaussianNoise(snr_db=level * 300 - 10)
    elif kind == "occlusion":
        p = Occlusion(pattern="random", fraction=level * 10, period_s=0.002).with_sample_rate(SR)
    elif kind == "fgsm":
        p = PERTURBATIONS.get(kind)(eps=level, norm=norm)
    else:
        p = PERTURBATIONS.get(kind)(eps=level, norm=norm, steps=3)
    whole = p(x, model=model, targets=t, rng=rng_for(range(8), seed=seed))
    singles = torch.cat([p(x[i : i + 1], model=model, targets=t[i : i + 1], rng=rng_for([i], seed=seed)) for i in range(8)])
    halves = torch.cat([p(x[i : i + 4], model=model, targets=t[i : i + 4], rng=rng_for(range(i, i + 4), seed=seed)) for i in (0, 4)])
    assert torch.equal(whole, singles) and torch.equal(whole, halves)
