"""Which modules of a wrapped model are its network, and which its fixed front end.

The :class:`~audiobench.models.base.AudioTagger` contract splits every model into
``features(waveform)`` (resampler and feature front end: fixed signal processing, not learnt) and
``forward_features(features)`` (the network). Quantization and weight-space sharpness concern the
network only, and must work on any wrapped model without knowing its layout, so the split is
*observed*: :func:`model_parts` runs one short probe clip through both halves with forward
pre-hooks on every module and records which modules each half calls.

* front end = the modules called by ``features`` and all their submodules;
* network = the modules called by ``forward_features`` and all their submodules, minus the front
  end (a parent called by the network owns parameters its children use functionally, e.g.
  ``nn.MultiheadAttention.out_proj``);
* called = the network modules that are *called as modules* by ``forward_features``: only these may
  be replaced by another module (a module read only through its ``.weight`` must keep it).

The probe is 1 s of seeded Gaussian noise (std 0.1) at ``model.sample_rate``, run under
``torch.no_grad()`` in eval mode (training flags are restored afterwards), so it changes no state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import torch
from torch import nn

PROBE_SECONDS = 1.0
PROBE_SEED = 0


@dataclass(frozen=True)
class ModelParts:
    """Qualified module names (``model.named_modules()`` names, ``""`` = the model itself)."""

    frontend: Tuple[str, ...]
    network: Tuple[str, ...]
    called: Tuple[str, ...]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every module's training flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def probe_waveform(model: nn.Module, seconds: float = PROBE_SECONDS) -> torch.Tensor:
    """The probe clip: (1, seconds·sample_rate) seeded Gaussian noise, std 0.1, on the model's device."""
    n = max(int(round(seconds * int(model.sample_rate))), 1)
    g = torch.Generator().manual_seed(PROBE_SEED)
    return (0.1 * torch.randn(1, n, generator=g)).to(_device_of(model))


def _called_during(model: nn.Module, fn) -> Tuple[List[nn.Module], object]:
    seen: Dict[int, nn.Module] = {}

    def record(mod: nn.Module, args) -> None:
        seen.setdefault(id(mod), mod)

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        out = fn()
    finally:
        for h in hooks:
            h.remove()
    return list(seen.values()), out


def model_parts(model: nn.Module, seconds: float = PROBE_SECONDS) -> ModelParts:
    """Observe which modules form ``model``'s front end and its network (see the module docstring)."""
    names = {id(m): n for n, m in model.named_modules()}
    x = probe_waveform(model, seconds)
    with eval_mode(model), torch.no_grad():
        front_called, feats = _called_during(model, lambda: model.features(x))
        net_called, _ = _called_during(model, lambda: model.forward_features(feats))
    front = {id(s) for m in front_called for s in m.modules()}
    network = {id(s): s for m in net_called for s in m.modules() if id(s) not in front}
    called = [m for m in net_called if id(m) not in front]
    # keep named_modules() order (stable, reproducible provenance)
    order = [id(m) for _, m in model.named_modules()]
    return ModelParts(
        frontend=tuple(names[i] for i in order if i in front),
        network=tuple(names[i] for i in order if i in network),
        called=tuple(names[i] for i in order if i in {id(m) for m in called}),
    )


def network_parameters(model: nn.Module, parts: ModelParts | None = None) -> Dict[str, nn.Parameter]:
    """The floating-point parameters owned by the network's modules: {qualified name: parameter}.

    Each tensor appears once (tied weights under their first name); front-end parameters (STFT
    kernels, mel filterbanks stored as parameters) are excluded.
    """
    parts = model_parts(model) if parts is None else parts
    wanted = set(parts.network)
    out: Dict[str, nn.Parameter] = {}
    seen = set()
    for mod_name, mod in model.named_modules():
        if mod_name not in wanted:
            continue
        for p_name, p in mod.named_parameters(recurse=False):
            if id(p) in seen or not p.is_floating_point():
                continue
            seen.add(id(p))
            out[f"{mod_name}.{p_name}" if mod_name else p_name] = p
    return out
