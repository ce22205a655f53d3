"""The one resampler (audiobench/resample.py): exact for common rates, bounded for coprime ones."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from audiobench.errors import ConfigError
from audiobench.models.frontends import WaveformResampler
from audiobench.resample import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    TORCHAUDIO_KERNEL_LIMIT,
    Resampler,
    polyphase_table_size,
    check_sample_rate,
    resample,
    torchaudio_kernel_size,
)

REPO = Path(__file__).resolve().parents[1]
COMMON = [(16000, 32000), (44100, 32000), (48000, 16000), (22050, 16000), (8000, 44100), (11025, 32000), (32000, 16000)]


def _x(n=2, length=9000, seed=0):
    return torch.randn(n, length, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("orig,new", COMMON)
def test_common_rates_are_torchaudio_bit_for_bit(orig, new):
    x = _x()
    r = Resampler(orig, new)
    assert r.method == "torchaudio" and torchaudio_kernel_size(orig, new) <= TORCHAUDIO_KERNEL_LIMIT
    assert torch.equal(r(x), torchaudio.transforms.Resample(orig, new)(x))


def test_model_resampler_is_the_same_resampler_and_16_to_32k_unchanged():
    x = _x(length=16000)
    model_side = WaveformResampler(16000, 32000)
    assert isinstance(model_side, Resampler) and model_side.resample is not None
    assert torch.equal(model_side(x), torchaudio.transforms.Resample(16000, 32000)(x))  # mn04's reference path
    assert torch.equal(resample(x, 16000, 32000), model_side(x))  # what load_clip / data pack use
    assert WaveformResampler(32000, 32000).resample is None and list(model_side.state_dict()) == []


@pytest.mark.parametrize("orig,new", [(44100, 32000), (16000, 32000), (48000, 16000), (8000, 11025)])
def test_polyphase_path_computes_the_same_filter(orig, new):
    x = _x(length=7001).double()
    ref = torchaudio.functional.resample(x, orig, new)  # float64 kernel and convolution
    poly = Resampler(orig, new, kernel_limit=0)
    assert poly.method == "polyphase"
    y = poly(x.float()).double()
    assert y.shape == ref.shape
    assert float((y - ref).abs().max()) < 2e-6  # float32 rounding only
    ta = torchaudio.transforms.Resample(orig, new)(x.float()).double()
    assert float((y - ta).abs().max()) < 1e-4  # torchaudio's own float32 result is the less accurate one


def test_coprime_rates_take_the_bounded_path():
    r = Resampler(44101, 16000)
    assert torchaudio_kernel_size(44101, 16000) > 700_000_000  # what torchaudio would tabulate (23 GB to build)
    assert r.method == "polyphase" and r.resample.table.numel() < 1_000_000
    x = _x(length=44101 * 2)
    y = r(x)
    assert y.shape == (2, 32000) and torch.isfinite(y).all()
    # a sine keeps its frequency: 1 kHz at 44101 Hz is 1 kHz at 16000 Hz
    t = torch.arange(44101 * 2, dtype=torch.float64) / 44101
    s = r(torch.sin(2 * torch.pi * 1000 * t).float()[None])[0].double()
    u = torch.arange(s.numel(), dtype=torch.float64) / 16000
    mid = slice(200, -200)
    assert float((s[mid] - torch.sin(2 * torch.pi * 1000 * u)[mid]).abs().max()) < 1e-3


def test_extreme_rates_stay_bounded():
    # coprime pairs at the ends of the accepted range: the largest tables the polyphase path builds
    pairs = [(MIN_SAMPLE_RATE, MAX_SAMPLE_RATE - 1), (MAX_SAMPLE_RATE - 1, MIN_SAMPLE_RATE),
             (MAX_SAMPLE_RATE - 1, MAX_SAMPLE_RATE), (MAX_SAMPLE_RATE, MAX_SAMPLE_RATE - 1), (44101, 16000)]
    for orig, new in pairs:
        assert polyphase_table_size(orig, new) * 4 < 64 << 20, (orig, new)  # under 64 MB
    r = Resampler(48001, 8000)
    assert r.method == "polyphase" and r.resample.table.numel() == polyphase_table_size(48001, 8000)


@pytest.mark.parametrize("orig,new,limit", [(16000, 32000, None), (44100, 16000, None), (44101, 16000, None),
                                            (44100, 32000, 0), (192000, 16000, None)])
def test_trimming_before_resampling_is_exact(orig, new, limit):
    r = Resampler(orig, new) if limit is None else Resampler(orig, new, kernel_limit=limit)
    x = _x(length=orig * 2)
    full = r(x)
    for n_out in (1, 37, new, new + 13):
        k = r.input_needed(n_out)
        assert torch.equal(r(x[:, :k])[:, :n_out], full[:, :n_out])


def test_gradient_flows_through_the_polyphase_path():
    r = Resampler(44101, 32000)
    x = _x(length=4410).requires_grad_(True)
    r(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [0, -16000, "abc", np.array([16000, 16000]), float("nan"), float("inf"), 2**62,
                                 16000.7, 1_000_000_007, True, None, 999])
def test_untrusted_rates_are_refused(bad):
    with pytest.raises(ValueError):
        check_sample_rate(bad, "x")
    with pytest.raises(ConfigError):
        Resampler(bad, 16000)


def test_integral_rates_of_any_numeric_type_are_accepted():
    assert check_sample_rate(32000.0, "x") == 32000
    assert check_sample_rate(np.int32(16000), "x") == 16000
    assert check_sample_rate(np.array(48000), "x") == 48000


_BOMBS = textwrap.dedent(
    """
    import json, resource, struct, sys, numpy as np, soundfile as sf, torch, h5py
    from audiobench.resample import Resampler
    from audiobench.data.audio import load_clip
    from audiobench.data import open_dataset
    from audiobench.data.vocab import load_vocabulary
    from audiobench.errors import DataError
    def rss():
        # the peak of this process's own memory (VmHWM: reset by exec); ru_maxrss is not, so it
        # would carry the test runner's peak over into this fresh interpreter
        try:
            line = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
            return int(line.split()[1]) / 1024  # MiB
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    out = {"baseline": rss()}
    Resampler(44101, 16000)(torch.zeros(2, 44101 * 3))
    out["resample_44101"] = rss()
    sf.write("w.wav", 0.1 * np.sin(np.arange(1400) / 5), 8000, subtype="PCM_16")
    data = bytearray(open("w.wav", "rb").read())
    data[24:28] = struct.pack("<I", 44101)
    open("odd.wav", "wb").write(bytes(data))
    assert load_clip("odd.wav", 16000, 16000).shape == (16000,)
    out["load_clip_44101"] = rss()
    with h5py.File("bomb.h5", "w") as f:
        f.attrs["sample_rate"] = 16000
        n = 10 ** 6
        f.create_dataset("audio_name", shape=(n,), dtype="S16", chunks=(4096,))
        f.create_dataset("waveform", shape=(n, 16000), dtype=np.int16, chunks=(1, 16000))
        f.create_dataset("target", shape=(n, 527), dtype=bool, chunks=(1024, 527))
    try:
        open_dataset("bomb.h5")
        raise SystemExit("bomb accepted")
    except DataError:
        pass
    out["chunk_bomb"] = rss()
    open("sparse.csv", "w").write("index,mid,display_name\\n99999999,/m/x,X\\n")
    try:
        load_vocabulary("sparse.csv")
        raise SystemExit("sparse vocabulary accepted")
    except DataError:
        pass
    out["sparse_vocab"] = rss()
    print(json.dumps(out))
    """
)


def test_bombs_finish_at_bounded_peak_memory(tmp_path):
    """Peak RSS of a fresh process through the four bombs of issue 19 (each alone took 10-23 GB or
    was OOM-killed): 44101 Hz resampling, a 3 KB WAV claiming 44101 Hz, a shard declaring 10^6
    clips in empty chunks, a 50-byte vocabulary with index 99999999."""
    p = subprocess.run([sys.executable, "-c", _BOMBS], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    mem = json.loads(p.stdout.strip().splitlines()[-1])
    growth = mem["sparse_vocab"] - mem["baseline"]
    assert growth < 400, mem  # MiB above the interpreter + torch baseline
