"""Additive white Gaussian noise: at a per-clip SNR, or at a fixed standard deviation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.perturb.base import Perturbation, check_finite, signal_power

# Sane bounds (one-line ConfigError beyond them; docs/attacks.md "Option bounds"): beyond ±300 dB
# the noise is far below float rounding or the clamp turns the clip into random ±1 samples; the
# same for a sigma above 100 waveform units (full scale = 1).
MAX_ABS_SNR_DB = 300.0
MAX_SIGMA = 100.0


def white_noise(rng, n_samples: int, *, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise (batch, n_samples) from the per-clip generators."""
    return rng.normal(n_samples, dtype=dtype)


def add_noise_at_snr(waveform: torch.Tensor, snr_db: float, rng, *, clamp: bool = True) -> torch.Tensor:
    """``waveform`` plus white noise scaled per clip so the SNR is exactly ``snr_db`` before clamping.

    The noise draw is rescaled by its own realised power (not the nominal variance), so
    10·log10(P(x)/P(n)) equals ``snr_db`` up to float rounding. ``snr_db = inf`` returns an exact
    copy. A silent clip (P(x) = 0) gets no noise at all: an SNR is undefined for it, and adding
    noise of any power would invent a level; its realised SNR is reported as ``inf``.
    """
    if math.isinf(snr_db) and snr_db > 0:
        return waveform.clone()
    b, s = waveform.shape
    noise = white_noise(rng, s, dtype=torch.float64).to(waveform.device)
    out = (waveform.double() + noise * snr_scale(waveform, noise, snr_db)[:, None]).to(waveform.dtype)
    return out.clamp(-1.0, 1.0) if clamp else out


def snr_scale(waveform: torch.Tensor, noise: torch.Tensor, snr_db) -> torch.Tensor:
    """Per-clip gain (batch,) float64 that puts ``noise`` at ``snr_db`` below ``waveform``.

    10·log10(P(waveform) / P(gain·noise)) = snr_db exactly (powers are the realised mean squares,
    not nominal variances). ``snr_db`` is a float or a (batch,) tensor. The gain is 0 where the
    noise is silent (no level to scale) and where the clip is silent (an SNR is undefined for it).
    """
    ps = signal_power(waveform)  # (B,) float64
    pn = noise.double().pow(2).mean(dim=-1)
    snr = torch.as_tensor(snr_db, dtype=torch.float64, device=ps.device)
    scale = torch.sqrt(ps / (pn * 10.0 ** (snr / 10.0)))
    return torch.where(pn > 0, scale, torch.zeros_like(scale))


def add_noise_sigma(waveform: torch.Tensor, sigma: float, rng, *, clamp: bool = True) -> torch.Tensor:
    """``waveform`` plus N(0, sigma²) white noise (sigma in waveform units); sigma = 0 is a copy."""
    if sigma == 0:
        return waveform.clone()
    noise = white_noise(rng, waveform.shape[-1], dtype=waveform.dtype).to(waveform.device)
    out = waveform + sigma * noise
    return out.clamp(-1.0, 1.0) if clamp else out


@register_perturbation
@dataclass
class GaussianNoise(Perturbation):
    """Additive white Gaussian noise at a per-clip SNR (``snr_db``, dB) or fixed ``sigma``.

    Set exactly one of ``snr_db`` (dB relative to each clip's own mean power; the realised SNR
    before clamping equals it to float precision; ``inf`` = clean; silent clips are left
    untouched) or ``sigma`` (standard deviation in waveform units, the same for every clip,
    as in Li et al. 2022, "Robustness of Neural Architectures for Audio Event Detection", code
    lijuncheng16/AudioSetDoneRight, which used sigma = 0.1). The result is clamped to [-1, 1].
    """

    name = "gaussian"
    level_field = "snr_db"

    snr_db: Optional[float] = None
    sigma: Optional[float] = None

    def __post_init__(self):
        if (self.snr_db is None) == (self.sigma is None):
            raise ConfigError(f"gaussian needs exactly one of snr_db or sigma, got snr_db={self.snr_db!r}, sigma={self.sigma!r}")
        if self.snr_db is not None:
            check_finite("gaussian snr_db", self.snr_db, allow_inf=True)
            if float(self.snr_db) == -math.inf:
                raise ConfigError("gaussian snr_db must not be -inf")
            self.snr_db = float(self.snr_db)
            if math.isfinite(self.snr_db) and abs(self.snr_db) > MAX_ABS_SNR_DB:
                raise ConfigError(f"gaussian snr_db must be within ±{MAX_ABS_SNR_DB:g} dB (or inf for clean), got {self.snr_db:g}")
        else:
            check_finite("gaussian sigma", self.sigma, non_negative=True)
            self.sigma = float(self.sigma)
            if self.sigma > MAX_SIGMA:
                raise ConfigError(f"gaussian sigma must be <= {MAX_SIGMA:g} (waveform units), got {self.sigma:g}")

    @property
    def param(self) -> str:
        return "snr_db" if self.snr_db is not None else "sigma"

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        if self.snr_db is not None:
            return add_noise_at_snr(waveform, self.snr_db, rng)
        return add_noise_sigma(waveform, self.sigma, rng)
