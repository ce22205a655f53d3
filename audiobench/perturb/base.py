"""The perturbation contract.

A perturbation is a small dataclass with typed, unit-bearing fields validated in
``__post_init__``. One call shape for all::

    perturbed = perturbation(waveform, model=model, targets=targets, rng=rng, trace=trace)

* ``waveform``: float32 (batch, samples) in [-1, 1] at the dataset's rate; never modified in place.
* ``model``: the wrapped model (``AudioTagger``); noise ignores it, attacks use it.
* ``targets``: bool/float (batch, n_classes) labels; attacks use them for the BCE loss.
* ``rng``: :class:`audiobench.rng.ClipRNG`, one generator per clip, the only source of randomness.
* ``trace``: optional :class:`AttackTrace` where attacks record their loss per step.

``to_dict()`` goes straight into the results' metadata. ``level`` names the field swept by the
grid (``eps``, ``snr_db``, ``period_s`` ...), so results can be pivoted without knowing the kind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

import torch


@dataclass
class AttackTrace:
    """What an attack records for the trust checks (summed over batches by the engine)."""

    loss_per_step: List[float] = field(default_factory=list)  # mean BCE over clips, per step
    n_clips: int = 0
    bad_grad_clips: int = 0  # clips whose input gradient was all zero, or had NaN/inf

    def add_step(self, step: int, mean_loss: float, n: int) -> None:
        while len(self.loss_per_step) <= step:
            self.loss_per_step.append(0.0)
        # running mean over clips across batches
        self.loss_per_step[step] += mean_loss * n


class Perturbation:
    """Base class; concrete perturbations are dataclasses that subclass it."""

    name: ClassVar[str] = "base"
    level_field: ClassVar[Optional[str]] = None  # the field a grid sweeps, e.g. "eps"
    uses_model: ClassVar[bool] = False
    comparable_across_models: ClassVar[bool] = True

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        """Return the perturbed copy of ``waveform``; subclasses override."""
        raise TypeError(f"{type(self).__name__} does not implement __call__")

    @property
    def level(self) -> float:
        return float(getattr(self, self.level_field)) if self.level_field else float("nan")

    def to_dict(self) -> Dict[str, Any]:
        d = {"perturbation": self.name}
        d.update(asdict(self))  # type: ignore[arg-type]
        return d

    def condition_key(self) -> str:
        """A stable string naming this exact condition (used for seeds and resume)."""
        items = ",".join(f"{k}={v!r}" for k, v in sorted(asdict(self).items()))  # type: ignore
        return f"{self.name}({items})"


def check_finite(name: str, value: float, *, positive: bool = False, non_negative: bool = False, allow_inf: bool = False) -> None:
    """Validate a numeric field; raises ``ConfigError`` with one clear line."""
    from audiobench.errors import ConfigError

    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if positive and not v > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    if non_negative and not v >= 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
