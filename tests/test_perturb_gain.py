"""The ``gain`` perturbation (level change in dB), added by following docs/contributing.md."""

from __future__ import annotations

import math

import pytest
import torch

from audiobench.errors import ConfigError
from audiobench.perturb import PERTURBATIONS
from audiobench.perturb.base import realised_snr_db
from audiobench.perturb.gain import MAX_GAIN_DB, Gain
from audiobench.perturb.spec import parse_conditions
from audiobench.rng import ClipRNG

IDS = [f"clip{i}" for i in range(5)]


def _batch(n=5, samples=800, amp=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (amp * torch.randn(n, samples, generator=g)).clamp(-1, 1)


def _rng(ids=IDS, key="gain"):
    return ClipRNG.for_clips(0, ids, key)


def test_registered_with_its_swept_field_and_condition_ids():
    assert PERTURBATIONS.get("gain") is Gain
    assert Gain.level_field == "gain_db" and not Gain.is_attack and not Gain.uses_model
    assert Gain(gain_db=-6).condition_id == "gain:gain_db=-6"
    assert Gain(gain_db=0, jitter_db=3).condition_id == "gain/jitter3db:gain_db=0"
    conds = parse_conditions(["gain:gain_db=-6", "gain:gain_db=-6;jitter_db=3"])
    assert [c.condition_id for c in conds] == ["none", "gain:gain_db=-6", "gain/jitter3db:gain_db=-6"]


def test_scales_every_sample_by_the_db_factor_and_returns_a_new_tensor():
    x = _batch()
    before = x.clone()
    y = Gain(gain_db=-20 * math.log10(2))(x, rng=_rng())  # -6.02 dB: half the amplitude
    assert y is not x and torch.equal(x, before)
    torch.testing.assert_close(y, x * 0.5, rtol=1e-6, atol=0)
    # realised SNR of a pure gain a: 10 log10(E(x) / E((a - 1) x)) = -20 log10 |a - 1|
    snr = realised_snr_db(x, y)
    torch.testing.assert_close(snr, torch.full_like(snr, -20 * math.log10(0.5)), rtol=1e-5, atol=1e-4)


def test_positive_gain_clips_at_full_scale_and_silence_stays_silent():
    x = _batch(amp=0.5)
    x[2] = 0.0
    y = Gain(gain_db=20)(x, rng=_rng())
    assert float(y.abs().max()) == 1.0 and bool((y.abs() <= 1).all())
    assert torch.equal(y[2], torch.zeros_like(y[2]))
    small = x.abs() < 0.09
    torch.testing.assert_close(y[small], x[small] * 10.0, rtol=1e-6, atol=0)
    assert torch.equal(Gain(gain_db=0)(x, rng=_rng()), x)


def test_jitter_is_per_clip_within_range_and_independent_of_the_batch():
    g = Gain(gain_db=-10, jitter_db=4)
    gains = g.gains_db(_rng(), len(IDS))
    assert bool(((gains >= -14) & (gains <= -6)).all()) and len(set(gains.tolist())) == len(IDS)
    # the same clip gets the same level in another batch, in another order
    order = [3, 0, 4]
    again = g.gains_db(_rng([IDS[i] for i in order]), len(order))
    assert torch.equal(again, gains[order])
    x = _batch()
    y = g(x, rng=_rng())
    torch.testing.assert_close(y, x * torch.pow(10.0, gains / 20).float()[:, None], rtol=1e-6, atol=0)


def test_gradient_passes_through_the_gain():
    x = _batch(amp=0.1).requires_grad_(True)
    Gain(gain_db=-6)(x, rng=_rng()).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 10 ** (-6 / 20)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("kwargs, words", [
    ({}, "gain needs gain_db"),
    ({"gain_db": float("nan")}, "gain gain_db must be finite"),
    ({"gain_db": MAX_GAIN_DB + 1}, "within ±60 dB"),
    ({"gain_db": -6, "jitter_db": -1}, "jitter_db must be >= 0"),
    ({"gain_db": -6, "jitter_db": MAX_GAIN_DB + 1}, "jitter_db must be <= 60"),
    ({"gain_db": "loud"}, "must be a number"),
])
def test_invalid_fields_are_one_line_config_errors(kwargs, words):
    with pytest.raises(ConfigError) as exc:
        Gain(**kwargs)
    assert words in str(exc.value) and "\n" not in str(exc.value)
