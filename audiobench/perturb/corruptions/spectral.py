"""Band limitation: ``lowpass`` and ``highpass`` (Butterworth filters) and ``resample`` (down to a
lower rate and back).

The filters are 4th-order Butterworth designs (``scipy.signal.butter`` in second-order sections,
at the dataset's rate) run causally with ``torchaudio.functional.lfilter`` in float64: -3 dB at
the cutoff and 24 dB per octave beyond it, the gentle roll-off of a cheap microphone, a small
loudspeaker or a telephone channel. ``resample`` goes through ``torchaudio.functional.resample``
(windowed sinc, torchaudio's defaults, the resampler of the models) to the table's rate and back:
a steeper, zero-phase band limit (measured: -1 dB at 0.4 x the intermediate rate, -13 dB at its
Nyquist frequency, below -40 dB from 0.6 x), length kept.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torchaudio.functional as AF

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.perturb.corruptions.base import Corruption, Prepared

#: severity -> low-pass cutoff (-3 dB) in Hz: wide band down to a muffled 500 Hz
LOWPASS_CUTOFF_HZ = {1: 6000.0, 2: 4000.0, 3: 2000.0, 4: 1000.0, 5: 500.0}
#: severity -> high-pass cutoff (-3 dB) in Hz: bass removed by ever smaller transducers
HIGHPASS_CUTOFF_HZ = {1: 250.0, 2: 500.0, 3: 1000.0, 4: 2000.0, 5: 4000.0}
#: severity -> intermediate sample rate in Hz (the clip is band-limited to half of it)
RESAMPLE_RATE_HZ = {1: 12000, 2: 8000, 3: 6000, 4: 4000, 5: 3000}
FILTER_ORDER = 4


@functools.lru_cache(maxsize=64)
def butterworth_sos(cutoff_hz: float, sample_rate: int, btype: str, order: int = FILTER_ORDER) -> np.ndarray:
    """(sections, 6) float64 second-order sections of a Butterworth filter (scipy.signal.butter)."""
    from scipy.signal import butter

    return butter(order, cutoff_hz, btype=btype, fs=sample_rate, output="sos")


def sos_filter(z: torch.Tensor, sos: np.ndarray) -> torch.Tensor:
    """Run the sections in cascade over (batch, T) with torchaudio's lfilter (float64, causal)."""
    y = z.double()
    for sec in sos:
        b = torch.as_tensor(sec[:3], dtype=torch.float64, device=y.device)
        a = torch.as_tensor(sec[3:], dtype=torch.float64, device=y.device)
        y = AF.lfilter(y, a, b, clamp=False)
    return y


@dataclass
class _Butterworth(Corruption):
    btype = "lowpass"
    physical_param = "cutoff_hz"
    physical_unit = "Hz"
    needs_sample_rate = True

    sample_rate: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        if self.sample_rate is not None:
            if not self.physical < 0.45 * self.sample_rate:
                raise ConfigError(f"{self.name} severity {self.severity} cuts at {self.physical:g} Hz, too close to or "
                                  f"above Nyquist at the dataset's {self.sample_rate} Hz (needs < 45 % of the rate)")

    def prepare(self, waveform, rng) -> Prepared:
        sos = butterworth_sos(float(self.physical), self._rate(), self.btype)

        def apply(z: torch.Tensor) -> torch.Tensor:
            return sos_filter(z, sos).to(z.dtype)

        return Prepared(apply)


@register_perturbation
@dataclass
class Lowpass(_Butterworth):
    """Low-pass filter: 4th-order Butterworth (24 dB per octave, -3 dB at the cutoff), causal.

    ``severity`` 1..5 -> cutoff 6000, 4000, 2000, 1000, 500 Hz (:data:`LOWPASS_CUTOFF_HZ`).
    scipy.signal.butter sections run with torchaudio.functional.lfilter (float64). Differentiable
    (linear). ``sample_rate``: the dataset's rate (Hz), set by the engine; a cutoff at or above
    45 % of it is an error.
    """

    name = "lowpass"
    btype = "lowpass"
    table = LOWPASS_CUTOFF_HZ
    damage_direction = "down"


@register_perturbation
@dataclass
class Highpass(_Butterworth):
    """High-pass filter: 4th-order Butterworth (24 dB per octave below the cutoff, -3 dB at it).

    ``severity`` 1..5 -> cutoff 250, 500, 1000, 2000, 4000 Hz (:data:`HIGHPASS_CUTOFF_HZ`).
    scipy.signal.butter sections run with torchaudio.functional.lfilter (float64). Differentiable
    (linear). ``sample_rate``: the dataset's rate (Hz), set by the engine.
    """

    name = "highpass"
    btype = "highpass"
    table = HIGHPASS_CUTOFF_HZ
    damage_direction = "up"


def fit_length(y: torch.Tensor, n: int) -> torch.Tensor:
    """Crop or zero-pad the last axis to ``n`` samples (at the end: the start stays aligned)."""
    if y.shape[-1] >= n:
        return y[..., :n]
    return torch.nn.functional.pad(y, (0, n - y.shape[-1]))


@register_perturbation
@dataclass
class Resample(Corruption):
    """Resampling down to a lower rate and back (band limitation by sample-rate conversion).

    ``severity`` 1..5 -> intermediate rate 12000, 8000, 6000, 4000, 3000 Hz
    (:data:`RESAMPLE_RATE_HZ`): content above 0.6 x that rate is 40 dB down or more, below 0.3 x
    it is kept within 0.5 dB (torchaudio's sinc transition lies between).
    torchaudio.functional.resample (windowed sinc, its defaults) both ways, zero-phase, length
    kept. Differentiable (linear). ``sample_rate``: the dataset's rate (Hz), set by the engine;
    it must be above the intermediate rate.
    """

    name = "resample"
    needs_sample_rate = True
    physical_param = "rate_hz"
    physical_unit = "Hz"
    table = RESAMPLE_RATE_HZ
    damage_direction = "down"

    sample_rate: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        if self.sample_rate is not None:
            if not self.physical < self.sample_rate:
                raise ConfigError(f"resample severity {self.severity} goes through {self.physical} Hz, which is not "
                                  f"below the dataset's {self.sample_rate} Hz")

    def prepare(self, waveform, rng) -> Prepared:
        sr, mid = self._rate(), int(self.physical)

        def apply(z: torch.Tensor) -> torch.Tensor:
            down = AF.resample(z.float(), sr, mid)
            return fit_length(AF.resample(down, mid, sr), z.shape[-1]).to(z.dtype)

        return Prepared(apply)
