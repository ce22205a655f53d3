"""EfficientAT dynamic MobileNets (DyMN): ``efficientat-dymn04``, ``-dymn10``, ``-dymn20``.

Reference: F. Schmid, K. Koutini, G. Widmer, "Dynamic Convolutional Neural Networks as Efficient
Pre-trained Audio Models", IEEE/ACM TASLP 2024 (arXiv:2310.15648); code
https://github.com/fschmid56/EfficientAT (MIT): ``models/dymn/model.py`` (``DyMN``,
``_dymn_conf``, ``get_model``), ``models/dymn/dy_block.py`` (``DY_Block``, ``DynamicConv``,
``DyReLUB``, ``CoordAtt``, ``ContextGen``), ``models/dymn/utils.py``.

The front end, resampling, head and wrapper are the EfficientAT MobileNet ones
(:class:`~audiobench.models.efficientat.EfficientATTagger`: 32 kHz, 128 Kaldi-style mel bins,
``(log(mel + 1e-5) + 4.5) / 5``); only the network differs. What is reproduced
(``get_model(width_mult=w, pretrained_name="dymnXX_as")``, eval mode):

* the MobileNetV3-Large table of the mn models (channels scaled by ``width_mult``, multiples of
  8), every one of the 15 blocks a dynamic block (``use_dy_blocks="all"``), strides (2, 2, 2, 2),
  no dilation; ``in_c`` = 3x3/2 conv + BatchNorm(eps 1e-3) + Hardswish; ``out_c`` = 1x1 conv to 6x
  the last block's channels + BatchNorm + Hardswish; the "mlp" head (global average pool →
  Linear → Hardswish → Dropout(0.2) → Linear(527));
* ``DY_Block``: a context generator (``ContextGen``: frequency and time mean profiles of the
  block input, a shared 1x1 conv + BatchNorm + Hardswish to H = clip(make_divisible(expanded/4),
  make_divisible(32 w), make_divisible(128 w)) channels, then the mean context vector h_c and,
  after an average pool of stride s when the block strides, 1x1 convs to the expanded width for
  the frequency and time attention); a dynamic 1x1 expansion conv (absent when expanded == input
  channels); a dynamic depthwise kxk conv; BatchNorms; Dy-ReLU-B on the depthwise output
  (``max_m(a_m x + b_m)``, M = 2, coefficients ``2 sigmoid(Linear(h_c)) - 1`` scaled by
  lambdas (1, 1, 0.5, 0.5) plus (1, 0, 0, 0)); coordinate attention
  (``x * sigmoid(g_f) * sigmoid(g_t)``); a dynamic 1x1 projection; the identity skip when stride 1
  and in == out. Activations after the expansion: ReLU (blocks 1-6) or Hardswish (7-15);
* ``DynamicConv``: K = 4 kernels; per clip, softmax(Linear(h_c) / T) mixes them into one kernel
  (a grouped convolution over the batch, as upstream). T is the temperature at the end of
  AudioSet training: ``get_model`` sets ``T_max = pretrain_final_temp`` = 1.0 for a pre-trained
  model, and nothing changes it at inference, so T = 1.

Module and buffer names are upstream's (``in_c.0.weight``, ``layers.<i>.exp_conv.weight``,
``layers.<i>.exp_conv.residuals.0.weight``, ``layers.<i>.depth_act.coef_net.0.weight``,
``layers.<i>.depth_act.lambdas``, ``layers.<i>.context_gen.joint_conv.weight``, ``out_c.1.*``,
``classifier.2/5``), so the released ``.pt`` files load with a strict ``load_state_dict``.

Embedding (``spec.has_embedding``): as for the mn models, the output of ``classifier.2`` +
Hardswish, the input of the final Linear ``classifier.5``.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from audiobench.models import register_model
from audiobench.models.base import ModelSpec, WeightsSpec
from audiobench.models.efficientat import (
    BNECK_TABLE,
    LICENCE,
    N_CLASSES,
    RELEASE_URL,
    ConvBNAct,
    EfficientATTagger,
    efficientat_frontend,
    make_divisible,
)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=0.001, momentum=0.01)


class DynamicConv(nn.Module):
    """Upstream ``DynamicConv`` (att_groups 1, no bias): K kernels mixed per clip by attention.

    ``weight`` keeps upstream's (1, 1, K, out * in/groups * k * k) layout; ``residuals.0`` is the
    Linear(H → K) giving the attention logits.
    """

    def __init__(self, cin: int, cout: int, context_dim: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, k: int = 4, temperature: float = 1.0):
        super().__init__()
        self.cin, self.cout, self.kernel, self.groups, self.k = cin, cout, kernel, groups, k
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.temperature = float(temperature)
        self.residuals = nn.Sequential(nn.Linear(context_dim, k))
        weight = torch.empty(k, cout, cin // groups, kernel, kernel)
        for i in range(k):  # upstream: kaiming_normal_(fan_out) per kernel
            nn.init.kaiming_normal_(weight[i], mode="fan_out")
        self.weight = nn.Parameter(weight.reshape(1, 1, k, -1))

    def forward(self, x: torch.Tensor, h_c: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        attention = F.softmax(self.residuals(h_c.reshape(b, -1)) / self.temperature, dim=-1)  # (b, K)
        kernels = (attention @ self.weight[0, 0]).reshape(b * self.cout, self.cin // self.groups,
                                                          self.kernel, self.kernel)
        # one kernel set per clip: fold the batch into the channels and convolve in groups
        out = F.conv2d(x.reshape(1, b * c, f, t), kernels, None, self.stride, self.padding, self.dilation,
                       self.groups * b)
        return out.reshape(b, self.cout, out.shape[-2], out.shape[-1])


class DyReLUB(nn.Module):
    """Upstream ``DyReLUB`` (M = 2): per-channel ``max(a1 x + b1, a2 x + b2)`` from the context."""

    def __init__(self, channels: int, context_dim: int, m: int = 2):
        super().__init__()
        if m != 2:
            raise ValueError("DyReLUB is reproduced for M = 2 (the released models)")
        self.channels, self.m = channels, m
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * m * channels))
        # persistent buffers, as upstream (they are in the released state dicts)
        self.register_buffer("lambdas", torch.tensor([1.0] * m + [0.5] * m))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * m - 1)))

    def forward(self, x: torch.Tensor, h_c: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        theta = 2 * torch.sigmoid(self.coef_net(h_c.reshape(b, -1))) - 1
        coefs = theta.view(b, self.channels, 1, 1, 2 * self.m) * self.lambdas + self.init_v
        # the same element-wise products as upstream's x.unsqueeze(-1) * coefs, without the 5-d copy
        return torch.maximum(x * coefs[..., 0] + coefs[..., 2], x * coefs[..., 1] + coefs[..., 3])


class ContextGen(nn.Module):
    """Upstream ``ContextGen``: context vector h_c and the coordinate-attention sequences."""

    def __init__(self, context_dim: int, cin: int, cexp: int, stride: int = 1):
        super().__init__()
        self.joint_conv = nn.Conv2d(cin, context_dim, 1, bias=False)
        self.joint_norm = _bn(context_dim)
        self.conv_f = nn.Conv2d(context_dim, cexp, 1)
        self.conv_t = nn.Conv2d(context_dim, cexp, 1)
        self.stride = stride  # pooling of the attention sequences (no parameters)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cf = x.mean(dim=3, keepdim=True)  # (b, c, f, 1)
        ct = x.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)  # (b, c, t, 1)
        f = cf.shape[2]
        g = F.hardswish(self.joint_norm(self.joint_conv(torch.cat([cf, ct], dim=2))))
        h_cf, h_ct = g[:, :, :f], g[:, :, f:].permute(0, 1, 3, 2)
        h_c = g.mean(dim=2, keepdim=True)  # (b, H, 1, 1)
        if self.stride > 1:
            h_cf = F.avg_pool2d(h_cf, (3, 1), (self.stride, 1), (1, 0))
            h_ct = F.avg_pool2d(h_ct, (1, 3), (1, self.stride), (0, 1))
        return h_c, self.conv_f(h_cf), self.conv_t(h_ct)


class DyBlock(nn.Module):
    """Upstream ``DY_Block`` with dynamic convs, Dy-ReLU-B and coordinate attention (all on)."""

    def __init__(self, cin: int, kernel: int, cexp: int, cout: int, use_hs: bool, stride: int, width_mult: float,
                 context_ratio: int = 4, min_context: int = 32, max_context: int = 128, k: int = 4,
                 temperature: float = 1.0):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        lo, hi = make_divisible(min_context * width_mult, 8), make_divisible(max_context * width_mult, 8)
        self.context_dim = int(min(max(make_divisible(cexp // context_ratio, 8), lo), hi))
        self.act = F.hardswish if use_hs else F.relu
        self.has_expansion = cexp != cin
        if self.has_expansion:
            self.exp_conv = DynamicConv(cin, cexp, self.context_dim, 1, k=k, temperature=temperature)
            self.exp_norm = _bn(cexp)
        self.depth_conv = DynamicConv(cexp, cexp, self.context_dim, kernel, stride=stride, padding=(kernel - 1) // 2,
                                      groups=cexp, k=k, temperature=temperature)
        self.depth_norm = _bn(cexp)
        self.depth_act = DyReLUB(cexp, self.context_dim)
        self.proj_conv = DynamicConv(cexp, cout, self.context_dim, 1, k=k, temperature=temperature)
        self.proj_norm = _bn(cout)
        self.context_gen = ContextGen(self.context_dim, cin, cexp, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_c, g_f, g_t = self.context_gen(x)
        y = x
        if self.has_expansion:
            y = self.act(self.exp_norm(self.exp_conv(y, h_c)))
        y = self.depth_act(self.depth_norm(self.depth_conv(y, h_c)), h_c)
        y = y * torch.sigmoid(g_f) * torch.sigmoid(g_t)  # coordinate attention
        y = self.proj_norm(self.proj_conv(y, h_c))
        return y + x if self.use_res_connect else y


class DyMNNet(nn.Module):
    """EfficientAT "dymn" network: (batch, 1, 128, frames) normalised log-mel → logits (batch, 527)."""

    def __init__(self, width_mult: float, n_classes: int = N_CLASSES, dropout: float = 0.2):
        super().__init__()
        adj = lambda c: make_divisible(c * width_mult, 8)  # noqa: E731
        cfg = [(adj(i), k, adj(e), adj(o), act == "HS", s) for i, k, e, o, _se, act, s in BNECK_TABLE]
        self.layers = nn.ModuleList()  # registered before in_c, as upstream: same state_dict order
        self.in_c = ConvBNAct(1, cfg[0][0], 3, stride=2, activation=nn.Hardswish)
        self.layers.extend(DyBlock(*c, width_mult=width_mult) for c in cfg)
        last_in = cfg[-1][3]
        last_conv = 6 * last_in
        self.out_c = ConvBNAct(last_in, last_conv, 1, activation=nn.Hardswish)
        self.last_channel = adj(1280)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(start_dim=1),
            nn.Linear(last_conv, self.last_channel),
            nn.Hardswish(),
            nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, n_classes),
        )
        # upstream initialisation (only matters for weights="random"); DynamicConv keeps its own
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_c(x)
        for layer in self.layers:
            x = layer(x)
        return self.out_c(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features through classifier.2 + Hardswish (+ Dropout): (batch, last_channel)."""
        x = self.feature_map(x)
        for layer in list(self.classifier)[:5]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feature_map(x))


# name, width, release asset, upstream mAP (README table; dymn20: the mAP in the file name of
# the asset upstream's "dymn20_as" points to since 2024-02, newer than the README's 49.1)
_RELEASES: Tuple[Tuple[str, float, str, float], ...] = (
    ("dymn04", 0.4, "dymn04_as.pt", 0.450),
    ("dymn10", 1.0, "dymn10_as.pt", 0.477),
    ("dymn20", 2.0, "dymn20_as_mAP_493.pt", 0.493),
)


def _factory(spec: ModelSpec, sample_rate: Optional[int] = None) -> EfficientATTagger:
    return EfficientATTagger(spec, sample_rate=sample_rate,
                             net=DyMNNet(spec.frontend["width_mult"], spec.n_classes))


def _register() -> List[str]:
    names = []
    for short, width, asset, mAP in _RELEASES:
        spec = ModelSpec(
            name=f"efficientat-{short}",
            family="cnn",
            description=(f"EfficientAT dynamic MobileNet (DyMN) width {width}: dynamic convs, Dy-ReLU and coordinate "
                         f"attention in all 15 blocks, MLP head, 32 kHz, 128 mel (KD from PaSST); upstream "
                         f"{short}_as, weights {asset} (sha256 not pinned)"),
            sample_rate=32000,
            frontend=dict(efficientat_frontend(width), network="dymn", dyconv_kernels=4, dyconv_temperature=1.0,
                          dyrelu_m=2, context_ratio=4, context_min=32, context_max=128),
            normalisation={"shift": 4.5, "scale": 5.0},  # (log_mel + shift) / scale
            weights=WeightsSpec(
                file_name=f"efficientat_{asset}",
                url=RELEASE_URL + asset,
                sha256=None,  # unknown here: weights.download_file warns and reports the sha256 it got
                licence=LICENCE,
                source=("GitHub release fschmid56/EfficientAT v0.0.1 (models/dymn/model.py pretrained_models"
                        f"['{short}_as']); sha256 not pinned (unknown to audiobench): a download warns and "
                        "reports the sha256 it got"),
            ),
            reference_mAP=mAP,
            reference=("Schmid, Koutini, Widmer, Dynamic Convolutional Neural Networks as Efficient Pre-trained Audio "
                       "Models, TASLP 2024 (arXiv:2310.15648); github.com/fschmid56/EfficientAT models/dymn"),
            has_embedding=True,
        )
        register_model(spec, _factory)
        names.append(spec.name)
    return names


_register()
