"""A universal adversarial perturbation: one delta shared by every clip, learnt over the data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.perturb.attacks import (
    MAX_L2_EPS,
    MAX_LINF_EPS,
    NORMS,
    _ascent_direction,
    _check_model,
    attack_companions,
    bce_per_clip,
    project,
)
from audiobench.perturb.base import AttackTrace, Perturbation, check_choice, check_finite, check_int


def _unpack(batch):
    """(waveform, targets) from a Batch-like object or a (waveform, targets) / (ids, waveform, targets) tuple."""
    if hasattr(batch, "waveform") and hasattr(batch, "targets"):
        return batch.waveform, batch.targets
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[-2], batch[-1]
    raise TypeError(f"universal.fit: cannot read (waveform, targets) from a {type(batch).__name__}")


MAX_EPOCHS = 10_000


@register_perturbation
@dataclass
class Universal(Perturbation):
    """Universal adversarial perturbation (one delta for all clips), as in Li et al. 2022
    ("Robustness of Neural Architectures for Audio Event Detection", lijuncheng16/AudioSetDoneRight),
    after Moosavi-Dezfooli et al. 2017.

    ``fit`` learns delta (length = the clips' sample count) by gradient ascent on the BCE over all
    classes summed over each batch: delta += ``step_size``·sign(grad) (``linf``) or
    step_size·grad/||grad|| (``l2``), projected to the ``eps`` ball (waveform units) after EVERY
    update — the study's code did not project. ``epochs`` passes over the data, ``step_size``
    defaults to eps/10; delta starts at a uniform random point of the ball drawn from
    ``torch.Generator().manual_seed(rng_seed)``. ``__call__`` adds delta and clamps to [-1, 1].
    ``grad_hook(g) -> g`` is applied to each batch gradient before the update (e.g. an all-reduce
    sum across ranks, so every rank takes the same step).
    """

    name = "universal"
    level_field = "eps"
    uses_model = True
    requires_fit = True
    is_attack = True

    eps: float = 0.002
    norm: str = "linf"
    step_size: Optional[float] = None
    epochs: int = 1

    def __post_init__(self):
        check_choice("universal norm", self.norm, NORMS)
        limit = MAX_LINF_EPS if self.norm == "linf" else MAX_L2_EPS
        check_finite("universal eps", self.eps, non_negative=True)
        self.eps = float(self.eps)
        if self.eps > limit:
            raise ConfigError(f"universal eps {self.eps:g} is above {limit:g}, the largest meaningful {self.norm} budget (waveform units)")
        check_int("universal epochs", self.epochs, minimum=1)
        if self.epochs > MAX_EPOCHS:
            raise ConfigError(f"universal epochs must be <= {MAX_EPOCHS}, got {self.epochs!r}")
        self.epochs = int(self.epochs)
        if self.step_size is not None:
            check_finite("universal step_size", self.step_size, positive=True)
            self.step_size = float(self.step_size)
            if self.step_size > limit:
                raise ConfigError(f"universal step_size {self.step_size:g} is above {limit:g} (waveform units)")
        self._delta: Optional[torch.Tensor] = None

    @property
    def variant(self) -> str:
        return self.norm

    def cost(self) -> tuple:
        return (float(self.epochs), float(self.epochs))  # one gradient per clip and epoch of the fit

    def companions(self):
        # the 10x check would need a second fit: FGSM and same-L2 references only
        return attack_companions(self, tenfold=False)

    @property
    def delta(self) -> Optional[torch.Tensor]:
        """The learnt perturbation (samples,), or None before ``fit``."""
        return self._delta

    def set_delta(self, delta: torch.Tensor) -> None:
        """Install a delta (e.g. loaded from a previous run); it is projected to the eps ball."""
        d = delta.detach().float().reshape(-1)
        eps = torch.tensor([self.eps])
        self._delta = project(torch.zeros(1, d.numel()), d[None], eps, self.norm, None)[0]

    def state_dict(self) -> dict:
        """What ``fit`` learnt, for storing beside the results (``{"delta": (samples,)}``)."""
        if self._delta is None:
            raise ConfigError("universal perturbation has no state before fit()")
        return {"delta": self._delta.detach().clone()}

    def load_state(self, state: dict) -> None:
        """Restore a stored ``state_dict()`` (e.g. on resume); delta is re-projected to the ball."""
        if "delta" not in state:
            raise ConfigError(f"universal state has no 'delta' (keys: {', '.join(state) or 'none'})")
        self.set_delta(torch.as_tensor(state["delta"]))

    def fit(
        self,
        model,
        batch_iter_factory: Callable[[], Iterable],
        *,
        device="cpu",
        epochs: Optional[int] = None,
        rng_seed: int = 0,
        grad_hook: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        trace: Optional[AttackTrace] = None,
    ) -> None:
        """Learn delta over ``epochs`` passes of ``batch_iter_factory()`` (each a fresh iterable of
        batches); ``trace`` gets the mean per-clip BCE of each epoch as its steps."""
        _check_model(model)
        device = torch.device(device)
        epochs = self.epochs if epochs is None else int(epochs)
        step = self.eps / 10.0 if self.step_size is None else self.step_size
        eps = torch.tensor([self.eps], device=device)
        delta = self._delta.to(device) if self._delta is not None else None
        for epoch in range(epochs):
            loss_sum, n_sum = 0.0, 0
            for batch in batch_iter_factory():
                wave, targets = _unpack(batch)
                wave, targets = wave.to(device), targets.to(device)
                if delta is None:
                    g0 = torch.Generator().manual_seed(int(rng_seed))
                    d0 = (torch.rand(1, wave.shape[-1], generator=g0) * 2 - 1) * self.eps
                    delta = project(torch.zeros_like(d0), d0, eps.cpu(), self.norm, None)[0].to(device)
                if wave.shape[-1] != delta.shape[-1]:
                    raise ConfigError(f"universal: clips have {wave.shape[-1]} samples, delta was learnt on {delta.shape[-1]}")
                with torch.enable_grad():
                    d = delta.detach().requires_grad_(True)
                    loss = bce_per_clip(model((wave + d).clamp(-1.0, 1.0)), targets)
                    (g,) = torch.autograd.grad(loss.sum(), d)
                if grad_hook is not None:
                    g = grad_hook(g)
                g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                upd = delta + step * _ascent_direction(g[None], self.norm)[0]
                delta = project(torch.zeros_like(upd)[None], upd[None], eps, self.norm, None)[0].detach()
                loss_sum += float(loss.detach().double().sum())
                n_sum += int(loss.shape[0])
            if n_sum == 0:
                raise ConfigError("universal.fit: the batch iterator yielded no clips")
            if trace is not None:
                trace.add_step(epoch, loss_sum / n_sum, n_sum)
        self._delta = delta

    def __call__(self, waveform, *, model=None, targets=None, rng=None, trace=None):
        if self.eps == 0:
            return waveform.clone()
        if self._delta is None:
            raise ConfigError("universal perturbation used before fit(); the engine must fit it over the data first")
        if waveform.shape[-1] != self._delta.shape[-1]:
            raise ConfigError(f"universal: clips have {waveform.shape[-1]} samples, delta was learnt on {self._delta.shape[-1]}")
        return (waveform + self._delta.to(waveform.device, waveform.dtype)).clamp(-1.0, 1.0)
