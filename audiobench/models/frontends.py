"""Pieces of feature front ends shared by several models.

Everything here is batched over the first dimension and differentiable with respect to the
waveform, so adversarial attacks on the waveform see the whole pipeline.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class WaveformResampler(nn.Module):
    """Resample (batch, samples) from ``orig_hz`` to ``new_hz``; identity when they are equal.

    The resampler sits inside each model wrapper (not in the data layer) so that every model sees
    the same perturbed audio at the dataset's rate and an attack's gradient flows through the
    model's own resampling. torchaudio's defaults (sinc interpolation, Hann window, 6 zero
    crossings, rolloff 0.99) are kept: the reference scores in ../shared/README.md use them.
    """

    def __init__(self, orig_hz: int, new_hz: int):
        super().__init__()
        self.orig_hz = int(orig_hz)
        self.new_hz = int(new_hz)
        self.resample = None if self.orig_hz == self.new_hz else torchaudio.transforms.Resample(self.orig_hz, self.new_hz)
        if self.resample is not None:
            # The sinc kernel is derived from the rates, not learnt: keep it out of state_dict so
            # checkpoints stay in their reference layout whatever the dataset's rate.
            kernel = self.resample._buffers.pop("kernel")
            self.resample.register_buffer("kernel", kernel, persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.resample is None:
            return waveform
        return self.resample(waveform)

    def extra_repr(self) -> str:
        return f"{self.orig_hz} Hz -> {self.new_hz} Hz"
