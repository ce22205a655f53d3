"""Reduced-precision variants of any wrapped model: ``NAME@VARIANT`` (``toy-cnn@int8``).

:func:`apply_variant` turns a loaded :class:`~audiobench.models.base.AudioTagger` into a
:class:`QuantizedTagger`, its own model in results: ``spec.name`` is ``base@variant``, and
``model.variant_info`` records the recipe and the weight bytes for provenance. It never looks at a
model's name: the network is found by observing which modules ``forward_features`` calls
(:func:`audiobench.models.network.model_parts`); the front end (resampler, STFT, mel) always
stays float32, as it is fixed signal processing, not learnt weights.

Variants (:data:`VARIANTS`):

``fp16`` / ``bf16``
    Every floating parameter and buffer of the network cast to float16 / bfloat16; the network
    computes in that type (the front end's output is cast on the way in, logits are cast back to
    float32). White-box gradients are ordinary autograd in that precision; for float16 the
    backward pass through the network is scaled by 2**10 (exact power-of-two scaling, undone at
    the network input) so that small gradients do not underflow to zero.
``int8``
    Real int8 kernels of PyTorch's CPU quantized engine (``torch.backends.quantized.engine``, x86
    by default) for every layer below that the network calls as a module; other layers float32.

    * ``nn.Linear``: dynamic int8, ``torch.ao.nn.quantized.dynamic.Linear``
      (``quantized::linear_dynamic``): weights qint8 per output channel, symmetric
      (``per_channel_dynamic_qconfig``); input quantized to quint8 per tensor over its own range at
      run time, 7-bit (``reduce_range=True``); int32 accumulation; float32 bias and output.
    * ``nn.Conv1d/2d/3d`` (zero padding): PyTorch's *static* int8 convolution kernels
      (``quantized::conv1d/2d/3d``, weights packed by ``torch.ao.nn.quantized.ConvNd``): weights
      qint8 per output channel, symmetric (PyTorch's default per-channel weight observer); input
      quint8 per tensor over its own range, 7-bit; the kernel requantizes its output to quint8 per
      tensor over the range of the float output (computed with the dequantized weights), which is
      then dequantized for the float layers that follow (batch norm, activations). Static
      quantization proper needs calibration data and per-model QuantStub placement and fusion,
      which a name-independent variant cannot have; taking each range from the clip itself is the
      best case of calibration. PyTorch's *dynamic* int8 convolutions
      (``torch.ao.nn.quantized.dynamic.Conv2d``) are not used: in torch 2.11 they warn of "poor
      numerical accuracy", and on toy-cnn's layers their relative output error is 0.3-0.9
      (against 0.01-0.02 for the kernel used here).
    * ``nn.LSTM``/``nn.GRU``: dynamic int8 (``torch.ao.nn.quantized.dynamic.LSTM/GRU``), weights
      qint8 per tensor, symmetric (``default_dynamic_qconfig``, PyTorch's default for RNNs).

    PyTorch computes a dynamic activation range over the whole tensor it is given, i.e. over the
    batch; here each slice along the first axis (one clip in the batch-first layouts of the
    registered models; LSTM/GRU: along their batch axis) is quantized on its own, so a clip's
    result does not depend on its batch mates, as on a device that tags one clip at a time.
    Layers read functionally rather than called (``nn.MultiheadAttention``'s projections, a
    ``TransformerEncoderLayer`` on its fused inference path) stay float32, as under
    ``torch.ao.quantization.quantize_dynamic``; ``variant_info["layers"]`` counts what was
    quantized. CPU only (PyTorch has no CUDA kernels for these).

    White-box gradient: a straight-through estimator. Each int8 layer returns
    ``y = y_float + (y_int8 - y_float).detach()`` where ``y_float`` is the same layer in float32
    with the *dequantized* int8 weights: the forward value is exactly the int8 kernel's, and the
    input gradient is that of the float layer with the quantized weights, i.e. the rounding of
    activations is treated as the identity.
``w4``
    4-bit weights: every weight matrix / kernel of the network's ``nn.Linear``, convolution
    (transposed included), ``nn.MultiheadAttention`` and LSTM/GRU/RNN layers is rounded to the 16
    levels of an asymmetric min-max grid per output channel (round-to-nearest, half to even)::

        lo = min(min_c w, 0), hi = max(max_c w, 0)      (the range always contains 0)
        s = (hi - lo) / 15,  z = clamp(round(-lo / s), 0, 15)
        q = clamp(round(w / s) + z, 0, 15),  w4 = (q - z) * s

    and stored back as float32 ``w4`` (fake quantization: float compute on 4-bit-valued weights;
    zero stays exactly zero; an all-zero channel stays zero). Biases, normalisation layers and
    activations stay float32. Asymmetric rather than symmetric (``s = max|w| / 7``, 15 levels)
    because it uses all 16 codes and follows skewed channels: on efficientat-mn04 and the 20
    shared clips the symmetric grid kept clean mAP 0.44 of fp32's 0.97, the asymmetric one 0.74
    (docs/quantization-and-sharpness.md). Nothing on the input path is rounded, so white-box
    gradients are exact (no estimator needed).

``weight_bytes`` counts the network's floating parameters and buffers as stored by the variant:
fp32 4 B/element; fp16/bf16 2 B; int8 layers 1 B/weight plus a float32 scale and an int32 zero
point per channel (per tensor for RNNs), their biases 4 B; w4 layers 4 bits/weight (two per byte)
plus a float32 scale and a 1-byte zero point per channel; everything else 4 B. ``base_weight_bytes`` is the fp32 count.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from audiobench.errors import ConfigError
from audiobench.models.base import AudioTagger, ModelSpec
from audiobench.models.network import eval_mode, model_parts, probe_waveform

#: variant name -> one-line description (``audiobench list``-style)
VARIANTS: Dict[str, str] = {
    "fp16": "network weights and compute in float16 (front end float32)",
    "bf16": "network weights and compute in bfloat16 (front end float32)",
    "int8": "PyTorch int8 CPU kernels: Linear/LSTM/GRU dynamic, Conv static kernel with per-clip ranges; per-channel qint8 weights",
    "w4": "4-bit asymmetric per-output-channel fake-quantized weights, round-to-nearest (float compute)",
}

FP16_GRAD_SCALE = 2.0 ** 10
W4_BITS = 4


# ------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------
def parse_variant(name: str) -> Tuple[str, Optional[str]]:
    """``"toy-cnn@int8"`` → ``("toy-cnn", "int8")``; ``"toy-cnn"`` → ``("toy-cnn", None)``.

    The variant is what follows the last ``@``; an unknown one is a one-line ConfigError.
    """
    text = str(name).strip()
    if "@" not in text:
        return text, None
    base, _, variant = text.rpartition("@")
    if variant not in VARIANTS:
        raise ConfigError(f"model {text!r}: unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    if not base:
        raise ConfigError(f"model {text!r}: no model name before '@{variant}'")
    return base, variant


def variant_spec(spec: ModelSpec, variant: str) -> ModelSpec:
    """The spec of ``spec``'s ``variant``: name ``base@variant``, the recipe appended to the
    description, no reference mAP (the upstream figure is the float model's)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    return dataclasses.replace(
        spec,
        name=f"{spec.name}@{variant}",
        description=f"{spec.description} [{variant} variant: {VARIANTS[variant]}]",
        reference_mAP=None,
    )


# ------------------------------------------------------------------------------------------------
# the wrapped variant
# ------------------------------------------------------------------------------------------------
class _CastIn(torch.autograd.Function):
    """x.to(dtype); backward: the gradient back in x's dtype, divided by ``scale``."""

    @staticmethod
    def forward(ctx, x, dtype, scale):
        ctx.in_dtype, ctx.scale = x.dtype, scale
        return x.to(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.to(ctx.in_dtype) / ctx.scale, None, None


class _CastOut(torch.autograd.Function):
    """y.float(); backward: the gradient in y's dtype, multiplied by ``scale`` (loss scaling)."""

    @staticmethod
    def forward(ctx, y, scale):
        ctx.out_dtype, ctx.scale = y.dtype, scale
        return y.float()

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.scale).to(ctx.out_dtype), None


class QuantizedTagger(AudioTagger):
    """A variant of a wrapped model: the base's front end, its network at reduced precision.

    ``self.base`` is the (modified) base model; ``variant_info`` holds the provenance
    (see :func:`apply_variant`). ``features`` is the base's; ``forward_features``,
    ``embed_features`` and ``head`` run the base's with the input cast to the compute dtype
    (fp16/bf16) and the output cast back to float32.
    """

    def __init__(self, base: AudioTagger, variant: str, info: Dict[str, Any],
                 compute_dtype: Optional[torch.dtype] = None, grad_scale: float = 1.0):
        super().__init__(variant_spec(base.spec, variant), base.sample_rate)
        self.base = base
        self.variant = variant
        self.variant_info = info
        self.compute_dtype = compute_dtype
        self.grad_scale = float(grad_scale)
        self.checkpoint_path = getattr(base, "checkpoint_path", None)
        self.checkpoint_sha256 = getattr(base, "checkpoint_sha256", None)

    @contextlib.contextmanager
    def exact_weight_gradients(self):
        """Turn the fp16 backward scaling off for the block. The scaling is undone at the network's
        input, so input gradients (attacks) are exact with it; gradients with respect to the
        network's weights (sharpness) would carry its factor, so whoever differentiates the
        weights uses this."""
        scale, self.grad_scale = self.grad_scale, 1.0
        try:
            yield
        finally:
            self.grad_scale = scale

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is None or x.dtype == self.compute_dtype:
            return x
        return _CastIn.apply(x, self.compute_dtype, self.grad_scale)

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is None or y.dtype == torch.float32:
            return y
        return _CastOut.apply(y, self.grad_scale)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.base.features(waveform)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        return self._out(self.base.forward_features(self._in(features)))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self._out(self.base.embed_features(self._in(features)))

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        return self._out(self.base.head(self._in(embedding)))

    def load_checkpoint(self, obj: Any, what: str = "checkpoint") -> None:
        from audiobench.errors import WeightsError

        raise WeightsError(f"{what}: {self.spec.name} is a quantized variant; load the weights into "
                           f"{self.base.spec.name} before applying @{self.variant}")


# ------------------------------------------------------------------------------------------------
# int8: PyTorch's int8 CPU kernels behind a straight-through estimator
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_ao():
    """torch.ao.quantization warns that it is deprecated on every conversion: keep that out of runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        yield


def _qtensor_bytes(q: torch.Tensor) -> int:
    """int8 storage of a quantized weight: 1 B/element + float32 scale and int32 zero point per channel."""
    channels = q.q_per_channel_scales().numel() if q.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric) else 1
    return q.numel() + 8 * channels


def _bias_bytes(module: nn.Module) -> int:
    bias = getattr(module, "bias", None)
    return 4 * bias.numel() if isinstance(bias, torch.Tensor) else 0


def _per_channel_qint8(w: torch.Tensor) -> torch.Tensor:
    """qint8 per output channel (axis 0), symmetric: PyTorch's default per-channel weight observer."""
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    w = w.detach().float().cpu()
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    obs(w)
    scale, zero_point = obs.calculate_qparams()
    return torch.quantize_per_channel(w, scale.double(), zero_point.long(), 0, torch.qint8)


def _activation_qparams(x: torch.Tensor, qmax: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """quint8 per-tensor (scales, zero points) of each slice along the first axis, from its min and
    max with the range widened to include 0 (MinMaxObserver's rule: zero is exactly representable;
    scale at least float32 eps). Both (B,) tensors on the CPU (float32, int64)."""
    lo, hi = x.detach().reshape(x.shape[0], -1).float().aminmax(dim=1)
    lo, hi = lo.clamp(max=0.0).cpu(), hi.clamp(min=0.0).cpu()
    scale = ((hi - lo) / qmax).clamp(min=float(torch.finfo(torch.float32).eps))
    zero_point = torch.round(-lo / scale).clamp(0, qmax).long()
    return scale, zero_point


def _with_dequantized_weights(module: nn.Module, qweights: Dict[str, torch.Tensor]) -> nn.Module:
    """A frozen float copy of ``module`` whose weights are the dequantized int8 ones (the
    straight-through estimator's backward path)."""
    out = copy.deepcopy(module)
    with torch.no_grad():
        for name, q in qweights.items():
            getattr(out, name).copy_(q.dequantize().to(getattr(out, name).dtype))
    return out.requires_grad_(False)


def _slices(x: torch.Tensor, dim: int = 0):
    """x split into its slices along ``dim`` (one clip each in batch-first layouts)."""
    if x.dim() < 2 or x.shape[dim] == 1:
        return [x]
    return [x.narrow(dim, i, 1) for i in range(x.shape[dim])]


def _straight_through(x: torch.Tensor, surrogate: nn.Module, int8_forward) -> torch.Tensor:
    """The int8 layer's values; in a gradient pass, the surrogate's gradient (straight-through)."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        with torch.no_grad():
            return int8_forward(x.detach().float().contiguous(), None).to(x.dtype)
    y_f = surrogate(x)
    with torch.no_grad():
        y_q = int8_forward(x.detach().float().contiguous(), y_f.detach().float())
    return y_f + (y_q.to(y_f.dtype) - y_f).detach()


class _Int8Linear(nn.Module):
    """``nn.Linear`` run by PyTorch's dynamic int8 kernel (``torch.ao.nn.quantized.dynamic.Linear``,
    ``quantized::linear_dynamic``), one input slice (clip) at a time, with the straight-through
    estimator of :func:`_straight_through`. ``weight``/``bias`` read the dequantized weights (for
    code that inspects them, e.g. ``TransformerEncoderLayer``'s fast-path checks)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        import torch.ao.nn.quantized.dynamic as qd
        from torch.ao.quantization import per_channel_dynamic_qconfig

        src = copy.deepcopy(linear).float().cpu()
        src.qconfig = per_channel_dynamic_qconfig  # qint8 weights, per channel, symmetric
        with _quiet_ao():
            self.quantized = qd.Linear.from_float(src)
        qweight = self.quantized.weight()
        self.surrogate = _with_dequantized_weights(linear, {"weight": qweight})
        self.weight_bytes = _qtensor_bytes(qweight) + _bias_bytes(linear)

    weight = property(lambda self: self.surrogate.weight)
    bias = property(lambda self: self.surrogate.bias)

    def _int8(self, x: torch.Tensor, y_float) -> torch.Tensor:
        return torch.cat([self.quantized(xi) for xi in _slices(x)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _straight_through(x, self.surrogate, self._int8)


class _Int8Conv(nn.Module):
    """``nn.Conv1d/2d/3d`` (zero padding) run by PyTorch's static int8 convolution kernel
    (``quantized::conv1d/2d/3d``, packed by ``torch.ao.nn.quantized.ConvNd``): qint8 per-channel
    symmetric weights; per clip, the input quantized to quint8 per tensor over its own range
    (7-bit, ``reduce_range``), the output requantized to quint8 over the range of that clip's float
    output (computed with the dequantized weights), then dequantized. Straight-through estimator
    as in :func:`_straight_through`."""

    def __init__(self, conv: nn.modules.conv._ConvNd):
        super().__init__()
        import torch.ao.nn.quantized as nnq

        n = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(conv)]
        cls = {1: nnq.Conv1d, 2: nnq.Conv2d, 3: nnq.Conv3d}[n]
        qweight = _per_channel_qint8(conv.weight)
        with _quiet_ao():
            packed = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                         dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None)
            packed.set_weight_bias(qweight, None if conv.bias is None else conv.bias.detach().float().cpu())
        self.packed = packed
        self.op = {1: torch.ops.quantized.conv1d, 2: torch.ops.quantized.conv2d, 3: torch.ops.quantized.conv3d}[n]
        self.surrogate = _with_dequantized_weights(conv, {"weight": qweight})
        self.weight_bytes = _qtensor_bytes(qweight) + _bias_bytes(conv)

    weight = property(lambda self: self.surrogate.weight)
    bias = property(lambda self: self.surrogate.bias)

    def _int8(self, x: torch.Tensor, y_float) -> torch.Tensor:
        if y_float is None:
            y_float = self.surrogate(x)
        s_in, z_in = _activation_qparams(x, 127)
        s_out, z_out = _activation_qparams(y_float, 255)
        x_q = torch.quantize_per_tensor(list(x.split(1)), s_in, z_in, torch.quint8)
        packed = self.packed._packed_params
        outs = [self.op(xi, packed, so, zo) for xi, so, zo in zip(x_q, s_out.tolist(), z_out.tolist())]
        return torch.cat(torch.dequantize(outs)).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _straight_through(x, self.surrogate, self._int8)


class _Int8RNN(nn.Module):
    """``nn.LSTM``/``nn.GRU`` run by PyTorch's dynamic int8 kernels (``torch.ao.nn.quantized.dynamic``,
    qint8 per-tensor weights: ``default_dynamic_qconfig``), one clip at a time along the batch axis,
    with the same straight-through estimator (a float copy holding the dequantized weights)."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        import torch.ao.nn.quantized.dynamic as qd
        from torch.ao.quantization import default_dynamic_qconfig

        src = copy.deepcopy(rnn).float().cpu()
        src.qconfig = default_dynamic_qconfig
        with _quiet_ao():
            self.quantized = {nn.LSTM: qd.LSTM, nn.GRU: qd.GRU}[type(rnn)].from_float(src)
        wb = self.quantized._weight_bias()
        self.surrogate = _with_dequantized_weights(rnn, wb["weight"])
        self.weight_bytes = (sum(_qtensor_bytes(q) for q in wb["weight"].values())
                             + sum(4 * b.numel() for b in wb["bias"].values()))
        self.batch_dim = 0 if rnn.batch_first else 1

    def _int8(self, x: torch.Tensor, hx):
        with torch.no_grad():
            xd = x.detach().float().contiguous()
            if xd.dim() < 3 or xd.shape[self.batch_dim] == 1:
                return self.quantized(xd, hx)
            outs, hs = [], []
            for i in range(xd.shape[self.batch_dim]):
                h_i = None if hx is None else _map(lambda h: h.detach().float().narrow(1, i, 1), hx)
                o, h = self.quantized(xd.narrow(self.batch_dim, i, 1), h_i)
                outs.append(o)
                hs.append(h)
            return torch.cat(outs, self.batch_dim), _map(lambda *parts: torch.cat(parts, 1), *hs)

    def forward(self, x: torch.Tensor, hx=None):
        y_q = self._int8(x, hx)
        wants = x.requires_grad or (hx is not None and any(t.requires_grad for t in _leaves(hx)))
        if not (torch.is_grad_enabled() and wants):
            return _map(lambda t: t.to(x.dtype), y_q)
        y_f = self.surrogate(x, hx)
        return _map(lambda f, q: f + (q.to(f.dtype) - f).detach(), y_f, y_q)


def _leaves(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    return [t for part in tree for t in _leaves(part)]


def _map(fn, *trees):
    """fn over the tensors of equally shaped (nested) tuples of tensors."""
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return fn(*trees)
    return tuple(_map(fn, *parts) for parts in zip(*trees))


def _int8_layer(module: nn.Module) -> Tuple[Optional[type], Optional[str]]:
    """(wrapper class, None) for a layer the int8 recipe converts; (None, why not) for a candidate
    it leaves float; (None, None) for any other module."""
    if type(module) is nn.Linear:
        return _Int8Linear, None
    if type(module) in (nn.LSTM, nn.GRU):
        return _Int8RNN, None
    if type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(module.padding, str):
            return None, "string padding"
        if module.padding_mode != "zeros":
            return None, f"padding_mode {module.padding_mode}"
        return _Int8Conv, None
    return None, None


# ------------------------------------------------------------------------------------------------
# w4: 4-bit per-channel fake quantization of weights
# ------------------------------------------------------------------------------------------------
def fake_quantize_per_channel(w: torch.Tensor, bits: int = W4_BITS, axis: int = 0) -> torch.Tensor:
    """Asymmetric min-max round-to-nearest fake quantization per slice along ``axis`` to
    ``2**bits`` levels (the ``w4`` recipe of the module docstring). Computed in float32, returned
    in ``w``'s dtype; at most ``2**bits`` distinct values per slice, zero exactly representable."""
    qmax = 2 ** int(bits) - 1
    wf = w.detach().float()
    dims = [d for d in range(wf.dim()) if d != axis]
    lo = (wf.amin(dim=dims, keepdim=True) if dims else wf).clamp(max=0.0)
    hi = (wf.amax(dim=dims, keepdim=True) if dims else wf).clamp(min=0.0)
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero slice: codes all z, values 0
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    q = torch.clamp(torch.round(wf / scale) + zero_point, 0, qmax)
    return ((q - zero_point) * scale).to(w.dtype)


def _w4_weights(module: nn.Module):
    """(parameter name, output-channel axis) of the weight tensors the w4 recipe quantizes."""
    if isinstance(module, nn.Linear):
        return [("weight", 0)]
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return [("weight", 1)]
    if isinstance(module, nn.modules.conv._ConvNd):
        return [("weight", 0)]
    if isinstance(module, nn.MultiheadAttention):
        return [(n, 0) for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
                if getattr(module, n, None) is not None]
    if isinstance(module, nn.RNNBase):
        return [(n, 0) for n, _ in module.named_parameters(recurse=False) if n.startswith("weight_")]
    return []


# ------------------------------------------------------------------------------------------------
# apply
# ------------------------------------------------------------------------------------------------
def _float_bytes(tensors, bytes_per_element: int = 4) -> int:
    return sum(bytes_per_element * t.numel() for t in tensors if t.is_floating_point())


def _network_tensors(model: nn.Module, network_names):
    """Floating parameters and buffers of the network modules, each tensor once."""
    mods = dict(model.named_modules())
    seen, out = set(), []
    for name in network_names:
        mod = mods[name]
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            if id(t) not in seen and t.is_floating_point():
                seen.add(id(t))
                out.append(t)
    return out


def _swap(model: nn.Module, targets: Dict[int, nn.Module]) -> None:
    """Replace every child that is a key of ``targets`` (by id) with its value, shared ones included."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            new = targets.get(id(child))
            if new is not None:
                setattr(parent, child_name, new)


def _count(counts: Dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def apply_variant(model: AudioTagger, variant: str, *, inplace: bool = False) -> QuantizedTagger:
    """The ``variant`` (one of :data:`VARIANTS`) of a loaded, float32 wrapped model.

    Works on any :class:`~audiobench.models.base.AudioTagger` whatever its origin: nothing depends
    on the model's name. The base model is deep-copied first unless ``inplace=True`` (then it
    becomes ``result.base`` and is modified). The result is in eval mode with frozen weights, on
    the base's device, and carries ``variant_info``::

        {"variant", "recipe" (text), "gradient" (how white-box gradients are taken),
         "layers" {layer type: count quantized}, "float_layers" {reason: count left float},
         "weight_bytes", "base_weight_bytes", "engine" (int8: torch.backends.quantized.engine),
         "float_weights" (False for int8: its weights are packed int8, not parameters)}
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    if not isinstance(model, AudioTagger):
        raise ConfigError(f"apply_variant needs a wrapped AudioTagger, got {type(model).__name__}")
    if isinstance(model, QuantizedTagger):
        raise ConfigError(f"model {model.spec.name} is already a variant; apply one variant to the float model")
    base = model if inplace else copy.deepcopy(model)
    dev = probe_waveform(base, 0.0).device
    if variant == "int8" and dev.type != "cpu":
        raise ConfigError(f"variant int8 runs on the CPU only (PyTorch's dynamic int8 kernels are CPU kernels); "
                          f"use --device cpu for {model.spec.name}@int8")
    with eval_mode(base):
        parts = model_parts(base)
    tensors = _network_tensors(base, parts.network)
    base_bytes = _float_bytes(tensors)
    compute_dtype, grad_scale = None, 1.0
    layers: Dict[str, int] = {}
    left_float: Dict[str, int] = {}

    if variant in ("fp16", "bf16"):
        compute_dtype = torch.float16 if variant == "fp16" else torch.bfloat16
        grad_scale = FP16_GRAD_SCALE if variant == "fp16" else 1.0
        mods = dict(base.named_modules())
        for name in parts.network:
            mod = mods[name]
            for key, p in list(mod._parameters.items()):
                if p is not None and p.is_floating_point():
                    p.data = p.data.to(compute_dtype)
            for key, b in list(mod._buffers.items()):
                if b is not None and b.is_floating_point():
                    mod._buffers[key] = b.to(compute_dtype)
            if mod._parameters or any(b is not None for b in mod._buffers.values()):
                _count(layers, type(mod).__name__)
        weight_bytes = _float_bytes(tensors, 2)
        recipe = (f"network parameters and buffers cast to {compute_dtype}; network computes in {compute_dtype}; "
                  f"front end float32, its output cast to {compute_dtype}; logits cast to float32")
        gradient = ("autograd in reduced precision" +
                    (f", backward scaled by {FP16_GRAD_SCALE:g} inside the network (exact, undone at its input)"
                     if grad_scale != 1.0 else ""))

    elif variant == "int8":
        mods = dict(base.named_modules())
        swaps: Dict[int, nn.Module] = {}
        swapped_bytes = 0
        for name in parts.called:
            mod = mods[name]
            if id(mod) in swaps:
                continue
            wrapper, reason = _int8_layer(mod)
            if wrapper is not None:
                new = wrapper(mod)
                swaps[id(mod)] = new
                swapped_bytes += new.weight_bytes
                _count(layers, type(mod).__name__)
            elif reason is not None:
                _count(left_float, f"{type(mod).__name__} ({reason})")
        swapped_ids = {id(t) for m in (mods[n] for n in parts.called) if id(m) in swaps
                       for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))}
        _swap(base, swaps)
        weight_bytes = swapped_bytes + _float_bytes([t for t in tensors if id(t) not in swapped_ids])
        recipe = (f"int8, CPU engine {torch.backends.quantized.engine}. Linear: dynamic int8 (torch.ao.nn.quantized.dynamic"
                  ".Linear, quantized::linear_dynamic), weights qint8 per output channel symmetric, activations quint8 "
                  "per tensor over each clip's range, reduce_range, int32 accumulate, float32 bias/output. Conv1d/2d/3d: "
                  "static int8 kernel (quantized::conv1d/2d/3d), weights qint8 per output channel symmetric, input quint8 "
                  "per tensor over each clip's range (reduce_range), output requantized to quint8 over the clip's float "
                  "output range, then dequantized. LSTM/GRU: dynamic int8, weights qint8 per tensor. Other layers float32")
        gradient = ("straight-through estimator: y = y_float + (y_int8 - y_float).detach(), y_float = the layer in "
                    "float32 with the dequantized weights (activation rounding treated as identity)")

    else:  # w4
        mods = dict(base.named_modules())
        done = set()
        quant_ids = set()
        w4_bytes = 0
        for name in parts.network:
            mod = mods[name]
            for p_name, axis in _w4_weights(mod):
                p = getattr(mod, p_name)
                if p is None or id(p) in done or not p.is_floating_point():
                    continue
                done.add(id(p))
                with torch.no_grad():
                    p.copy_(fake_quantize_per_channel(p, W4_BITS, axis))
                quant_ids.add(id(p))
                w4_bytes += (p.numel() + 1) // 2 + 5 * p.shape[axis]  # codes, float32 scale + 1-byte zero point
                _count(layers, type(mod).__name__)
        weight_bytes = w4_bytes + _float_bytes([t for t in tensors if id(t) not in quant_ids])
        recipe = ("weights of Linear/Conv/MultiheadAttention/RNN layers fake-quantized to 4 bits: asymmetric min-max "
                  "per output channel, lo = min(w_min, 0), hi = max(w_max, 0), s = (hi - lo)/15, z = round(-lo/s), "
                  "w4 = (clamp(round(w/s) + z, 0, 15) - z) * s, round half to even, stored as float32; biases, norms "
                  "and activations float32")
        gradient = "exact autograd (only weights are rounded; nothing on the input path)"

    result = QuantizedTagger(base, variant, {}, compute_dtype=compute_dtype, grad_scale=grad_scale)
    result.eval()
    result.requires_grad_(False)
    result.variant_info = {
        "variant": variant,
        "base_model": model.spec.name,
        "recipe": recipe,
        "gradient": gradient,
        "layers": layers,
        "float_layers": left_float,
        "weight_bytes": int(weight_bytes),
        "base_weight_bytes": int(base_bytes),
        "engine": torch.backends.quantized.engine if variant == "int8" else None,
        "float_weights": variant != "int8",
    }
    # run the probe once through the variant: a layout this recipe cannot handle fails here, with
    # the model's name, rather than in the middle of a run
    try:
        with torch.no_grad():
            out = result(probe_waveform(result))
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        msg = " ".join(str(exc).split())[:300]
        raise ConfigError(f"model {model.spec.name}: variant {variant} does not run on it ({type(exc).__name__}: {msg})") from None
    if not torch.isfinite(out).all():
        raise ConfigError(f"model {model.spec.name}: variant {variant} gives non-finite logits on a probe clip")
    return result
