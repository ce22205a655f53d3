"""Fast, exact execution of a wrapped model for attacks and evaluation.

:func:`prepare_for_attack` puts a loaded :class:`~audiobench.models.base.AudioTagger` into the
state the attacks want; everything it does is legal for an exact white-box attack (the attacked
function, its gradient with respect to the input and the projections are unchanged):

* eval mode and frozen weights (``requires_grad_(False)``): ``torch.autograd.grad`` with respect
  to the input then skips every weight-gradient kernel (a convolution's backward computes only
  ``grad_input``), and nothing accumulates in ``.grad``;
* channels_last memory format for CNN families (``spec.family == "cnn"``) on CUDA, where cuDNN's
  NHWC kernels (and bf16 tensor cores) are fastest; the values are those of NCHW up to float
  summation order;
* frozen BatchNorm layers get a lean backward on the CPU (:func:`use_lean_batchnorm_backward`):
  the same forward call, and for the input gradient the very expression ATen's eval-mode CPU
  kernel evaluates, ``(dy * invstd) * weight`` with invstd rounded from double, without the two
  per-channel reductions (for weight and bias gradients) that the kernel always computes first.
  Bit-identical gradients; BatchNorm's backward takes about half the time on mn04;
* optionally ``torch.compile`` of the *network after the front end* only (``forward_features``,
  ``embed_features`` and ``head``), with ``dynamic=False``. Why not the whole model: see
  ``benchmarks/RESULTS.md`` ("Why a plain torch.compile made AST slower"). In short: the front
  ends (STFT / unfold + rFFT) gain nothing from Inductor, their backward (an overlapping-window
  scatter) is slower when generated, and a whole-model compile recompiles for every batch size
  and grad mode, then falls back to dynamic-shape kernels after the second batch size.

Precision is not a property of the model: bf16 runs under :func:`autocast` (the attack losses are
cast to float32 inside :mod:`audiobench.perturb.attacks`); ``prepare_for_attack(precision=...)``
only validates the name so a bad value fails before any work.

The two reference loops :func:`generic_toolbox_pgd` and :func:`attack_library_pgd` exist for
``benchmarks/bench_attack.py``: they are what general-purpose adversarial toolboxes and
attack libraries do per PGD step, so the benchmark can compare them with
:func:`audiobench.perturb.attacks.pgd` on the same data in the same process.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from audiobench.device import PRECISIONS, autocast, check_precision  # noqa: F401 (re-exported)
from audiobench.errors import ConfigError

CHANNELS_LAST_CHOICES = ("auto", True, False)
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# the methods of the AudioTagger contract that run the network after the front end
_NETWORK_METHODS = ("forward_features", "embed_features", "head")


def use_channels_last(model, device: Union[str, torch.device], channels_last="auto") -> bool:
    """Whether :func:`prepare_for_attack` converts ``model`` to channels_last."""
    if channels_last not in CHANNELS_LAST_CHOICES:
        raise ConfigError(f"channels_last {channels_last!r}: choose auto, True or False")
    if channels_last != "auto":
        return bool(channels_last)
    family = getattr(getattr(model, "spec", None), "family", None)
    return family == "cnn" and torch.device(device).type == "cuda"


def prepare_for_attack(
    model,
    device: Union[str, torch.device, None] = None,
    precision: str = "fp32",
    compile: bool = False,
    compile_mode: Optional[str] = None,
    channels_last="auto",
):
    """Put ``model`` (an AudioTagger) in its fast, exact attack/eval state; returns the same object.

    Args:
        model: a wrapped model (``load_model(...)``); modified in place and returned.
        device: where it runs (default: where its parameters are).
        precision: ``"fp32"`` or ``"bf16"`` (validated here; applied by :func:`autocast`).
        compile: compile ``forward_features`` / ``embed_features`` / ``head`` with
            ``torch.compile(dynamic=False)``; the front end stays eager. Pays off for long runs at
            a fixed batch size (each new batch shape and each grad mode compiles once).
        compile_mode: ``torch.compile``'s ``mode`` (None = its default). ``"reduce-overhead"``
            replays the compiled network as CUDA graphs, which is for small, launch-bound models
            such as mn04 on a GPU; no effect on a CPU. Unmeasured so far: the device script
            times it for mn04.
        channels_last: ``"auto"`` (CNN families on CUDA), ``True`` or ``False``.

    Parameters and buffers keep their names (``state_dict`` is unchanged) and values.
    """
    check_precision(precision)
    if compile_mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode {compile_mode!r}: choose one of {', '.join(map(str, COMPILE_MODES))}")
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    if device.type == "cpu":
        use_lean_batchnorm_backward(model)
    if use_channels_last(model, device, channels_last):
        # only 4-D parameters/buffers change layout; the front end's 1-D/2-D buffers are untouched
        model.to(memory_format=torch.channels_last)
    if compile and not getattr(model, "_audiobench_compiled", False):
        for name in _NETWORK_METHODS:
            method = getattr(model, name, None)
            if method is None:
                continue
            # an instance attribute shadows the class method; forward() picks it up via self.
            object.__setattr__(model, name, torch.compile(method, dynamic=False, mode=compile_mode))
        object.__setattr__(model, "_audiobench_compiled", True)
    return model


# ------------------------------------------------------------------------------------------------
# BatchNorm with frozen statistics and weights: input gradient only
# ------------------------------------------------------------------------------------------------
class _FrozenBatchNorm(torch.autograd.Function):
    """Eval-mode batch norm on the CPU whose backward computes only the input gradient.

    Forward: ``F.batch_norm(training=False)``, the call ``nn.BatchNorm`` itself makes. Backward:
    ATen's CPU kernel (``batch_norm_cpu_backward_contiguous_impl`` and ``..._channels_last_impl``,
    eval branch) returns ``dx = dy * invstd * w`` with ``invstd = 1 / sqrt(running_var + eps)``
    evaluated in double and stored in the tensor's dtype, but first reduces ``sum(dy)`` and
    ``sum((x - mean) * dy)`` per channel for weight and bias gradients, asked for or not. The
    same expression in the same order is evaluated here, so the gradient is bit-identical
    (tests/test_fastpath.py); ``scale`` = (invstd, weight) shaped for broadcasting.
    """

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, eps, scale):
        ctx.scale = scale
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        invstd, weight = ctx.scale
        grad_in = grad_out * invstd
        if weight is not None:
            grad_in.mul_(weight)
        return grad_in, None, None, None, None, None, None


def _frozen_bn_scale(module: nn.modules.batchnorm._BatchNorm, ndim: int):
    """(invstd, weight) viewed as (1, C, 1, ...), cached until running_var or weight change."""
    var, w = module.running_var, module.weight
    key = (ndim, var.data_ptr(), var._version, module.eps, None if w is None else (w.data_ptr(), w._version))
    cached = module.__dict__.get("_audiobench_bn_scale")
    if cached is not None and cached[0] == key:
        return cached[1]
    shape = (1, -1) + (1,) * (ndim - 2)
    invstd = (1.0 / torch.sqrt(var.double() + module.eps)).to(var.dtype).view(shape)
    scale = (invstd, None if w is None else w.detach().view(shape))
    module.__dict__["_audiobench_bn_scale"] = (key, scale)
    return scale


def _lean_batchnorm_forward(module: nn.modules.batchnorm._BatchNorm, original: Callable, x: torch.Tensor):
    w, b = module.weight, module.bias
    lean = (
        x.requires_grad
        and not module.training
        and module.running_mean is not None
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and module.running_var.dtype == x.dtype
        and (w is None or (w.dtype == x.dtype and not w.requires_grad))
        and (b is None or not b.requires_grad)
        and torch.is_grad_enabled()
    )
    if not lean:  # training, trainable weights, other dtypes or devices, no gradient: the module's own forward
        return original(x)
    module._check_input_dim(x)
    return _FrozenBatchNorm.apply(x, module.running_mean, module.running_var, w, b, module.eps,
                                  _frozen_bn_scale(module, x.dim()))


def use_lean_batchnorm_backward(model: nn.Module) -> int:
    """Give every BatchNorm layer in ``model`` the lean input-only backward of :class:`_FrozenBatchNorm`.

    Decided call by call, and only where it is exact: eval mode, running statistics, frozen
    weights, float32/float64 on the CPU, an input that needs a gradient; any other call runs the
    module's own forward. Idempotent; returns how many layers were switched; state_dict unchanged.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and "_audiobench_lean_bn" not in module.__dict__:
            # an instance attribute shadows the class's forward; nn.Module.__call__ picks it up
            module.__dict__["forward"] = functools.partial(_lean_batchnorm_forward, module, module.forward)
            module.__dict__["_audiobench_lean_bn"] = True
            count += 1
    return count


# ------------------------------------------------------------------------------------------------
# reference PGD loops for the benchmark (same maths as attacks.pgd without best-point tracking)
# ------------------------------------------------------------------------------------------------
def _bce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # per-clip mean over classes, summed over clips: each clip's gradient is its own
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").mean(dim=-1).sum()


def _start(x: torch.Tensor, eps: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return (x + (2.0 * u - 1.0) * eps).clamp(-1.0, 1.0)


def generic_toolbox_pgd(model: Callable, x: torch.Tensor, targets: torch.Tensor, *, eps: float, steps: int,
                        step_size: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """L-inf PGD the way general-purpose toolboxes run it on a model they do not own: fp32,
    weights left trainable (``requires_grad=True``), ``loss.backward()`` (so every weight gradient
    is computed and accumulated), ``model.zero_grad()`` each step, gradient read from ``x.grad``.

    Sets ``requires_grad_(True)`` on the model's parameters for the duration and restores the
    previous flags afterwards. Returns the last iterate.
    """
    ss = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        x0 = x.detach()
        x_adv = _start(x0, eps, generator)
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            if hasattr(model, "zero_grad"):
                model.zero_grad(set_to_none=False)
            loss = _bce_sum(model(x_adv), targets)
            loss.backward()
            with torch.no_grad():
                x_adv = x_adv + ss * x_adv.grad.sign()
                x_adv = torch.min(torch.max(x_adv, x0 - eps), x0 + eps).clamp(-1.0, 1.0)
        if hasattr(model, "zero_grad"):
            model.zero_grad(set_to_none=True)
        return x_adv.detach()
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def attack_library_pgd(model: Callable, x: torch.Tensor, targets: torch.Tensor, *, eps: float, steps: int,
                       step_size: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """L-inf PGD the way dedicated attack libraries run it: fp32, weights frozen, gradient with
    respect to the input only via ``torch.autograd.grad``. Returns the last iterate."""
    ss = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    x0 = x.detach()
    x_adv = _start(x0, eps, generator)
    for _ in range(steps):
        with torch.enable_grad():
            xg = x_adv.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(_bce_sum(model(xg), targets), xg)
        x_adv = x_adv.detach() + ss * g.sign()
        x_adv = torch.min(torch.max(x_adv, x0 - eps), x0 + eps).clamp(-1.0, 1.0)
    return x_adv.detach()
