"""The CRNN (TALNet) and CNN-Transformer study models of "AudioTagging Done Right".

Reference: J. B. Li, S. Qu, P.-Y. Huang, F. Metze, "AudioTagging Done Right: 2nd comparison of
deep learning methods for environmental sound classification", Interspeech 2022
(arXiv:2203.13448); code github.com/lijuncheng16/AudioTaggingDoneRight (BSD-3-Clause):
``src/models/Net_mModal_mgpu.py`` (``TALNet``, ``TransformerEncoder``), ``src/dataloader.py``
(front end), ``src/run.py`` + ``egs/audioset/run-TALtrans.sh`` (hyper-parameters, statistics),
``src/traintest.py`` (checkpoint layout).

Front end (``dataloader.py``, 64-mel "audioset_s" branch), 16 kHz input:
  1. remove the clip's mean (``waveform - waveform.mean()``, per clip);
  2. ``torchaudio.transforms.MelSpectrogram(n_fft=4096, win_length=1024, hop_length=400,
     center=True, pad_mode="constant", power=2, norm="slaney", mel_scale="slaney", n_mels=64)``;
  3. ``AmplitudeToDB(spec)``: upstream passes the spectrogram as ``stype``, so the comparison
     ``stype == "power"`` is false and the multiplier is 20: features are ``20*log10(max(P, 1e-10))``
     of the *power* spectrogram, no top_db. Reproduced as is (the statistics below assume it);
  4. (frames, 64), cut or zero-padded (in dB, before normalisation) to 400 frames (10 s);
  5. ``(x - mean) / (2 * std)`` with mean -29.686901, std 40.898224 (``run-TALtrans.sh``, the
     64-mel AudioSet recipe; ``run.py``'s default -12.7508 / 11.7584 is not what that recipe uses).

Networks (hyper-parameters of ``run-TALtrans.sh`` / ``run.py`` defaults): 10 conv layers
(3x3, bias, BatchNorm, ReLU), max-pooling after every 2nd layer, (2, 2) for the first two pools
then (1, 2); channels 32,32,64,64,128,128,256,256,512,512 so that 512 channels x 2 mel bins =
embedding 1024 at 100 frames. Then

* ``crnn`` (``TALNet``, pooling "att"): BiGRU(1024 → 2x512) → per-frame ``fc_prob`` sigmoid
  and ``fc_att`` softmax over time → clip probability = attention-weighted mean of the frame
  probabilities (frame probabilities clamped to [1e-7, 1 - 1e-7] as upstream);
* ``cnn-transformer`` (``TransformerEncoder``, pooling "att", addpos True, n_trans_layers 2):
  input ``x*8 + sinusoidal PE`` (d=64, 400 positions); conv stack; ONE post-norm encoder layer
  (8 heads, d_k = d_v = 128, FFN 1024 → 1024) applied twice with the same weights (weight tying
  is upstream's: ``for _ in range(n_trans_layers): x = self.enc_layer(x)``); same attention pooling.

What "logit" means here: upstream returns the pooled probability p (trained with BCELoss on it).
The wrapper returns ``log(p) - log(1 - p)`` with p clamped to [1e-7, 1 - 1e-7] (so the logits lie
within ±16.1), i.e. ``sigmoid(logits)`` reproduces upstream's output. Since p is a weighted mean
of frame probabilities, these logits are NOT a linear function of any layer.

Embedding: there is no pooled representation before a classifier (the classifier is applied per
frame, pooling comes after). ``embed`` returns the frame-level sequence feeding ``fc_prob`` /
``fc_att`` (BiGRU output, resp. encoder output), shape (batch, 100 frames x 1024) flattened, and
``head`` reshapes it and applies the classifier and the attention pooling, so
``head(embed(x)) == forward(x)`` exactly. ``spec.has_embedding`` is nevertheless False: a
102,400-d "embedding" per clip is not the pooled space the latent-space metrics (convexity,
density) are defined on, and storing it per clip and condition would cost ~8 GB on AudioSet eval.

Checkpoints: ``traintest.py`` saves ``nn.DataParallel(model).state_dict()``: keys prefixed
``module.``, and every conv layer twice (``conv.<i>.*`` from the ModuleList and ``conv<i+1>.*``
from the ``__setattr__`` alias). Both prefixed and unprefixed files load; all keys (both aliases)
must be present. No trained weights are published upstream, so ``weights.url`` is None.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from audiobench.models import register_model
from audiobench.models.base import AudioTagger, ModelSpec, WeightsSpec
from audiobench.models.frontends import WaveformResampler

_P_MIN = 1e-7  # upstream's frame-probability clamp, reused for the pooled probability


class AtdrFrontEnd(nn.Module):
    """Batched, differentiable copy of the upstream 64-mel front end (see module docstring)."""

    def __init__(self, fe: dict, mean: float, std: float):
        super().__init__()
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=fe["sample_rate_hz"], n_fft=fe["n_fft"], win_length=fe["win_samples"],
            hop_length=fe["hop_samples"], center=True, pad_mode="constant", power=2.0, norm="slaney",
            n_mels=fe["n_mels"], mel_scale="slaney")
        self.n_frames = fe["n_frames"]
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = waveform - waveform.mean(dim=1, keepdim=True)
        power = self.melspec(x)  # (batch, mel, frames)
        db = 20.0 * torch.log10(torch.clamp(power, min=1e-10))  # upstream's AmplitudeToDB(spec) quirk
        db = db.transpose(1, 2)  # (batch, frames, mel)
        pad = self.n_frames - db.shape[1]
        db = F.pad(db, (0, 0, 0, pad)) if pad > 0 else db[:, : self.n_frames]
        return (db - self.mean) / (2.0 * self.std)


# -- shared conv stack (upstream ConvBlock, incl. its always-on conv bias) -----------------------


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(3, 3), batch_norm=True, pool_stride=None):
        super().__init__()
        # upstream passes bias=~batch_norm, which is -2 or -1 (truthy): the conv always has a bias
        self.conv = nn.Conv2d(cin, cout, kernel, padding=tuple(k // 2 for k in kernel), bias=True)
        self.batch_norm = batch_norm
        if batch_norm:
            self.bn = nn.BatchNorm2d(cout)
        self.pool_stride = pool_stride

    def forward(self, x):
        x = self.conv(x)
        if self.batch_norm:
            x = self.bn(x)
        x = F.relu(x)
        if self.pool_stride is not None:
            x = F.max_pool2d(x, self.pool_stride)
        return x


def _build_conv_stack(owner: nn.Module, n_mels: int, embedding_size: int, n_conv: int, n_pool: int) -> None:
    """Register ``owner.conv`` (ModuleList) and the aliases ``owner.conv1..N`` exactly as upstream."""
    owner.conv = nn.ModuleList()
    interval = n_conv // n_pool
    n_freq, cin = n_mels, 1
    for i in range(n_conv):
        if (i + 1) % interval == 0:  # pooling layer
            n_freq //= 2
            cout = embedding_size // n_freq
            stride = (2, 2) if i < interval * 2 else (1, 2)
        else:
            cout = embedding_size * 2 // n_freq
            stride = None
        layer = _ConvBlock(cin, cout, batch_norm=True, pool_stride=stride)
        owner.conv.append(layer)
        setattr(owner, f"conv{i + 1}", layer)  # the alias doubles the keys in state_dict, as upstream
        cin = cout


def _run_conv_stack(owner: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x[:, None]  # (batch, 1, time, freq)
    for layer in owner.conv:
        x = layer(x)
    x = x.permute(0, 2, 1, 3)  # (batch, time, channel, freq)
    return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])


def _attention_pool_logits(owner: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    frame_prob = torch.clamp(torch.sigmoid(owner.fc_prob(frames)), _P_MIN, 1 - _P_MIN)
    frame_att = F.softmax(owner.fc_att(frames), dim=1)
    p = (frame_prob * frame_att).sum(dim=1)
    p = torch.clamp(p, _P_MIN, 1 - _P_MIN)  # float rounding can step past the frame clamp
    return torch.log(p) - torch.log1p(-p)


class TALNetNet(nn.Module):
    """Upstream ``TALNet`` with pooling "att" (module names as upstream)."""

    def __init__(self, n_mels=64, embedding_size=1024, n_conv=10, n_pool=5, n_classes=527):
        super().__init__()
        _build_conv_stack(self, n_mels, embedding_size, n_conv, n_pool)
        self.gru = nn.GRU(embedding_size, embedding_size // 2, 1, batch_first=True, bidirectional=True)
        self.fc_prob = nn.Linear(embedding_size, n_classes)
        self.fc_att = nn.Linear(embedding_size, n_classes)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(_run_conv_stack(self, x))
        return h  # (batch, frames, embedding)

    def pool(self, frames: torch.Tensor) -> torch.Tensor:
        return _attention_pool_logits(self, frames)


class _MultiHeadAttention(nn.Module):
    """Upstream ``MultiHeadAttention`` (post-norm, residual), batched over heads."""

    def __init__(self, n_head: int, d_model: int, d_k: int, d_v: int):
        super().__init__()
        self.n_head, self.d_k, self.d_v = n_head, d_k, d_v
        self.w_qs = nn.Linear(d_model, n_head * d_k)
        self.w_ks = nn.Linear(d_model, n_head * d_k)
        self.w_vs = nn.Linear(d_model, n_head * d_v)
        self.layer_norm = nn.LayerNorm(d_model)
        self.fc = nn.Linear(n_head * d_v, d_model)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.w_qs(x).view(b, n, self.n_head, self.d_k).transpose(1, 2)
        k = self.w_ks(x).view(b, n, self.n_head, self.d_k).transpose(1, 2)
        v = self.w_vs(x).view(b, n, self.n_head, self.d_v).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_k), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.n_head * self.d_v)
        return self.layer_norm(self.fc(out) + x)


class _FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x):
        return self.layer_norm(self.w_2(F.relu(self.w_1(x))) + x)


class _EncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_inner: int):
        super().__init__()
        self.slf_attn = _MultiHeadAttention(8, d_model, d_model // 8, d_model // 8)
        self.pos_ffn = _FeedForward(d_model, d_inner)

    def forward(self, x):
        return self.pos_ffn(self.slf_attn(x))


class _PositionalEncoding(nn.Module):
    """Sinusoidal table stored as the persistent buffer ``pe`` (1, max_len, d_model), as upstream."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len).unsqueeze(1).float()
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x):
        return self.pe[:, : x.shape[1]]


class CnnTransformerNet(nn.Module):
    """Upstream ``TransformerEncoder`` with addpos, pooling "att" and a weight-tied encoder layer."""

    def __init__(self, n_mels=64, n_frames=400, embedding_size=1024, n_conv=10, n_pool=5, n_trans_layers=2,
                 n_classes=527):
        super().__init__()
        _build_conv_stack(self, n_mels, embedding_size, n_conv, n_pool)
        # upstream: PositionalEncoding(args.n_mels, max_len=args.target_length); target_length 400
        self.positional_encoding = _PositionalEncoding(n_mels, n_frames)
        self.enc_layer = _EncoderLayer(embedding_size, embedding_size)
        self.fc_prob = nn.Linear(embedding_size, n_classes)
        self.fc_att = nn.Linear(embedding_size, n_classes)
        self.n_trans_layers = n_trans_layers

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 8 + self.positional_encoding(x)
        h = _run_conv_stack(self, x)
        for _ in range(self.n_trans_layers):  # the same layer, n times (weight tying)
            h = self.enc_layer(h)
        return h

    def pool(self, frames: torch.Tensor) -> torch.Tensor:
        return _attention_pool_logits(self, frames)


class AtdrTagger(AudioTagger):
    """Wrapper of an AudioTagging-Done-Right model: waveform (batch, samples) → logits (batch, 527).

    ``features``: resampler (if any) → 64-mel front end → (batch, 400, 64) normalised;
    ``embed_features``: frame sequence before the classifier, flattened to (batch, frames*1024);
    ``head``: per-frame classifier + attention pooling → logit of the pooled probability.
    """

    def __init__(self, spec: ModelSpec, net: nn.Module, sample_rate: Optional[int] = None):
        super().__init__(spec, sample_rate)
        self.resampler = WaveformResampler(self.sample_rate, spec.sample_rate)
        self.frontend = AtdrFrontEnd(spec.frontend, spec.normalisation["mean"], spec.normalisation["std"])
        self.net = net
        self.embedding_size = net.fc_prob.in_features

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.frontend(self.resampler(waveform))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.frames(features).flatten(1)

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net.pool(embedding.view(embedding.shape[0], -1, self.embedding_size))

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.pool(self.net.frames(features))

    def load_checkpoint(self, obj: Any, what: str = "checkpoint") -> None:
        """Load upstream's ``torch.save(DataParallel(model).state_dict())`` (``module.`` prefix) or
        the same without the prefix; strict, first mismatching key named."""
        from audiobench.models.checkpoints import strict_load, unwrap_state_dict

        sd = unwrap_state_dict(obj)
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
        strict_load(self.net, sd, what)


# -- specs -------------------------------------------------------------------------------------

_FRONTEND = {
    "type": "torchaudio MelSpectrogram + 20*log10 (upstream AmplitudeToDB(spec) quirk)",
    "sample_rate_hz": 16000,
    "dc_removal": "per-clip mean subtracted",
    "n_fft": 4096,
    "win_samples": 1024,
    "window": "hann (periodic)",
    "hop_samples": 400,
    "center": True,
    "pad_mode": "constant",
    "n_mels": 64,
    "fmin_hz": 0.0,
    "fmax_hz": 8000.0,
    "mel": "slaney scale, slaney norm",
    "log": "20*log10(clamp(mel_power, 1e-10)); no top_db",
    "n_frames": 400,
    "frame_fit": "cut or zero-pad (in dB, before normalisation) to 400 frames",
}
_NORM = {"mean": -29.686901, "std": 40.898224, "std_multiplier": 2.0}  # (x - mean) / (2 * std)
_REFERENCE = ("Li, Qu, Huang, Metze, AudioTagging Done Right, Interspeech 2022 (arXiv:2203.13448); "
              "github.com/lijuncheng16/AudioTaggingDoneRight src/models/Net_mModal_mgpu.py")
_SOURCE = ("none published upstream: train with lijuncheng16/AudioTaggingDoneRight "
           "(egs/audioset/run-TALtrans.sh settings); nn.DataParallel state_dict from src/traintest.py")

register_model(
    ModelSpec(
        name="crnn",
        family="crnn",
        description=("AudioTagging-Done-Right CRNN (TALNet): 10-layer CNN + BiGRU + attention pooling on 64-mel "
                     "x 400-frame 16 kHz features; logits = logit of the pooled probability; no pooled embedding "
                     "(embed() gives the BiGRU frame sequence)"),
        sample_rate=16000,
        frontend=dict(_FRONTEND),
        normalisation=dict(_NORM),
        weights=WeightsSpec(file_name="atdr_crnn.pth", url=None, sha256=None, licence="BSD-3-Clause (code)",
                            source=_SOURCE),
        reference_mAP=None,  # not found in the public code; see the paper
        reference=_REFERENCE + " (TALNet)",
        has_embedding=False,
    ),
    lambda spec, sample_rate=None: AtdrTagger(spec, TALNetNet(), sample_rate=sample_rate),
)

register_model(
    ModelSpec(
        name="cnn-transformer",
        family="transformer",
        description=("AudioTagging-Done-Right CNN-Transformer: the CRNN's 10-layer CNN + one post-norm Transformer "
                     "encoder layer applied twice (weight-tied) + attention pooling; 64-mel x 400 frames, 16 kHz; "
                     "logits = logit of the pooled probability; no pooled embedding (embed() gives the encoder "
                     "frame sequence)"),
        sample_rate=16000,
        frontend=dict(_FRONTEND),
        normalisation=dict(_NORM),
        weights=WeightsSpec(file_name="atdr_cnn_transformer.pth", url=None, sha256=None,
                            licence="BSD-3-Clause (code)", source=_SOURCE),
        reference_mAP=None,
        reference=_REFERENCE + " (TransformerEncoder)",
        has_embedding=False,
    ),
    lambda spec, sample_rate=None: AtdrTagger(spec, CnnTransformerNet(), sample_rate=sample_rate),
)
