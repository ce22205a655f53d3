"""Transfer attacks: adversarial clips crafted on a source model, evaluated on other models.

``Transfer(source="A", attack={"perturbation": "pgd", "eps": 0.002})`` names the condition "PGD at
eps 0.002 crafted on A" (condition id ``transfer[A]/pgd/linf:eps=0.002``). The engine crafts each
clip once on the source (the attack's own per-clip streams, exactly as a white-box run of A
would), stores the crafted audio in the run's units, and scores it with every target model; on
the diagonal (target = source) the result is the white-box result bit for bit. ``source="A+B"``
is an ensemble: the attack maximises the mean of A's and B's losses (the BCE over both outputs).
Reference: Papernot et al. 2016, "Transferability in Machine Learning"; Tramèr et al. 2018,
"Ensemble Adversarial Training" (ensemble sources).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List

import torch

from audiobench.errors import ConfigError
from audiobench.perturb import PERTURBATIONS, register_perturbation
from audiobench.perturb.base import NamedByItsAttack, Perturbation


def source_models(source: str) -> List[str]:
    """``"A"`` → ["A"]; ``"A+B"`` → ["A", "B"] (an ensemble source)."""
    names = [s.strip() for s in str(source).split("+")]
    if not names or any(not n for n in names):
        raise ConfigError(f"transfer source {source!r}: expected a model name or NAME+NAME (an ensemble)")
    if len(set(names)) != len(names):
        raise ConfigError(f"transfer source {source!r}: a model appears twice in the ensemble")
    return names


@register_perturbation
@dataclass
class Transfer(NamedByItsAttack, Perturbation):
    """A transfer attack: ``attack`` (a waveform attack spec, e.g. pgd) crafted on ``source`` (a
    model name, or ``A+B`` for an ensemble maximising the mean loss) and evaluated on the run's
    models. Units: those of the attack (its eps in waveform units). The engine crafts the clips;
    calling it directly is refused."""

    name: ClassVar[str] = "transfer"
    source: str = ""
    attack: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        source_models(self.source)
        if not isinstance(self.attack, dict) or "perturbation" not in self.attack:
            raise ConfigError(f"transfer attack must be a mapping with a 'perturbation' kind, got {self.attack!r}")
        self.attack = dict(sorted(self.attack.items()))
        params = dict(self.attack)
        kind = params.pop("perturbation")
        cls = PERTURBATIONS.get(kind)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"transfer attack: {kind} has no field {unknown[0]!r}")
        self._attack = cls(**params)
        if not self._attack.is_attack or self._attack.domain != "waveform" or self._attack.requires_fit:
            raise ConfigError(f"transfer: {kind} cannot be transferred (a waveform attack such as pgd, fgsm or apgd can)")

    @property
    def attack_perturbation(self) -> Perturbation:
        """The attack run on the source model."""
        return self._attack

    @property
    def sources(self) -> List[str]:
        return source_models(self.source)

    @property
    def needs_sample_rate(self) -> bool:  # type: ignore[override]
        return bool(self._attack.needs_sample_rate)

    @property
    def variant(self) -> str:
        return f"{self.source}/{self._attack.variant}"

    @property
    def condition_id(self) -> str:
        return f"transfer[{self.source}]/{self._attack.condition_id}"

    def cost(self) -> tuple:
        return (0.0, 0.0)  # the crafting runs once per source, not per target (the sweep counts it there)

    def to_dict(self) -> Dict[str, Any]:
        return {"perturbation": self.name, "source": self.source, "attack": self.attack, "param": self.param,
                "level": self.level, "condition_id": self.condition_id, "domain": self.domain}

    def with_sample_rate(self, sample_rate: int) -> "Transfer":
        if not self._attack.needs_sample_rate:
            return self
        return Transfer(source=self.source, attack={**self.attack, "sample_rate": int(sample_rate)})

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        raise ConfigError(f"{self.condition_id}: transfer conditions are evaluated by the engine on clips crafted on "
                          f"{self.source} (audiobench run --transfer-from {self.source})")


def transfer_conditions(conditions, sources) -> list:
    """The grid with every waveform attack replaced by its transfer from each source (the other
    conditions, clean first, unchanged)."""
    from audiobench.perturb.spec import own_fields

    out = []
    for c in conditions:
        if c.is_attack and c.domain == "waveform" and not c.requires_fit and c.name != "chain":
            spec = {"perturbation": c.name, **own_fields(c)}
            spec = {k: v for k, v in spec.items() if not (k == "sample_rate" and v is None)}
            out.extend(Transfer(source=s, attack=spec) for s in sources)
        else:
            out.append(c)
    return out


class EnsembleSource(torch.nn.Module):
    """Several models as one attack target: the outputs side by side, so the attacks' mean BCE over
    the classes (with the targets repeated once per member) is the mean of the members' losses."""

    def __init__(self, members: List[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.sample_rate = int(members[0].sample_rate)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(waveform) for m in self.members], dim=1)

    def repeat_targets(self, targets: torch.Tensor) -> torch.Tensor:
        return targets.repeat(1, len(self.members))
