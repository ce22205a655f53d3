"""Tiny models and helpers shared by tests/test_perturb_*.py (not a test module itself)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from audiobench.models.base import AudioTagger, ModelSpec
from audiobench.rng import ClipRNG

SR = 8000


def _spec(n_classes: int, name: str) -> ModelSpec:
    return ModelSpec(name=name, family="cnn", description="test model", sample_rate=SR, n_classes=n_classes)


class TinyConvTagger(AudioTagger):
    """One strided conv (the 'features') + tanh, mean pooling and a linear head: nonlinear, tiny."""

    def __init__(self, n_classes: int = 6, seed: int = 0):
        super().__init__(_spec(n_classes, "tiny-conv"))
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv1d(1, 8, kernel_size=32, stride=16)
        self.lin = nn.Linear(8, n_classes)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.copy_(torch.randn(8, generator=g) * 0.1)
            self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=g))
            self.lin.bias.copy_(torch.randn(n_classes, generator=g) * 0.1)
        self.eval()

    def features(self, waveform):
        return self.conv(waveform[:, None, :])

    def forward_features(self, features):
        return self.lin(torch.tanh(features).mean(dim=-1) * 3.0)


class LinearTagger(AudioTagger):
    """logit = <w, x> + b for one class: the effect of any perturbation is known in closed form."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__(_spec(1, "linear"))
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor([float(b)]))
        self.eval()

    def features(self, waveform):
        return waveform

    def forward_features(self, features):
        return (features * self.w).sum(dim=-1, keepdim=True) + self.b


@contextlib.contextmanager
def one_thread():
    """Tiny tensors on a loaded shared machine: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def waves(n: int, samples: int, seed: int = 0, amp: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(n, samples, generator=g) * 2 - 1) * amp).float()


def targets_for(n: int, n_classes: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    t = torch.rand(n, n_classes, generator=g) < 0.3
    t[:, 0] |= ~t.any(dim=1)  # every clip has a label
    return t


def rng_for(ids, condition: str = "c", seed: int = 7) -> ClipRNG:
    return ClipRNG.for_clips(seed, [f"clip{i}" for i in ids], condition)
