"""``example-melcnn``: a small log-mel CNN, offered to audiobench through an entry point.

What a plugin needs, all here:

* a model that follows audiobench's contract: an ``nn.Module`` with ``sample_rate`` (Hz) and
  ``forward(waveform (B, T) float32 in [-1, 1]) -> logits (B, C)``; this one also offers
  ``features``/``forward_features`` (its log-mel front end, for feature-domain conditions) and
  ``embed``/``embed_features``/``head`` (for the latent-space metrics);
* a factory, ``make(checkpoint=None)``: audiobench passes ``--checkpoint`` to it;
* ``register(registry)``, named by the ``audiobench.models`` entry point in ``setup.cfg``:
  it registers the model's name, listing fields (a ``ModelSpec``) and factory.

The weights are random but seeded (the same in every process): this shows the plumbing, it is
not a trained tagger. Front end: 16 kHz, 512-point STFT (32 ms Hann), hop 256 (16 ms), 64 mel
bins, log(x + 1e-6), fixed affine normalisation. Network: three strided 3x3 conv blocks
(16-32-64 channels) → mean + max over time and frequency → 64-d embedding → 527 logits
(AudioSet class order).
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

SAMPLE_RATE = 16000
N_CLASSES = 527
SEED = 1234


class ExampleMelCNN(nn.Module):
    """Small log-mel CNN with random, seeded weights (audiobench plugin example)."""

    sample_rate = SAMPLE_RATE
    family = "cnn"

    def __init__(self, n_classes: int = N_CLASSES):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=512, hop_length=256, n_mels=64, power=2.0)
        blocks = []
        for c_in, c_out in ((1, 16), (16, 32), (32, 64)):
            blocks += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(64, n_classes)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        x = torch.log(self.mel(waveform) + 1e-6)  # (B, 64, frames)
        return ((x + 8.0) / 4.0).unsqueeze(1)  # (B, 1, 64, frames)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        x = self.blocks(features)
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))  # (B, 64)

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(embedding)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed_features(features))

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(waveform))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.features(waveform))


def make(checkpoint: str | None = None) -> ExampleMelCNN:
    """Build the model; ``checkpoint``: a ``state_dict`` file (read with ``weights_only=True``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = ExampleMelCNN()
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


def register(registry) -> None:
    """Entry point ``audiobench.models``: register ``example-melcnn`` with its spec and factory."""
    from audiobench.models.base import ModelSpec

    registry.register_model(
        ModelSpec(
            name="example-melcnn",
            family="cnn",
            description="example plugin: small log-mel CNN, random seeded weights (not a trained tagger)",
            sample_rate=SAMPLE_RATE,
            frontend={"kind": "log-mel", "n_fft": 512, "hop_length": 256, "n_mels": 64},
            n_classes=N_CLASSES,
            reference="audiobench examples/plugin",
            has_embedding=True,
        ),
        make,
    )
