"""PSLA's CNN + attention taggers: ``psla-effnet`` (EfficientNet-B2, 4-head attention) and
``resnet-attention`` (ResNet-50, single-head attention).

Reference: Y. Gong, Y.-A. Chung, J. Glass, "PSLA: Improving Audio Tagging with Pretraining,
Sampling, Labeling, and Aggregation", IEEE/ACM TASLP 29, 2021 (arXiv:2102.01243); code
github.com/YuanGongND/psla (BSD-3-Clause): ``src/models/Models.py`` (``EffNetAttention``,
``ResNetAttention``), ``src/models/HigherModels.py`` (``Attention``, ``MHeadAttention``),
``src/dataloaders/audioset_dataset.py`` (front end), ``egs/audioset/run.sh`` (AudioSet recipe:
``eff_b=2``, ``att_head=4``, mean -4.6476, std 4.5699, 1056 frames), ``src/traintest.py``
(checkpoints). The "AudioTagging Done Right" study (lijuncheng16/AudioTaggingDoneRight,
``src/models/pslaModels.py``) reuses these classes; its recipes differ (see docs/architectures.md).

Front end (the dataloader's eval path), 16 kHz input:
  1. remove the clip's mean (``waveform - waveform.mean()``, per clip);
  2. ``torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False, window_type='hanning',
     num_mel_bins=128, dither=0.0, frame_shift=10)``: 25 ms Hann frames every 10 ms,
     pre-emphasis 0.97, per-frame DC removal, 512-point FFT, 128 Kaldi mel bins 20 Hz - 8 kHz,
     ``log(max(x, float32 eps))`` (batched here by :class:`~audiobench.models.kaldi.KaldiFbank`);
  3. (frames, 128), cut or zero-padded (log-mel 0.0 appended, before normalisation) to 1056
     frames (10.56 s);
  4. ``(x - (-4.6476)) / 4.5699`` (one standard deviation, unlike AST's two).

Networks, input (batch, 1056 frames, 128 mel) turned into an image (batch, 1, 128 mel, 1056):

* ``psla-effnet`` (``EffNetAttention(b=2, head_num=4)``): the ``efficientnet_pytorch``
  EfficientNet-B2 built by ``EfficientNet.from_name('efficientnet-b2', in_channels=1)`` (TF "same"
  padding computed statically for 260x260 images, exactly as upstream: the package is the
  upstream code), ``extract_features`` → (batch, 1408, 4, 33) → ``AvgPool2d((4, 1))`` over
  frequency → ``MHeadAttention``: 4 heads, each a 1x1-conv attention (sigmoid, clamped to
  [1e-7, 1 - 1e-7], normalised over time) and a 1x1-conv classifier (sigmoid); the clip output is
  the learnt ``head_weight``-weighted sum of the heads' attention-pooled probabilities.
  ``MHeadAttention``'s own default of 4 heads is what upstream uses: ``EffNetAttention`` only
  chooses the multi-head class when ``head_num > 1`` and does not pass the count on.
  The swish is ``torch.nn.SiLU`` (``set_swish(memory_efficient=False)``): the same function as
  upstream's memory-efficient swish, with a built-in (and twice-differentiable) backward.
* ``resnet-attention`` (``ResNetAttention``): torchvision's ResNet-50 (Bottleneck v1.5: the
  stride on the 3x3 conv; BatchNorm eps 1e-5), ``conv1`` replaced by a 1-channel 7x7/2 conv,
  ``avgpool`` and ``fc`` removed → (batch, 2048, 4, 33) (upstream flattens and reshapes to
  exactly this) → ``AvgPool2d((4, 1))`` → single-head ``Attention`` (sigmoid / sigmoid).
  The ResNet is written out here with torchvision's module names (torchvision is not a
  dependency of audiobench), so upstream's keys load unchanged.

What "logit" means here: upstream returns the pooled probability p (trained with ``BCELoss`` on
it). The wrapper returns ``log(p) - log(1 - p)`` with p clamped to [1e-7, 1 - 1e-7] (logits
within ±16.1), so ``sigmoid(logits)`` is upstream's output. Since p is a weighted mean of
per-frame probabilities, these logits are not a linear function of any layer.

Embedding: the classifier is applied per time step and pooled afterwards, so there is no pooled
representation before a linear classifier; ``spec.has_embedding`` is False. ``embed`` still
returns the frequency-pooled feature sequence feeding the attention head, flattened to
(batch, channels x 33), and ``head`` applies the attention head to it
(``head(embed(x)) == forward(x)``).

Checkpoints: ``traintest.py`` saves ``nn.DataParallel(model).state_dict()`` (keys prefixed
``module.``): ``effnet._conv_stem.weight``, ``effnet._blocks.<i>._depthwise_conv.weight``, ...,
``attention.att.<h>.weight``, ``attention.cla.<h>.weight``, ``attention.head_weight`` for
``psla-effnet``; ``model.conv1.weight``, ``model.layer3.5.conv2.weight``, ...,
``attention.att.weight``, ``attention.cla.weight`` for ``resnet-attention``. Prefixed and
unprefixed files load strictly. Some published PSLA files still hold the unused ImageNet
classifier ``effnet._fc.weight/bias``; upstream's ``src/ensemble/ensemble.py`` deletes those two
keys before its strict load, and so does :meth:`PslaTagger.load_checkpoint` (only those two).
"""

from __future__ import annotations

from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from audiobench.errors import ConfigError
from audiobench.models import register_model
from audiobench.models.base import AudioTagger, ModelSpec, WeightsSpec
from audiobench.models.frontends import WaveformResampler
from audiobench.models.kaldi import KaldiFbank

P_MIN = 1e-7  # upstream's attention clamp, reused for the pooled probability before the logit
# channels of EfficientNet-B0..B7's last feature map (upstream EffNetAttention.middim)
EFFNET_MIDDIM = (1280, 1280, 1408, 1536, 1792, 2048, 2304, 2560)


def probability_to_logit(p: torch.Tensor) -> torch.Tensor:
    """``log(p) - log(1 - p)`` of a probability clamped to [P_MIN, 1 - P_MIN]."""
    p = torch.clamp(p, P_MIN, 1 - P_MIN)
    return torch.log(p) - torch.log1p(-p)


# -- front end ---------------------------------------------------------------------------------
class PslaFrontEnd(nn.Module):
    """Batched copy of PSLA's eval front end: (batch, samples) at 16 kHz → (batch, 1056, 128)."""

    def __init__(self, fe: dict, mean: float, std: float):
        super().__init__()
        self.fbank = KaldiFbank.from_front_end(fe, fe["sample_rate_hz"])
        self.n_frames = int(fe["target_frames"])
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = waveform - waveform.mean(dim=1, keepdim=True)
        if x.shape[-1] < self.fbank.window_size:
            # shorter than one 25 ms frame (where Kaldi gives no frame at all): zero-pad to one
            x = F.pad(x, (0, self.fbank.window_size - x.shape[-1]))
        fb = self.fbank(x)  # (batch, frames, mel)
        pad = self.n_frames - fb.shape[1]
        fb = F.pad(fb, (0, 0, 0, pad)) if pad > 0 else fb[:, : self.n_frames]
        return (fb - self.mean) / self.std


# -- attention heads (upstream HigherModels.py, sigmoid attention and classifier) ---------------
def _pool_one_head(att_conv: nn.Conv2d, cla_conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """x (batch, channels, time, 1) → attention-pooled class probability (batch, classes)."""
    att = torch.sigmoid(att_conv(x))[:, :, :, 0]  # (batch, classes, time)
    cla = torch.sigmoid(cla_conv(x))[:, :, :, 0]
    att = torch.clamp(att, P_MIN, 1.0 - P_MIN)
    norm_att = att / att.sum(dim=2, keepdim=True)
    return (norm_att * cla).sum(dim=2)


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel_size=1, bias=True)
    # upstream init_layer: uniform(-sqrt(6 / fan_in), +sqrt(6 / fan_in)), zero bias
    bound = (6.0 / cin) ** 0.5
    nn.init.uniform_(conv.weight, -bound, bound)
    nn.init.zeros_(conv.bias)
    return conv


class Attention(nn.Module):
    """Upstream ``Attention`` (single head): keys ``att.weight/bias``, ``cla.weight/bias``."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.att = _conv1x1(n_in, n_out)
        self.cla = _conv1x1(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pool_one_head(self.att, self.cla, x)


class MHeadAttention(nn.Module):
    """Upstream ``MHeadAttention``: ``att.<h>``, ``cla.<h>`` 1x1 convs and ``head_weight`` (init 1/heads)."""

    def __init__(self, n_in: int, n_out: int, head_num: int = 4):
        super().__init__()
        # upstream builds these with nn.Conv2d's default initialisation (no init_layer)
        self.att = nn.ModuleList([nn.Conv2d(n_in, n_out, kernel_size=1, bias=True) for _ in range(head_num)])
        self.cla = nn.ModuleList([nn.Conv2d(n_in, n_out, kernel_size=1, bias=True) for _ in range(head_num)])
        self.head_weight = nn.Parameter(torch.full((head_num,), 1.0 / head_num))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = [_pool_one_head(a, c, x) * self.head_weight[i] for i, (a, c) in enumerate(zip(self.att, self.cla))]
        return torch.stack(heads, dim=0).sum(dim=0)


# -- networks ----------------------------------------------------------------------------------
def _as_image(x: torch.Tensor) -> torch.Tensor:
    """(batch, time, freq) → (batch, 1, freq, time), upstream's ``unsqueeze(1).transpose(2, 3)``."""
    return x.unsqueeze(1).transpose(2, 3)


class EffNetAttentionNet(nn.Module):
    """Upstream ``EffNetAttention`` (``pretrain=False``) with ``head_num > 1``: module names as upstream."""

    def __init__(self, b: int = 2, n_classes: int = 527, head_num: int = 4):
        super().__init__()
        try:
            from efficientnet_pytorch import EfficientNet
        except ModuleNotFoundError:
            raise ConfigError("model psla-effnet needs the package efficientnet_pytorch "
                              "(pip install 'efficientnet_pytorch>=0.7,<0.8')") from None
        if head_num < 2:
            raise ValueError("EffNetAttentionNet reproduces the multi-head configuration (head_num >= 2)")
        self.effnet = EfficientNet.from_name(f"efficientnet-b{b}", in_channels=1)
        self.effnet.set_swish(memory_efficient=False)  # nn.SiLU: same values, autograd backward
        self.effnet._fc = nn.Identity()  # upstream removes the ImageNet classifier
        # MHeadAttention's own default head count (4), as upstream (see module docstring)
        self.attention = MHeadAttention(EFFNET_MIDDIM[b], n_classes, head_num=4)
        self.avgpool = nn.AvgPool2d((4, 1))

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, frames, mel) → frequency-pooled features (batch, channels, time, 1)."""
        x = self.effnet.extract_features(_as_image(x))
        return self.avgpool(x).transpose(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.sequence(x))


class Bottleneck(nn.Module):
    """torchvision's ResNet ``Bottleneck`` (expansion 4, stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet50Trunk(nn.Module):
    """torchvision ``resnet50()`` with a 1-channel ``conv1`` and without ``avgpool``/``fc``
    (both are ``Identity`` upstream, so they hold no keys): (batch, 1, H, W) → (batch, 2048, H/32, W/32)."""

    def __init__(self, in_channels: int = 1, layers=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = 64
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        # torchvision's initialisation (only matters for weights="random")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        out: List[nn.Module] = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        out += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNetAttentionNet(nn.Module):
    """Upstream ``ResNetAttention`` (module names as upstream: ``model.*``, ``attention.*``)."""

    def __init__(self, n_classes: int = 527):
        super().__init__()
        self.model = ResNet50Trunk(in_channels=1)
        self.attention = Attention(2048, n_classes)
        self.avgpool = nn.AvgPool2d((4, 1))

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        # upstream flattens the (batch, 2048, 4, 33) map (fc = Identity) and reshapes it back to
        # [batch, 2048, 4, 33]; keeping the map is the same tensor
        x = self.model(_as_image(x))
        return self.avgpool(x).transpose(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.sequence(x))


# -- the wrapper -------------------------------------------------------------------------------
class PslaTagger(AudioTagger):
    """PSLA CNN + attention tagger: waveform (batch, samples) → logits (batch, 527).

    ``features``: resampler (if any) → Kaldi fbank front end → (batch, 1056, 128) normalised;
    ``forward_features``: the upstream network's pooled probability, returned as its logit;
    ``embed_features``: the frequency-pooled feature sequence (batch, channels x time) that feeds
    the attention head; ``head``: the attention head on it, as a logit.
    """

    def __init__(self, spec: ModelSpec, net: nn.Module, sample_rate: Optional[int] = None):
        super().__init__(spec, sample_rate)
        self.resampler = WaveformResampler(self.sample_rate, spec.sample_rate)
        self.frontend = PslaFrontEnd(spec.frontend, spec.normalisation["mean"], spec.normalisation["std"])
        self.net = net
        self.channels = net.attention.att[0].in_channels if isinstance(net.attention.att, nn.ModuleList) \
            else net.attention.att.in_channels

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"{self.spec.name}: expected a waveform batch (batch, samples), got shape "
                             f"{tuple(waveform.shape)}")
        return self.frontend(self.resampler(waveform))

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        return probability_to_logit(self.net(features))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.sequence(features).flatten(1)

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        seq = embedding.view(embedding.shape[0], self.channels, -1, 1)
        return probability_to_logit(self.net.attention(seq))

    def load_checkpoint(self, obj: Any, what: str = "checkpoint") -> None:
        """Load upstream's ``DataParallel(model).state_dict()`` (``module.`` prefix) or the same
        without the prefix, strictly; the unused ImageNet classifier ``effnet._fc.*`` that some
        PSLA files hold is dropped first, as upstream's ensemble script does."""
        from audiobench.models.checkpoints import strict_load, unwrap_state_dict

        sd = dict(unwrap_state_dict(obj))
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
        if isinstance(self.net, EffNetAttentionNet):
            for key in ("effnet._fc.weight", "effnet._fc.bias"):
                sd.pop(key, None)
        strict_load(self.net, sd, what)


# -- specs -------------------------------------------------------------------------------------
_FRONTEND = {
    "kind": "kaldi_fbank",
    "sample_rate_hz": 16000,
    "dc_removal": "per-clip mean subtracted, then Kaldi's per-frame DC removal",
    "num_mel_bins": 128,
    "frame_length_ms": 25.0,
    "frame_shift_ms": 10.0,
    "window_type": "hanning",
    "preemphasis_coefficient": 0.97,
    "remove_dc_offset": True,
    "dither": 0.0,
    "htk_compat": True,
    "use_energy": False,
    "low_freq_hz": 20.0,
    "high_freq_hz": 0.0,  # 0 = Nyquist (Kaldi convention)
    "fft_size": 512,
    "snip_edges": True,
    "log": "log(max(mel_power, float32 eps))",
    "target_frames": 1056,  # 10.56 s; zero-padded (0.0 before normalisation) or cut
}
_NORM = {"mean": -4.6476, "std": 4.5699}  # (x - mean) / std  (egs/audioset/run.sh)
_REFERENCE = ("Gong, Chung, Glass, PSLA: Improving Audio Tagging with Pretraining, Sampling, Labeling, and "
              "Aggregation, IEEE/ACM TASLP 2021 (arXiv:2102.01243); github.com/YuanGongND/psla src/models/Models.py; "
              "compared in Li et al., AudioTagging Done Right, Interspeech 2022 (arXiv:2203.13448)")
_LICENCE = "BSD-3-Clause (YuanGongND/psla; the README states no separate terms for the weights)"


def _effnet_factory(spec: ModelSpec, sample_rate: Optional[int] = None) -> PslaTagger:
    return PslaTagger(spec, EffNetAttentionNet(b=2, n_classes=spec.n_classes, head_num=4), sample_rate=sample_rate)


def _resnet_factory(spec: ModelSpec, sample_rate: Optional[int] = None) -> PslaTagger:
    return PslaTagger(spec, ResNetAttentionNet(n_classes=spec.n_classes), sample_rate=sample_rate)


register_model(
    ModelSpec(
        name="psla-effnet",
        family="cnn",
        description=("PSLA EfficientNet-B2 + 4-head attention pooling (13.6 M parameters), 16 kHz Kaldi fbank "
                     "128 mel x 1056 frames (10 ms), (x + 4.6476) / 4.5699; logits = logit of the pooled "
                     "probability; default weights: PSLA's single AudioSet model as_mdl_0.pth (Dropbox, "
                     "sha256 not pinned)"),
        sample_rate=16000,
        frontend=dict(_FRONTEND, network="efficientnet_pytorch EfficientNet-B2 (in_channels=1), middle features "
                                         "1408 x 4 x 33, AvgPool (4, 1), MHeadAttention 4 heads sigmoid/sigmoid"),
        normalisation=dict(_NORM),
        weights=WeightsSpec(
            file_name="psla_as_mdl_0.pth",
            url="https://www.dropbox.com/s/d1z27wj30ew5qrs/as_mdl_0.pth?dl=1",
            sha256=None,  # not known here: a download warns and reports the sha256 it got
            licence=_LICENCE,
            source=("YuanGongND/psla README 'Pretrained Models', single AudioSet model as_mdl_0.pth (eval mAP "
                    "0.440); nn.DataParallel state_dict; sha256 not pinned (unknown to audiobench)"),
        ),
        reference_mAP=0.440,
        reference=_REFERENCE + " (EffNetAttention b=2, head_num=4)",
        has_embedding=False,
    ),
    _effnet_factory,
)

register_model(
    ModelSpec(
        name="resnet-attention",
        family="cnn",
        description=("PSLA ResNet-50 + single-head attention pooling, 16 kHz Kaldi fbank 128 mel x 1056 frames "
                     "(10 ms), (x + 4.6476) / 4.5699; logits = logit of the pooled probability; no published "
                     "weights (train with YuanGongND/psla run.py --model resnet)"),
        sample_rate=16000,
        frontend=dict(_FRONTEND, network="ResNet-50 (torchvision layout, 1-channel conv1, no avgpool/fc), "
                                         "2048 x 4 x 33, AvgPool (4, 1), Attention sigmoid/sigmoid"),
        normalisation=dict(_NORM),
        weights=WeightsSpec(
            file_name="psla_resnet_attention.pth",
            url=None,
            sha256=None,
            licence="BSD-3-Clause (code)",
            source=("none published upstream: train with YuanGongND/psla src/run.py --model resnet (AudioSet "
                    "recipe egs/audioset/run.sh); nn.DataParallel state_dict from src/traintest.py"),
        ),
        reference_mAP=None,  # no checkpoint or single-model figure in the public code
        reference=_REFERENCE + " (ResNetAttention)",
        has_embedding=False,
    ),
    _resnet_factory,
)
