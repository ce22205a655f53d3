"""Band-, time- and padding-limited attacks; the perturbation's footprint; the band sweep (issue 17)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiobench.errors import ConfigError
from audiobench.perturb.attacks import (APGD, FGSM, MIN_PADDING_S, PGD, bce_per_clip, band_bins, delta_subspace,
                                        padding_mask, pgd)
from audiobench.perturb.footprint import footprint_cells, footprint_per_clip, summarise_footprint
from audiobench.perturb.grid import band_sweep, octave_bands
from perturb_helpers import SR, TinyConvTagger, one_thread, rng_for, targets_for, waves

N = 1600  # 0.2 s at 8 kHz
BAND = (500.0, 1500.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model():
    return TinyConvTagger()


def _out_of_band_fraction(delta: torch.Tensor, band) -> torch.Tensor:
    """Per clip: the share of delta's energy (one-sided rFFT over the whole clip) outside the band."""
    spec = torch.fft.rfft(delta.double(), dim=-1).abs() ** 2
    spec[..., 1:] *= 2  # one-sided: the other half of the spectrum
    inside = band_bins(delta.shape[-1], SR, band)
    return spec[..., ~inside].sum(-1) / spec.sum(-1)


LIMITED = {
    "pgd": lambda **kw: PGD(eps=0.01, steps=5, **kw),
    "pgd-l2": lambda **kw: PGD(eps=0.3, norm="l2", steps=5, **kw),
    "fgsm": lambda **kw: FGSM(eps=0.01, **kw),
    "apgd": lambda **kw: APGD(eps=0.01, steps=6, **kw),
}


@pytest.mark.parametrize("kind", sorted(LIMITED))
def test_band_limited_delta_has_under_1_percent_energy_outside_the_band(model, kind):
    x, t = waves(3, N, amp=0.5), targets_for(3, 6)  # |x| + eps < 1: the [-1, 1] clamp never acts
    p = LIMITED[kind](attack_band_hz=BAND).with_sample_rate(SR)
    y = p(x, model=model, targets=t, rng=rng_for(range(3), p.condition_key()))
    d = y - x
    assert float(d.abs().max()) > 0
    assert float(_out_of_band_fraction(d, BAND).max()) < 0.01
    if p.norm == "linf":  # the band-preserving projection keeps the ball
        assert float(d.abs().max()) <= p.eps + 1e-7
    else:
        assert float(d.norm(dim=-1).max()) <= p.eps * (1 + 1e-5)
    # the unlimited attack's delta is broadband: the measurement above can tell them apart
    free = LIMITED[kind]()(x, model=model, targets=t, rng=rng_for(range(3), "free"))
    assert float(_out_of_band_fraction(free - x, BAND).min()) > 0.3


@pytest.mark.parametrize("kind", sorted(LIMITED))
def test_time_limited_delta_is_exactly_zero_outside_its_window(model, kind):
    x, t = waves(3, N, amp=0.9), targets_for(3, 6)
    p = LIMITED[kind](attack_span_s=(0.05, 0.125)).with_sample_rate(SR)
    d = p(x, model=model, targets=t, rng=rng_for(range(3), p.condition_key())) - x
    inside = torch.zeros(N, dtype=torch.bool)
    inside[400:1000] = True  # 0.05 s .. 0.125 s at 8 kHz
    assert torch.equal(d[:, ~inside], torch.zeros_like(d[:, ~inside]))
    assert bool((d[:, inside].abs().amax(dim=-1) > 0).all())


def test_band_and_time_limited_together_stay_zero_outside_and_mostly_in_band(model):
    x, t = waves(2, N, amp=0.5), targets_for(2, 6)
    p = PGD(eps=0.01, steps=5, attack_band_hz=BAND, attack_span_s=(0.05, 0.15)).with_sample_rate(SR)
    d = p(x, model=model, targets=t, rng=rng_for(range(2))) - x
    assert torch.equal(d[:, :400], torch.zeros_like(d[:, :400])) and torch.equal(d[:, 1200:], torch.zeros_like(d[:, 1200:]))
    assert float(_out_of_band_fraction(d, BAND).max()) < 0.05  # the window's edges leak a little (documented)


def _padded_clips():
    """Clip 0: 0.1 s of audio then 0.4 s of zeros (padding); clip 1: a 0.1 s zero run inside and a
    0.2 s trailing zero run (both shorter than MIN_PADDING_S: audio, not padding)."""
    n = int(0.5 * SR)
    x = waves(2, n, amp=0.5)
    x[0, int(0.1 * SR):] = 0
    x[1, int(0.1 * SR):int(0.2 * SR)] = 0
    x[1, int(0.3 * SR):] = 0
    return x


def test_padding_mask_finds_only_long_trailing_zero_runs():
    assert MIN_PADDING_S == 0.25
    x = _padded_clips()
    m = padding_mask(x, SR)
    assert int(m[0].sum()) == int(0.4 * SR) and bool(m[0, int(0.1 * SR):].all())
    assert not bool(m[1].any())
    assert bool(padding_mask(torch.zeros(1, 4000), SR).all())  # an all-zero clip is all padding
    assert not bool(padding_mask(torch.zeros(1, 4000), SR, min_padding_s=1.0).any())


@pytest.mark.parametrize("kind", sorted(LIMITED))
def test_padding_mask_leaves_padded_samples_exactly_unperturbed(model, kind):
    x = _padded_clips()
    t = targets_for(2, 6)
    p = LIMITED[kind](attack_mask="padding").with_sample_rate(SR)
    y = p(x, model=model, targets=t, rng=rng_for(range(2), p.condition_key()))
    pad = padding_mask(x, SR)
    assert torch.equal(y[pad], x[pad])
    assert float((y - x)[1, int(0.3 * SR):].abs().max()) > 0  # a short trailing zero run is attacked
    free = LIMITED[kind]()(x, model=model, targets=t, rng=rng_for(range(2), "free"))
    assert float((free - x)[pad].abs().max()) > 0  # without the mask the padding is attacked


@pytest.mark.parametrize("limit", [dict(attack_band_hz=BAND), dict(attack_span_s=(0.05, 0.15)),
                                   dict(attack_mask="padding")], ids=["band", "span", "padding"])
def test_limited_pgd_still_raises_the_loss(model, limit):
    x = _padded_clips() if "attack_mask" in limit else waves(4, N, amp=0.5)
    t = targets_for(len(x), 6)
    p = PGD(eps=0.02, steps=10, **limit).with_sample_rate(SR)
    y = p(x, model=model, targets=t, rng=rng_for(range(len(x))))
    with torch.no_grad():
        before, after = bce_per_clip(model(x), t), bce_per_clip(model(y), t)
    assert bool((after > before + 1e-4).all()), (before, after)


def test_limits_are_in_the_condition_and_need_the_sample_rate(model):
    free = PGD(eps=0.002)
    assert not free.needs_sample_rate and free.with_sample_rate(SR) is free
    assert "attack" not in free.condition_key() and free.condition_id == "pgd/linf:eps=0.002"
    p = PGD(eps=0.002, attack_band_hz="500-2000", attack_span_s=(1, 3), attack_mask="padding")
    assert p.needs_sample_rate and p.attack_band_hz == (500.0, 2000.0) and p.attack_span_s == (1.0, 3.0)
    assert p.condition_id == "pgd/linf+band500-2000Hz+span1-3s+padmask:eps=0.002"
    bound = p.with_sample_rate(SR)
    key = bound.condition_key()
    assert "attack_mask='padding'" in key and "attack_band_hz=(500.0, 2000.0)" in key and f"sample_rate={SR}" in key
    assert bound.to_dict()["attack_mask"] == "padding"
    ref = FGSM(eps=0.002, **bound.limits())  # a reference attack living where this one does
    assert ref.variant == bound.variant and ref.sample_rate == SR
    assert PGD(eps=0.002, attack_mask="padding").condition_key() != PGD(eps=0.002).condition_key()
    with pytest.raises(ConfigError, match="sample_rate"):
        p(waves(1, N), model=model, targets=targets_for(1, 6), rng=rng_for([0]))
    with pytest.raises(ConfigError, match="Nyquist"):
        PGD(attack_band_hz=(4000, 5000), sample_rate=SR)
    for bad in (dict(attack_band_hz=(2000, 500)), dict(attack_band_hz="abc"), dict(attack_span_s=(-1, 2)),
                dict(attack_span_s=(0, 1e308)), dict(attack_mask="silence"), dict(attack_band_hz=(0, 1e308))):
        with pytest.raises(ConfigError):
            PGD(**bad)


def test_band_sweep_builds_one_condition_per_band():
    bands = octave_bands(SR, lowest_hz=125.0)
    assert bands == [(0.0, 125.0), (125.0, 250.0), (250.0, 500.0), (500.0, 1000.0), (1000.0, 2000.0), (2000.0, 4000.0)]
    conds = band_sweep(bands, eps=0.002, steps=3)
    assert [c.attack_band_hz for c in conds] == bands
    assert all(c.eps == 0.002 and c.steps == 3 and c.name == "pgd" for c in conds)
    assert len({c.condition_id for c in conds}) == len(bands)
    with pytest.raises(ConfigError):
        band_sweep([], eps=0.002)


def test_delta_subspace_is_none_when_unlimited():
    assert delta_subspace(waves(1, N), sample_rate=None) is None
    x, t = waves(2, N), targets_for(2, 6)
    m = TinyConvTagger()
    a = pgd(m, x, t, eps=0.01, steps=2, rng=rng_for([0, 1]))
    b = pgd(m, x, t, eps=0.01, steps=2, rng=rng_for([0, 1]), subspace=None)
    assert torch.equal(a, b)


# -- the footprint ------------------------------------------------------------------------------
def test_footprint_of_a_sine_lands_in_its_cell():
    sr, n = 16000, 3 * 16000
    tt = np.arange(n) / sr
    clean = np.random.default_rng(0).normal(0, 0.05, (2, n)).astype(np.float32)
    clean[1, int(2.5 * sr):] = 0  # 0.5 s of padding on clip 1
    window = (tt >= 1.0) & (tt < 2.0)
    delta = np.zeros((2, n))
    delta[:, window] = 0.01 * np.sin(2 * np.pi * 3000.0 * tt[window])
    delta[1, int(2.5 * sr):] = 0.001  # and some delta in that padding
    per_clip = footprint_per_clip(clean, clean + delta, sr, n_bands=64, segment_s=1.0)
    cells = footprint_cells(n, sr, 64, 1.0)
    assert per_clip["delta_energy"].shape == (2, 64, 3) and cells.n_segments == 3
    df = summarise_footprint(per_clip, cells.band_edges_hz, cells.segment_edges_s)
    top = df.sort_values("delta_share").iloc[-1]
    assert top["segment"] == 1 and top["band_low_hz"] <= 3000.0 < top["band_high_hz"]
    assert top["delta_share"] > 0.95
    # the energies add up (Parseval, up to the window's edge effects)
    np.testing.assert_allclose(per_clip["clean_energy"].sum(axis=(1, 2)), (clean.astype(np.float64) ** 2).sum(1), rtol=2e-3)
    pad_energy = 0.001 ** 2 * 0.5 * sr
    np.testing.assert_allclose(per_clip["delta_energy_padding"], [0.0, pad_energy], rtol=1e-9)
    total = (delta ** 2).sum()
    assert df["padding_share"].iloc[0] == pytest.approx(pad_energy / total, rel=1e-6)
    # relative level: delta energy over clean energy, summed over clips, in dB
    row = df[(df["segment"] == 1) & (df["band"] == top["band"])].iloc[0]
    assert row["relative_db"] == pytest.approx(10 * math.log10(row["delta_energy"] / row["clean_energy"]))
    assert np.isinf(df[(df["segment"] == 2)]["relative_db"]).sum() == 0  # clip 0 has clean energy there
    # sums over clips (what a stored unit may keep) give the same table
    summed = {k: v.sum(axis=0, keepdims=True) for k, v in per_clip.items()}
    df2 = summarise_footprint(summed, cells.band_edges_hz, cells.segment_edges_s, n_clips=2)
    np.testing.assert_allclose(df2["relative_db"], df["relative_db"])
    assert df2["n_clips"].iloc[0] == 2 and df2["padding_share"].iloc[0] == df["padding_share"].iloc[0]


def test_footprint_plots_return_figures():
    import pandas as pd

    from audiobench.report.footprint import band_sweep_rows, plot_band_sweep, plot_footprints

    sr, n = 8000, 2 * 8000
    clean = np.random.default_rng(1).normal(0, 0.1, (2, n))
    per_clip = footprint_per_clip(clean, clean + 0.001, sr, n_bands=16)
    cells = footprint_cells(n, sr, 16)
    one = summarise_footprint(per_clip, cells.band_edges_hz, cells.segment_edges_s)
    df = pd.concat([one.assign(model=m, condition="pgd/linf:eps=0.002") for m in ("cnn $x$", "transformer")])
    fig = plot_footprints(df)
    assert len([a for a in fig.axes if a.get_title()]) == 2
    metrics = pd.DataFrame({"model": ["m"] * 3, "condition": ["a", "b", "none"], "metric": ["mAP"] * 3,
                            "value": [0.5, 0.3, 0.9], "ci_low": [0.4, 0.2, 0.8], "ci_high": [0.6, 0.4, 1.0]})
    conditions = [{"id": "a", "params": {"eps": 0.002, "attack_band_hz": [0.0, 500.0]}},
                  {"id": "b", "params": {"eps": 0.002, "attack_band_hz": [500.0, 1000.0]}}, {"id": "none", "params": {}}]
    rows = band_sweep_rows(metrics, conditions)
    assert list(rows["band_low_hz"]) == [0.0, 500.0] and list(rows["condition"]) == ["a", "b"]
    fig2 = plot_band_sweep(rows, references={"m": {"clean": 0.9}})
    assert fig2.axes[0].get_xscale() == "log"
