"""Perturbations applied on top of already perturbed audio ("PGD on perturbed" of Li et al. 2022)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict

import torch

from audiobench.errors import ConfigError
from audiobench.perturb import PERTURBATIONS, register_perturbation
from audiobench.perturb.base import Perturbation


def _build(spec: Dict[str, Any], what: str) -> Perturbation:
    if not isinstance(spec, dict) or "perturbation" not in spec:
        raise ConfigError(f"chain {what} must be a mapping with a 'perturbation' kind, got {spec!r}")
    params = dict(spec)
    kind = params.pop("perturbation")
    cls = PERTURBATIONS.get(kind)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ConfigError(f"chain {what}: {kind} has no field {unknown[0]!r}")
    return cls(**params)


def parse_on(text: str) -> Dict[str, Any]:
    """``'gaussian:snr_db=20'`` or ``'occlusion:pattern=alternate;period_s=0.5'`` → a spec dict.

    One-line ConfigErrors for a chain as the base (a chain's parts cannot be written as
    FIELD=VALUE), a field given twice, a missing ``=`` and anything the kind refuses.
    """
    from audiobench.perturb.grid import ALIASES

    kind, _, rest = str(text).partition(":")
    kind = kind.strip()
    if kind == "chain":
        raise ConfigError(f"--on {text!r}: the base cannot itself be a chain; give one perturbation, e.g. gaussian:snr_db=20")
    spec: Dict[str, Any] = {"perturbation": kind}
    for item in filter(None, (p.strip() for p in rest.split(";"))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--on {text!r}: expected KIND:FIELD=VALUE[;FIELD=VALUE...]")
        key = ALIASES.get(key.strip(), key.strip())
        if key in spec:
            raise ConfigError(f"--on {text!r}: field {key!r} is given twice")
        value = value.strip()
        try:
            spec[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            spec[key] = value
    _build(spec, "base")  # validate now: one clear line for a bad --on
    return spec


@register_perturbation
@dataclass
class Chain(Perturbation):
    """``attack`` applied to the output of ``base`` (e.g. PGD on Gaussian-noised or occluded audio, the
    "PGD on perturbed inputs" cells of Li et al. 2022, "Robustness of Neural Architectures for Audio
    Event Detection"). Units: those of the two parts; the swept level is the attack's. Metrics still
    compare with the clean clip. Reference: Li et al. 2022 (lijuncheng16/AudioSetDoneRight)."""

    name: ClassVar[str] = "chain"
    base: Dict[str, Any] = field(default_factory=dict)
    attack: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.base = dict(sorted(self.base.items()))
        self.attack = dict(sorted(self.attack.items()))
        self._base = _build(self.base, "base")
        self._attack = _build(self.attack, "attack")
        for part in (self._base, self._attack):
            if getattr(part, "requires_fit", False) or getattr(part, "domain", "waveform") != "waveform":
                raise ConfigError(f"chain: {part.name} cannot be chained (needs fitting or works on features)")
        self.uses_model = bool(self._base.uses_model or self._attack.uses_model)
        self.needs_sample_rate = bool(self._base.needs_sample_rate or self._attack.needs_sample_rate)

    # the attack's naming and budget
    @property
    def param(self) -> str:
        return self._attack.param

    @property
    def level(self) -> float:
        return self._attack.level

    @property
    def level_text(self) -> str:
        return self._attack.level_text

    @property
    def variant(self) -> str:
        return f"{self._attack.variant}@{self._base.condition_id}"

    @property
    def condition_id(self) -> str:
        return f"{self._attack.condition_id}@{self._base.condition_id}"

    @property
    def eps(self) -> float:
        return float(getattr(self._attack, "eps"))

    @property
    def norm(self) -> str:
        return getattr(self._attack, "norm", "linf")

    @property
    def base_perturbation(self) -> Perturbation:
        return self._base

    def to_dict(self) -> Dict[str, Any]:
        return {"perturbation": self.name, "base": self.base, "attack": self.attack, "param": self.param,
                "level": self.level, "condition_id": self.condition_id, "domain": self.domain}

    def with_sample_rate(self, sample_rate: int) -> "Chain":
        def bind(spec, part):
            return {**spec, "sample_rate": int(sample_rate)} if part.needs_sample_rate else spec

        return Chain(base=bind(self.base, self._base), attack=bind(self.attack, self._attack))

    def replace_level(self, value: float) -> "Chain":
        """The same chain with the attack's swept level set to ``value`` (trust checks' 10x eps)."""
        return Chain(base=self.base, attack={**self.attack, self._attack.param: value})

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        start = self._base(waveform, model=model, targets=targets, rng=rng, trace=None)
        return self._attack(start, model=model, targets=targets, rng=rng, trace=trace)
