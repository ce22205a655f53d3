"""The unit that flows from the data layer to the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch


@dataclass
class Batch:
    """A contiguous run of clips of one dataset.

    ``waveform`` is float32 in [-1, 1], shape (batch, samples) at the dataset's sample rate;
    ``targets`` is bool, shape (batch, n_classes), in the dataset vocabulary's order;
    ``start`` is the position of the first clip in the dataset's clip order.
    """

    clip_ids: List[str]
    waveform: torch.Tensor
    targets: torch.Tensor
    start: int = 0

    def __len__(self) -> int:
        return len(self.clip_ids)

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return Batch(
            self.clip_ids,
            self.waveform.to(device, non_blocking=non_blocking),
            self.targets.to(device, non_blocking=non_blocking),
            self.start,
        )
