"""EfficientAT MobileNetV3 ("mn") AudioSet taggers, loading the upstream state_dict unchanged.

Reference: F. Schmid, K. Koutini, G. Widmer, "Efficient Large-Scale Audio Tagging via
Transformer-to-CNN Knowledge Distillation", ICASSP 2023 (arXiv:2211.04772); code
https://github.com/fschmid56/EfficientAT (``models/mn/model.py``, ``models/mn/block_types.py``,
``models/mn/utils.py``, ``models/preprocess.py``), MIT licence.

What is reproduced (eval mode of upstream's ``AugmentMelSTFT`` + ``get_model(head_type="mlp")``):

* front end (32 kHz mono): pre-emphasis ``y[n] = x[n+1] - 0.97 x[n]`` (a valid 2-tap convolution,
  so one sample shorter); ``torch.stft`` with n_fft 1024, win_length 800, hop 320, center=True,
  reflect padding, a *symmetric* Hann window (``periodic=False``) zero-padded to 1024; power
  spectrum; 128 Kaldi-style triangular mel filters from
  ``torchaudio.compliance.kaldi.get_mel_banks(128, 1024, 32000, fmin=0, fmax=15000)`` (upstream's
  ``fmax=None`` becomes ``sr // 2 - fmax_aug_range // 2`` = 16000 - 1000 Hz; the mel-edge
  augmentation is off in eval) with a zero column for the Nyquist bin; ``log(mel + 1e-5)``;
  ``(x + 4.5) / 5``. SpecAugment masking is training-only upstream and is not applied here.
  Pre-emphasis, STFT and power go through :func:`audiobench.models.frontends.stft_power`: the same
  ``torch.stft`` forward, with a hand-written backward (about 2x faster, same gradient to rounding).
* network: MobileNetV3-Large block table scaled by ``width_mult`` (channels rounded to multiples
  of 8), BatchNorm eps 1e-3, channel-wise squeeze-excitation (``se_dims="c"``, reduction 4, the
  bottleneck rounded to a multiple of 8), a 1x1 conv to 6x the last block's channels, then the
  "mlp" head: global average pool → Linear → Hardswish → Dropout(0.2) → Linear(527).
  Module names match upstream exactly (``features.<i>.block.<j>...``, ``classifier.2/5``), so the
  released ``.pt`` files load with a strict ``load_state_dict``.

Registered: ``efficientat-mn01`` ... ``-mn40`` (upstream ``mnXX_as``) and ``efficientat-mn40-as-ext``
(upstream ``mn40_as_ext``: the mn40 network after extended training, asset ``mn40_as_ext_mAP_487.pt``).
The dynamic MobileNets (DyMN) reuse this wrapper with another network: :mod:`audiobench.models.dymn`.

Embedding (``spec.has_embedding``): the 'last_channel'-wide vector after ``classifier.2`` +
Hardswish (512-d for mn04, 1280-d for mn10), i.e. the input of the classifier's final Linear
``classifier.5``; :meth:`EfficientATTagger.head` is that Linear.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from audiobench.models import register_model
from audiobench.models.base import AudioTagger, ModelSpec, WeightsSpec
from audiobench.models.frontends import WaveformResampler, stft_power

RELEASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
LICENCE = "MIT (fschmid56/EfficientAT)"
N_CLASSES = 527

# MobileNetV3-Large bneck table (torchvision / upstream ``_mobilenet_v3_conf``) before width scaling:
# (input_channels, kernel, expanded_channels, out_channels, use_se, activation, stride)
BNECK_TABLE: Tuple[Tuple[int, int, int, int, bool, str, int], ...] = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10 % below ``v``
    (the TensorFlow MobileNet rule, as upstream)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding) → BatchNorm2d(eps 1e-3) → optional activation.

    Children are numbered 0/1/2 like torchvision's ``ConvNormActivation`` so upstream keys match.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: Optional[type] = None):
        layers: List[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=0.001, momentum=0.01),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel squeeze-excitation: mean over (freq, time) → fc1 → ReLU → fc2 → sigmoid → scale."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class ConcurrentSE(nn.Module):
    """Upstream's ``ConcurrentSEBlock`` with ``se_dims="c"``: a single channel SE layer (the
    max-aggregation over one layer is the identity). Kept as a container for the key names."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels, make_divisible(channels // reduction, 8))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: [1x1 expand] → depthwise kxk → [SE] → 1x1 project (+ identity skip)."""

    def __init__(self, cin: int, kernel: int, cexp: int, cout: int, use_se: bool, hs: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: List[nn.Module] = []
        if cexp != cin:
            layers.append(ConvBNAct(cin, cexp, 1, activation=act))
        layers.append(ConvBNAct(cexp, cexp, kernel, stride=stride, groups=cexp, activation=act))
        if use_se:
            layers.append(ConcurrentSE(cexp))
        layers.append(ConvBNAct(cexp, cout, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3AT(nn.Module):
    """EfficientAT "mn" network: (batch, 1, 128, frames) normalised log-mel → logits (batch, 527)."""

    def __init__(self, width_mult: float, n_classes: int = N_CLASSES, dropout: float = 0.2):
        super().__init__()
        adj = lambda c: make_divisible(c * width_mult, 8)  # noqa: E731
        cfg = [(adj(i), k, adj(e), adj(o), se, act == "HS", s) for i, k, e, o, se, act, s in BNECK_TABLE]
        layers: List[nn.Module] = [ConvBNAct(1, cfg[0][0], 3, stride=2, activation=nn.Hardswish)]
        layers += [InvertedResidual(*c) for c in cfg]
        last_in = cfg[-1][3]
        last_conv = 6 * last_in
        layers.append(ConvBNAct(last_in, last_conv, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.last_channel = adj(1280)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(start_dim=1),
            nn.Linear(last_conv, self.last_channel),
            nn.Hardswish(),
            nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, n_classes),
        )
        # upstream initialisation (only matters for weights="random")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features through classifier.2 + Hardswish (+ Dropout): (batch, last_channel)."""
        x = self.features(x)
        for layer in list(self.classifier)[:5]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class EfficientATMel(nn.Module):
    """Upstream ``AugmentMelSTFT`` in eval mode, batched: (batch, samples) at 32 kHz →
    (batch, 1, n_mels, frames) normalised log-mel. Buffers are derived, not learnt (non-persistent)."""

    def __init__(self, sample_rate: int = 32000, n_fft: int = 1024, win_length: int = 800, hop: int = 320,
                 n_mels: int = 128, fmin: float = 0.0, fmax: float = 15000.0, preemphasis: float = 0.97):
        super().__init__()
        from torchaudio.compliance.kaldi import get_mel_banks

        self.n_fft, self.win_length, self.hop, self.preemphasis = n_fft, win_length, hop, preemphasis
        self.fused_backward = True  # False: autograd through torch.stft (the reference gradient)
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        mel, _ = get_mel_banks(n_mels, n_fft, float(sample_rate), float(fmin), float(fmax), 100.0, -500.0, 1.0)
        # get_mel_banks covers the n_fft // 2 bins below Nyquist; the Nyquist bin gets weight 0
        self.register_buffer("mel_basis", F.pad(mel, (0, 1)), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # pre-emphasis + torch.stft + |.|^2 as (batch, frames, bins), with a hand-written backward
        power = stft_power(waveform, self.n_fft, self.hop, self.window, self.win_length,
                           preemphasis=self.preemphasis, fused_backward=self.fused_backward)
        mel = torch.matmul(power, self.mel_basis.t()).transpose(1, 2)  # (batch, n_mels, frames)
        return ((torch.log(mel + 1e-5) + 4.5) / 5.0).unsqueeze(1)


class EfficientATTagger(AudioTagger):
    """EfficientAT MobileNetV3 tagger: waveform (batch, samples) at ``sample_rate`` → logits (batch, 527).

    Resampling to 32 kHz (torchaudio sinc, defaults), the log-mel front end and the network all run
    inside ``forward``, batched and differentiable. ``self.net`` holds exactly upstream's modules.
    """

    def __init__(self, spec: ModelSpec, sample_rate: Optional[int] = None, net: Optional[nn.Module] = None):
        super().__init__(spec, sample_rate)
        fe = spec.frontend
        self.resampler = WaveformResampler(self.sample_rate, spec.sample_rate)
        self.frontend = EfficientATMel(spec.sample_rate, fe["n_fft"], fe["win_length"], fe["hop_length"],
                                       fe["n_mels"], fe["fmin_hz"], fe["fmax_hz"], fe["preemphasis"])
        # ``net``: another EfficientAT network with the same interface (``embed``, ``classifier[5]``),
        # e.g. a DyMN (audiobench.models.dymn); default: the MobileNetV3 of ``fe["width_mult"]``
        self.net = net if net is not None else MobileNetV3AT(fe["width_mult"], spec.n_classes)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"{self.spec.name}: expected a waveform batch (batch, samples), got shape "
                             f"{tuple(waveform.shape)}")
        return self.frontend(self.resampler(waveform))

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.embed(features)

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net.classifier[5](embedding)


# name, width, release asset, upstream mAP, sha256 (known only for the file in ../shared)
_RELEASES = (
    ("mn01", 0.1, "mn01_as_mAP_298.pt", 0.298, None),
    ("mn02", 0.2, "mn02_as_mAP_378.pt", 0.378, None),
    ("mn04", 0.4, "mn04_as_mAP_432.pt", 0.432, "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"),
    ("mn05", 0.5, "mn05_as_mAP_443.pt", 0.443, None),
    ("mn10", 1.0, "mn10_as_mAP_471.pt", 0.471, None),
    ("mn20", 2.0, "mn20_as_mAP_478.pt", 0.478, None),
    ("mn30", 3.0, "mn30_as_mAP_482.pt", 0.482, None),
    ("mn40", 4.0, "mn40_as_mAP_484.pt", 0.484, None),
    # upstream "mn40_as_ext": the same mn40 network after extended training (300 epochs), README mAP 48.7;
    # the release also holds mn40_as_ext(2)/(3) (mAP_486, mAP_485), ensemble members not registered here
    ("mn40-as-ext", 4.0, "mn40_as_ext_mAP_487.pt", 0.487, None),
)
# a release asset whose sha256 audiobench does not know: weights.download_file warns with the one it got
_UNPINNED = "; sha256 not pinned (unknown to audiobench): a download warns and reports the sha256 it got"
_NOTES = {"mn40-as-ext": ", extended training (300 epochs)"}


def efficientat_frontend(width_mult: float) -> dict:
    """The ``spec.frontend`` of an EfficientAT AudioSet model (``AugmentMelSTFT`` defaults, eval mode)."""
    return {
        "kind": "efficientat-mel", "preemphasis": 0.97, "n_fft": 1024, "win_length": 800,
        "window": "hann-symmetric", "hop_length": 320, "center": True, "n_mels": 128,
        "mel_scale": "kaldi", "fmin_hz": 0.0, "fmax_hz": 15000.0, "log_offset": 1e-5,
        "width_mult": width_mult, "head": "mlp",
    }


def _factory(spec: ModelSpec, sample_rate: Optional[int] = None) -> EfficientATTagger:
    return EfficientATTagger(spec, sample_rate=sample_rate)


def _register() -> None:
    for short, width, asset, mAP, sha in _RELEASES:
        spec = ModelSpec(
            name=f"efficientat-{short}",
            family="cnn",
            description=(f"EfficientAT MobileNetV3 width {width}, MLP head, 32 kHz, 128 mel (KD from PaSST)"
                         f"{_NOTES.get(short, '')}"),
            sample_rate=32000,
            frontend=efficientat_frontend(width),
            normalisation={"shift": 4.5, "scale": 5.0},  # (log_mel + shift) / scale
            weights=WeightsSpec(
                # cached as efficientat_<asset> (the name ../shared uses); downloaded from <asset>
                file_name=f"efficientat_{asset}",
                url=RELEASE_URL + asset,
                sha256=sha,
                licence=LICENCE,
                source="GitHub release fschmid56/EfficientAT v0.0.1" + ("" if sha else _UNPINNED),
            ),
            reference_mAP=mAP,
            reference="Schmid et al., ICASSP 2023, arXiv:2211.04772; github.com/fschmid56/EfficientAT",
            has_embedding=True,
        )
        register_model(spec, _factory)


_register()
