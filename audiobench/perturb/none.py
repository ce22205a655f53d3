"""The clean condition."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from audiobench.perturb import register_perturbation
from audiobench.perturb.base import Perturbation


@register_perturbation
@dataclass
class NoPerturbation(Perturbation):
    """Identity: the clean waveform (a copy). Units: none. Reference: the clean baseline.

    ``param`` is ``"none"``, ``level`` 0.0 and ``condition_id`` ``"none"``.
    """

    name = "none"

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        return waveform.clone()
