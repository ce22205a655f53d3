"""PANNs CNN14 / CNN10 / CNN6 (Kong et al., 2020), wrapped to the audiobench contract.

Reference: Q. Kong, Y. Cao, T. Iqbal, Y. Wang, W. Wang, M. D. Plumbley, "PANNs: Large-Scale
Pretrained Audio Neural Networks for Audio Pattern Recognition", IEEE/ACM TASLP 2020
(arXiv:1912.10211); code qiuqiangkong/audioset_tagging_cnn ``pytorch/models.py`` (MIT), whose
front end is torchlibrosa's ``Spectrogram`` + ``LogmelFilterBank``.

Front end (identical for the three models, read from upstream ``pytorch/models.py`` and
torchlibrosa ``stft.py``): 32 kHz mono; STFT as two ``Conv1d`` (real / imaginary DFT rows times a
periodic Hann window), n_fft = window = 1024, hop 320, ``center=True`` with reflect padding; power
spectrum ``re**2 + im**2``; ``(power @ melW)`` with librosa's Slaney mel filters (64 bins, 50 Hz ..
14 kHz); ``10 * log10(clamp(mel, 1e-10))`` (ref 1.0, amin 1e-10, no top_db); ``bn0`` = BatchNorm
over the 64 mel bins. The checkpoint stores the STFT kernels and the mel matrix
(``spectrogram_extractor.stft.conv_real.weight``, ``...conv_imag.weight``,
``logmel_extractor.melW``): they are loaded and used exactly as stored.

The reference network returns ``sigmoid(fc_audioset(x))``; the wrapper returns the pre-sigmoid
``fc_audioset(x)`` values (logits). The embedding is the reference ``embedding`` output:
``relu(fc1(pooled))`` (2048-d for CNN14, 512-d for CNN10 / CNN6), i.e. the input of
``fc_audioset``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audiobench.models import register_model
from audiobench.models.base import AudioTagger, ModelSpec, WeightsSpec
from audiobench.models.frontends import WaveformResampler

# -- front end ---------------------------------------------------------------------------------


def _hann_dft_kernels(n_fft: int):
    """Real / imaginary DFT rows (0..n_fft/2) times a periodic Hann window, as torchlibrosa builds."""
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)  # scipy/librosa 'hann', fftbins=True
    k = np.arange(n_fft // 2 + 1)
    # torchlibrosa: W = exp(-2j*pi*n*k/N); kernel[k, n] = W[n, k] * window[n]
    angle = -2.0 * np.pi * np.outer(k, n) / n_fft
    real = (np.cos(angle) * window[None, :]).astype(np.float32)
    imag = (np.sin(angle) * window[None, :]).astype(np.float32)
    return torch.from_numpy(real)[:, None, :], torch.from_numpy(imag)[:, None, :]


class _STFT(nn.Module):
    """torchlibrosa ``STFT`` layout: ``conv_real`` / ``conv_imag`` Conv1d(1, n_fft//2+1, n_fft)."""

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        n_bins = n_fft // 2 + 1
        self.conv_real = nn.Conv1d(1, n_bins, n_fft, stride=hop_length, bias=False)
        self.conv_imag = nn.Conv1d(1, n_bins, n_fft, stride=hop_length, bias=False)
        real, imag = _hann_dft_kernels(n_fft)
        with torch.no_grad():
            self.conv_real.weight.copy_(real)
            self.conv_imag.weight.copy_(imag)
        for p in self.parameters():  # fixed, as upstream's freeze_parameters=True
            p.requires_grad_(False)

    def forward(self, waveform: torch.Tensor):
        x = waveform[:, None, :]
        # center=True, pad_mode='reflect' (needs more than n_fft // 2 samples)
        x = F.pad(x, (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        return self.conv_real(x), self.conv_imag(x)  # (batch, bins, frames) each


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.stft = _STFT(n_fft, hop_length)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        real, imag = self.stft(waveform)
        power = real**2 + imag**2  # (batch, bins, frames)
        return power.transpose(1, 2)[:, None]  # (batch, 1, frames, bins)


class _LogmelFilterBank(nn.Module):
    def __init__(self, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, amin: float = 1e-10):
        super().__init__()
        import librosa

        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).T
        # a Parameter (not a buffer) so the key and the state_dict entry match upstream's ``melW``
        self.melW = nn.Parameter(torch.tensor(mel, dtype=torch.float32), requires_grad=False)
        self.amin = amin

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(power, self.melW)
        # power_to_db with ref=1.0, top_db=None: the ref term is 10*log10(1) = 0
        return 10.0 * torch.log10(torch.clamp(mel, min=self.amin))


# -- networks (upstream module names, so checkpoints load unchanged) ----------------------------


class _ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU, then 2-D pooling (upstream ``ConvBlock``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x, pool_size=(2, 2)):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool_size)


class _ConvBlock5x5(nn.Module):
    """One 5x5 conv + BN + ReLU, then 2-D pooling (upstream ``ConvBlock5x5``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)

    def forward(self, x, pool_size=(2, 2)):
        x = F.relu(self.bn1(self.conv1(x)))
        return F.avg_pool2d(x, kernel_size=pool_size)


class PannsNet(nn.Module):
    """Upstream ``Cnn14`` / ``Cnn10`` / ``Cnn6`` with identical parameter and buffer names.

    ``channels`` lists the output channels of ``conv_block1..N``; the last block of CNN14 pools
    with (1, 1), every other block with (2, 2), as upstream. Dropout and SpecAugment only act in
    training upstream; this module is for inference/attacks so they are omitted (no parameters).
    """

    def __init__(self, block: str, channels, sample_rate=32000, n_fft=1024, hop=320, n_mels=64,
                 fmin=50.0, fmax=14000.0, n_classes=527):
        super().__init__()
        self.spectrogram_extractor = _Spectrogram(n_fft, hop)
        self.logmel_extractor = _LogmelFilterBank(sample_rate, n_fft, n_mels, fmin, fmax)
        self.bn0 = nn.BatchNorm2d(n_mels)
        Block = {"conv3x3x2": _ConvBlock, "conv5x5": _ConvBlock5x5}[block]
        cin = 1
        self.n_blocks = len(channels)
        for i, cout in enumerate(channels):
            setattr(self, f"conv_block{i + 1}", Block(cin, cout))
            cin = cout
        self.fc1 = nn.Linear(cin, cin, bias=True)
        self.fc_audioset = nn.Linear(cin, n_classes, bias=True)
        # upstream pools (1, 1) after the 6th block of CNN14 only
        self.pool_sizes = [(2, 2)] * min(self.n_blocks, 5) + [(1, 1)] * max(0, self.n_blocks - 5)

    def logmel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, samples) → bn0-normalised log-mel (batch, 1, frames, mel)."""
        x = self.logmel_extractor(self.spectrogram_extractor(waveform))
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # BatchNorm over mel bins
        return x

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_blocks):
            x = getattr(self, f"conv_block{i + 1}")(x, pool_size=self.pool_sizes[i])
        x = torch.mean(x, dim=3)  # over frequency
        x = torch.amax(x, dim=2) + torch.mean(x, dim=2)  # max + mean over time
        return F.relu(self.fc1(x))


class PannsTagger(AudioTagger):
    """A PANNs CNN (see module docstring) mapping a waveform to AudioSet logits (batch, 527).

    ``features`` = resampler (if any) → STFT → mel → 10·log10 → bn0, shape (batch, 1, frames, 64);
    ``forward_features`` → ``fc_audioset`` pre-sigmoid values. ``embed_features`` → the reference
    ``embedding`` (relu(fc1), input of ``fc_audioset``); ``head`` = ``fc_audioset``.
    """

    def __init__(self, spec: ModelSpec, block: str, channels, sample_rate: Optional[int] = None):
        super().__init__(spec, sample_rate)
        fe = spec.frontend
        self.resampler = WaveformResampler(self.sample_rate, spec.sample_rate)
        self.net = PannsNet(block, channels, sample_rate=spec.sample_rate, n_fft=fe["n_fft"], hop=fe["hop_samples"],
                            n_mels=fe["n_mels"], fmin=fe["fmin_hz"], fmax=fe["fmax_hz"], n_classes=spec.n_classes)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.net.logmel(self.resampler(waveform))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.embedding(features)

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net.fc_audioset(embedding)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed_features(features))


# -- specs -------------------------------------------------------------------------------------

_FRONTEND = {
    "type": "torchlibrosa logmel (conv1d STFT)",
    "n_fft": 1024,
    "win_samples": 1024,
    "window": "hann (periodic)",
    "hop_samples": 320,
    "center": True,
    "pad_mode": "reflect",
    "n_mels": 64,
    "fmin_hz": 50.0,
    "fmax_hz": 14000.0,
    "mel": "librosa slaney",
    "log": "10*log10(clamp(mel_power, 1e-10)); ref 1.0; top_db None",
    "normalisation": "bn0: BatchNorm2d over the 64 mel bins, running stats from the checkpoint",
}
_ZENODO = "https://zenodo.org/record/3987831/files/{}?download=1"
_LICENCE = "CC-BY-4.0 (Zenodo record 3987831); code MIT"
_REFERENCE = ("Kong et al., PANNs, IEEE/ACM TASLP 2020 (arXiv:1912.10211); "
              "github.com/qiuqiangkong/audioset_tagging_cnn pytorch/models.py")

# Zenodo publishes md5 only. md5 (Zenodo record 3987831, as listed by Labbeti/dcase2022task6a):
#   Cnn14_mAP=0.431.pth 541141fa2ee191a88f24a3219fff024e
#   Cnn10_mAP=0.380.pth bfb1f1f9968938fa8ef4012b8471f5f6
#   Cnn6_mAP=0.343.pth  e25e26b84585b14c7754c91e48efc9be
# The one sha256 found (Cnn10, pinned and checked by a third-party build script) is recorded; the
# others are left None rather than guessed.
_MODELS = [
    # name, upstream class, block, channels, file, sha256, mAP, params (M, paper)
    ("cnn14", "Cnn14", "conv3x3x2", (64, 128, 256, 512, 1024, 2048), "Cnn14_mAP=0.431.pth", None, 0.431, 80.8),
    ("cnn10", "Cnn10", "conv3x3x2", (64, 128, 256, 512), "Cnn10_mAP=0.380.pth",
     "5240bdc47444e331bbeb54fd741d2b3f933a4526e84b0c17bf3593df94b13962", 0.380, 5.2),
    ("cnn6", "Cnn6", "conv5x5", (64, 128, 256, 512), "Cnn6_mAP=0.343.pth", None, 0.343, 4.8),
]


def _factory(block, channels):
    def make(spec: ModelSpec, sample_rate: Optional[int] = None) -> PannsTagger:
        return PannsTagger(spec, block, channels, sample_rate=sample_rate)

    return make


for _name, _cls, _block, _channels, _file, _sha, _map, _params in _MODELS:
    register_model(
        ModelSpec(
            name=_name,
            family="cnn",
            description=(f"PANNs {_cls} ({_params}M params), 32 kHz log-mel CNN trained on full AudioSet; "
                         f"logits = pre-sigmoid fc_audioset; embedding = relu(fc1) ({_channels[-1]}-d)"),
            sample_rate=32000,
            frontend=dict(_FRONTEND),
            normalisation={},  # learnt: bn0 inside the network (see frontend["normalisation"])
            weights=WeightsSpec(
                file_name=_file,
                url=_ZENODO.format(_file.replace("=", "%3D")),
                sha256=_sha,
                licence=_LICENCE,
                source=f"Zenodo record 3987831 (PANNs), {{'model': state_dict}} of upstream class {_cls}",
            ),
            reference_mAP=_map,
            reference=_REFERENCE,
            has_embedding=True,
        ),
        _factory(_block, _channels),
    )
