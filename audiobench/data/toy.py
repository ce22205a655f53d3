"""The embedded toy set: deterministic synthetic clips labelled in the AudioSet vocabulary.

Ten AudioSet classes that a few lines of numpy can synthesise (their indices, mids and display
names are those of AudioSet's ``class_labels_indices.csv``), alone and in mixtures of two or
three, with random frequencies, levels, onsets and durations drawn from a per-clip seeded stream.
The real 527-class models apply to it (it is in their label space) and tiny ``toy-*`` models can
learn it; it is the offline default dataset of every command. The classes (:data:`TOY_CLASSES`)
and their partial vocabulary (:func:`toy_vocabulary`) live in :mod:`audiobench.data.vocab`, which
this module imports (never the other way round).

The default set (96 clips of 10 s at 16 kHz, seed :data:`TOY_SEED`) is generated on first use
into ``AUDIOBENCH_HOME/toy/toy.h5`` and described by ``data_manifests/toy.json`` (whose shard
sha256 pins the exact bytes). :func:`generate_toy_clips` with another seed gives independent
splits (e.g. for training toy models); clip ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from audiobench.data.vocab import AUDIOSET_SIZE, TOY_CLASSES, toy_vocabulary

TOY_NAME = "toy"
TOY_SEED = 0
TOY_N_CLIPS = 96
TOY_SAMPLE_RATE = 16000
TOY_CLIP_SECONDS = 10.0
TOY_SHARD = "toy.h5"

SILENCE = 500
# Clip i: position i % 16 in a cycle of 10 single-class clips (TOY_CLASSES order) then 6
# mixtures of 2-3 sounding (non-silence) classes.
_CYCLE = 16


# -- sound sources: (rng, n_samples, sample_rate) -> float64 signal, roughly unit RMS ---------------
def _tone(f, t, phase=0.0):
    return np.sin(2 * np.pi * f * t + phase)


def _sine(rng, n, sr):
    f = np.exp(rng.uniform(np.log(150.0), np.log(min(4000.0, 0.4 * sr))))
    return _tone(f, np.arange(n) / sr, rng.uniform(0, 2 * np.pi))


def _chirp(rng, n, sr):
    # Repeated logarithmic sweeps (up or down) of 0.5-3 s each.
    t = np.arange(n) / sr
    period = rng.uniform(0.5, 3.0)
    f0 = rng.uniform(200.0, 1000.0)
    f1 = rng.uniform(2000.0, min(6000.0, 0.45 * sr))
    if rng.random() < 0.5:
        f0, f1 = f1, f0
    tau = np.mod(t, period)
    k = np.log(f1 / f0) / period
    phase = 2 * np.pi * f0 * (np.exp(k * tau) - 1.0) / k
    return np.sin(phase)


def _white(rng, n, sr):
    return rng.standard_normal(n)


def _pink(rng, n, sr):
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    f[0] = f[1]
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / (np.std(x) + 1e-12)


def _ramp(n, sr, ms=5.0):
    k = max(1, int(sr * ms / 1000))
    w = np.ones(n)
    r = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, min(k, n // 2 or 1)))
    w[: len(r)] = r
    w[n - len(r) :] = r[::-1]
    return w


def _beep(rng, n, sr):
    f = rng.uniform(800.0, 3000.0)
    on, gap = rng.uniform(0.08, 0.3), rng.uniform(0.15, 0.8)
    x = np.zeros(n)
    L = int(on * sr)
    burst = _tone(f, np.arange(L) / sr) * _ramp(L, sr)
    pos = int(rng.uniform(0, gap) * sr)
    while pos < n:
        m = min(L, n - pos)
        x[pos : pos + m] = burst[:m]
        pos += L + int(gap * sr * rng.uniform(0.9, 1.1))
    return x


def _click_shape(rng, sr, ms):
    L = max(4, int(sr * ms / 1000))
    env = np.exp(-np.arange(L) / (L / 5))
    return rng.standard_normal(L) * env


def _clicking(rng, n, sr):
    # Irregular clicks (Poisson, 3-15 per second), random amplitudes.
    rate = rng.uniform(3.0, 15.0)
    x = np.zeros(n)
    n_clicks = rng.poisson(rate * n / sr)
    for pos in np.sort(rng.integers(0, n, size=n_clicks)):
        c = _click_shape(rng, sr, rng.uniform(1.0, 3.0)) * rng.uniform(0.3, 1.0)
        m = min(len(c), n - pos)
        x[pos : pos + m] += c[:m]
    return x / (np.std(x) + 1e-12)


def _tick(rng, n, sr):
    # Regular identical ticks (1-4 per second): a 2 ms damped 3-6 kHz tone.
    rate = rng.uniform(1.0, 4.0)
    f = rng.uniform(3000.0, min(6000.0, 0.45 * sr))
    L = int(0.002 * sr) * 3
    tick = _tone(f, np.arange(L) / sr) * np.exp(-np.arange(L) / (0.0015 * sr))
    x = np.zeros(n)
    step = int(sr / rate)
    for pos in range(int(rng.uniform(0, 1.0 / rate) * sr), n, step):
        m = min(L, n - pos)
        x[pos : pos + m] += tick[:m]
    return x / (np.std(x) + 1e-12)


def _mains_hum(rng, n, sr):
    f0 = (50.0 if rng.random() < 0.5 else 60.0) * rng.uniform(0.995, 1.005)
    t = np.arange(n) / sr
    x = np.zeros(n)
    for h in range(1, 11):
        if h * f0 < 0.45 * sr:
            x += rng.uniform(0.2, 1.0) / h * _tone(h * f0, t, rng.uniform(0, 2 * np.pi))
    return x / (np.std(x) + 1e-12)


def _pulse(rng, n, sr):
    # Rectangular pulse train, 2-10 Hz, duty 5-20 %, smoothed edges, zero mean.
    rate, duty = rng.uniform(2.0, 10.0), rng.uniform(0.05, 0.2)
    t = np.arange(n) / sr
    x = (np.mod(t * rate + rng.random(), 1.0) < duty).astype(np.float64)
    k = max(1, int(0.0005 * sr))
    x = np.convolve(x, np.ones(k) / k, mode="same")
    x -= x.mean()
    return x / (np.std(x) + 1e-12)


def _silence(rng, n, sr):
    return np.zeros(n)


_SOURCES: Dict[int, Callable] = {
    407: _tick,
    481: _beep,
    491: _clicking,
    500: _silence,
    501: _sine,
    503: _chirp,
    505: _pulse,
    516: _mains_hum,
    520: _white,
    521: _pink,
}


_IMPULSIVE = (407, 481, 491, 505)


def _clip_classes(rng, i) -> List[int]:
    pos = i % _CYCLE
    if pos < len(TOY_CLASSES):
        return [TOY_CLASSES[pos][0]]
    sounding = [c[0] for c in TOY_CLASSES if c[0] != SILENCE]
    k = 2 if rng.random() < 0.6 else 3
    return sorted(int(c) for c in rng.choice(sounding, size=k, replace=False))


def _make_clip(seed: int, i: int, sr: int, n: int) -> Tuple[np.ndarray, List[int]]:
    rng = np.random.default_rng([int(seed), int(i)])
    classes = _clip_classes(rng, i)
    x = np.zeros(n)
    for c in classes:
        src = _SOURCES[c](rng, n, sr)
        if c != SILENCE:
            # Active from a random onset for 4-10 s (clipped to the clip), 10 ms fades.
            on = int(rng.uniform(0.0, 0.3) * n)
            off = min(n, on + int(rng.uniform(0.4, 1.0) * n))
            env = np.zeros(n)
            env[on:off] = _ramp(off - on, sr, 10.0)
            # Levels keep every labelled sound audible in a mixture (a label the audio no longer
            # carries would only be noise for the toy models): sparse sounds peak well above the
            # RMS of stationary ones.
            if c in _IMPULSIVE:  # sparse sounds: set the peak level, dBFS
                ref, level_db = np.max(np.abs(src[on:off])), rng.uniform(-15.0, -3.0)
            else:  # stationary sounds: set the RMS level while active, dBFS
                ref, level_db = np.sqrt(np.mean(src[on:off] ** 2)), rng.uniform(-36.0, -20.0)
            x += src * env * (10 ** (level_db / 20) / (ref + 1e-12))
    if classes == [SILENCE]:
        x += rng.standard_normal(n) * 10 ** (-90 / 20)  # -90 dBFS floor, ~0 after int16
    peak = np.max(np.abs(x))
    if peak > 0.99:
        x *= 0.99 / peak
    return x.astype(np.float32), classes


def generate_toy_clips(
    n_clips: int = TOY_N_CLIPS,
    seed: int = TOY_SEED,
    sample_rate: int = TOY_SAMPLE_RATE,
    clip_seconds: float = TOY_CLIP_SECONDS,
) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """``(clip_ids, waveform float32 (N, S) in [-1, 1], targets bool (N, 527))``.

    Clip ``i`` is ``toy-s<seed>-<i:04d>`` and depends only on ``(seed, i, sample_rate,
    clip_seconds)``; use another seed for an independent split.
    """
    n = int(round(sample_rate * clip_seconds))
    wav = np.zeros((n_clips, n), dtype=np.float32)
    tgt = np.zeros((n_clips, AUDIOSET_SIZE), dtype=bool)
    ids = []
    for i in range(n_clips):
        wav[i], classes = _make_clip(seed, i, int(sample_rate), n)
        tgt[i, classes] = True
        ids.append(f"toy-s{seed}-{i:04d}")
    return ids, wav, tgt


# -- the cached default toy set --------------------------------------------------------------------
def toy_dir() -> Path:
    from audiobench.paths import audiobench_home

    return audiobench_home() / TOY_NAME


def write_toy_shard(path: Path, n_clips=TOY_N_CLIPS, seed=TOY_SEED, sample_rate=TOY_SAMPLE_RATE, clip_seconds=TOY_CLIP_SECONDS) -> Path:
    from audiobench.data.shards import write_shard

    ids, wav, tgt = generate_toy_clips(n_clips, seed, sample_rate, clip_seconds)
    return write_shard(path, ids, wav, tgt, sample_rate, attrs={"generator": "audiobench toy", "seed": np.int64(seed)})


def build_toy_manifest(shard_path: Path):
    """The manifest describing a toy shard (as committed in ``data_manifests/toy.json``)."""
    from audiobench.data.manifest import Manifest, ShardEntry
    from audiobench.data.shards import clip_list_hash, inspect_shard, sha256_file

    info = inspect_shard(shard_path)
    voc = toy_vocabulary()
    return Manifest(
        name=TOY_NAME,
        description=(
            "Embedded synthetic toy set: ten AudioSet classes (tones, noises, clicks, hum, silence), "
            "alone and in 2-3 class mixtures; generated by audiobench.data.toy on first use."
        ),
        sample_rate=int(info.sample_rate),
        clip_seconds=info.num_samples / info.sample_rate,
        num_samples=info.num_samples,
        n_clips=info.n_clips,
        clip_list_hash=clip_list_hash(info.clip_ids),
        vocab_hash=voc.hash,
        vocabulary=voc.to_manifest(),
        shards=[ShardEntry(path=TOY_SHARD, n_clips=info.n_clips, sha256=sha256_file(shard_path))],
        generator={
            "name": "toy",
            "seed": TOY_SEED,
            "n_clips": TOY_N_CLIPS,
            "sample_rate": TOY_SAMPLE_RATE,
            "clip_seconds": TOY_CLIP_SECONDS,
        },
    )


def ensure_toy(force: bool = False) -> Path:
    """Generate the toy shard into ``AUDIOBENCH_HOME/toy/`` if missing (or ``force``); return the
    path of the manifest describing it (the repository's ``data_manifests/toy.json``, else one
    written to ``AUDIOBENCH_HOME/data_manifests/``)."""
    from audiobench.data.manifest import ManifestIndex, load_manifest
    from audiobench.data.shards import sha256_file

    shard = toy_dir() / TOY_SHARD
    manifest_path = ManifestIndex().get(TOY_NAME)
    generated = False
    if force or not shard.exists():
        write_toy_shard(shard)
        generated = True
    if not manifest_path.exists():
        build_toy_manifest(shard).save(manifest_path)
    elif generated:
        expected = load_manifest(manifest_path).shards[0].sha256
        got = sha256_file(shard)
        if expected and got != expected:
            # Float rounding can differ across numpy/libm builds; the set stays usable, but
            # results are then not byte-comparable with the reference build.
            warnings.warn(
                f"toy shard {shard} has sha256 {got[:12]}…, the manifest {manifest_path} pins {expected[:12]}…: "
                "this platform synthesised slightly different audio",
                stacklevel=2,
            )
    return manifest_path
