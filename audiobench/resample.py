"""Bounded band-limited resampling: the one resampler of audiobench (models and audio decoding).

Every model wrapper resamples the dataset's rate to its native rate with :class:`Resampler`
(through :class:`audiobench.models.frontends.WaveformResampler`), and every decoded audio file
(``data pack``, ``predict``, JSON datafiles) goes through :func:`resample`, so a clip packed into a
shard and the same clip fed to ``predict`` are resampled by the same code.

The filter is torchaudio's windowed sinc (Hann window, 6 zero crossings, roll-off 0.99). Two ways
to apply it, chosen from the rates alone:

* ``"torchaudio"``: :class:`torchaudio.transforms.Resample` itself, bit for bit. It tabulates one
  filter per output phase over a whole period of the reduced ratio, ``new/g × (orig/g + 2·width)``
  values (``g`` = gcd of the rates): tiny for the rates audio uses (16→32 kHz: 2 × 14; the largest
  common pair, 11025↔32000 Hz: 1280 × 455), but 16000 × 44135 = 706 M values (23 GB while it is
  built) for 44101 → 16000 Hz. It is used while that table has at most
  :data:`TORCHAUDIO_KERNEL_LIMIT` values.
* ``"polyphase"``: the same filter, evaluated from the same formula, but each output phase keeps
  only the taps inside the filter's support (``2·6·orig/min(orig, new)/0.99 + 2`` of them instead of
  ``orig/g + 2·width``), and the filter is applied in chunks of output samples. Memory is
  ``new/g × taps`` values for the table (:func:`polyphase_table_size`: new/g × taps is below
  ``15.2 × MAX_SAMPLE_RATE``, about 12 M values or 47 MB, over the whole accepted rate range),
  built in 8 MB pieces, plus a bounded chunk of :data:`CHUNK_ELEMENTS` gathered samples; time
  is proportional to output samples × taps. The rates are used exactly: no approximation of the
  ratio. Outputs agree with torchaudio's to float32 rounding
  (tests/test_resample.py).

Why not approximate the ratio or use an FFT resampler: an approximated ratio changes the pitch and
the clip length (by up to 5e-4 for a kernel budget that covers common rates); an FFT resampler
treats the clip as periodic and is not local, so a clip trimmed before resampling would not give
the samples of the untrimmed clip. The polyphase path keeps the exact rates, the same filter and
locality.

Rates must be integers in [:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`] Hz
(:func:`check_sample_rate`); within that range every table above stays bounded.
"""

from __future__ import annotations

import math
from functools import lru_cache
from numbers import Integral, Real
from typing import Optional, Type

import torch
import torchaudio
from torch import nn

from audiobench.errors import ConfigError

#: Lowest and highest sample rate accepted anywhere (shards, manifests, audio files, models), Hz.
#: 1 kHz is below any audio tagging use; 768 kHz is the highest rate audio interfaces and PCM
#: formats offer (4 × 192 kHz).
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
#: torchaudio's filter: zero crossings on each side, and roll-off as a fraction of Nyquist.
LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
#: Largest torchaudio kernel (float32 values) used as it is; larger ones take the polyphase path.
TORCHAUDIO_KERNEL_LIMIT = 1 << 21
#: Gathered input values per chunk of the polyphase path (batch × outputs × taps).
CHUNK_ELEMENTS = 1 << 22


def check_sample_rate(value, what: str, error: Type[Exception] = ValueError) -> int:
    """``value`` as an int if it is a whole number of Hz in the accepted range, else ``error``.

    Accepts Python/numpy integers and floats with an integral value (32000.0); refuses booleans,
    strings, arrays, NaN, infinities, fractions (16000.7 is refused, not truncated) and rates
    outside [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]. ``what`` names the source in the message.
    """
    shape = getattr(value, "shape", ())
    if shape not in ((), None):
        raise error(f"{what}: sample rate must be a single number, got an array of shape {tuple(shape)}")
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        shown = value if isinstance(value, (str, bytes)) and len(value) <= 40 else type(value).__name__
        raise error(f"{what}: sample rate must be a whole number of Hz, got {shown!r}")
    if not isinstance(value, Integral):
        if not math.isfinite(value) or value != int(value):
            raise error(f"{what}: sample rate must be a whole number of Hz, got {value!r}")
        value = int(value)
    value = int(value)
    if not MIN_SAMPLE_RATE <= value <= MAX_SAMPLE_RATE:
        raise error(f"{what}: sample rate {value} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    return value


def _reduced(orig_hz: int, new_hz: int):
    g = math.gcd(orig_hz, new_hz)
    return orig_hz // g, new_hz // g


def torchaudio_kernel_size(orig_hz: int, new_hz: int) -> int:
    """Number of float32 values in torchaudio's resampling kernel for these rates."""
    o, n = _reduced(int(orig_hz), int(new_hz))
    width = math.ceil(LOWPASS_FILTER_WIDTH * o / (min(o, n) * ROLLOFF))
    return n * (o + 2 * width)


def polyphase_table_size(orig_hz: int, new_hz: int) -> int:
    """Number of float32 values in the polyphase path's table for these rates (phases × taps)."""
    o, n = _reduced(int(orig_hz), int(new_hz))
    half = LOWPASS_FILTER_WIDTH * o / (min(o, n) * ROLLOFF)
    return n * (math.ceil(2 * half) + 2)


def _output_length(n: int, o: int, length: int) -> int:
    # torchaudio's rule, float32 rounding included: ceil(as_tensor(new * length / orig))
    return int(torch.ceil(torch.as_tensor(n * length / o)))


class _Polyphase(nn.Module):
    """torchaudio's windowed-sinc resampler with each phase's filter cut to its support."""

    def __init__(self, orig_hz: int, new_hz: int):
        super().__init__()
        o, n = _reduced(orig_hz, new_hz)
        self.o, self.n = o, n
        base = min(o, n)
        base *= ROLLOFF  # python float, as torchaudio computes it
        self.base = base
        half = LOWPASS_FILTER_WIDTH * o / base  # support half-width, in input samples
        self.taps = math.ceil(2 * half) + 2
        phases = torch.arange(n, dtype=torch.float64)
        centre = phases * o / n
        start = torch.floor(centre - half).to(torch.int64)  # first tap of each phase
        self.pad_left = int(-start.min())
        self.last_tap = int(start.max()) + self.taps - 1
        table = torch.empty((n, self.taps), dtype=torch.float32)
        taps = torch.arange(self.taps, dtype=torch.int64)
        step = max(1, (1 << 20) // self.taps)
        for a in range(0, n, step):  # built in bounded pieces (float64 temporaries)
            b = min(n, a + step)
            m = (start[a:b, None] + taps[None, :]).to(torch.float64)
            # the same operations as torchaudio's _get_sinc_resample_kernel, in the same order
            t = torch.arange(-a, -b, -1, dtype=torch.float64)[:, None] / n + m / o
            t *= base
            t = t.clamp_(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
            window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
            t *= math.pi
            scale = base / o
            kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
            kernels *= window * scale
            table[a:b] = kernels.to(torch.float32)
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("offset", start + self.pad_left, persistent=False)

    def input_needed(self, n_out: int) -> int:
        blocks = (n_out - 1) // self.n
        return blocks * self.o + self.last_tap + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if not waveform.is_floating_point():
            raise TypeError(f"expected a floating point waveform, got {waveform.dtype}")
        shape = waveform.shape
        x = waveform.reshape(-1, shape[-1])
        batch, length = x.shape
        n_out = _output_length(self.n, self.o, length)
        if n_out == 0 or batch == 0:
            return x.new_zeros(shape[:-1] + (n_out,))
        needed = ((n_out - 1) // self.n) * self.o + self.last_tap + 1
        x = torch.nn.functional.pad(x, (self.pad_left, max(0, needed - length)))
        table = self.table.to(x.dtype)
        taps = torch.arange(self.taps, device=x.device)
        chunk = max(1, CHUNK_ELEMENTS // max(1, batch * self.taps))
        pieces = []
        for a in range(0, n_out, chunk):
            j = torch.arange(a, min(n_out, a + chunk), device=x.device)
            phase = j % self.n
            first = (j // self.n) * self.o + self.offset[phase]
            window = x[:, first[:, None] + taps[None, :]]  # (batch, outputs, taps)
            pieces.append((window * table[phase]).sum(dim=-1))
        y = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        return y.reshape(shape[:-1] + (n_out,))


class Resampler(nn.Module):
    """Resample (..., samples) from ``orig_hz`` to ``new_hz``; identity when they are equal.

    ``method`` is ``"identity"``, ``"torchaudio"`` (:class:`torchaudio.transforms.Resample`, exact
    for the common rates) or ``"polyphase"`` (the same filter with bounded cost, for ratios whose
    reduced form is large); see the module docstring. ``resample`` is the submodule doing the work
    (``None`` for the identity). Batched, differentiable, and free of persistent state: its tables
    are non-persistent buffers, so model checkpoints keep their reference layout whatever the rate.
    """

    def __init__(self, orig_hz: int, new_hz: int, *, kernel_limit: int = TORCHAUDIO_KERNEL_LIMIT):
        super().__init__()
        self.orig_hz = check_sample_rate(orig_hz, "resampler input", ConfigError)
        self.new_hz = check_sample_rate(new_hz, "resampler output", ConfigError)
        self.resample: Optional[nn.Module]
        if self.orig_hz == self.new_hz:
            self.method, self.resample = "identity", None
        elif torchaudio_kernel_size(self.orig_hz, self.new_hz) <= kernel_limit:
            self.method = "torchaudio"
            self.resample = torchaudio.transforms.Resample(self.orig_hz, self.new_hz)
            kernel = self.resample._buffers.pop("kernel")
            self.resample.register_buffer("kernel", kernel, persistent=False)
        else:
            self.method = "polyphase"
            self.resample = _Polyphase(self.orig_hz, self.new_hz)

    def output_length(self, length: int) -> int:
        if self.resample is None:
            return int(length)
        o, n = _reduced(self.orig_hz, self.new_hz)
        return _output_length(n, o, int(length))

    def input_needed(self, n_out: int) -> int:
        """Input samples that fully determine the first ``n_out`` outputs (for trimming a long
        input before resampling without changing those outputs)."""
        n_out = int(n_out)
        if self.resample is None or n_out <= 0:
            return max(0, n_out)
        if self.method == "polyphase":
            return self.resample.input_needed(n_out)
        o, n = _reduced(self.orig_hz, self.new_hz)
        blocks = (n_out - 1) // n
        return blocks * o + o + self.resample.width

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.resample is None:
            return waveform
        return self.resample(waveform)

    def extra_repr(self) -> str:
        return f"{self.orig_hz} Hz -> {self.new_hz} Hz ({self.method})"


@lru_cache(maxsize=16)
def resampler_for(orig_hz: int, new_hz: int) -> Resampler:
    """The (shared, CPU) :class:`Resampler` for a pair of rates, built once."""
    return Resampler(orig_hz, new_hz)


def resample(waveform: torch.Tensor, orig_hz: int, new_hz: int) -> torch.Tensor:
    """``waveform`` (..., samples) resampled from ``orig_hz`` to ``new_hz`` by :class:`Resampler`.

    The resampler for a pair of rates is built once and reused (CPU tensors); on another device a
    new one is moved there.
    """
    r = resampler_for(int(orig_hz), int(new_hz))
    if waveform.device.type != "cpu" and r.resample is not None:
        r = Resampler(int(orig_hz), int(new_hz)).to(waveform.device)
    return r(waveform)
