"""Time and pitch changes: ``pitch-shift`` (pitch without tempo) and ``speed`` (tape-style speed
change: tempo and pitch together). Each clip goes up or down, by its own generator (fair coin).

Both resample by an exact small fraction p/q (``torchaudio.functional.resample`` with orig p, new
q): torchaudio's own ``pitch_shift`` and ``speed`` pass ``int(rate / factor)`` as a rate, which for
most factors shares only a tiny common divisor with the clip's rate and builds a sinc kernel of
millions of taps. The fraction is the factor to within 1 cent (``limit_denominator(50)``); the
factor actually applied is what is recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, Optional

import torch
import torchaudio.functional as AF

from audiobench.perturb import register_perturbation
from audiobench.perturb.corruptions.base import Corruption, Prepared
from audiobench.perturb.corruptions.spectral import fit_length

#: severity -> pitch shift in semitones (each clip up or down by this much)
PITCH_SEMITONES = {1: 0.5, 2: 1.0, 3: 2.0, 4: 3.0, 5: 4.0}
#: severity -> speed factor (each clip this much faster, or slower by its inverse)
SPEED_FACTOR = {1: 1.05, 2: 1.1, 3: 1.2, 4: 1.35, 5: 1.5}
MAX_DENOMINATOR = 50


def ratio(value: float) -> Fraction:
    """``value`` as a fraction with a denominator <= 50 (within 1 cent for the tables here)."""
    return Fraction(value).limit_denominator(MAX_DENOMINATOR)


def directions(rng) -> torch.Tensor:
    """(batch,) bool: True = up (higher pitch / faster), from each clip's generator."""
    return rng.uniform(1, dtype=torch.float64).cpu().reshape(-1) < 0.5


def _stft_sizes(sample_rate: int):
    n_fft = 2 ** int(round(math.log2(0.032 * sample_rate)))  # ~32 ms frames at any rate
    return n_fft, n_fft // 4


def pitch_shift(z: torch.Tensor, sample_rate: int, r: Fraction) -> torch.Tensor:
    """Pitch × r, duration kept: phase-vocoder time stretch by r (``torchaudio.functional.phase_vocoder``
    on a Hann STFT of ~32 ms frames, hop 1/4), then resampling by q/p (``r = p/q``).

    The STFT is zero-padded at the edges (``pad_mode="constant"``, as librosa): the phase vocoder
    keeps the first frame's phases, and torch's default reflect padding makes them incoherent
    across the bins of one partial, which costs a steady tone up to 90 % of its energy.
    """
    n = z.shape[-1]
    n_fft, hop = _stft_sizes(sample_rate)
    x = z.float()
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop_length=hop, window=window, center=True, pad_mode="constant", return_complex=True)
    advance = torch.linspace(0, math.pi * hop, n_fft // 2 + 1, device=x.device, dtype=x.dtype)[:, None]
    stretched = AF.phase_vocoder(spec, 1.0 / float(r), advance)
    y = torch.istft(stretched, n_fft, hop_length=hop, window=window, center=True, length=int(round(n * float(r))))
    return fit_length(AF.resample(y, r.numerator, r.denominator), n)


def change_speed(z: torch.Tensor, r: Fraction) -> torch.Tensor:
    """Played r times faster (r = p/q): resampled from p to q, then cropped / zero-padded at the end
    to the original length (a slower clip loses its end, a faster one ends in silence)."""
    return fit_length(AF.resample(z.float(), r.numerator, r.denominator), z.shape[-1])


def _by_direction(z: torch.Tensor, up: torch.Tensor, fn_up, fn_down) -> torch.Tensor:
    """Apply ``fn_up`` to the clips going up and ``fn_down`` to the others (out of place)."""
    up = up.to(z.device)
    parts = []
    idx_up, idx_down = torch.nonzero(up).reshape(-1), torch.nonzero(~up).reshape(-1)
    out_idx = torch.cat([idx_up, idx_down])
    if idx_up.numel():
        parts.append(fn_up(z.index_select(0, idx_up)))
    if idx_down.numel():
        parts.append(fn_down(z.index_select(0, idx_down)))
    stacked = torch.cat(parts).to(z.dtype)
    inverse = torch.empty_like(out_idx)
    inverse[out_idx] = torch.arange(out_idx.numel(), device=z.device)
    return stacked.index_select(0, inverse)


@register_perturbation
@dataclass
class PitchShift(Corruption):
    """Pitch shift without tempo change, up or down per clip (fair coin from its generator).

    ``severity`` 1..5 -> 0.5, 1, 2, 3, 4 semitones (:data:`PITCH_SEMITONES`). Phase-vocoder time
    stretch (torchaudio.functional.phase_vocoder; Flanagan & Golden 1966, Laroche & Dolson 1999)
    then resampling by the exact fraction (torchaudio.functional.resample): the composition
    torchaudio.functional.pitch_shift uses, with the ratio kept to a small fraction (within 1
    cent). Per clip: ``semitones`` applied (signed). Differentiable (STFT, phase vocoder and
    resampling are torch ops). ``sample_rate``: the dataset's rate (Hz), set by the engine.
    """

    name = "pitch-shift"
    needs_sample_rate = True
    physical_param = "semitones"
    physical_unit = "semitones"
    table = PITCH_SEMITONES
    damage_direction = "up"

    sample_rate: Optional[int] = None

    def factor(self) -> Fraction:
        return ratio(2.0 ** (float(self.physical) / 12.0))

    def prepare(self, waveform, rng) -> Prepared:
        sr, r = self._rate(), self.factor()
        up = directions(rng)
        applied = 12.0 * math.log2(float(r))
        realised: Dict[str, torch.Tensor] = {"semitones": torch.where(up, applied, -applied).double()}

        def apply(z: torch.Tensor) -> torch.Tensor:
            return _by_direction(z, up, lambda x: pitch_shift(x, sr, r), lambda x: pitch_shift(x, sr, 1 / r))

        return Prepared(apply, realised)


@register_perturbation
@dataclass
class Speed(Corruption):
    """Speed change (tempo and pitch together, like a tape or record at the wrong speed), faster or
    slower per clip (fair coin from its generator); length kept by crop / zero-pad at the end.

    ``severity`` 1..5 -> factor 1.05, 1.1, 1.2, 1.35, 1.5 (:data:`SPEED_FACTOR`): a clip plays that
    many times faster, or slower by the inverse. Resampling by the exact fraction with
    torchaudio.functional.resample (what torchaudio.functional.speed does). Per clip:
    ``speed_factor`` applied (> 1 faster). Differentiable. Independent of the sample rate.
    """

    name = "speed"
    physical_param = "speed_factor"
    physical_unit = "x"
    table = SPEED_FACTOR
    damage_direction = "up"

    def factor(self) -> Fraction:
        return ratio(float(self.physical))

    def prepare(self, waveform, rng) -> Prepared:
        r = self.factor()
        up = directions(rng)
        realised = {"speed_factor": torch.where(up, float(r), 1.0 / float(r)).double()}

        def apply(z: torch.Tensor) -> torch.Tensor:
            return _by_direction(z, up, lambda x: change_speed(x, r), lambda x: change_speed(x, 1 / r))

        return Prepared(apply, realised)
