"""Tiny taggers trained by audiobench on its own toy set (``audiobench train-toy``).

They make the whole pipeline (run, attacks, report) meaningful offline and on a CPU in seconds:
both reach clean mAP >= 0.9 on the embedded toy set, output logits over the full 527-class AudioSet
vocabulary (only the toy classes have positives), and ship with the package
(``audiobench/assets/weights/*.pt``, each well under 2 MB).

Front end (both): 16 kHz mono; torch STFT n_fft 512 (32 ms Hann), hop 256 (16 ms), power;
64 HTK mel bins 0-8 kHz; log(x + 1e-6); a fixed affine normalisation (mean/std measured once on the
toy training split and stored in the spec, so the front end has no learnt or data-dependent state);
features are 2 channels: the normalised log-mel and its absolute frame-to-frame difference.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torchaudio
from torch import nn

from audiobench.models import register_model
from audiobench.models.base import AudioTagger, ModelSpec, WeightsSpec
from audiobench.models.frontends import WaveformResampler

TOY_FRONTEND = {"n_fft": 512, "win_length": 512, "hop_length": 256, "n_mels": 64, "f_min_hz": 0.0, "f_max_hz": 8000.0, "log_offset": 1e-6}
# Measured on the toy training split (seed 1) by `audiobench train-toy`; fixed so runs are reproducible.
TOY_NORMALISATION = {"mean": -9.5, "std": 6.5}


class ToyLogMel(nn.Module):
    """Batched, differentiable log-mel front end shared by the toy models."""

    def __init__(self, sample_rate: int = 16000):
        super().__init__()
        f = TOY_FRONTEND
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=f["n_fft"], win_length=f["win_length"], hop_length=f["hop_length"],
            f_min=f["f_min_hz"], f_max=f["f_max_hz"], n_mels=f["n_mels"], power=2.0, center=True,
        )
        # window and filterbank are derived from the parameters above: keep them out of state_dict
        for sub in (self.mel.spectrogram, self.mel.mel_scale):
            for name in list(sub._buffers):
                buf = sub._buffers.pop(name)
                sub.register_buffer(name, buf, persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.mel(waveform)  # (B, M, T)
        x = torch.log(x + TOY_FRONTEND["log_offset"])
        x = (x - TOY_NORMALISATION["mean"]) / TOY_NORMALISATION["std"]
        # second channel: |frame-to-frame change|, so on/off patterns (beeps, ticks, clicks) are
        # visible to the first layer instead of having to be learnt by a tiny network
        delta = (x[..., 1:] - x[..., :-1]).abs()
        delta = torch.cat([torch.zeros_like(x[..., :1]), delta], dim=-1)
        return torch.stack([x, delta], dim=1)  # (B, 2, M, T)


class _ConvBlock(nn.Sequential):
    """3×3 conv with stride 2 (halves mel and time) → BatchNorm → ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ToyCNNNet(nn.Module):
    """4 strided conv blocks (16-32-64-64 channels, ~15 MMAC per 5 s) → max over frequency →
    mean + max over time → MLP. Small on purpose: attacks on it run in seconds on a CPU."""

    def __init__(self, n_classes: int = 527):
        super().__init__()
        self.blocks = nn.Sequential(_ConvBlock(2, 16), _ConvBlock(16, 32), _ConvBlock(32, 64), _ConvBlock(64, 64))
        self.fc = nn.Linear(64, 64)
        self.classifier = nn.Linear(64, n_classes)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.blocks(feats)  # (B, 2, M, T) -> (B, 64, M/16, T/16)
        x = x.amax(dim=2)  # max over mel
        x = x.mean(dim=2) + x.amax(dim=2)  # mean + max over time
        return torch.relu(self.fc(x))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(feats))


class ToyTransformerNet(nn.Module):
    """Conv stem (2 strided 3×3 convs, 16-32 channels: time/4, mel/4) → tokens of 2 stem frames
    (128 ms) → 2-layer Transformer encoder (d=64, 4 heads, pre-norm) → mean pool → linear.
    The stem gives the attention layers local on/off detectors (the study's CNN-Transformer
    shape, scaled down)."""

    def __init__(self, n_classes: int = 527, n_mels: int = 64, dim: int = 64, max_tokens: int = 128):
        super().__init__()
        self.stem = nn.Sequential(_ConvBlock(2, 16), _ConvBlock(16, 32))
        self.patch = nn.Conv1d(32 * (n_mels // 4), dim, kernel_size=2, stride=2)
        self.pos = nn.Parameter(torch.zeros(1, max_tokens, dim))
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.stem(feats)  # (B, 2, M, T) -> (B, 32, M/4, T/4)
        x = self.patch(x.flatten(1, 2)).transpose(1, 2)  # (B, P, D), P = T/8
        n = x.shape[1]
        if n > self.pos.shape[1]:
            raise ValueError(f"clip too long for toy-transformer: {n} tokens > {self.pos.shape[1]} (max ~16 s)")
        x = self.encoder(x + self.pos[:, :n])
        return self.norm(x.mean(dim=1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(feats))


class ToyTagger(AudioTagger):
    """Wrapper: resampler → ToyLogMel → net. ``self.net`` holds every checkpointed tensor."""

    def __init__(self, spec: ModelSpec, net: nn.Module, sample_rate: Optional[int] = None):
        super().__init__(spec, sample_rate)
        self.resampler = WaveformResampler(self.sample_rate, spec.sample_rate)
        self.frontend = ToyLogMel(spec.sample_rate)
        self.net = net

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.frontend(self.resampler(waveform))

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.embed(features)

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(embedding)


def _spec(name: str, family: str, description: str, mAP: Optional[float]) -> ModelSpec:
    return ModelSpec(
        name=name, family=family, description=description, sample_rate=16000,
        frontend=dict(TOY_FRONTEND), normalisation=dict(TOY_NORMALISATION),
        weights=WeightsSpec(file_name=f"{name}.pt", licence="MIT", source="trained by `audiobench train-toy` (ships with audiobench)"),
        reference_mAP=mAP, reference="audiobench toy model (no upstream)", has_embedding=True,
    )


TOY_CNN_SPEC = _spec("toy-cnn", "cnn", "tiny CNN trained on the embedded toy set (offline default)", None)
TOY_TRANSFORMER_SPEC = _spec("toy-transformer", "transformer", "tiny Transformer trained on the embedded toy set (offline default)", None)

register_model(TOY_CNN_SPEC, lambda spec, sample_rate=None: ToyTagger(spec, ToyCNNNet(spec.n_classes), sample_rate))
register_model(TOY_TRANSFORMER_SPEC, lambda spec, sample_rate=None: ToyTagger(spec, ToyTransformerNet(spec.n_classes), sample_rate))
