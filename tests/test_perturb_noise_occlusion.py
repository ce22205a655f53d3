"""none, gaussian, occlusion: exact SNR, exact mask counts, determinism, no in-place edits, errors."""

from __future__ import annotations

import math

import pytest
import torch

from audiobench.errors import ConfigError
from audiobench.perturb import PERTURBATIONS
from audiobench.perturb.base import AttackTrace, realised_snr_db
from audiobench.perturb.noise import GaussianNoise, add_noise_at_snr
from audiobench.perturb.occlusion import Occlusion, band_bins, occlusion_mask
from perturb_helpers import one_thread, SR, rng_for, waves


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_none_is_identity_copy():
    x = waves(3, 800)
    p = PERTURBATIONS.get("none")()
    y = p(x)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()
    assert p.condition_id == "none" and p.param == "none" and p.level == 0.0


@pytest.mark.parametrize("snr", [40.0, 20.0, 5.0, 0.0, -5.0])
def test_gaussian_realised_snr_exact(snr):
    x = waves(4, 4000, amp=0.05)  # quiet clips: no clamping even at -5 dB
    y = GaussianNoise(snr_db=snr)(x, rng=rng_for(range(4)))
    s = realised_snr_db(x, y)
    assert (s - snr).abs().max() < 0.1
    assert (s - snr).abs().max() < 1e-3  # in fact exact up to float32 rounding


def test_gaussian_inf_and_sigma_zero_are_clean():
    x = waves(2, 800)
    assert torch.equal(GaussianNoise(snr_db=math.inf)(x, rng=rng_for(range(2))), x)
    assert torch.equal(GaussianNoise(sigma=0.0)(x, rng=rng_for(range(2))), x)


def test_gaussian_sigma_level_and_clamp():
    x = waves(8, 20000, amp=0.2)
    p = GaussianNoise(sigma=0.1)
    y = p(x, rng=rng_for(range(8)))
    assert p.param == "sigma" and p.condition_id == "gaussian:sigma=0.1"
    assert abs(float((y - x).std()) - 0.1) < 0.003
    assert y.abs().max() <= 1.0
    big = GaussianNoise(sigma=5.0)(x, rng=rng_for(range(8)))
    assert big.abs().max() <= 1.0 and (big.abs() == 1.0).any()


def test_gaussian_silent_clip_left_silent():
    x = torch.zeros(2, 500)
    x[1] = 0.1
    y = GaussianNoise(snr_db=10)(x, rng=rng_for(range(2)))
    assert torch.equal(y[0], x[0])
    assert not torch.equal(y[1], x[1])
    s = realised_snr_db(x, y)
    assert math.isinf(float(s[0])) and abs(float(s[1]) - 10) < 0.01


def test_gaussian_deterministic_batch_independent_and_not_in_place():
    x = waves(8, 1000)
    x0 = x.clone()
    p = GaussianNoise(snr_db=10)
    a = p(x, rng=rng_for(range(8)))
    b = p(x, rng=rng_for(range(8)))
    assert torch.equal(a, b)
    assert torch.equal(x, x0)
    singles = torch.cat([p(x[i : i + 1], rng=rng_for([i])) for i in range(8)])
    assert torch.equal(a, singles)
    rev = p(x.flip(0), rng=rng_for(list(range(8))[::-1]))
    assert torch.equal(rev.flip(0), a)
    assert not torch.equal(a, p(x, rng=rng_for(range(8), seed=8)))


@pytest.mark.parametrize("kw", [dict(snr_db=float("nan")), dict(snr_db=-math.inf), dict(sigma=-0.1), dict(), dict(snr_db=1, sigma=1), dict(snr_db="x")])
def test_gaussian_invalid(kw):
    with pytest.raises(ConfigError):
        GaussianNoise(**kw)


def _expected_alternate(n, p):
    pairs = n // (2 * p)
    return pairs * p + max(0, n - pairs * 2 * p - p)


@pytest.mark.parametrize("period", [0.25, 0.1, 0.03, 2.0])
def test_alternate_fraction(period):
    n = 8000
    m = occlusion_mask("alternate", n, SR, period_s=period)
    p = int(round(period * SR))
    assert int(m.sum()) == _expected_alternate(n, p)
    if n % (2 * p) == 0:
        assert float(m.float().mean()) == 0.5


@pytest.mark.parametrize("pattern", ["first", "middle", "last"])
def test_span_patterns(pattern):
    x = waves(2, 8000) + 0.6  # no zeros in the clean clip
    p = Occlusion(pattern=pattern, span_s=0.3).with_sample_rate(SR)
    y = p(x, rng=rng_for(range(2)))
    zeros = y == 0
    assert int(zeros[0].sum()) == 2400 and int(zeros[1].sum()) == 2400
    where = zeros[0].nonzero().flatten()
    start = {"first": 0, "middle": (8000 - 2400) // 2, "last": 8000 - 2400}[pattern]
    assert int(where[0]) == start and int(where[-1]) == start + 2399
    keep = ~zeros
    assert torch.equal(y[keep], x.clamp(-1, 1)[keep])
    # span longer than the clip masks all of it
    assert int(occlusion_mask(pattern, 100, SR, span_s=1.0).sum()) == 100


def test_concat_packs_kept_audio_to_front():
    x = waves(1, 8000) + 0.6
    x = x.clamp(-1, 1)
    y = Occlusion(pattern="first-concat", span_s=0.25).with_sample_rate(SR)(x, rng=rng_for([0]))
    assert torch.equal(y[0, :6000], x[0, 2000:])
    assert bool((y[0, 6000:] == 0).all())
    y = Occlusion(pattern="alternate-concat", period_s=0.125).with_sample_rate(SR)(x, rng=rng_for([0]))
    kept = x[0].reshape(8, 1000)[0::2].reshape(-1)
    assert torch.equal(y[0, :4000], kept) and bool((y[0, 4000:] == 0).all())


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.37, 0.5, 1.0])
def test_random_fraction_exact_and_per_clip(fraction):
    x = waves(4, 8000) + 0.6
    p = Occlusion(pattern="random", fraction=fraction, period_s=0.05).with_sample_rate(SR)
    y = p(x.clamp(-1, 1), rng=rng_for(range(4)))
    counts = (y == 0).sum(dim=1)
    assert counts.tolist() == [round(fraction * 8000)] * 4
    m = p.mask(8000, rng=rng_for(range(4)), batch=4)
    assert torch.equal(m, y == 0)
    if 0 < fraction < 1:
        assert not torch.equal(m[0], m[1])  # each clip has its own blocks
    singles = torch.cat([p(x[i : i + 1].clamp(-1, 1), rng=rng_for([i])) for i in range(4)])
    assert torch.equal(singles, y)


def test_noise_fill_level():
    x = waves(2, 16000) + 0.6
    p = Occlusion(pattern="first", span_s=1.0, fill="noise", fill_level_db=-20).with_sample_rate(SR)
    y = p(x.clamp(-1, 1), rng=rng_for(range(2)))
    rms = float(y[:, :8000].pow(2).mean().sqrt())
    assert abs(20 * math.log10(rms) + 20) < 0.2
    assert p.condition_id == "occlusion/first+noise-20dB:span_s=1"


def test_band_masking_removes_band_and_keeps_rest():
    t = torch.arange(8000) / SR
    lowtone = 0.3 * torch.sin(2 * math.pi * 200 * t)
    hightone = 0.3 * torch.sin(2 * math.pi * 2000 * t)
    x = (lowtone + hightone)[None].float()
    p = Occlusion(pattern="band", band_hz="1500-2500").with_sample_rate(SR)
    y = p(x, rng=rng_for([0]))
    assert p.param == "band_hz" and p.level == 1000.0
    assert (y[0, 600:-600] - lowtone[600:-600]).abs().max() < 0.01  # the 2 kHz tone is gone
    bins = band_bins(512, SR, (1500.0, 2500.0))
    assert int(bins.sum()) == 65  # bins k*15.625 Hz, k = 96..160
    # a band with nothing in it leaves the clip unchanged up to STFT rounding
    z = Occlusion(pattern="band", band_hz=(3500, 3900)).with_sample_rate(SR)(x, rng=rng_for([0]))
    assert (z - x)[:, 600:-600].abs().max() < 2e-3


@pytest.mark.parametrize(
    "kw",
    [
        dict(pattern="alternate", period_s=0),
        dict(pattern="alternate", period_s=-1),
        dict(pattern="alternate"),
        dict(pattern="diagonal", period_s=1),
        dict(pattern="first", span_s=float("nan")),
        dict(pattern="random", fraction=1.5),
        dict(pattern="band", band_hz="2000-500"),
        dict(pattern="band", band_hz="abc"),
        dict(pattern="alternate", period_s=1, fill="pink"),
        dict(pattern="first", span_s=1, period_s=1),
    ],
)
def test_occlusion_invalid(kw):
    with pytest.raises(ConfigError):
        Occlusion(**kw)


def test_occlusion_needs_sample_rate():
    with pytest.raises(ConfigError, match="sample_rate"):
        Occlusion(pattern="first", span_s=0.1)(waves(1, 100), rng=rng_for([0]))


def test_trace_merge_exact_means():
    a, b = AttackTrace(), AttackTrace()
    a.add_step(0, 1.0, 3)
    a.add_step(1, 2.0, 3)
    b.add_step(0, 4.0, 1)
    a.add_clips(3, 1)
    b.add_clips(1, 0)
    a.add_per_clip("min_eps", [0.1, 0.2, 0.3])
    b.add_per_clip("min_eps", torch.tensor([0.4]))
    m = AttackTrace().merge(a).merge(b)
    assert m.loss_per_step == [7.0 / 4, 2.0]
    assert m.n_clips == 4 and m.bad_grad_clips == 1 and m.bad_grad_fraction == 0.25
    assert m.per_clip["min_eps"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
