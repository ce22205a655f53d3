"""The perturbation contract.

A perturbation is a small dataclass with typed, unit-bearing fields validated in
``__post_init__``. One call shape for all::

    perturbed = perturbation(waveform, model=model, targets=targets, rng=rng, trace=trace)

* ``waveform``: float32 (batch, samples) in [-1, 1] at the dataset's rate; never modified in place.
  The result is a NEW tensor, clamped to [-1, 1].
* ``model``: the wrapped model (``AudioTagger``); noise ignores it, attacks use it.
* ``targets``: bool/float (batch, n_classes) labels; attacks use them for the BCE loss.
* ``rng``: :class:`audiobench.rng.ClipRNG`, one generator per clip, the only source of randomness.
* ``trace``: optional :class:`AttackTrace` where attacks record their loss per step.

Naming of a condition (for result rows, resume and seeds):

* ``param``: the name of the swept field (``eps``, ``snr_db``, ``sigma``, ``period_s``, ``span_s``,
  ``fraction``, ``band_hz`` ...); an instance property because some kinds sweep different fields
  depending on their configuration (gaussian: ``snr_db`` or ``sigma``; occlusion: per pattern).
* ``level``: that field's value as a float.
* ``variant``: what else distinguishes conditions of the same kind at the same level (occlusion
  pattern, attack norm); empty when nothing does.
* ``condition_id``: ``"<name>:<param>=<level>"`` or ``"<name>/<variant>:<param>=<level>"``;
  ``"none"`` for the clean condition.
* ``condition_key()``: every field, for seeding (two conditions with equal ids but different
  ``steps`` get different streams).

Perturbations that need the dataset's sample rate (``needs_sample_rate = True``, e.g. occlusion)
carry it as the dataclass field ``sample_rate``; the engine sets it with
``p.with_sample_rate(dataset_rate)`` before the first call.

Other class attributes the engine reads: ``uses_model`` (needs ``model``/``targets``),
``requires_fit`` (call ``fit(...)`` over the data first: universal), ``domain`` (``"waveform"`` or
``"feature"``: feature-domain kinds are applied as
``model.forward_features(p.perturb_features(model.features(x), ...))``), and
``comparable_across_models``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence

import torch


# Judging a loss trace (loss_trace_findings): the best-so-far mean loss must rise above its start
# by more than LOSS_TOLERANCE; the last step "collapses" when it keeps less than
# COLLAPSE_FRACTION of the peak's gain over the starting loss.
LOSS_TOLERANCE = 1e-7
COLLAPSE_FRACTION = 0.5


@dataclass
class AttackTrace:
    """What an attack records for the trust checks; mergeable across batches and ranks.

    Losses are kept as per-step SUMS over clips with the number of clips that contributed, so the
    mean per step after :meth:`merge` is exact whatever the batch split.

    * ``loss_sum_per_step[t]`` / ``n_per_step[t]``: sum over clips of the per-clip loss at step
      ``t`` (step 0 = the starting point; with restarts, the per-clip max over restarts) and how
      many clips contributed; ``loss_per_step`` gives the means.
    * ``best_loss_sum_per_step[t]``: sum over the same clips of the per-clip best-so-far loss:
      the highest loss of the clip seen at steps 0..t (max over restarts). At the last step it
      is the loss of the point the attack returns (pgd, apgd and feature-pgd return the per-clip
      best point; for fgsm, and kinds that return their last point, it equals the step loss).
      ``best_loss_per_step`` gives the means.
    * ``n_clips``: clips attacked; ``bad_grad_clips``: clips whose input gradient was, at some
      step, all zero or contained NaN/inf.
    * ``per_clip``: name → list of per-clip values in the order the clips were attacked (e.g.
      ``"min_eps"``, ``"bad_grad_steps"``); merge concatenates, so merge in clip order.

    :meth:`to_arrays` / :meth:`from_arrays` give the arrays a stored unit holds (the per-step sums
    add up across units exactly like the existing ``trace_loss_sum``).
    """

    loss_sum_per_step: List[float] = field(default_factory=list)
    n_per_step: List[int] = field(default_factory=list)
    n_clips: int = 0
    bad_grad_clips: int = 0
    per_clip: Dict[str, List[float]] = field(default_factory=dict)
    best_loss_sum_per_step: List[float] = field(default_factory=list)

    def _grow(self, step: int) -> None:
        while len(self.loss_sum_per_step) <= step:
            self.loss_sum_per_step.append(0.0)
            self.n_per_step.append(0)
        while len(self.best_loss_sum_per_step) < len(self.loss_sum_per_step):
            self.best_loss_sum_per_step.append(0.0)

    def add_step(self, step: int, mean_loss: float, n: int, best_mean_loss: Optional[float] = None) -> None:
        """Add the mean loss over ``n`` clips at ``step`` (stored as a sum, so means stay exact),
        and their mean best-so-far loss (``None``: the same as ``mean_loss``, for an attack whose
        result is its current point)."""
        self._grow(step)
        best = mean_loss if best_mean_loss is None else best_mean_loss
        self.loss_sum_per_step[step] += float(mean_loss) * int(n)
        self.best_loss_sum_per_step[step] += float(best) * int(n)
        self.n_per_step[step] += int(n)

    @property
    def loss_per_step(self) -> List[float]:
        """Mean loss over all clips recorded, per step."""
        return [s / n if n else float("nan") for s, n in zip(self.loss_sum_per_step, self.n_per_step)]

    @property
    def best_loss_per_step(self) -> List[float]:
        """Mean best-so-far loss over all clips recorded, per step (non-decreasing)."""
        return [s / n if n else float("nan") for s, n in zip(self.best_loss_sum_per_step, self.n_per_step)]

    def add_clips(self, n: int, bad_grad: int = 0) -> None:
        self.n_clips += int(n)
        self.bad_grad_clips += int(bad_grad)

    def add_per_clip(self, name: str, values) -> None:
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().double().tolist()
        self.per_clip.setdefault(name, []).extend(float(v) for v in values)

    @property
    def bad_grad_fraction(self) -> float:
        return self.bad_grad_clips / self.n_clips if self.n_clips else 0.0

    def merge_steps(self, other: "AttackTrace") -> "AttackTrace":
        """Add only ``other``'s per-step sums (step and best-so-far) into ``self``."""
        for t, n in enumerate(other.n_per_step):
            self._grow(t)
            self.loss_sum_per_step[t] += other.loss_sum_per_step[t]
            best = other.best_loss_sum_per_step[t] if t < len(other.best_loss_sum_per_step) else other.loss_sum_per_step[t]
            self.best_loss_sum_per_step[t] += best
            self.n_per_step[t] += n
        return self

    def merge(self, other: "AttackTrace") -> "AttackTrace":
        """Add ``other`` into ``self`` (in place) and return ``self``."""
        self.merge_steps(other)
        self.n_clips += other.n_clips
        self.bad_grad_clips += other.bad_grad_clips
        for k, v in other.per_clip.items():
            self.per_clip.setdefault(k, []).extend(v)
        return self

    def findings(self) -> List[str]:
        """:func:`loss_trace_findings` of this trace's mean losses."""
        return loss_trace_findings(self.loss_per_step, self.best_loss_per_step)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "loss_per_step": self.loss_per_step,
            "best_loss_per_step": self.best_loss_per_step,
            "n_per_step": list(self.n_per_step),
            "n_clips": self.n_clips,
            "bad_grad_clips": self.bad_grad_clips,
            "bad_grad_fraction": self.bad_grad_fraction,
        }

    def to_arrays(self) -> Dict[str, Any]:
        """numpy arrays for a stored unit: ``trace_loss_sum``, ``trace_best_loss_sum`` (float64,
        (steps + 1,)), ``trace_n_per_step`` (int64), ``trace_n``, ``trace_bad_grad`` (int64
        scalars) and ``pc_<name>`` per-clip lists. Units merge by adding the per-step arrays
        (zero-padded to the longest) and the scalars, and concatenating the ``pc_`` arrays."""
        import numpy as np

        self._grow(len(self.loss_sum_per_step) - 1)
        out = {
            "trace_loss_sum": np.asarray(self.loss_sum_per_step, dtype=np.float64),
            "trace_best_loss_sum": np.asarray(self.best_loss_sum_per_step, dtype=np.float64),
            "trace_n_per_step": np.asarray(self.n_per_step, dtype=np.int64),
            "trace_n": np.asarray(self.n_clips, dtype=np.int64),
            "trace_bad_grad": np.asarray(self.bad_grad_clips, dtype=np.int64),
        }
        for k, v in self.per_clip.items():
            out[f"pc_{k}"] = np.asarray(v, dtype=np.float64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Dict[str, Any]) -> "AttackTrace":
        """The trace of (merged) unit arrays written by :meth:`to_arrays`. Units stored before the
        best-so-far sums existed have no ``trace_best_loss_sum``: their best-so-far trace is then
        rebuilt as the running maximum of the mean step loss, a lower bound of the true mean."""
        import numpy as np

        sums = [float(v) for v in np.asarray(arrays.get("trace_loss_sum", []), dtype=np.float64).reshape(-1)]
        counts = [int(v) for v in np.asarray(arrays.get("trace_n_per_step", []), dtype=np.int64).reshape(-1)]
        if "trace_best_loss_sum" in arrays:
            best = [float(v) for v in np.asarray(arrays["trace_best_loss_sum"], dtype=np.float64).reshape(-1)]
        else:
            means = [s / n if n else 0.0 for s, n in zip(sums, counts)]
            best = [float(m) * n for m, n in zip(np.maximum.accumulate(means) if means else [], counts)]
        per_clip = {k[3:]: [float(v) for v in np.asarray(a).reshape(-1)] for k, a in arrays.items() if k.startswith("pc_")}
        return cls(loss_sum_per_step=sums, n_per_step=counts, n_clips=int(arrays.get("trace_n", 0)),
                   bad_grad_clips=int(arrays.get("trace_bad_grad", 0)), per_clip=per_clip, best_loss_sum_per_step=best)


def loss_trace_findings(loss_per_step: Sequence[float], best_loss_per_step: Sequence[float]) -> List[str]:
    """What is wrong with an attack's mean loss trace, as one-line findings (empty: nothing).

    * The best-so-far trace (what the result uses) must rise: a finding when its last value is
      not above its first by more than ``LOSS_TOLERANCE`` ("best-so-far loss did not increase").
    * The last iterate must not collapse far below the peak: with ``gain(t) = loss[t] - loss[0]``,
      a finding when the peak gain is positive and the last step keeps less than
      ``COLLAPSE_FRACTION`` (one half) of it. The result is unaffected (attacks return the best
      point), but such a trace says the step size overshoots: the iterate is thrown off the
      high-loss region it found (docs/attacks.md, "The loss trace on real audio").

    Non-finite entries (no clip recorded at a step) are ignored; fewer than two finite steps
    give no finding.
    """
    out: List[str] = []
    best = [float(v) for v in best_loss_per_step if math.isfinite(float(v))]
    if len(best) >= 2 and not best[-1] > best[0] + LOSS_TOLERANCE:
        out.append(f"best-so-far loss did not increase ({best[0]:.4g} -> {best[-1]:.4g})")
    loss = [float(v) for v in loss_per_step if math.isfinite(float(v))]
    if len(loss) >= 2:
        peak_t = max(range(len(loss)), key=lambda i: loss[i])
        peak_gain = loss[peak_t] - loss[0]
        last_gain = loss[-1] - loss[0]
        if peak_gain > LOSS_TOLERANCE and last_gain < COLLAPSE_FRACTION * peak_gain:
            out.append(f"last-step loss collapsed to {loss[-1]:.4g} from its peak {loss[peak_t]:.4g} at step {peak_t} "
                       f"(start {loss[0]:.4g}; keeps {max(last_gain, 0.0) / peak_gain:.0%} of the peak's gain)")
    return out


def format_level(value: Any) -> str:
    """Shortest exact text of a level: 30.0 -> '30', 0.001 -> '0.001', inf -> 'inf'."""
    if isinstance(value, (tuple, list)):
        return "-".join(format_level(v) for v in value)
    v = float(value)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


TENFOLD_CLIPS = 32  # clips of the 10x-eps trust companion


@dataclass(frozen=True)
class Companion:
    """A reference condition an attack asks the engine to run beside it (the trust checks).

    The engine runs companions like any other condition (same guards, precision, resume and
    sharding) and stores them as units of their own; :mod:`audiobench.trust` judges the attack
    from them. ``role`` names it (``fgsm``: one step at the same eps; ``gauss-same-l2``: Gaussian
    noise with the per-clip L2 norm of the attack's own change; ``tenfold``: the attack at 10x its
    eps, once per attack group, for the group member with the largest eps). ``rng_key`` seeds its
    per-clip streams; ``base`` (a chain's base, drawn from the parent's streams) is applied first
    so references start where the attack started; ``through`` (a corruption) is applied after, so
    references of "PGD through reverb" also pass through the same room.
    """

    role: str
    condition: "Perturbation"
    rng_key: str
    clip_limit: Optional[int] = None
    same_l2_as_parent: bool = False
    base: Optional["Perturbation"] = None
    base_rng_key: Optional[str] = None
    #: a corruption the reference is seen through, as a see-through chain's attack is: its draws
    #: are prepared from the parent's streams (``base_rng_key``) and applied to the result
    through: Optional["Perturbation"] = None


class Perturbation:
    """Base class; concrete perturbations are dataclasses that subclass it."""

    name: ClassVar[str] = "base"
    level_field: ClassVar[Optional[str]] = None  # the field a grid sweeps by default, e.g. "eps"
    uses_model: ClassVar[bool] = False
    requires_fit: ClassVar[bool] = False
    needs_sample_rate: ClassVar[bool] = False
    domain: ClassVar[str] = "waveform"  # or "feature"
    comparable_across_models: ClassVar[bool] = True
    #: a gradient attack with a budget ``eps``: the engine runs its trust companions
    is_attack: ClassVar[bool] = False

    def cost(self) -> tuple:
        """(forward, backward) model passes per clip that the perturbation itself makes (the
        engine's evaluation forward of the result is not included); used for sweep estimates."""
        return (0.0, 0.0)

    @property
    def trust_group(self) -> tuple:
        """Conditions of one group are compared by the eps-monotonicity check and share one
        10x-eps companion: the kind and everything but the level."""
        return (self.name, self.variant)

    def companions(self) -> List[Companion]:
        """The trust companions the engine runs beside this condition (none for non-attacks)."""
        return []

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        """Return the perturbed copy of ``waveform``; subclasses override."""
        raise TypeError(f"{type(self).__name__} does not implement __call__")

    # -- naming ---------------------------------------------------------------------------------
    @property
    def param(self) -> str:
        """Name of the swept field of this instance."""
        return self.level_field or "none"

    @property
    def level(self) -> float:
        """The swept field's value as a float (bands: their width in Hz, see occlusion)."""
        if self.param == "none":
            return 0.0
        return float(getattr(self, self.param))

    @property
    def level_text(self) -> str:
        if self.param == "none":
            return ""
        return format_level(getattr(self, self.param))

    @property
    def variant(self) -> str:
        """What distinguishes conditions of this kind at equal level (pattern, norm); may be ''."""
        return ""

    @property
    def condition_id(self) -> str:
        if self.param == "none":
            return self.name
        head = f"{self.name}/{self.variant}" if self.variant else self.name
        return f"{head}:{self.param}={self.level_text}"

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"perturbation": self.name}
        d.update(asdict(self))  # type: ignore[arg-type]
        d.update(param=self.param, level=self.level, condition_id=self.condition_id, domain=self.domain)
        return d

    def condition_key(self) -> str:
        """A stable string naming this exact condition (used for seeds and resume)."""
        items = ",".join(f"{k}={v!r}" for k, v in sorted(asdict(self).items()))  # type: ignore
        return f"{self.name}({items})"

    def replace_level(self, value: float) -> "Perturbation":
        """The same condition with its swept field set to ``value`` (the 10x-eps companion)."""
        return dataclasses.replace(self, **{self.param: value})  # type: ignore[type-var]

    def with_sample_rate(self, sample_rate: int) -> "Perturbation":
        """A copy bound to the dataset's sample rate (``self`` when the kind does not need it)."""
        if not self.needs_sample_rate:
            return self
        return dataclasses.replace(self, sample_rate=int(sample_rate))  # type: ignore[type-var]


@dataclass
class SameL2Gaussian(Perturbation):
    """Trust reference (not registered): white Gaussian noise scaled, per clip, to the L2 norm of
    an attack's own change, so the attack can be compared with random noise of the same size. The
    engine passes the norms as ``target_l2`` (batch,) in waveform units."""

    name: ClassVar[str] = "gauss-same-l2"
    #: a limited attack (band, time window, padding mask): the noise lives where its delta does
    subspace_of: Optional["Perturbation"] = None

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None,
                 target_l2: Optional[torch.Tensor] = None) -> torch.Tensor:
        if target_l2 is None:
            raise TypeError("gauss-same-l2 needs target_l2, the per-clip L2 norms of the attack's change")
        noise = rng.normal(waveform.shape[1])
        if self.subspace_of is not None:
            subspace = self.subspace_of.subspace_for(waveform)
            if subspace is not None:
                noise = subspace.apply(noise.to(waveform.device))
        l2 = target_l2.to(device=waveform.device, dtype=noise.dtype)
        noise = noise * (l2 / noise.pow(2).sum(dim=1).sqrt().clamp_min(1e-12))[:, None]
        return (waveform + noise).clamp(-1.0, 1.0)


def check_finite(name: str, value: float, *, positive: bool = False, non_negative: bool = False, allow_inf: bool = False) -> None:
    """Validate a numeric field; raises ``ConfigError`` with one clear line."""
    from audiobench.errors import ConfigError

    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
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


def check_int(name: str, value: Any, *, minimum: int = 0) -> None:
    """Validate an integer field (bools and floats with a fraction refused)."""
    from audiobench.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")


def check_choice(name: str, value: Any, choices) -> None:
    from audiobench.errors import ConfigError

    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def signal_power(waveform: torch.Tensor) -> torch.Tensor:
    """Mean square per clip, float64, shape (batch,)."""
    return waveform.double().pow(2).mean(dim=-1)


def realised_snr_db(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Per-clip SNR in dB of ``perturbed`` against ``clean``: 10·log10(E(clean)/E(perturbed-clean)),
    E = sum of squares. The one definition of realised SNR: the engine's per_clip.csv ``snr_db``
    and the perturbations' checks use it.

    Shape (batch,), returned as float64 (computed from float32 sums, like the other per-clip
    norms): ``inf`` where nothing changed (a silent clip left silent included), ``nan`` for a
    silent clean clip that was changed (``-inf`` would be misleading: there is no signal to
    compare with).
    """
    c = clean.detach().float()
    ps = c.pow(2).sum(dim=-1)
    pn = (perturbed.detach().float() - c).pow(2).sum(dim=-1)
    snr = 10.0 * torch.log10(ps / pn)
    snr = torch.where(pn == 0, torch.full_like(snr, math.inf), snr)
    snr = torch.where((ps == 0) & (pn > 0), torch.full_like(snr, math.nan), snr)
    return snr.double()


class NamedByItsAttack:
    """Mixin for conditions that wrap one attack in ``self._attack`` (a chain, a transfer): the
    condition's level is the attack's (param, level, its text, eps and norm); each wrapper adds
    its own ``variant`` and ``condition_id``. List it before :class:`Perturbation`."""

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
    def eps(self) -> float:
        return float(getattr(self._attack, "eps"))

    @property
    def norm(self) -> str:
        return getattr(self._attack, "norm", "linf")
