"""Perturbations applied on top of already perturbed audio ("PGD on perturbed" of Li et al. 2022)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict

import torch

from audiobench.errors import ConfigError
from audiobench.perturb import PERTURBATIONS, register_perturbation
from audiobench.perturb.base import NamedByItsAttack, Perturbation


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


def sees_through(base: Perturbation) -> bool:
    """True for a base the attack differentiates through (a natural corruption, which can fix its
    draws with ``prepare``); False for one applied before the attack (gaussian, occlusion)."""
    return callable(getattr(base, "prepare", None)) and hasattr(base, "passes_gradient")


class _ThroughBase:
    """The attacked function of a see-through chain: ``model(clamp(prepared(z)))``."""

    def __init__(self, model, prepared, device, batch: int):
        self.model = model
        self.prepared = prepared
        self.device = device
        self.batch = int(batch)
        self.training = bool(getattr(model, "training", False))

    def corrupt(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=torch.device(self.device).type, enabled=False):  # signal processing at full precision
            return self.prepared(z).to(z.dtype).clamp(-1.0, 1.0)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[0] != self.batch:
            raise ConfigError(f"chain: the attack evaluated {z.shape[0]} of the batch's {self.batch} clips, but a "
                              f"corruption's draws are fixed per batch; this attack cannot see through a corruption")
        return self.model(self.corrupt(z))


@register_perturbation
@dataclass
class Chain(NamedByItsAttack, Perturbation):
    """``attack`` combined with ``base`` (e.g. PGD on Gaussian-noised, occluded or reverberant audio,
    the "PGD on perturbed inputs" cells of Li et al. 2022, "Robustness of Neural Architectures for
    Audio Event Detection"). Units: those of the two parts; the swept level is the attack's. Metrics
    still compare with the clean clip. Reference: Li et al. 2022 (lijuncheng16/AudioSetDoneRight).

    Two compositions, chosen by the base's kind:

    * gaussian, occlusion (any perturbation without ``prepare``): the base is applied first and the
      attack perturbs its output inside an eps ball around it, ``attack(base(x))``, as Li et al.;
    * a natural corruption (reverb, lowpass, mp3 ...): the attack perturbs the clean clip and the
      model sees the corrupted result, ``base(x + delta)``, with delta found by the attack through
      the corruption (the corruption's random draws, e.g. its room, are fixed once per clip, so
      every step sees the same corruption): "PGD on reverberant audio" is an attack that survives
      the room. A corruption that is not differentiable (mp3, bitcrush) is refused as the base of a
      gradient attack unless it is given ``straight_through=true`` (identity gradient, BPDA), and
      min-eps (which attacks subsets of the batch) cannot be run through a corruption.
    """

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
        from audiobench.perturb.min_eps import MinEps

        if sees_through(self._base) and isinstance(self._attack, MinEps):
            # min-eps attacks shrinking subsets of the batch; a corruption's draws are per batch
            raise ConfigError(f"chain: min-eps cannot be run through {self._base.name}; use pgd, fgsm or apgd on it")
        if sees_through(self._base) and self._attack.uses_model and not self._base.passes_gradient:
            raise ConfigError(f"chain: {self._base.name} is not differentiable, so {self._attack.name} cannot take gradients "
                              f"through it; give the base straight_through=true (identity gradient), e.g. "
                              f"--on '{self._base.name}:severity={self._base.severity};straight_through=true'")
        self.uses_model = bool(self._base.uses_model or self._attack.uses_model)
        self.needs_sample_rate = bool(self._base.needs_sample_rate or self._attack.needs_sample_rate)

    # param, level, level_text, eps, norm are the attack's (NamedByItsAttack); the chain's own names:

    @property
    def variant(self) -> str:
        return f"{self._attack.variant}@{self._base.condition_id}"

    @property
    def condition_id(self) -> str:
        return f"{self._attack.condition_id}@{self._base.condition_id}"

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

    @property
    def is_attack(self) -> bool:  # type: ignore[override]
        return bool(self._attack.is_attack)

    @property
    def trust_group(self) -> tuple:
        # the attack's kind is part of the group: PGD and FGSM chained on one base are compared
        # with their own kind only
        return (self.name, self._attack.name, self.variant)

    def cost(self) -> tuple:
        f0, b0 = self._base.cost()
        f1, b1 = self._attack.cost()
        return (f0 + f1, b0 + b1)

    def companions(self):
        """The attack's companions, starting from the base's output (drawn from this chain's
        streams); the 10x companion is the whole chain at 10x the attack's eps."""
        if not self.is_attack:
            return []
        from audiobench.perturb.attacks import attack_companions
        from audiobench.perturb.base import TENFOLD_CLIPS, Companion, SameL2Gaussian

        key = self.condition_key()
        if sees_through(self._base) and self._attack.uses_model:
            # the references pass through the same corruption, with the same draws (this chain's
            # streams): FGSM through it, and same-size noise added where the attack adds delta
            comps = []
            if self._attack.name != "fgsm":
                fgsm = Chain(base=self.base, attack={"perturbation": "fgsm", "eps": self.eps, "norm": self.norm})
                comps.append(Companion("fgsm", fgsm, key))
            comps.append(Companion("gauss-same-l2", SameL2Gaussian(), key + "#gauss-same-l2", same_l2_as_parent=True,
                                   through=self._base, base_rng_key=key))
        else:
            comps = attack_companions(self._attack, tenfold=False, base=self._base, base_rng_key=key)
        strong = self.replace_level(float(self.eps) * 10.0)
        comps.append(Companion("tenfold", strong, strong.condition_key() + "#tenfold", clip_limit=TENFOLD_CLIPS))
        return comps

    def replace_level(self, value: float) -> "Chain":
        """The same chain with the attack's swept level set to ``value`` (trust checks' 10x eps)."""
        return Chain(base=self.base, attack={**self.attack, self._attack.param: value})

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        if sees_through(self._base) and self._attack.uses_model:
            return self._through(waveform, model=model, targets=targets, rng=rng, trace=trace)
        start = self._base(waveform, model=model, targets=targets, rng=rng, trace=None)
        return self._attack(start, model=model, targets=targets, rng=rng, trace=trace)

    def _through(self, waveform, *, model, targets, rng, trace) -> torch.Tensor:
        """attack on ``model ∘ base`` from the clean clip; returns base(x + delta), clamped."""
        base = self._base
        prepared = base.prepare(waveform, rng)  # the base's draws come first, as in the other order
        attacked = _ThroughBase(model, prepared, waveform.device, waveform.shape[0])
        x_adv = self._attack(waveform, model=attacked if model is not None else None, targets=targets, rng=rng, trace=trace)
        with torch.no_grad():
            out = attacked.corrupt(x_adv.detach())
        base.record(trace, waveform, out, prepared)
        if trace is not None:  # the size of the attack's own change, before the corruption (trust)
            trace.add_per_clip("attack_l2", (x_adv.detach().float() - waveform.float()).flatten(1).norm(dim=1))
        return out
