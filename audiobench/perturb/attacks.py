"""Gradient attacks on the waveform: PGD, FGSM and Auto-PGD, untargeted, multi-label BCE.

Every attack maximises the per-clip binary cross-entropy with logits, averaged over ALL classes,
against the clip's labels (``targets``). Gradients are taken with ``torch.autograd.grad`` with
respect to the input only (model weights are never touched, nothing is accumulated in ``.grad``);
the loss is cast to float32 even under autocast. After every step the perturbation is projected
onto the eps ball (``linf``: |delta_i| <= eps; ``l2``: ||delta||_2 <= eps per clip, eps in waveform
units) AND the result onto [-1, 1] (which can only shrink delta, so the ball still holds).
Attacks return the per-clip highest-loss point seen over all steps and restarts (FGSM, a single
step, returns its step).

Where delta may live (:class:`DeltaSubspace`, fields ``attack_band_hz``, ``attack_span_s``,
``attack_mask`` of pgd/fgsm/apgd; see docs/attacks.md): a frequency band (the gradient, the
step and the random start are band-passed in the FFT domain over the whole clip; the linf ball
is then enforced by SCALING delta down to the budget, which keeps it inside the band, instead of
clipping each sample, which would not), a time window (delta exactly zero outside it) and the
clip's trailing zero padding (:func:`padding_mask`: delta exactly zero on padded samples).

The cores (:func:`pgd`, :func:`fgsm`, :func:`apgd`) take a ``forward`` callable, so the same code
attacks a model's normalised features (``feature-pgd``, with ``bounds=None``).

Trace (optional :class:`AttackTrace`): per step t (t = 0 is the starting point) the mean over
clips of the per-clip loss (the max over restarts), the mean over clips of the per-clip
best-so-far loss (the max over restarts of the highest loss seen up to step t: at the last step
the loss of the returned point), clip counts, clips whose input gradient was ever all-zero or
non-finite (NaN/inf gradients are zeroed before the step), and ``per_clip["bad_grad_steps"]``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.progress import attack_step
from audiobench.perturb.base import (
    TENFOLD_CLIPS,
    AttackTrace,
    Companion,
    Perturbation,
    SameL2Gaussian,
    check_choice,
    check_finite,
    check_int,
    format_level,
)
from audiobench.perturb.occlusion import MAX_DURATION_S, MAX_FREQUENCY_HZ, MAX_SAMPLE_RATE, band_bins, parse_band

NORMS = ("linf", "l2")
MASKS = ("none", "padding")
# The default of ``attack_mask``: see docs/attacks.md ("Padding") for the measurement behind it.
DEFAULT_ATTACK_MASK = "none"
# A trailing run of exact zeros at least this long is taken for padding (a clip packed shorter
# than the model input); shorter runs are treated as audio (real recordings hold runs of digital
# silence of up to ~0.15 s: 4,740 samples at 32 kHz in one of the shared test clips).
MIN_PADDING_S = 0.25

# Sane physical bounds for option values (one-line ConfigError beyond them; docs/attacks.md).
MAX_LINF_EPS = 2.0  # waveforms are in [-1, 1]: no |delta_i| above 2 can change anything more
MAX_L2_EPS = 1.0e4  # >= 2·sqrt(T), the largest possible ||delta||_2, for clips up to 25e6 samples
MAX_STEPS = 100_000
MAX_RESTARTS = 1_000
MAX_FEATURE_EPS = 1.0e3  # feature-pgd, in normalised feature units (features are O(1))
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
    attack_step()  # a progress bar may follow the steps of a slow batch
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


def project(x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor, norm: str, bounds: Bounds,
            subspace: Optional["DeltaSubspace"] = None) -> torch.Tensor:
    """x + delta projected onto the eps ball around x, then onto ``bounds`` (if any).

    With a ``subspace``, delta is first mapped into it (:meth:`DeltaSubspace.apply`); with a
    frequency band the linf ball is then enforced by scaling delta (per clip, by
    eps / max|delta|) so it stays band-limited; otherwise by clipping each sample (exact for
    time masks: clipping keeps zeros). The [-1, 1] ``bounds`` clamp comes last and can put a
    little energy outside the band where the clean clip is near full scale.
    """
    eb = _bshape(eps, x).to(delta.dtype)
    if subspace is not None:
        delta = subspace.apply(delta)
        if norm == "linf" and subspace.band is not None:
            delta = delta * _bshape(_shrink_to(delta.abs().amax(dim=-1), eps), x).to(delta.dtype)
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, eb), -eb)
    else:
        delta = delta * _bshape(_shrink_to(_flat_norm(delta), eps), x)
    out = x + delta
    if bounds is not None:
        out = out.clamp(bounds[0], bounds[1])
    return out


def _shrink_to(size: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-clip factor min(1, eps / size) (1 where size is 0)."""
    return torch.where(size > eps, eps / torch.where(size > 0, size, torch.ones_like(size)), torch.ones_like(size))


# ------------------------------------------------------------------------------------------------
# where delta may live: frequency band, time window, not in the padding
# ------------------------------------------------------------------------------------------------
def band_pass(delta: torch.Tensor, keep_bins: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection of each row of ``delta`` (batch, samples) onto the signals whose
    spectrum (rFFT over the whole row) is zero outside ``keep_bins``, a bool
    (samples // 2 + 1,) such as ``band_bins(samples, sample_rate, (lo, hi))`` (bins whose
    frequency k·sample_rate/samples lies in [lo, hi] Hz)."""
    spec = torch.fft.rfft(delta, dim=-1)
    spec = spec * keep_bins.to(device=spec.device, dtype=spec.real.dtype)
    return torch.fft.irfft(spec, n=delta.shape[-1], dim=-1).to(delta.dtype)


def span_mask(n_samples: int, sample_rate: int, span_s: Tuple[float, float]) -> torch.Tensor:
    """Boolean (n_samples,): True for samples i with start <= i / sample_rate < end (seconds)."""
    start = int(round(span_s[0] * sample_rate))
    stop = min(int(round(span_s[1] * sample_rate)), n_samples)
    idx = torch.arange(n_samples)
    return (idx >= start) & (idx < stop)


def padding_mask(waveform: torch.Tensor, sample_rate: int, min_padding_s: float = MIN_PADDING_S) -> torch.Tensor:
    """Boolean (batch, samples): True on each clip's zero padding.

    Padding is the trailing run of exact zeros (what packing a clip shorter than the model input
    appends) when it is at least ``min_padding_s`` long; a shorter run, or zeros inside the clip,
    is treated as audio. A clip that is all zeros is all padding. Read from the waveform itself,
    so it works on any existing shard.
    """
    nz = waveform != 0
    n = waveform.shape[-1]
    idx = torch.arange(n, device=waveform.device)
    # one past the last non-zero sample (0 for an all-zero clip)
    end = torch.where(nz, idx + 1, torch.zeros_like(idx)).amax(dim=-1)
    min_len = max(int(round(float(min_padding_s) * sample_rate)), 1)
    padded = (n - end) >= min_len
    return (idx[None, :] >= end[:, None]) & padded[:, None]


class DeltaSubspace:
    """Where an attack's delta may be non-zero: the map A = (time weights) ∘ (band-pass).

    * ``band``: (samples // 2 + 1,) bool rFFT bins kept (``None``: all frequencies);
    * ``keep``: (batch, samples) bool, True where delta may be non-zero (``None``: everywhere).

    With only a band or only a time mask, A is an orthogonal projection. With both, the time
    mask of a band-limited signal spreads its spectrum a little at the window's edges (a signal
    cannot be exactly time- and band-limited at once): delta stays exactly zero outside the
    window, and some energy leaks out of the band (measured in docs/attacks.md).
    """

    def __init__(self, band: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None):
        self.band = band
        self.keep = keep

    def apply(self, delta: torch.Tensor) -> torch.Tensor:
        if self.band is not None:
            delta = band_pass(delta, self.band)
        if self.keep is not None:
            delta = delta * self.keep.to(device=delta.device, dtype=delta.dtype)
        return delta


def delta_subspace(x: torch.Tensor, *, sample_rate: Optional[int], band_hz=None, span_s=None,
                   mask: str = "none") -> Optional[DeltaSubspace]:
    """The :class:`DeltaSubspace` for clips ``x`` (batch, samples), or ``None`` when delta is free.

    ``band_hz`` (lo, hi) Hz, ``span_s`` (start, end) seconds, ``mask`` ``"padding"`` to keep
    delta off :func:`padding_mask`'s samples of ``x``.
    """
    if band_hz is None and span_s is None and mask == "none":
        return None
    if sample_rate is None:
        raise ConfigError("a band-, time- or padding-limited attack needs the dataset's sample_rate (with_sample_rate)")
    n = x.shape[-1]
    band = band_bins(n, sample_rate, band_hz).to(x.device) if band_hz is not None else None
    keep = None
    if span_s is not None:
        keep = span_mask(n, sample_rate, span_s).to(x.device).expand(x.shape[0], n)
    if mask == "padding":
        free = ~padding_mask(x, sample_rate)
        keep = free if keep is None else keep & free
    return DeltaSubspace(band=band, keep=keep)


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


def _ascent_direction(g: torch.Tensor, norm: str, subspace: Optional["DeltaSubspace"] = None) -> torch.Tensor:
    """sign(g) for linf; g/||g||_2 per clip for l2 (zero where g is zero).

    With a ``subspace`` A (band-pass and/or time mask), the gradient is first mapped into it
    (A g: the gradient with respect to the constrained delta); for linf the step is then
    sign(A g), and, with a band, A(sign(A g)) rescaled to a peak of 1 per clip, so the step size
    keeps its meaning (the largest per-sample change). sign(A g) maximises <s, A g> over
    |s_i| <= 1, so A(sign(A g)) gains at least as much first-order loss as A(sign(g)) would.
    """
    if subspace is not None:
        g = subspace.apply(g)
    if norm == "linf":
        d = torch.sign(g)
        if subspace is not None and subspace.band is not None:
            d = subspace.apply(d)
            peak = d.abs().amax(dim=-1)
            d = d / _bshape(torch.where(peak > 0, peak, torch.ones_like(peak)), d)
        return d
    n = _flat_norm(g)
    return g / _bshape(torch.where(n > 0, n, torch.ones_like(n)), g)


def _ascent_step(x: torch.Tensor, x_adv: torch.Tensor, g: torch.Tensor, step: torch.Tensor, eps: torch.Tensor,
                 norm: str, bounds: Bounds, subspace: Optional["DeltaSubspace"] = None) -> torch.Tensor:
    """``project(x, x_adv - x + step * direction(g), eps, norm, bounds)``, the same values; for
    linf in place on fresh tensors: each full-size temporary a step allocates costs page faults on
    a CPU, which for small models is a sizeable part of the step."""
    if norm != "linf" or subspace is not None:
        d = _ascent_direction(g, norm, subspace)
        return project(x, x_adv - x + _bshape(step, x) * d, eps, norm, bounds, subspace)
    delta = x_adv - x
    delta.add_(torch.sign(g).mul_(_bshape(step, x)))
    eb = _bshape(eps, x).to(delta.dtype)
    delta.clamp_(min=-eb, max=eb)  # min(max(d, -eps), eps) == max(min(d, eps), -eps): project()'s values
    out = delta.add_(x)  # x + delta, computed as delta + x: addition is commutative, bit for bit
    if bounds is not None:
        out.clamp_(bounds[0], bounds[1])
    return out


def _record(trace: Optional[AttackTrace], step_loss: torch.Tensor, bad: torch.Tensor, bad_steps: torch.Tensor,
            best_loss: Optional[torch.Tensor] = None) -> None:
    """Add (steps + 1, batch) per-clip losses to ``trace``; ``best_loss``: the same shape of
    best-so-far losses (defaults to ``step_loss``: for attacks that return their last point)."""
    if trace is None:
        return
    n = step_loss.shape[1]
    best_loss = step_loss if best_loss is None else best_loss
    for t in range(step_loss.shape[0]):
        trace.add_step(t, float(step_loss[t].double().mean()), n, best_mean_loss=float(best_loss[t].double().mean()))
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
    subspace: Optional[DeltaSubspace] = None,
) -> torch.Tensor:
    """Projected gradient ascent on the per-clip BCE (Madry et al. 2018), multi-label.

    ``eps`` and ``step_size`` may be floats or per-clip (batch,) tensors; ``step_size`` defaults
    to 2.5·eps/steps. Each restart starts at a random point of the ball (``random_start``, from
    ``rng``) or at the clean input; the per-clip highest-loss point over all steps and restarts is
    returned. ``model`` is any callable input → logits (a waveform model, or ``forward_features``).
    ``subspace`` (:func:`delta_subspace`) limits delta to a band / time window / non-padding.
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
    best_step_loss = torch.full((steps + 1, B), -math.inf, device=x.device)
    bad = torch.zeros(B, dtype=torch.bool, device=x.device)
    bad_steps = torch.zeros(B, dtype=torch.long, device=x.device)
    for _ in range(max(int(restarts), 1)):
        delta = random_delta(x, e, norm, rng) if random_start else torch.zeros_like(x)
        x_adv = project(x, delta, e, norm, bounds, subspace)
        run_best = torch.full((B,), -math.inf, device=x.device)  # this restart's best so far
        for t in range(steps + 1):
            if t < steps:
                loss, g = loss_and_grad(model, x_adv, targets)
            else:
                loss = loss_only(model, x_adv, targets)
            better = loss > best_loss
            best_loss = torch.where(better, loss, best_loss)
            torch.where(_bshape(better, x), x_adv, best_x, out=best_x)
            step_loss[t] = torch.maximum(step_loss[t], loss)
            run_best = torch.maximum(run_best, loss)
            best_step_loss[t] = torch.maximum(best_step_loss[t], run_best)
            if t == steps:
                break
            g, b = _clean_grad(g)
            bad |= b
            bad_steps += b.long()
            x_adv = _ascent_step(x, x_adv, g, ss, e, norm, bounds, subspace)
    _record(trace, step_loss, bad, bad_steps, best_step_loss)
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
    subspace: Optional[DeltaSubspace] = None,
) -> torch.Tensor:
    """Fast gradient (sign) method (Goodfellow et al. 2015): one step of size eps from the clean
    input along sign(grad) (linf) or grad/||grad||_2 (l2), then the projections. Returns the step
    (not the best of clean and step); the trace has steps 0 (clean) and 1, and its best-so-far
    trace is the same (the point used is the step). ``subspace`` as for :func:`pgd`."""
    x = waveform.detach()
    _check_targets(targets, x)
    e = per_clip_eps(eps, x)
    if bool((e == 0).all()):
        return pgd(model, x, targets, eps=0.0, norm=norm, steps=0, random_start=False, trace=trace, bounds=bounds)
    loss0, g = loss_and_grad(model, x, targets)
    g, bad = _clean_grad(g)
    x_adv = project(x, _bshape(e, x) * _ascent_direction(g, norm, subspace), e, norm, bounds, subspace)
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
    subspace: Optional[DeltaSubspace] = None,
) -> torch.Tensor:
    """Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks"; code fra31/auto-attack), with the multi-label BCE loss.

    Step size starts at 2·eps (per clip); the first step is plain projected ascent, later steps
    mix in momentum: z = P(x_k + eta·dir(grad)), x_{k+1} = P(x_k + a(z - x_k) + (1-a)(x_k - x_{k-1})),
    a = ``momentum`` = 0.75. At each checkpoint (:func:`apgd_checkpoints`) a clip's step size is
    halved and its iterate reset to its best point when fewer than ``rho`` of the steps since
    the last checkpoint increased the loss, or when its step was not halved at the last
    checkpoint and its best loss has not improved since. Returns the best point per clip.
    ``subspace`` as for :func:`pgd` (every iterate is a combination of points inside it).
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
    best_step_loss = torch.full((steps + 1, B), -math.inf, device=x.device)
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
        x_cur = project(x, delta, e, norm, bounds, subspace)
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
            z = project(x, x_cur - x + _bshape(eta, x) * _ascent_direction(g, norm, subspace), e, norm, bounds, subspace)
            x_new = project(x, x_cur - x + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev), e, norm, bounds, subspace)
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
        run_best = torch.full((B,), -math.inf, device=x.device)
        for t, l in enumerate(hist):
            step_loss[t] = torch.maximum(step_loss[t], l)
            run_best = torch.maximum(run_best, l)
            best_step_loss[t] = torch.maximum(best_step_loss[t], run_best)
        better = best_loss > glob_best_loss
        glob_best_loss = torch.where(better, best_loss, glob_best_loss)
        glob_best_x = torch.where(_bshape(better, x), best_x, glob_best_x)
    _record(trace, step_loss, bad, bad_steps, best_step_loss)
    return glob_best_x


# ------------------------------------------------------------------------------------------------
# registered classes
# ------------------------------------------------------------------------------------------------
def _validate_attack(p, *, with_steps: bool = True, max_linf: float = MAX_LINF_EPS, max_l2: float = MAX_L2_EPS,
                     units: str = "waveform units") -> None:
    """Validate eps/norm (and steps/restarts/step_size when present) against sane bounds."""
    check_choice(f"{p.name} norm", p.norm, NORMS)
    limit = max_linf if p.norm == "linf" else max_l2
    check_finite(f"{p.name} eps", p.eps, non_negative=True)
    p.eps = float(p.eps)
    if p.eps > limit:
        raise ConfigError(f"{p.name} eps {p.eps:g} is above {limit:g}, the largest meaningful {p.norm} budget ({units})")
    if with_steps:
        check_int(f"{p.name} steps", p.steps, minimum=1)
        if p.steps > MAX_STEPS:
            raise ConfigError(f"{p.name} steps must be <= {MAX_STEPS}, got {p.steps!r}")
        p.steps = int(p.steps)
        check_int(f"{p.name} restarts", p.restarts, minimum=1)
        if p.restarts > MAX_RESTARTS:
            raise ConfigError(f"{p.name} restarts must be <= {MAX_RESTARTS}, got {p.restarts!r}")
        p.restarts = int(p.restarts)
    if getattr(p, "step_size", None) is not None:
        check_finite(f"{p.name} step_size", p.step_size, positive=True)
        p.step_size = float(p.step_size)
        if p.step_size > limit:
            raise ConfigError(f"{p.name} step_size {p.step_size:g} is above {limit:g}, the largest meaningful {p.norm} step ({units})")


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
    # a band-, time- or padding-limited attack is compared with references limited the same way
    limits = attack.limits() if getattr(attack, "limited", False) else {}
    if fgsm and attack.name != "fgsm":
        ref = FGSM(eps=float(attack.eps), norm=getattr(attack, "norm", "linf"), **limits)
        out.append(Companion("fgsm", ref, ref.condition_key() + "#trust", base=base, base_rng_key=base_rng_key))
    if same_l2:
        key = (base_rng_key or attack.condition_key())
        noise = SameL2Gaussian(subspace_of=attack if limits else None)
        out.append(Companion("gauss-same-l2", noise, key + "#gauss-same-l2", same_l2_as_parent=True,
                             base=base, base_rng_key=base_rng_key))
    if tenfold:
        eps10 = float(attack.eps) * 10.0
        if getattr(attack, "norm", "linf") == "linf" and attack.domain == "waveform":
            eps10 = min(eps10, MAX_LINF_EPS)  # no linf budget beyond the waveform's full range
        strong = attack.replace_level(eps10)
        out.append(Companion("tenfold", strong, strong.condition_key() + "#tenfold", clip_limit=TENFOLD_CLIPS))
    return out


# the limit fields of waveform attacks and their "off" values (left out of condition_key when off,
# so an unlimited attack keeps the key, and so the seeds and stored units, it always had)
_LIMITS_OFF = {"attack_band_hz": None, "attack_span_s": None, "attack_mask": "none"}


class _WaveformAttack(_Attack):
    """pgd/fgsm/apgd: the fields that limit where delta may live (see :class:`DeltaSubspace`).

    * ``attack_band_hz`` (lo, hi) in Hz (CLI ``--attack-band LO,HI``): delta band-limited;
    * ``attack_span_s`` (start, end) in seconds (CLI ``--attack-span START,END``): delta exactly
      zero outside the window;
    * ``attack_mask``: ``"padding"`` (CLI ``--attack-mask padding``) keeps delta exactly zero on
      the clip's trailing zero padding (:func:`padding_mask`); ``"none"`` does not;
    * ``sample_rate`` (Hz): the dataset's rate, bound by the engine (``with_sample_rate``) when
      any limit is set.
    """

    def _validate_limits(self) -> None:
        if self.attack_band_hz is not None:
            self.attack_band_hz = parse_band(self.attack_band_hz, f"{self.name} attack_band_hz", unit="Hz",
                                             max_value=MAX_FREQUENCY_HZ)
        if self.attack_span_s is not None:
            self.attack_span_s = parse_band(self.attack_span_s, f"{self.name} attack_span_s", unit="s",
                                            max_value=MAX_DURATION_S)
        check_choice(f"{self.name} attack_mask", self.attack_mask, MASKS)
        if self.sample_rate is not None:
            check_int(f"{self.name} sample_rate", self.sample_rate, minimum=1)
            if self.sample_rate > MAX_SAMPLE_RATE:
                raise ConfigError(f"{self.name} sample_rate must be <= {MAX_SAMPLE_RATE} Hz, got {self.sample_rate!r}")
            self.sample_rate = int(self.sample_rate)
            if self.attack_band_hz is not None and self.attack_band_hz[0] >= self.sample_rate / 2:
                raise ConfigError(f"{self.name} attack_band_hz {format_level(self.attack_band_hz)} Hz starts at or above "
                                  f"Nyquist ({self.sample_rate / 2:g} Hz)")

    def limits(self) -> dict:
        """The limit fields as keyword arguments (for a reference attack, e.g. the trust checks'
        FGSM, that must live where this one does): attack_band_hz, attack_span_s, attack_mask,
        sample_rate."""
        return {k: getattr(self, k) for k in (*_LIMITS_OFF, "sample_rate")}

    @property
    def limited(self) -> bool:
        """Whether delta is limited to a band, a time window or the non-padded samples."""
        return any(getattr(self, k) != off for k, off in _LIMITS_OFF.items())

    @property
    def needs_sample_rate(self) -> bool:  # type: ignore[override]
        return self.limited

    @property
    def variant(self) -> str:
        v = self.norm
        if self.attack_band_hz is not None:
            v += f"+band{format_level(self.attack_band_hz)}Hz"
        if self.attack_span_s is not None:
            v += f"+span{format_level(self.attack_span_s)}s"
        if self.attack_mask != DEFAULT_ATTACK_MASK:
            v += "+padmask" if self.attack_mask == "padding" else f"+mask-{self.attack_mask}"
        return v

    def condition_key(self) -> str:
        d = asdict(self)
        for k, off in _LIMITS_OFF.items():
            if d.get(k) == off:
                d.pop(k)
        if not self.limited:
            d.pop("sample_rate", None)  # no effect without a limit
        items = ",".join(f"{k}={v!r}" for k, v in sorted(d.items()))
        return f"{self.name}({items})"

    def subspace_for(self, waveform: torch.Tensor) -> Optional[DeltaSubspace]:
        """The :class:`DeltaSubspace` these fields give for ``waveform`` (None when unlimited)."""
        if not self.limited:
            return None
        if self.sample_rate is None:
            raise ConfigError(f"{self.name} with attack_band_hz/attack_span_s/attack_mask needs the dataset's sample_rate "
                              f"(set it with with_sample_rate)")
        return delta_subspace(waveform, sample_rate=self.sample_rate, band_hz=self.attack_band_hz,
                              span_s=self.attack_span_s, mask=self.attack_mask)


_LIMITS_DOC = """
    Where delta may live (off by default): ``attack_band_hz`` (lo, hi) Hz, band-limited delta
    (FFT band-pass of gradient, step and start; the linf ball enforced by scaling delta down,
    which keeps it in the band); ``attack_span_s`` (start, end) s, delta exactly zero outside;
    ``attack_mask`` ``"padding"``, delta exactly zero on the clip's trailing zero padding (a
    trailing run of exact zeros of at least MIN_PADDING_S = 0.25 s). ``sample_rate`` (Hz) is set
    by the engine (``with_sample_rate``) when one of these is set.
"""


@register_perturbation
@dataclass
class PGD(_WaveformAttack):
    __doc__ = """Untargeted multi-label PGD on the waveform (Madry et al. 2018, "Towards Deep Learning Models
    Resistant to Adversarial Attacks"), BCE over all classes against the clip's labels.

    ``eps``: radius in waveform units (full scale = 1) of the ``norm`` ball (``linf`` or ``l2``,
    the latter over the whole clip; at most 2 for linf, 1e4 for l2); ``steps``; ``step_size`` in
    waveform units (default 2.5·eps/steps); ``random_start`` from the clip's generator;
    ``restarts``; the per-clip highest-loss point over all steps and restarts is returned.
    Projection to the ball and to [-1, 1] after every step.
    """ + _LIMITS_DOC

    name = "pgd"

    eps: float = 0.002
    norm: str = "linf"
    steps: int = 10
    step_size: Optional[float] = None
    random_start: bool = True
    restarts: int = 1
    attack_band_hz: Optional[Tuple[float, float]] = None
    attack_span_s: Optional[Tuple[float, float]] = None
    attack_mask: str = DEFAULT_ATTACK_MASK
    sample_rate: Optional[int] = None

    def __post_init__(self):
        _validate_attack(self)
        self._validate_limits()

    def __call__(self, waveform, *, model=None, targets=None, rng=None, trace=None):
        if self.eps == 0:
            return waveform.clone()
        _check_model(model)
        return pgd(model, waveform, targets, eps=self.eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                   random_start=self.random_start, restarts=self.restarts, rng=rng, trace=trace,
                   subspace=self.subspace_for(waveform))


@register_perturbation
@dataclass
class FGSM(_WaveformAttack):
    __doc__ = """Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial
    Examples"), multi-label BCE: one step of size ``eps`` (waveform units; at most 2 for linf,
    1e4 for l2) along sign(grad) for ``linf`` or the L2-normalised gradient for ``l2``; clamped to
    [-1, 1]. Returns the step itself.
    """ + _LIMITS_DOC

    name = "fgsm"

    eps: float = 0.002
    norm: str = "linf"
    attack_band_hz: Optional[Tuple[float, float]] = None
    attack_span_s: Optional[Tuple[float, float]] = None
    attack_mask: str = DEFAULT_ATTACK_MASK
    sample_rate: Optional[int] = None

    def __post_init__(self):
        _validate_attack(self, with_steps=False)
        self._validate_limits()

    def cost(self) -> tuple:
        return (2.0, 1.0)  # the gradient's forward and backward, and the loss of the result

    def __call__(self, waveform, *, model=None, targets=None, rng=None, trace=None):
        if self.eps == 0:
            return waveform.clone()
        _check_model(model)
        return fgsm(model, waveform, targets, eps=self.eps, norm=self.norm, trace=trace, subspace=self.subspace_for(waveform))


@register_perturbation
@dataclass
class APGD(_WaveformAttack):
    __doc__ = """Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks", fra31/auto-attack) adapted to the multi-label BCE loss:
    step-size free (starts at 2·eps, halved at checkpoints when progress stalls, restarting from
    the best point), momentum 0.75; ``eps`` in waveform units (at most 2 for linf, 1e4 for l2),
    ``norm`` linf or l2, ``steps`` (default 100), ``restarts``; returns the per-clip best point.
    The strong default for reported robustness.
    """ + _LIMITS_DOC

    name = "apgd"

    eps: float = 0.002
    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    random_start: bool = True
    attack_band_hz: Optional[Tuple[float, float]] = None
    attack_span_s: Optional[Tuple[float, float]] = None
    attack_mask: str = DEFAULT_ATTACK_MASK
    sample_rate: Optional[int] = None

    def __post_init__(self):
        _validate_attack(self)
        self._validate_limits()

    def __call__(self, waveform, *, model=None, targets=None, rng=None, trace=None):
        if self.eps == 0:
            return waveform.clone()
        _check_model(model)
        return apgd(model, waveform, targets, eps=self.eps, norm=self.norm, steps=self.steps, restarts=self.restarts,
                    random_start=self.random_start, rng=rng, trace=trace, subspace=self.subspace_for(waveform))
