"""Level change: the same audio, louder or quieter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.perturb.base import Perturbation, check_finite, format_level

# ±60 dB spans a 1000x amplitude change either way: beyond it a 16-bit clip is below its own
# quantisation step (quieter) or a full-scale square wave (louder), which is no longer a level test.
MAX_GAIN_DB = 60.0


@register_perturbation
@dataclass
class Gain(Perturbation):
    """Level change by ``gain_db`` dB: every sample is multiplied by 10^(gain_db / 20), then clamped to [-1, 1].

    ``gain_db`` (dB, amplitude: -6.02 dB halves every sample, +6.02 dB doubles it; |gain_db| at most
    60) is the swept level; negative values make the clip quieter (a distant source, a low
    recording level), positive ones louder, where samples beyond full scale are clipped at ±1 as a
    converter would. ``jitter_db`` (dB, 0 to 60, default 0) adds a per-clip offset drawn uniformly
    from [-jitter_db, +jitter_db] by the clip's own generator, so every clip gets its own level
    (a reproducible "random gain" within a range). Silent clips stay silent. Differentiable, so it
    can be the base of an attack (``--on gain:gain_db=-20``). Reference: the dB gain of
    ``torchaudio.transforms.Vol(gain, gain_type="db")`` (which also clamps to [-1, 1]) and the
    random-gain augmentation of audiomentations' ``Gain`` (min/max gain in dB).
    """

    name = "gain"
    level_field = "gain_db"

    gain_db: Optional[float] = None
    jitter_db: float = 0.0

    def __post_init__(self):
        if self.gain_db is None:
            raise ConfigError("gain needs gain_db (dB), e.g. 'gain:gain_db=-20' (Python, --on) or "
                              "'gain_db: [-20, 6]' in a sweep file")
        check_finite("gain gain_db", self.gain_db)
        check_finite("gain jitter_db", self.jitter_db, non_negative=True)
        self.gain_db, self.jitter_db = float(self.gain_db), float(self.jitter_db)
        if abs(self.gain_db) > MAX_GAIN_DB:
            raise ConfigError(f"gain gain_db must be within ±{MAX_GAIN_DB:g} dB, got {self.gain_db:g}")
        if self.jitter_db > MAX_GAIN_DB:
            raise ConfigError(f"gain jitter_db must be <= {MAX_GAIN_DB:g} dB, got {self.jitter_db:g}")

    @property
    def variant(self) -> str:
        # conditions at the same gain_db but another jitter must not share an id
        return f"jitter{format_level(self.jitter_db)}db" if self.jitter_db else ""

    def gains_db(self, rng, batch: int) -> torch.Tensor:
        """Per-clip gain in dB, float64 (batch,): ``gain_db`` plus the clip's jitter draw."""
        gains = torch.full((batch,), self.gain_db, dtype=torch.float64)
        if self.jitter_db:
            gains = gains + rng.uniform(1, low=-self.jitter_db, high=self.jitter_db, dtype=torch.float64)[:, 0].cpu()
        return gains

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        factor = torch.pow(10.0, self.gains_db(rng, waveform.shape[0]) / 20.0)
        if bool((factor == 1.0).all()):
            return waveform.clone()
        scaled = waveform * factor.to(device=waveform.device, dtype=waveform.dtype)[:, None]
        return scaled.clamp(-1.0, 1.0)

