"""Gradient attacks on the waveform: PGD, FGSM and Auto-PGD, untargeted, multi-label BCE.

Every attack maximises the per-clip binary cross-entropy with logits, averaged over ALL classes,
against the clip's labels (``targets``). Gradients are taken with ``torch.autograd.grad`` with
respect to the input only (model weights are never touched, nothing is accumulated in ``.grad``);
the loss is cast to float32 even under autocast. After every step the perturbation is projected
onto the eps ball (``linf``: |delta_i| <= eps; ``l2``: ||delta||_2 <= eps per clip, eps in waveform
units) AND the result onto [-1, 1] (which can only shrink delta, so the ball still holds).
Attacks return the per-clip highest-loss point seen over all steps and restarts.

The cores (:func:`pgd`, :func:`fgsm`, :func:`apgd`) take a ``forward`` callable, so the same code
attacks a model's normalised features (``feature-pgd``, with ``bounds=None``).

Trace (optional :class:`AttackTrace`): per step t (t = 0 is the starting point) the mean over
clips of the per-clip loss (the max over restarts), clip counts, clips whose input gradient was
ever all-zero or non-finite (NaN/inf gradients are zeroed before the step), and
``per_clip["bad_grad_steps"]``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.perturb.base import (
    TENFOLD_CLIPS,
    AttackTrace,
    Companion,
    Perturbation,
    SameL2Gaussian,
    check_choice,
    check_finite,
    check_int,
)

NORMS = ("linf", "l2")
Bounds = Optional[Tuple[float, float]]
EpsLike = Union[float, torch.Tensor]


# ------------------------------------------------------------------------------------------------
# pieces
# ------------------------------------------------------------------------------------------------
def bce_per_clip(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over classes of BCE-with-logits, per clip, float32: shape (batch,)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").mean(dim=-1)


def loss_and_grad(forward: Callable, x: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-clip loss (batch,) and its gradient w.r.t. ``x`` only (both detached).

    The summed loss is differentiated, so each clip's gradient does not depend on its batch mates.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        loss = bce_per_clip(forward(xg), targets)
        (g,) = torch.autograd.grad(loss.sum(), xg)
    return loss.detach(), g.detach()


def loss_only(forward: Callable, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return bce_per_clip(forward(x), targets)


def _bshape(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape((-1,) + (1,) * (like.dim() - 1))


def per_clip_eps(eps: EpsLike, x: torch.Tensor) -> torch.Tensor:
    """eps as a (batch,) float32 tensor on x's device."""
    if isinstance(eps, torch.Tensor):
        e = eps.to(device=x.device, dtype=torch.float32).reshape(-1)
        if e.numel() == 1:
            e = e.expand(x.shape[0])
        return e.clone()
    return torch.full((x.shape[0],), float(eps), device=x.device, dtype=torch.float32)


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def project(x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor, norm: str, bounds: Bounds) -> torch.Tensor:
    """x + delta projected onto the eps ball around x, then onto ``bounds`` (if any)."""
    eb = _bshape(eps, x).to(delta.dtype)
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, eb), -eb)
    else:
        n = _flat_norm(delta)
        f = torch.where(n > eps, eps / torch.where(n > 0, n, torch.ones_like(n)), torch.ones_like(n))
        delta = delta * _bshape(f, x)
    out = x + delta
    if bounds is not None:
        out = out.clamp(bounds[0], bounds[1])
    return out


def random_delta(x: torch.Tensor, eps: torch.Tensor, norm: str, rng) -> torch.Tensor:
    """A random delta inside the ball, drawn from the per-clip generators.

    linf: uniform in [-eps, eps] per element; l2: uniform direction, radius eps·u (u ~ U[0, 1)).
    """
    shape = tuple(x.shape[1:])
    if norm == "linf":
        u = rng.uniform(*shape, low=-1.0, high=1.0, dtype=x.dtype).to(x.device)
        return u * _bshape(eps, x).to(x.dtype)
    d = rng.normal(*shape, dtype=x.dtype).to(x.device)
    r = rng.uniform(1, dtype=x.dtype).to(x.device).reshape(-1)
    n = _flat_norm(d)
    d = d / _bshape(torch.where(n > 0, n, torch.ones_like(n)), x)
    return d * _bshape(eps * r, x).to(x.dtype)


def _clean_grad(g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad with NaN/inf zeroed, bool (batch,) of clips whose grad was all zero or non-finite)."""
    # one reduction pass instead of isfinite/any/eq/all (six passes): the per-clip max |g| is NaN
    # or inf exactly when the clip has a non-finite element, and 0 exactly when it is all zero
    peak = torch.linalg.vector_norm(g.flatten(1), ord=math.inf, dim=1)
    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    return g, ~torch.isfinite(peak) | (peak == 0)


def _ascent_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """sign(g) for linf; g/||g||_2 per clip for l2 (zero where g is zero)."""
    if norm == "linf":
        return torch.sign(g)
    n = _flat_norm(g)
    return g / _bshape(torch.where(n > 0, n, torch.ones_like(n)), g)


def _ascent_step(x: torch.Tensor, x_adv: torch.Tensor, g: torch.Tensor, step: torch.Tensor, eps: torch.Tensor,
                 norm: str, bounds: Bounds) -> torch.Tensor:
    """``project(x, x_adv - x + step * direction(g), eps, norm, bounds)``, the same values; for
    linf in place on fresh tensors: each full-size temporary a step allocates costs page faults on
    a CPU, which for small models is a sizeable part of the step."""
    if norm != "linf":
        return project(x, x_adv - x + _bshape(step, x) * _ascent_direction(g, norm), eps, norm, bounds)
    delta = x_adv - x
    delta.add_(torch.sign(g).mul_(_bshape(step, x)))
    eb = _bshape(eps, x).to(delta.dtype)
    delta.clamp_(min=-eb, max=eb)  # min(max(d, -eps), eps) == max(min(d, eps), -eps): project()'s values
    out = delta.add_(x)  # x + delta, computed as delta + x: addition is commutative, bit for bit
    if bounds is not None:
        out.clamp_(bounds[0], bounds[1])
    return out


def _record(trace: Optional[AttackTrace], step_loss: torch.Tensor, bad: torch.Tensor, bad_steps: torch.Tensor) -> None:
    if trace is None:
        return
    n = step_loss.shape[1]
    for t in range(step_loss.shape[0]):
        trace.add_step(t, float(step_loss[t].double().mean()), n)
    trace.add_clips(n, int(bad.sum()))
    trace.add_per_clip("bad_grad_steps", bad_steps)


def _check_model(model) -> None:
    if model is None:
        raise TypeError("this attack needs model=")
    if getattr(model, "training", False):
        warnings.warn("attacking a model in training mode (dropout/batch-norm statistics change); call model.eval()", stacklevel=3)


def _check_targets(targets, x: torch.Tensor) -> None:
    if targets is None:
        raise TypeError("this attack needs targets= (the clips' labels)")
    if targets.shape[0] != x.shape[0]:
        raise ValueError(f"targets has {targets.shape[0]} rows for {x.shape[0]} clips")


# ------------------------------------------------------------------------------------------------
# PGD
# ------------------------------------------------------------------------------------------------
def pgd(
    model: Callable,
    waveform: torch.Tensor,
    targets: torch.Tensor,
    *,
    eps: EpsLike,
    norm: str = "linf",
    steps: int = 10,
    step_size: Optional[EpsLike] = None,
    random_start: bool = True,
    restarts: int = 1,
    rng=None,
    trace: Optional[AttackTrace] = None,
    bounds: Bounds = (-1.0, 1.0),
) -> torch.Tensor:
    """Projected gradient ascent on the per-clip BCE (Madry et al. 2018), multi-label.

    ``eps`` and ``step_size`` may be floats or per-clip (batch,) tensors; ``step_size`` defaults
    to 2.5·eps/steps. Each restart starts at a random point of the ball (``random_start``, from
    ``rng``) or at the clean input; the per-clip highest-loss point over all steps and restarts is
    returned. ``model`` is any callable input → logits (a waveform model, or ``forward_features``).
    """
    x = waveform.detach()
    _check_targets(targets, x)
    e = per_clip_eps(eps, x)
    if bool((e == 0).all()) or steps == 0 and not random_start:
        out = x.clone()
        if trace is not None:
            l0 = loss_only(model, x, targets)
            _record(trace, l0[None], torch.zeros_like(l0, dtype=torch.bool), torch.zeros_like(l0))
        return out
    ss = 2.5 * e / max(steps, 1) if step_size is None else per_clip_eps(step_size, x)
    B = x.shape[0]
    best_x = x.clone()
    best_loss = torch.full((B,), -math.inf, device=x.device)
    step_loss = torch.full((steps + 1, B), -math.inf, device=x.device)
    bad = torch.zeros(B, dtype=torch.bool, device=x.device)
    bad_steps = torch.zeros(B, dtype=torch.long, device=x.device)
    for _ in range(max(int(restarts), 1)):
        delta = random_delta(x, e, norm, rng) if random_start else torch.zeros_like(x)
        x_adv = project(x, delta, e, norm, bounds)
        for t in range(steps + 1):
            if t < steps:
                loss, g = loss_and_grad(model, x_adv, targets)
            else:
                loss = loss_only(model, x_adv, targets)
            better = loss > best_loss
            best_loss = torch.where(better, loss, best_loss)
            torch.where(_bshape(better, x), x_adv, best_x, out=best_x)
            step_loss[t] = torch.maximum(step_loss[t], loss)
            if t == steps:
                break
            g, b = _clean_grad(g)
            bad |= b
            bad_steps += b.long()
            x_adv = _ascent_step(x, x_adv, g, ss, e, norm, bounds)
    _record(trace, step_loss, bad, bad_steps)
    return best_x




def fgsm(
    model: Callable,
    waveform: torch.Tensor,
    targets: torch.Tensor,
    *,
    eps: EpsLike,
    norm: str = "linf",
    trace: Optional[AttackTrace] = None,
    bounds: Bounds = (-1.0, 1.0),
) -> torch.Tensor:
    """Fast gradient (sign) method (Goodfellow et al. 2015): one step of size eps from the clean
    input along sign(grad) (linf) or grad/||grad||_2 (l2), then the projections. Returns the step
    (not the best of clean and step); the trace has steps 0 (clean) and 1."""
    x = waveform.detach()
    _check_targets(targets, x)
    e = per_clip_eps(eps, x)
    if bool((e == 0).all()):
        return pgd(model, x, targets, eps=0.0, norm=norm, steps=0, random_start=False, trace=trace, bounds=bounds)
    loss0, g = loss_and_grad(model, x, targets)
    g, bad = _clean_grad(g)
    x_adv = project(x, _bshape(e, x) * _ascent_direction(g, norm), e, norm, bounds)
    if trace is not None:
        loss1 = loss_only(model, x_adv, targets)
        _record(trace, torch.stack([loss0, loss1]), bad, bad.long())
    return x_adv


# ------------------------------------------------------------------------------------------------
# Auto-PGD
# ------------------------------------------------------------------------------------------------
def apgd_checkpoints(steps: int) -> List[int]:
    """Iterations w_j = ceil(p_j·N) of Croce & Hein 2020: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); the ones in [1, N], without duplicates."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    out: List[int] = []
    for pj in p[1:]:
        w = math.ceil(round(pj * steps, 9))
        if 1 <= w <= steps and (not out or w > out[-1]):
            out.append(w)
    return out


def apgd(
    model: Callable,
    waveform: torch.Tensor,
    targets: torch.Tensor,
    *,
    eps: EpsLike,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    rng=None,
    trace: Optional[AttackTrace] = None,
    bounds: Bounds = (-1.0, 1.0),
    rho: float = 0.75,
    momentum: float = 0.75,
    random_start: bool = True,
) -> torch.Tensor:
    """Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks"; code fra31/auto-attack), with the multi-label BCE loss.

    Step size starts at 2·eps (per clip); the first step is plain projected ascent, later steps
    mix in momentum: z = P(x_k + eta·dir(grad)), x_{k+1} = P(x_k + a(z - x_k) + (1-a)(x_k - x_{k-1})),
    a = ``momentum`` = 0.75. At each checkpoint (:func:`apgd_checkpoints`) a clip's step size is
    halved and its iterate reset to its best point when fewer than ``rho`` of the steps since
    the last checkpoint increased the loss, or when its step was not halved at the last
    checkpoint and its best loss has not improved since. Returns the best point per clip.
    """
    x = waveform.detach()
    _check_targets(targets, x)
    e = per_clip_eps(eps, x)
    if bool((e == 0).all()) or steps == 0:
        return pgd(model, x, targets, eps=0.0, norm=norm, steps=0, random_start=False, trace=trace, bounds=bounds)
    B = x.shape[0]
    checkpoints = set(apgd_checkpoints(steps))
    glob_best_x = x.clone()
    glob_best_loss = torch.full((B,), -math.inf, device=x.device)
    step_loss = torch.full((steps + 1, B), -math.inf, device=x.device)
    bad = torch.zeros(B, dtype=torch.bool, device=x.device)
    bad_steps = torch.zeros(B, dtype=torch.long, device=x.device)

    def grad_at(z):
        nonlocal bad, bad_steps
        loss, g = loss_and_grad(model, z, targets)
        g, b = _clean_grad(g)
        bad |= b
        bad_steps += b.long()
        return loss, g

    for _ in range(max(int(restarts), 1)):
        delta = random_delta(x, e, norm, rng) if random_start else torch.zeros_like(x)
        x_cur = project(x, delta, e, norm, bounds)
        loss, g = grad_at(x_cur)
        hist = [loss]
        best_x, best_loss, best_g = x_cur.clone(), loss.clone(), g.clone()
        eta = 2.0 * e
        x_prev = x_cur
        last_w = 0
        best_at_last = best_loss.clone()
        reduced_last = torch.ones(B, dtype=torch.bool, device=x.device)
        for k in range(steps):
            a = 1.0 if k == 0 else momentum
            z = project(x, x_cur - x + _bshape(eta, x) * _ascent_direction(g, norm), e, norm, bounds)
            x_new = project(x, x_cur - x + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev), e, norm, bounds)
            x_prev, x_cur = x_cur, x_new
            if k + 1 < steps:
                loss, g = grad_at(x_cur)
            else:
                loss = loss_only(model, x_cur, targets)
            hist.append(loss)
            better = loss > best_loss
            best_loss = torch.where(better, loss, best_loss)
            best_x = torch.where(_bshape(better, x), x_cur, best_x)
            best_g = torch.where(_bshape(better, x), g, best_g)
            w = k + 1
            if w in checkpoints and w < steps:
                h = torch.stack(hist[last_w : w + 1])  # losses at x^{last_w} .. x^{w}
                n_up = (h[1:] > h[:-1]).sum(dim=0)
                cond1 = n_up.double() <= rho * (w - last_w)
                cond2 = (~reduced_last) & (best_at_last >= best_loss)
                reduce = cond1 | cond2
                eta = torch.where(reduce, eta / 2.0, eta)
                x_cur = torch.where(_bshape(reduce, x), best_x, x_cur)
                g = torch.where(_bshape(reduce, x), best_g, g)
                reduced_last = reduce
                best_at_last = best_loss.clone()
                last_w = w
        for t, l in enumerate(hist):
            step_loss[t] = torch.maximum(step_loss[t], l)
        better = best_loss > glob_best_loss
        glob_best_loss = torch.where(better, best_loss, glob_best_loss)
        glob_best_x = torch.where(_bshape(better, x), best_x, glob_best_x)
    _record(trace, step_loss, bad, bad_steps)
    return glob_best_x


# ------------------------------------------------------------------------------------------------
# registered classes
# ------------------------------------------------------------------------------------------------
def _validate_attack(p, *, with_steps: bool = True) -> None:
    check_finite(f"{p.name} eps", p.eps, non_negative=True)
    p.eps = float(p.eps)
    check_choice(f"{p.name} norm", p.norm, NORMS)
    if with_steps:
        check_int(f"{p.name} steps", p.steps, minimum=1)
        p.steps = int(p.steps)
        check_int(f"{p.name} restarts", p.restarts, minimum=1)
        p.restarts = int(p.restarts)


class _Attack(Perturbation):
    level_field = "eps"
    uses_model = True
    is_attack = True

    @property
    def variant(self) -> str:
        return self.norm  # type: ignore[attr-defined]

    def cost(self) -> tuple:
        """PGD-style: a loss forward per step and one more for the last iterate, per restart."""
        restarts = int(getattr(self, "restarts", 1) or 1)
        steps = int(getattr(self, "steps", 0) or 0)
        return (float(restarts * (steps + 1)), float(restarts * steps))

    def companions(self) -> List[Companion]:
        return attack_companions(self)


def attack_companions(attack, *, fgsm: bool = True, same_l2: bool = True, tenfold: bool = True,
                      base: Optional[Perturbation] = None, base_rng_key: Optional[str] = None) -> List[Companion]:
    """The standard trust companions of a waveform attack with budget ``eps`` (see
    :class:`~audiobench.perturb.base.Companion`): FGSM at the same eps and norm, Gaussian noise of
    the same per-clip L2 norm, and the attack at 10x its eps on the first clips. ``base``: the
    references of a chained attack start from the chain's base output."""
    out: List[Companion] = []
    if fgsm and attack.name != "fgsm":
        ref = FGSM(eps=float(attack.eps), norm=getattr(attack, "norm", "linf"))
        out.append(Companion("fgsm", ref, ref.condition_key() + "#trust", base=base, base_rng_key=base_rng_key))
    if same_l2:
        key = (base_rng_key or attack.condition_key())
        out.append(Companion("gauss-same-l2", SameL2Gaussian(), key + "#gauss-same-l2", same_l2_as_parent=True,
                             base=base, base_rng_key=base_rng_key))
    if tenfold:
        strong = attack.replace_level(float(attack.eps) * 10.0)
        out.append(Companion("tenfold", strong, strong.condition_key() + "#tenfold", clip_limit=TENFOLD_CLIPS))
    return out


@register_perturbation
@dataclass
class PGD(_Attack):
    """Untargeted multi-label PGD on the waveform (Madry et al. 2018, "Towards Deep Learning Models
    Resistant to Adversarial Attacks"), BCE over all classes against the clip's labels.

    ``eps``: radius in waveform units (full scale = 1) of the ``norm`` ball (``linf`` or ``l2``,
    the latter over the whole clip); ``steps``; ``step_size`` in waveform units (default
    2.5·eps/steps); ``random_start`` from the clip's generator; ``restarts`` keeping the per-clip
    highest-loss point. Projection to the ball and to [-1, 1] after every step.
    """

    name = "pgd"

    eps: float = 0.002
    norm: str = "linf"
    steps: int = 10
    step_size: Optional[float] = None
    random_start: bool = True
    restarts: int = 1

    def __post_init__(self):
        _validate_attack(self)
        if self.step_size is not None:
            check_finite("pgd step_size", self.step_size, positive=True)
            self.step_size = float(self.step_size)

    def __call__(self, waveform, *, model=None, targets=None, rng=None, trace=None):
        if self.eps == 0:
            return waveform.clone()
        _check_model(model)
        return pgd(model, waveform, targets, eps=self.eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                   random_start=self.random_start, restarts=self.restarts, rng=rng, trace=trace)


@register_perturbation
@dataclass
class FGSM(_Attack):
    """Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial
    Examples"), multi-label BCE: one step of size ``eps`` (waveform units) along sign(grad) for
    ``linf`` or the L2-normalised gradient for ``l2``; clamped to [-1, 1]."""

    name = "fgsm"

    eps: float = 0.002
    norm: str = "linf"

    def __post_init__(self):
        _validate_attack(self, with_steps=False)

    def cost(self) -> tuple:
        return (2.0, 1.0)  # the gradient's forward and backward, and the loss of the result

    def __call__(self, waveform, *, model=None, targets=None, rng=None, trace=None):
        if self.eps == 0:
            return waveform.clone()
        _check_model(model)
        return fgsm(model, waveform, targets, eps=self.eps, norm=self.norm, trace=trace)


@register_perturbation
@dataclass
class APGD(_Attack):
    """Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks", fra31/auto-attack) adapted to the multi-label BCE loss:
    step-size free (starts at 2·eps, halved at checkpoints when progress stalls, restarting from
    the best point), momentum 0.75; ``eps`` in waveform units, ``norm`` linf or l2, ``steps``
    (default 100), ``restarts``. The strong default for reported robustness."""

    name = "apgd"

    eps: float = 0.002
    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    random_start: bool = True

    def __post_init__(self):
        _validate_attack(self)

    def __call__(self, waveform, *, model=None, targets=None, rng=None, trace=None):
        if self.eps == 0:
            return waveform.clone()
        _check_model(model)
        return apgd(model, waveform, targets, eps=self.eps, norm=self.norm, steps=self.steps, restarts=self.restarts,
                    random_start=self.random_start, rng=rng, trace=trace)
