"""What every natural corruption shares: a severity 1..5, one table, a fixed-draw application.

A corruption is a :class:`~audiobench.perturb.base.Perturbation` whose swept level is the integer
``severity`` (1 = mild ... 5 = severe). Each kind owns ONE module-level table mapping severity to
its physical parameter (SNR in dB, cutoff in Hz, RT60 in s, bitrate in kbps ...), named in
:attr:`Corruption.physical_param` and given by :attr:`Corruption.table`; severity is monotone in
that parameter and in the expected damage (tests check both).

Application is split in two so that attacks can see through a corruption (see
:mod:`audiobench.perturb.chain`):

* :meth:`Corruption.prepare` makes every random draw (noise, room, bank clip, direction) from the
  per-clip generators and every data-dependent setting (the clip's power or peak) from the
  reference clip, and returns a :class:`Prepared` callable;
* ``prepared(z)`` is then a deterministic function of ``z`` (differentiable for the kinds with
  ``differentiable = True``), and ``prepared.realised`` holds the per-clip values actually applied
  (recorded in ``per_clip.csv`` through the trace).

``corruption(x, rng=rng, trace=trace)`` is ``prepare(x)(x)`` clamped to [-1, 1], computed at full
precision (autocast off), with the realised values written to ``trace`` when one is given.
Corruptions use no model: one evaluation forward per clip and condition.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional

import torch

from audiobench.errors import ConfigError
from audiobench.perturb.base import Perturbation, check_int

SEVERITIES = (1, 2, 3, 4, 5)


class Prepared:
    """A corruption with every draw fixed: ``prepared(z)`` applies it to a (batch, samples) tensor.

    ``realised``: name → (batch,) tensor of the per-clip values applied (e.g. ``rt60_s``); a
    non-differentiable kind may refresh entries each time it is applied (the codec measures the
    bitrate of the stream it wrote), so read it after the last application.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], realised: Optional[Dict[str, torch.Tensor]] = None):
        self.fn = fn
        self.realised: Dict[str, torch.Tensor] = dict(realised or {})

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)


@contextlib.contextmanager
def full_precision(device: torch.device):
    """Autocast off: signal processing is not the model and keeps float32/float64 precision."""
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield


def as_bool(name: str, value: Any) -> bool:
    """A bool field given as a bool or as 'true'/'false' text (``--on`` values arrive as text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{name} must be true or false, got {value!r}")


@dataclass
class Corruption(Perturbation):
    """Base of the natural corruptions (not registered itself): a dataclass whose first field is
    the integer ``severity`` (1..5, default 3); subclasses add their own fields after it and call
    ``super().__post_init__()``."""

    level_field = "severity"
    uses_model = False
    #: whether gradients flow through ``prepare(x)(z)`` w.r.t. ``z`` (almost everywhere)
    differentiable: ClassVar[bool] = True
    #: the table's physical parameter: name (e.g. ``"snr_db"``) and unit (e.g. ``"dB"``)
    physical_param: ClassVar[str] = ""
    physical_unit: ClassVar[str] = ""
    #: severity -> physical parameter (the module-level table of the kind)
    table: ClassVar[Mapping[int, Any]] = {}
    #: "up" when the physical parameter grows with severity, "down" when it shrinks (tests use it)
    damage_direction: ClassVar[str] = "up"

    severity: int = 3

    def __post_init__(self):
        self._check_severity()
        # the one check of a corruption's ``sample_rate`` field (Hz; None until with_sample_rate)
        if getattr(self, "sample_rate", None) is not None:
            check_int(f"{self.name} sample_rate", self.sample_rate, minimum=1)
            self.sample_rate = int(self.sample_rate)

    def _check_severity(self) -> None:
        check_int(f"{self.name} severity", self.severity, minimum=1)
        self.severity = int(self.severity)
        if self.severity not in self.table:
            raise ConfigError(f"{self.name} severity must be one of {', '.join(map(str, sorted(self.table)))}, got {self.severity}")

    def _rate(self) -> int:
        rate = getattr(self, "sample_rate", None)
        if rate is None:
            raise ConfigError(f"{self.name} needs the dataset's sample_rate (set it with with_sample_rate)")
        return int(rate)

    @property
    def physical(self) -> Any:
        """This severity's entry of the table (e.g. 10.0 dB, (0.8 s, 3.0 dB))."""
        return self.table[self.severity]

    @property
    def passes_gradient(self) -> bool:
        """True when an attack can differentiate through it: differentiable, or straight-through."""
        return bool(self.differentiable or getattr(self, "straight_through", False))

    # -- application --------------------------------------------------------------------------
    def prepare(self, waveform: torch.Tensor, rng) -> Prepared:
        """Fix every draw for the clips of ``waveform`` (the reference); subclasses override."""
        raise TypeError(f"{type(self).__name__} does not implement prepare")

    def measure(self, clean: torch.Tensor, out: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-clip values measured on the final (clamped) output; none by default."""
        return {}

    def record(self, trace, clean: torch.Tensor, out: torch.Tensor, prepared: Prepared) -> None:
        """Write the realised and measured per-clip values to ``trace`` (when one is given)."""
        if trace is None:
            return
        values = dict(prepared.realised)
        values.update(self.measure(clean, out))
        for key, v in values.items():
            trace.add_per_clip(key, v)

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        with full_precision(waveform.device):
            prepared = self.prepare(waveform, rng)
            out = prepared(waveform).to(waveform.dtype).clamp(-1.0, 1.0)  # clamp: always a new tensor
            self.record(trace, waveform, out, prepared)
        return out

    # -- provenance ---------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = super().to_dict()
        phys = self.physical
        d[self.physical_param] = list(phys) if isinstance(phys, tuple) else phys
        d["differentiable"] = bool(self.differentiable)
        return d

    def _key_items(self) -> Dict[str, Any]:
        """The fields that name this condition for seeding (subclasses swap paths for hashes)."""
        return asdict(self)  # type: ignore[call-overload]

    def condition_key(self) -> str:
        items = ",".join(f"{k}={v!r}" for k, v in sorted(self._key_items().items()))
        return f"{self.name}({items})"


def straight_through(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` in the forward pass, the identity in the backward pass (BPDA, Athalye et al. 2018)."""

    def apply(z: torch.Tensor) -> torch.Tensor:
        y = fn(z.detach())
        return z + (y.to(z.dtype) - z).detach()

    return apply
