"""Each corruption does what its severity table says, measured on the real clips of ../shared.

Measurements here are written independently of the library where that is practical (Welch
spectra with scipy, the Schroeder integral in numpy, MP3 frame sizes from the stream's bytes).
The last test runs efficientat-mn04 (real weights) on the 20 shared clips.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from scipy.signal import csd, welch

from audiobench.perturb import PERTURBATIONS
from audiobench.perturb.base import AttackTrace, realised_snr_db
from audiobench.rng import ClipRNG

SR = 16000
SECONDS = 2.0  # of each clip for the physics (the first seconds: every shared clip has sound there)
MN04_SECONDS = 4.0


@pytest.fixture(scope="module")
def real(shared_dir):
    """The 20 shared clips, mono at 16 kHz, first 2 s, as (clip ids, (20, 32000) float32)."""
    from audiobench.data.audio import load_clip

    rows = list(csv.DictReader(open(shared_dir / "clips" / "labels.csv", newline="")))
    n = int(SR * SECONDS)
    x = np.stack([load_clip(shared_dir / "clips" / r["file"], SR, n) for r in rows])
    return [r["file"] for r in rows], torch.from_numpy(x)


@pytest.fixture(scope="module")
def real32(shared_dir):
    """The same clips at 32 kHz (room above the low-pass cutoffs for their stop bands)."""
    from audiobench.data.audio import load_clip

    rows = list(csv.DictReader(open(shared_dir / "clips" / "labels.csv", newline="")))
    x = np.stack([load_clip(shared_dir / "clips" / r["file"], 32000, int(32000 * SECONDS)) for r in rows])
    return [r["file"] for r in rows], torch.from_numpy(x)


@pytest.fixture(scope="module")
def noise_bank(shared_dir, tmp_path_factory):
    """The two CC0 shared recordings the README allows as a test noise bank (linked, not copied)."""
    folder = tmp_path_factory.mktemp("noise_bank")
    for name in ("fs_train.wav", "fs_typing.wav"):
        (folder / name).symlink_to(shared_dir / "clips" / name)
    return folder


def corrupt(name, severity, ids, x, sr=SR, **kw):
    p = PERTURBATIONS.get(name)(severity=severity, **kw).with_sample_rate(sr)
    rng = ClipRNG.for_clips(0, ids, p.condition_key())
    trace = AttackTrace()
    out = p(x, rng=rng, trace=trace)
    return p, out, trace


def table(name):
    return PERTURBATIONS.get(name).table


def psd(x, sr=SR, nperseg=2048):
    f, p = welch(np.asarray(x, dtype=np.float64), fs=sr, nperseg=nperseg, axis=-1)
    return f, p


def loud(x):
    """Clips with audible content (a few shared clips have long near-silent stretches)."""
    return (x.double().pow(2).mean(dim=1) > 1e-6).numpy()


# -- additive noise ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pink-noise", "brown-noise", "background"])
def test_realised_snr_within_a_tenth_of_a_db(name, real, noise_bank):
    ids, x = real
    kw = {"bank": str(noise_bank)} if name == "background" else {}
    for s in range(1, 6):
        p, out, trace = corrupt(name, s, ids, x, **kw)
        nominal = table(name)[s]
        pre = p.prepare(x, ClipRNG.for_clips(0, ids, p.condition_key()))(x)
        exact = realised_snr_db(x, pre).numpy()
        assert np.allclose(exact[loud(x)], nominal, atol=1e-6)  # before the clamp: exact
        # the clamp to [-1, 1] can only move clips whose noisy version leaves the range; where it
        # touches under 0.01 % of the samples the SNR is within 0.1 dB
        unclamped = ((pre.abs() > 1.0).double().mean(dim=1) < 1e-4).numpy() & loud(x)
        measured = realised_snr_db(x, out).numpy()
        assert unclamped.sum() >= 8, (name, s, unclamped.sum())
        assert np.abs(measured[unclamped] - nominal).max() < 0.1, (name, s)
        assert np.allclose(trace.per_clip["realised_snr_db"], measured, equal_nan=True)  # what is recorded is true


def _slope_db_per_octave(noise: np.ndarray, lo=100.0, hi=6000.0) -> float:
    f, p = psd(noise, nperseg=4096)
    p = p.mean(axis=0)
    band = (f >= lo) & (f <= hi)
    return float(np.polyfit(np.log2(f[band]), 10 * np.log10(p[band]), 1)[0])


@pytest.mark.parametrize("name, slope", [("pink-noise", -3.01), ("brown-noise", -6.02)])
def test_coloured_noise_spectral_slope(name, slope, real):
    ids, x = real
    p, out, _ = corrupt(name, 3, ids, x)
    added = (p.prepare(x, ClipRNG.for_clips(0, ids, p.condition_key()))(x) - x).numpy()[loud(x)]
    assert abs(_slope_db_per_octave(added) - slope) < 1.0


# -- filters and band limits ----------------------------------------------------------------------
def _gain_db(x, y, sr=SR, nperseg=4096):
    """Measured |H(f)| in dB (cross-spectral estimate, averaged over clips) and its frequencies."""
    f, pxy = csd(x, y, fs=sr, nperseg=nperseg, axis=-1)
    _, pxx = welch(x, fs=sr, nperseg=nperseg, axis=-1)
    h = np.abs(pxy.sum(axis=0)) / pxx.sum(axis=0)
    return f, 20 * np.log10(np.maximum(h, 1e-12)), pxx.sum(axis=0)


@pytest.mark.parametrize("name", ["lowpass", "highpass"])
def test_butterworth_attenuation_beyond_the_cutoff(name, real32):
    ids, x = real32
    sr = 32000
    xs = x.numpy().astype(np.float64)
    for s in range(1, 6):
        fc = table(name)[s]
        _, out, _ = corrupt(name, s, ids, x, sr=sr)
        f, g, pxx = _gain_db(xs, out.numpy().astype(np.float64), sr=sr)
        usable = pxx > pxx.max() * 1e-9  # bins where the clips have energy to measure with
        if name == "lowpass":
            far, near, passband = (f >= 2 * fc) & (f <= 0.45 * sr), (f >= 2 * fc) & (f <= 2.2 * fc), (f >= 100) & (f <= fc / 2)
        else:
            far, near, passband = (f >= 60) & (f <= fc / 2), (f >= fc / 2.2) & (f <= fc / 2), (f >= 2 * fc) & (f <= 0.45 * sr)
        at = np.argmin(np.abs(f - fc))
        assert np.abs(g[passband & usable]).max() < 1.0, (name, s)  # passband flat within 1 dB
        assert g[at] == pytest.approx(-3.0, abs=1.0), (name, s)  # -3 dB at the cutoff
        assert g[near & usable].max() < -20.0, (name, s)  # 24 dB per octave: >= 20 dB one octave out
        assert np.median(g[far & usable]) < -24.0, (name, s)


def test_resample_removes_everything_above_the_intermediate_nyquist(real):
    ids, x = real
    xs = x.numpy().astype(np.float64)
    kept = []
    for s in range(1, 6):
        mid = table("resample")[s]
        _, out, _ = corrupt("resample", s, ids, x)
        f, g, pxx = _gain_db(xs, out.numpy().astype(np.float64))
        usable = pxx > pxx.max() * 1e-9
        # torchaudio's default sinc (6 zero crossings, rolloff 0.99): -1 dB at 0.4 x the rate,
        # -13 dB at its Nyquist, -47 dB at 0.6 x
        assert np.median(g[(f >= 0.6 * mid) & usable]) < -40.0, s
        assert np.abs(g[(f >= 100) & (f <= 0.3 * mid) & usable]).max() < 0.5, s
        kept.append(float(out.double().pow(2).sum() / x.double().pow(2).sum()))
    assert all(a > b for a, b in zip(kept, kept[1:]))  # less of the signal survives at each severity


# -- reverberation ------------------------------------------------------------------------------------
def _schroeder_t30(h: np.ndarray, sr: int, start: int) -> float:
    e = h[start:] ** 2
    edc = np.cumsum(e[::-1])[::-1]
    db = 10 * np.log10(edc / edc[0])
    t = np.arange(len(e)) / sr
    sel = (db <= -5) & (db >= -35)
    slope = np.polyfit(t[sel], db[sel], 1)[0]
    return -60.0 / slope


def test_synthetic_rir_rt60_by_schroeder_and_drr(real):
    ids, x = real
    n0 = int(round(0.0025 * SR))
    rt_measured = []
    for s in range(1, 6):
        rt60, drr = table("reverb")[s]
        p, out, trace = corrupt("reverb", s, ids, x)
        h, _ = p.rirs(ClipRNG.for_clips(0, ids, p.condition_key()), len(ids))
        h = h.numpy()
        assert np.allclose((h ** 2).sum(axis=1), 1.0)  # unit energy
        assert np.all(np.argmax(np.abs(h), axis=1) == 0)  # direct path at t = 0
        t30 = np.array([_schroeder_t30(hi, SR, n0) for hi in h])
        assert np.all(np.abs(t30 / rt60 - 1) < 0.15), (s, t30)
        drr_m = 10 * np.log10((h[:, :n0] ** 2).sum(axis=1) / (h[:, n0:] ** 2).sum(axis=1))
        assert np.abs(drr_m - drr).max() < 0.1
        assert np.allclose(trace.per_clip["rt60_s"], t30, rtol=1e-6) and np.allclose(trace.per_clip["drr_db"], drr_m)
        rt_measured.append(t30.mean())
        # the clip keeps its length and alignment: until the reverberant tail arrives (2.5 ms) the
        # output is the direct path alone, h[0]·x, sample for sample
        assert out.shape == x.shape
        assert np.allclose(out[:, :n0].numpy(), np.clip(h[:, :1] * x[:, :n0].numpy(), -1, 1), atol=1e-6)
    assert all(a < b for a, b in zip(rt_measured, rt_measured[1:]))


# -- amplitude ------------------------------------------------------------------------------------
def test_clip_level_and_bit_depth(real):
    ids, x = real
    keep = loud(x)
    clipped = []
    for s in range(1, 6):
        c = table("clipping")[s]
        _, out, trace = corrupt("clipping", s, ids, x)
        peak = x.abs().amax(dim=1)
        assert torch.allclose(out.abs().amax(dim=1), c * peak, atol=1e-7)
        frac = (x.abs() > (c * peak)[:, None]).double().mean(dim=1)
        assert np.allclose(trace.per_clip["clipped_fraction"], frac.numpy())
        clipped.append(float(frac[torch.from_numpy(keep)].mean()))
    assert all(a < b for a, b in zip(clipped, clipped[1:]))
    snr = []
    for s in range(1, 6):
        bits = table("bitcrush")[s]
        _, out, trace = corrupt("bitcrush", s, ids, x)
        q = out.double().numpy() * 2 ** (bits - 1)
        assert np.allclose(q, np.round(q), atol=1e-4)  # on the grid of a bits-bit converter
        assert len(np.unique(np.round(q))) <= 2 ** bits and q.min() >= -2 ** (bits - 1) and q.max() <= 2 ** (bits - 1) - 1
        snr.append(float(np.median(np.asarray(trace.per_clip["realised_snr_db"])[keep])))
    assert all(a > b for a, b in zip(snr, snr[1:]))  # about 6 dB per bit
    assert np.mean(np.diff(snr) / np.diff([table("bitcrush")[s] for s in range(1, 6)])) == pytest.approx(6.0, abs=1.5)


# -- codec ----------------------------------------------------------------------------------------
def test_mp3_bitrate_length_and_alignment(real):
    from audiobench.perturb.corruptions.codec import mp3_frames, mp3_round_trip

    ids, x = real
    sel = [i for i, f in enumerate(ids) if f.endswith(".wav")][:3]
    errors = []
    for rate in (16000, 32000):
        xr = torch.from_numpy(np.stack([np.interp(np.arange(int(SECONDS * rate)) * SR / rate, np.arange(x.shape[1]), x[i].numpy())
                                        for i in sel]).astype(np.float32))
        for s in range(1, 6):
            kbps = table("mp3")[s]
            _, out, trace = corrupt("mp3", s, [ids[i] for i in sel], xr, sr=rate)
            y, data = mp3_round_trip(xr[0].numpy(), rate, kbps)
            frames = mp3_frames(data)
            assert {f[0] for f in frames} == {kbps} and {f[1] for f in frames} == {rate}
            per_frame = 1152 if rate >= 32000 else 576
            assert sum(f[2] for f in frames) == len(data) or len(data) - sum(f[2] for f in frames) == 128  # ID3v1 tail
            measured = len(data) * 8 / (len(frames) * per_frame / rate) / 1000
            assert measured == pytest.approx(kbps, rel=0.03)
            assert np.allclose(trace.per_clip["bitrate_kbps"], kbps, rtol=0.02)
            assert out.shape == xr.shape and np.allclose(out[0].numpy(), np.clip(y, -1, 1))
            a, b = xr[0].numpy(), out[0].numpy()
            lags = np.arange(-1200, 1201, 1)
            corr = [np.dot(a[max(0, -k):len(a) - max(0, k)], b[max(0, k):len(b) - max(0, -k)]) for k in lags]
            assert lags[int(np.argmax(corr))] == 0, (rate, kbps)
            errors.append(float(((out - xr).double().pow(2).sum() / xr.double().pow(2).sum())))
        assert errors[-1] > errors[-5]  # 32 kbps damages more than 128 kbps


# -- pitch and speed ----------------------------------------------------------------------------------
def _peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y)), n=8 * len(y)))
    return float(np.argmax(spec) * sr / (8 * len(y)))


def test_pitch_shift_and_speed_move_a_tone_by_the_table(real):
    ids, x = real
    t = np.arange(int(SR * 1.0)) / SR
    tone = torch.from_numpy(np.tile(0.3 * np.sin(2 * np.pi * 1000 * t), (4, 1)).astype(np.float32))
    tid = ["t0", "t1", "t2", "t3"]
    for s in range(1, 6):
        _, out, trace = corrupt("pitch-shift", s, tid, tone)
        for i, semis in enumerate(trace.per_clip["semitones"]):
            assert abs(abs(semis) - table("pitch-shift")[s]) < 0.01
            mid = out[i, 2000:-2000].numpy()
            assert _peak_hz(mid, SR) == pytest.approx(1000 * 2 ** (semis / 12), rel=0.003)
            # tempo kept (no silence); a phase vocoder stretching a tone keeps >= 80 % of its energy
            assert float(out[i, 2000:-2000].pow(2).mean()) == pytest.approx(0.045, rel=0.2)
        _, out, trace = corrupt("speed", s, tid, tone)
        for i, factor in enumerate(trace.per_clip["speed_factor"]):
            assert max(factor, 1 / factor) == pytest.approx(table("speed")[s], rel=1e-3)
            n_sound = int(len(t) / factor) if factor > 1 else len(t)
            assert _peak_hz(out[i, 500:n_sound - 500].numpy(), SR) == pytest.approx(1000 * factor, rel=0.003)
            if factor > 1:  # faster: shorter, zero-padded to the length
                assert out[i, n_sound + 100:].abs().max() < 1e-3
    # on real clips: the spectral centroid moves the way the recorded direction says
    _, out, trace = corrupt("pitch-shift", 5, ids, x)
    f, px = psd(x.numpy())
    _, py = psd(out.numpy())
    cen = lambda p: (p * f).sum(axis=1) / p.sum(axis=1)  # noqa: E731
    moved = np.sign(np.log(cen(py) / cen(px)))
    keep = loud(x)
    assert np.mean(moved[keep] == np.sign(np.asarray(trace.per_clip["semitones"]))[keep]) >= 0.8


# -- severity is damage ---------------------------------------------------------------------------------
def _log_spectral_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    win = torch.hann_window(512, dtype=torch.float64)
    sx = torch.stft(x.double(), 512, 128, window=win, return_complex=True).abs().pow(2) + 1e-8
    sy = torch.stft(y.double(), 512, 128, window=win, return_complex=True).abs().pow(2) + 1e-8
    return float((10 * torch.log10(sy / sx)).pow(2).mean(dim=1).sqrt().mean())


@pytest.mark.slow
def test_damage_grows_with_severity_for_every_corruption(real, noise_bank):
    """Log-spectral distance from the clean clip rises strictly from severity 1 to 5 (6 clips, 1 s)."""
    from audiobench.perturb.corruptions import CORRUPTION_NAMES

    ids, x = real
    keep = torch.from_numpy(loud(x))
    ids = [i for i, k in zip(ids, keep.tolist()) if k][:6]
    x = x[keep][:6, :SR].contiguous()
    for name in CORRUPTION_NAMES:
        kw = {"bank": str(noise_bank)} if name == "background" else {}
        d = [_log_spectral_distance(x, corrupt(name, s, ids, x, **kw)[1]) for s in range(1, 6)]
        assert all(a < b for a, b in zip(d, d[1:])), (name, np.round(d, 2))


# -- a real tagger ----------------------------------------------------------------------------------
#: mAP on 20 clips and 20 classes moves in steps: a class with one positive clip that drops from
#: rank 1 to rank 2 costs 0.5 / 20 = 0.025. Rises within one such step count as noise.
MAP_NOISE_MARGIN = 0.025


@pytest.mark.slow
def test_mn04_map_does_not_rise_with_severity(shared_dir, tmp_path_factory):
    """efficientat-mn04 (real weights) on the 20 shared clips (32 kHz, first 4 s): mAP at severities
    1, 3, 5 of lowpass, reverb, pink-noise and mp3 is non-increasing within MAP_NOISE_MARGIN, and
    severity 5 of lowpass, reverb and pink-noise is below clean by more than the margin."""
    from audiobench.data import open_dataset
    from audiobench.data.pack import pack
    from audiobench.data.vocab import load_vocabulary
    from audiobench.metrics.tagging import tagging_metrics
    from audiobench.models import load_model

    out = tmp_path_factory.mktemp("real_clips") / "clips.h5"
    vocab = load_vocabulary(shared_dir / "audioset" / "class_labels_indices.csv")
    pack(shared_dir / "clips", shared_dir / "clips" / "labels.csv", out, sample_rate=32000, clip_seconds=MN04_SECONDS, vocab=vocab)
    ds = open_dataset(str(out))
    model = load_model("efficientat-mn04", checkpoint=shared_dir / "weights" / "efficientat_mn04_as_mAP_432.pt",
                       sample_rate=ds.sample_rate)
    (batch,) = list(ds.batches(20))
    x, targets = batch.waveform, batch.targets.numpy()

    def m_ap(wave):
        with torch.no_grad():
            return tagging_metrics(model(wave).numpy(), targets)["mAP"]

    clean = m_ap(x)
    results = {}
    for name in ("lowpass", "reverb", "pink-noise", "mp3"):
        results[name] = [m_ap(corrupt(name, s, batch.clip_ids, x, sr=ds.sample_rate)[1]) for s in (1, 3, 5)]
    print("clean mAP", round(clean, 4), {k: [round(v, 4) for v in vs] for k, vs in results.items()})
    for name, (m1, m3, m5) in results.items():
        assert m3 <= m1 + MAP_NOISE_MARGIN and m5 <= m3 + MAP_NOISE_MARGIN, (name, results[name])
    for name in ("lowpass", "reverb", "pink-noise"):
        assert results[name][2] < clean - MAP_NOISE_MARGIN, (name, clean, results[name])
