"""Reverberation: convolution with a room impulse response (RIR), synthetic or measured.

Synthetic RIRs follow Polack's statistical model of a diffuse late field (Polack 1993, "Playing
billiards in the concert hall: the mathematical foundations of geometrical room acoustics"):
a unit direct path at t = 0, then, from ``DIRECT_WINDOW_S`` on, Gaussian noise (drawn from the
clip's generator) under an exponential envelope that falls 60 dB in RT60 seconds, scaled so that
direct energy / reverberant energy is the table's DRR, and the whole RIR normalised to unit
energy (so the clip's level is about kept). Measured RIRs (a bank folder) are aligned so their
strongest sample (the direct path) is at t = 0 and normalised the same way.

Measurements (the same code for both kinds; tests and ``per_clip.csv`` use them):

* DRR: energy within ``DIRECT_WINDOW_S`` (2.5 ms) of the direct path over the energy after it;
* RT60: Schroeder backward integration (Schroeder 1965, "New method of measuring reverberation
  time") of the reverberant part, a least-squares line through the decay curve from -5 to -35 dB
  (T30, ISO 3382-1), extrapolated to 60 dB.

Convolution: ``torchaudio.functional.fftconvolve``; the first ``samples`` outputs are kept, so
the clip keeps its length and its alignment (direct path at t = 0).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torchaudio.functional as AF
from scipy.fft import next_fast_len

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.perturb.corruptions.banks import AudioBank, bank_sha256, load_bank_clip, open_bank
from audiobench.perturb.corruptions.base import Corruption, Prepared

#: severity -> (RT60 in s, direct-to-reverberant ratio in dB): from a damped small room to a
#: large hall heard from far away; RT60 grows and DRR falls with severity
REVERB_RT60_DRR = {1: (0.3, 9.0), 2: (0.5, 6.0), 3: (0.8, 3.0), 4: (1.2, 0.0), 5: (2.0, -3.0)}
#: the direct path: this many seconds from the RIR's peak (the usual ±2.5 ms DRR window's half)
DIRECT_WINDOW_S = 0.0025
T30_RANGE_DB = (-5.0, -35.0)


def _direct_samples(sample_rate: int) -> int:
    return max(int(round(DIRECT_WINDOW_S * sample_rate)), 1)


def synthetic_rir(rng, rt60_s: float, drr_db: float, sample_rate: int) -> torch.Tensor:
    """(batch, n) float64 unit-energy RIRs, one per clip from its generator (see module docstring).

    n = direct window + ceil(rt60 · rate): the envelope is 60 dB down at the end.
    """
    n0 = _direct_samples(sample_rate)
    n_tail = int(math.ceil(rt60_s * sample_rate))
    t = (n0 + torch.arange(n_tail, dtype=torch.float64)) / sample_rate
    envelope = torch.exp(-3.0 * math.log(10.0) * t / rt60_s)  # amplitude: -60 dB at rt60_s
    tail = rng.normal(n_tail, dtype=torch.float64) * envelope.to(rng.device)
    tail_energy = 10.0 ** (-drr_db / 10.0)  # direct energy is 1
    tail = tail * torch.sqrt(tail_energy / tail.pow(2).sum(dim=-1, keepdim=True))
    b = tail.shape[0]
    h = torch.zeros(b, n0 + n_tail, dtype=torch.float64, device=tail.device)
    h[:, 0] = 1.0
    h[:, n0:] = tail
    return h / h.pow(2).sum(dim=-1, keepdim=True).sqrt()


def direct_to_reverberant_db(rir: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(batch,) DRR in dB of aligned RIRs (direct path at index 0), float64."""
    n0 = _direct_samples(sample_rate)
    e = rir.double().pow(2)
    return 10.0 * torch.log10(e[:, :n0].sum(dim=-1) / e[:, n0:].sum(dim=-1))


def schroeder_rt60(rir: torch.Tensor, sample_rate: int, *, fit_db: Tuple[float, float] = T30_RANGE_DB) -> torch.Tensor:
    """(batch,) RT60 in s of aligned RIRs by Schroeder backward integration of the part after the
    direct window: least-squares slope of the decay curve between ``fit_db`` (T30 by default),
    extrapolated to -60 dB. NaN where the curve does not reach the lower end of the range."""
    n0 = _direct_samples(sample_rate)
    e = rir.double()[:, n0:].pow(2)
    edc = torch.flip(torch.cumsum(torch.flip(e, dims=[-1]), dim=-1), dims=[-1])
    with torch.no_grad():
        level = 10.0 * torch.log10(edc / edc[:, :1].clamp_min(1e-300)).clamp_min(-400.0)
    hi, lo = fit_db
    w = ((level <= hi) & (level >= lo)).double()
    t = torch.arange(e.shape[-1], dtype=torch.float64, device=e.device) / sample_rate
    n = w.sum(dim=-1)
    mt = (w * t).sum(-1) / n.clamp_min(1)
    ml = (w * level).sum(-1) / n.clamp_min(1)
    slope = (w * (t - mt[:, None]) * (level - ml[:, None])).sum(-1) / (w * (t - mt[:, None]).pow(2)).sum(-1).clamp_min(1e-300)
    reaches = (level <= lo).any(dim=-1) & (n >= 3)
    rt60 = -60.0 / slope
    return torch.where(reaches & (slope < 0), rt60, torch.full_like(rt60, math.nan))


def convolve_rir(z: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """z (batch, T) convolved with per-clip RIRs (batch, L), the first T samples (same alignment).

    ``z`` is zero-padded at the end so the FFT length is a fast size; that changes nothing in the
    first T outputs (a linear, not circular, convolution either way).
    """
    n, m = z.shape[-1], rir.shape[-1]
    pad = next_fast_len(n + m - 1, real=True) - (n + m - 1)
    x = torch.nn.functional.pad(z.double(), (0, pad))
    return AF.fftconvolve(x, rir.to(x.device, torch.float64))[..., :n]


def _band_edges() -> Tuple[float, ...]:
    rts = [REVERB_RT60_DRR[s][0] for s in sorted(REVERB_RT60_DRR)]
    return tuple(math.sqrt(a * b) for a, b in zip(rts, rts[1:]))


def severity_band(severity: int) -> Tuple[float, float]:
    """RT60 range (s) a measured RIR must fall in to be used at ``severity``: split at the
    geometric means of neighbouring table RT60s (first band from 0, last to infinity)."""
    edges = (0.0,) + _band_edges() + (math.inf,)
    return edges[severity - 1], edges[severity]


@functools.lru_cache(maxsize=8)
def _bank_rirs(bank: AudioBank, sample_rate: int):
    """Aligned unit-energy RIRs of the bank at ``sample_rate`` and their measured RT60 / DRR."""
    rirs = []
    for i in range(len(bank)):
        h = load_bank_clip(bank, i, sample_rate).astype(np.float64)
        h = h[int(np.argmax(np.abs(h))):]
        energy = float(np.sum(h * h))
        if not energy > 0:
            raise ConfigError(f"reverb RIR bank file {bank.files[i]!r} is silent")
        rirs.append(torch.from_numpy(h / math.sqrt(energy)))
    rt60 = [float(schroeder_rt60(h[None], sample_rate)[0]) for h in rirs]
    drr = [float(direct_to_reverberant_db(h[None], sample_rate)[0]) for h in rirs]
    return rirs, rt60, drr


@register_perturbation
@dataclass
class Reverb(Corruption):
    """Reverberation by convolution with a room impulse response at a given RT60 and DRR.

    ``severity`` 1..5 -> (RT60 s, DRR dB) = (0.3, 9), (0.5, 6), (0.8, 3), (1.2, 0), (2.0, -3)
    (:data:`REVERB_RT60_DRR`). Default: a synthetic RIR per clip (Polack's exponentially decaying
    Gaussian noise, drawn from the clip's generator; see :mod:`audiobench.perturb.corruptions.room`).
    ``rir_bank``: a folder of measured RIRs instead; each clip gets one, drawn uniformly among
    the bank's RIRs whose measured RT60 lies in the severity's band (:func:`severity_band`). FFT
    convolution (``torchaudio.functional.fftconvolve``), length and alignment kept. Per clip:
    ``rt60_s`` (Schroeder T30) and ``drr_db`` of the RIR used, ``rir_clip`` for a bank.
    Differentiable (linear). ``sample_rate``: the dataset's rate (Hz), set by the engine.
    """

    name = "reverb"
    needs_sample_rate = True
    physical_param = "rt60_s,drr_db"
    physical_unit = "s,dB"
    table = REVERB_RT60_DRR

    rir_bank: Optional[str] = None
    sample_rate: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        self.rir_bank = None if self.rir_bank in (None, "") else str(self.rir_bank)
        self._bank = None
        if self.rir_bank is not None:
            self._bank = open_bank(self.rir_bank, what="reverb RIR bank", option="--rir-bank")
        if self.sample_rate is not None:
            if self._bank is not None and not self._candidates():
                lo, hi = severity_band(self.severity)
                _, rt60, _ = _bank_rirs(self._bank, self.sample_rate)
                found = ", ".join(f"{v:.2f}" for v in sorted(x for x in rt60 if math.isfinite(x))) or "none measurable"
                raise ConfigError(f"reverb severity {self.severity} needs RIRs with RT60 in [{lo:.2f}, {hi:.2f}) s; "
                                  f"the bank {self.rir_bank!r} has RT60s (s): {found}")

    def _candidates(self):
        lo, hi = severity_band(self.severity)
        _, rt60, _ = _bank_rirs(self._bank, self._rate())
        return [i for i, v in enumerate(rt60) if lo <= v < hi]

    def rirs(self, rng, batch: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(batch, L) float64 RIRs for the clips of ``rng`` and the per-clip values to record."""
        sr = self._rate()
        if self._bank is None:
            rt60, drr = self.physical
            h = synthetic_rir(rng, rt60, drr, sr)
            return h, {"rt60_s": schroeder_rt60(h, sr), "drr_db": direct_to_reverberant_db(h, sr)}
        cand = self._candidates()
        rirs, rt60, drr = _bank_rirs(self._bank, sr)
        u = rng.uniform(1, dtype=torch.float64).cpu().reshape(-1)
        picks = [cand[min(int(v * len(cand)), len(cand) - 1)] for v in u.tolist()]
        length = max(rirs[i].shape[0] for i in picks)
        h = torch.zeros(batch, length, dtype=torch.float64)
        for b, i in enumerate(picks):
            h[b, : rirs[i].shape[0]] = rirs[i]
        realised = {"rt60_s": torch.tensor([rt60[i] for i in picks], dtype=torch.float64),
                    "drr_db": torch.tensor([drr[i] for i in picks], dtype=torch.float64),
                    "rir_clip": torch.tensor(picks, dtype=torch.float64)}
        return h.to(rng.device), realised

    def prepare(self, waveform, rng) -> Prepared:
        h, realised = self.rirs(rng, waveform.shape[0])
        h = h.to(waveform.device)

        def apply(z: torch.Tensor) -> torch.Tensor:
            return convolve_rir(z, h).to(z.dtype)

        return Prepared(apply, realised)

    def to_dict(self) -> Dict[str, Any]:
        d = super().to_dict()
        d.pop(self.physical_param, None)
        d["rt60_s"], d["drr_db"] = self.physical
        if self._bank is not None:
            d.update(rir_bank_sha256=bank_sha256(self._bank), rir_bank_files=len(self._bank),
                     rt60_band_s=list(severity_band(self.severity)))
            d.pop("drr_db")  # a measured RIR's DRR is what it is (recorded per clip)
        return d

    def _key_items(self) -> Dict[str, Any]:
        items = asdict(self)
        if self._bank is not None:
            items["rir_bank"] = "sha256:" + bank_sha256(self._bank)
        return items
