"""Per-clip random streams.

Every random draw in audiobench comes from a ``torch.Generator`` seeded from
``(run seed, clip id, condition key)``. Because each clip owns its stream, results do not depend
on batch size, clip order, device count or where a run was resumed.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (sha256 of their ``repr`` joined by NUL)."""
    h = hashlib.sha256("\x00".join(repr(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


class ClipRNG:
    """One ``torch.Generator`` per clip of a batch; draws are stacked into batch tensors.

    Draws are made on the CPU generator and moved to ``device``: CPU and CUDA generators give
    different streams, and a run must give the same perturbation whatever device it uses.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]

    @classmethod
    def for_clips(cls, run_seed: int, clip_ids: Sequence[str], condition: str, device="cpu") -> "ClipRNG":
        return cls([derive_seed(run_seed, cid, condition) for cid in clip_ids], device)

    def __len__(self) -> int:
        return len(self.seeds)

    def subset(self, index: Sequence[int]) -> "ClipRNG":
        """The generators of some clips of the batch (state shared, not copied)."""
        out = ClipRNG.__new__(ClipRNG)
        out.seeds = [self.seeds[i] for i in index]
        out.device = self.device
        out.generators = [self.generators[i] for i in index]
        return out

    def normal(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        """Standard normal draws of shape (batch, *shape)."""
        out = torch.stack([torch.randn(*shape, generator=g, dtype=dtype) for g in self.generators])
        return out.to(self.device, non_blocking=True)

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0, dtype=torch.float32) -> torch.Tensor:
        """Uniform draws on [low, high) of shape (batch, *shape)."""
        out = torch.stack([torch.rand(*shape, generator=g, dtype=dtype) for g in self.generators])
        return (out * (high - low) + low).to(self.device, non_blocking=True)

    def randperm(self, n: int) -> torch.Tensor:
        """One permutation of range(n) per clip, shape (batch, n)."""
        return torch.stack([torch.randperm(n, generator=g) for g in self.generators]).to(self.device)
