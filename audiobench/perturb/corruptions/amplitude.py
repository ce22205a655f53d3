"""Amplitude distortions: hard ``clipping`` at a fraction of the clip's peak and ``bitcrush``
(bit-depth reduction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from audiobench.perturb import register_perturbation
from audiobench.perturb.base import realised_snr_db
from audiobench.perturb.corruptions.base import Corruption, Prepared, as_bool, straight_through

#: severity -> clip level as a fraction of each clip's peak |x|: an overdriven input stage
CLIP_FRACTION = {1: 0.5, 2: 0.3, 3: 0.15, 4: 0.08, 5: 0.04}
#: severity -> bits per sample of the re-quantised signal (full scale [-1, 1))
BITCRUSH_BITS = {1: 10, 2: 8, 3: 7, 4: 6, 5: 5}


@register_perturbation
@dataclass
class Clipping(Corruption):
    """Hard clipping at a fraction of each clip's peak: y = clamp(x, -c·peak, c·peak).

    ``severity`` 1..5 -> c = 0.5, 0.3, 0.15, 0.08, 0.04 of the clip's peak absolute sample
    (:data:`CLIP_FRACTION`); no make-up gain (a clipped recording is as loud as its clip level).
    Per clip: ``clip_level`` (c·peak, waveform units) and ``clipped_fraction`` (share of samples
    changed). Differentiable almost everywhere (gradient 1 below the level, 0 above; the level
    is fixed from the clean clip). Reference: hard clipping as in torch-audiomentations /
    audiomentations ``ClippingDistortion``.
    """

    name = "clipping"
    physical_param = "clip_fraction"
    physical_unit = "of peak"
    table = CLIP_FRACTION
    damage_direction = "down"

    def prepare(self, waveform, rng) -> Prepared:
        level = waveform.detach().abs().amax(dim=-1) * float(self.physical)  # (B,)

        def apply(z: torch.Tensor) -> torch.Tensor:
            lv = level.to(z.dtype)[:, None]
            return torch.maximum(torch.minimum(z, lv), -lv)

        return Prepared(apply, {"clip_level": level.double()})

    def measure(self, clean, out) -> Dict[str, torch.Tensor]:
        return {"clipped_fraction": (out != clean).double().mean(dim=-1)}


def quantise(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Mid-tread uniform quantiser to signed ``bits``-bit integers of full scale 1: levels k/2^(bits-1),
    k in [-2^(bits-1), 2^(bits-1) - 1] (round half to even)."""
    q = float(2 ** (bits - 1))
    return (torch.round(z.double() * q).clamp(-q, q - 1) / q).to(z.dtype)


@register_perturbation
@dataclass
class Bitcrush(Corruption):
    """Bit-depth reduction: every sample re-quantised to ``bits`` bits over the full scale [-1, 1).

    ``severity`` 1..5 -> 10, 8, 7, 6, 5 bits (:data:`BITCRUSH_BITS`); quantisation noise is
    about 6 dB per bit below full scale, so quiet clips suffer more (as with a real low-resolution
    converter). Per clip: ``realised_snr_db`` of the result. NOT differentiable (the gradient of
    rounding is zero); ``straight_through=True`` uses the identity as its gradient (BPDA) so it can
    be the base of a gradient attack in a chain.
    """

    name = "bitcrush"
    physical_param = "bits"
    physical_unit = "bits"
    table = BITCRUSH_BITS
    damage_direction = "down"
    differentiable = False

    straight_through: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.straight_through = as_bool("bitcrush straight_through", self.straight_through)

    def prepare(self, waveform, rng) -> Prepared:
        bits = int(self.physical)

        def crush(z: torch.Tensor) -> torch.Tensor:
            return quantise(z, bits)

        return Prepared(straight_through(crush) if self.straight_through else crush)

    def measure(self, clean, out) -> Dict[str, torch.Tensor]:
        return {"realised_snr_db": realised_snr_db(clean, out)}
