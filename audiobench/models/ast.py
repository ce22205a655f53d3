"""Audio Spectrogram Transformer (AST), AudioSet-finetuned, via ``transformers``.

``ast``: waveform (batch, samples) in [-1, 1] at ``model.sample_rate`` → 527 AudioSet logits
(pre-sigmoid), AudioSet ``class_labels_indices.csv`` order.

Pipeline (all batched torch, differentiable to the waveform):

1. resample to 16 kHz (:class:`~audiobench.models.frontends.WaveformResampler`) when needed;
2. Kaldi log-mel fbank, 128 bins, 25 ms Hann window, 10 ms shift, pre-emphasis 0.97, DC removal
   per frame, 512-point FFT, no dither, no energy (:class:`~audiobench.models.kaldi.KaldiFbank`;
   matches ``torchaudio.compliance.kaldi.fbank`` with AST's arguments);
3. zero-pad (append frames of 0.0) or truncate to 1024 frames (10.24 s), like transformers'
   ``ASTFeatureExtractor`` and YuanGongND/ast's dataloader;
4. normalise ``(x - (-4.2677393)) / (2 * 4.5689974)`` (AudioSet mean/std of the fbank);
5. ``transformers.ASTForAudioClassification``: 16x16 patches with stride 10 in frequency and time
   (12 x 101 patches), cls + distillation tokens, 12 layers, hidden 768, 12 heads, MLP 3072;
   logits = LayerNorm+Linear of (cls + dist) / 2 after the final LayerNorm.

The original dataloader also subtracts the clip's mean from the waveform before the fbank; with
Kaldi's per-frame DC removal that is a no-op, and transformers' extractor does not do it either.

Checkpoints accepted by :meth:`ASTTagger.load_checkpoint` (all strictly key/shape checked):

* a Hugging Face model folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``,
  possibly sharded with an ``*.index.json``): config.json is read as JSON and checked against the
  spec's architecture, weights are read with safetensors / ``torch.load(weights_only=True)``;
  nothing from the folder is executed;
* a Hugging Face ``state_dict`` (e.g. the hub's ``model.safetensors``, the default weights), in
  either transformers' legacy layout (``encoder.layer.N.attention.attention.query``, what the hub
  file and ``save_pretrained`` hold) or the current module layout (``layers.N.attention.q_proj``);
* the original YuanGongND/ast ``.pth`` (``module.v.blocks.N.attn.qkv.weight``, ``module.mlp_head.1``,
  with or without the DataParallel ``module.`` prefix), converted as transformers'
  ``convert_audio_spectrogram_transformer_original_to_pytorch.py`` does (qkv split in thirds
  query/key/value; timm DeiT's unused ImageNet heads ``v.head``/``v.head_dist`` dropped).

Reference: Y. Gong, Y.-A. Chung, J. Glass, "AST: Audio Spectrogram Transformer", Interspeech 2021,
arXiv:2104.01778; code https://github.com/YuanGongND/ast (BSD-3-Clause); weights: the Hugging Face
conversion ``MIT/ast-finetuned-audioset-10-10-0.4593`` of ``audioset_10_10_0.4593.pth``.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F

from audiobench.errors import WeightsError
from audiobench.models import register_model
from audiobench.models.base import AudioTagger, ModelSpec, WeightsSpec
from audiobench.models.checkpoints import read_checkpoint, strict_load, unwrap_state_dict
from audiobench.models.frontends import WaveformResampler
from audiobench.models.kaldi import KaldiFbank

# Architecture of MIT/ast-finetuned-audioset-10-10-0.4593 (its config.json on the HF hub; also
# transformers' ASTConfig defaults, documented as that checkpoint's configuration).
AST_BASE_10_10: Dict[str, Any] = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    patch_size=16,
    qkv_bias=True,
    frequency_stride=10,
    time_stride=10,
    max_length=1024,
    num_mel_bins=128,
)

HF_PREFIX = "audio_spectrogram_transformer."


def _build_net(arch: Mapping[str, Any], num_labels: int):
    from transformers import ASTConfig, ASTForAudioClassification

    kwargs = dict(arch, num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    try:
        # PyTorch SDPA attention: same maths as eager, faster, and differentiable.
        config = ASTConfig(**kwargs, attn_implementation="sdpa")
        return ASTForAudioClassification(config)
    except (ValueError, ImportError, TypeError):  # transformers without SDPA for AST
        return ASTForAudioClassification(ASTConfig(**kwargs))


class ASTTagger(AudioTagger):
    """AST wrapper: waveform → Kaldi fbank → 1024 frames → normalise → transformers' AST → logits.

    ``features(waveform (B, S))`` → (B, 1024, 128) normalised fbank (the ``input_values`` of
    transformers' AST); ``forward_features`` → (B, 527) logits. ``embed_features`` gives the pooled
    representation ``(cls + dist) / 2`` after the encoder's final LayerNorm (B, 768), the input of
    the classifier head (LayerNorm + Linear); ``head(embed_features(x)) == forward_features(x)``.
    """

    accepts_checkpoint_dir = True  # load_model passes a Hugging Face folder through to load_checkpoint

    def __init__(self, spec: ModelSpec, sample_rate: Optional[int] = None, arch: Optional[Mapping[str, Any]] = None):
        super().__init__(spec, sample_rate)
        self.arch = dict(AST_BASE_10_10 if arch is None else arch)
        fe = spec.frontend
        if int(fe["num_mel_bins"]) != int(self.arch["num_mel_bins"]) or int(fe["target_frames"]) != int(self.arch["max_length"]):
            raise ValueError(f"model {spec.name}: front end and architecture disagree on the input size")
        self.resampler = WaveformResampler(self.sample_rate, spec.sample_rate)
        self.fbank = KaldiFbank.from_front_end(fe, spec.sample_rate)
        self.target_frames = int(fe["target_frames"])
        self.norm_mean = float(spec.normalisation["mean"])
        self.norm_std = float(spec.normalisation["std"])
        self.net = _build_net(self.arch, spec.n_classes)
        self.net.eval()

    # -- contract ----------------------------------------------------------------------------
    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(waveform.shape)}")
        x = self.resampler(waveform)
        if x.shape[-1] < self.fbank.window_size:
            # shorter than one 25 ms frame: zero-pad to one frame rather than fail (a static choice)
            x = F.pad(x, (0, self.fbank.window_size - x.shape[-1]))
        fb = self.fbank(x)  # (B, T, 128)
        n = fb.shape[1]
        if n < self.target_frames:  # zero log-mel frames appended, before normalisation (as HF / AST)
            fb = F.pad(fb, (0, 0, 0, self.target_frames - n))
        elif n > self.target_frames:
            fb = fb[:, : self.target_frames]
        return (fb - self.norm_mean) / (2.0 * self.norm_std)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed_features(features))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.audio_spectrogram_transformer(input_values=features).pooler_output

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(embedding)

    # -- weights -----------------------------------------------------------------------------
    def load_checkpoint(self, obj: Any, what: str = "checkpoint") -> None:
        """Load a HF folder / HF state_dict / original AST ``.pth`` state_dict (see module doc)."""
        if isinstance(obj, (str, os.PathLike)):
            path = Path(obj)
            if path.is_dir():
                obj = read_hf_folder(path, self.arch, self.spec.n_classes)
            else:
                obj = read_checkpoint(path)
            what = str(path) if what == "checkpoint" else what
        state_dict = unwrap_state_dict(obj)
        state_dict = to_net_layout(state_dict, self.net.state_dict().keys())
        strict_load(self.net, state_dict, what)


# --- checkpoint layouts ------------------------------------------------------------------------

# per-layer module names: transformers' legacy layout (<= 4.x, the hub files) → current (5.x)
_LEGACY_TO_CURRENT = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "layernorm_before",
    "layernorm_after": "layernorm_after",
}
_CURRENT_TO_LEGACY = {v: k for k, v in _LEGACY_TO_CURRENT.items()}
_LEGACY_LAYER = re.compile(r"^audio_spectrogram_transformer\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_CURRENT_LAYER = re.compile(r"^audio_spectrogram_transformer\.layers\.(\d+)\.(.+)\.(weight|bias)$")

# original YuanGongND/ast (timm DeiT inside ``v``) → transformers legacy layout
_ORIGINAL_TOP = {
    "v.cls_token": HF_PREFIX + "embeddings.cls_token",
    "v.dist_token": HF_PREFIX + "embeddings.distillation_token",
    "v.pos_embed": HF_PREFIX + "embeddings.position_embeddings",
    "v.patch_embed.proj.weight": HF_PREFIX + "embeddings.patch_embeddings.projection.weight",
    "v.patch_embed.proj.bias": HF_PREFIX + "embeddings.patch_embeddings.projection.bias",
    "v.norm.weight": HF_PREFIX + "layernorm.weight",
    "v.norm.bias": HF_PREFIX + "layernorm.bias",
    "mlp_head.0.weight": "classifier.layernorm.weight",
    "mlp_head.0.bias": "classifier.layernorm.bias",
    "mlp_head.1.weight": "classifier.dense.weight",
    "mlp_head.1.bias": "classifier.dense.bias",
}
_ORIGINAL_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_ORIGINAL_BLOCK_KEY = re.compile(r"^v\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
# timm DeiT's ImageNet classifier heads: present in AST .pth files, unused by AST's forward
_ORIGINAL_UNUSED = ("v.head.weight", "v.head.bias", "v.head_dist.weight", "v.head_dist.bias")


def is_original_layout(keys) -> bool:
    return any(k.split("module.", 1)[-1].startswith(("v.blocks.", "v.cls_token", "mlp_head.")) for k in keys)


def original_to_hf_legacy(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """YuanGongND/ast state_dict → transformers' legacy AST layout (unknown keys kept as they are)."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        if k in _ORIGINAL_UNUSED:
            continue
        if k in _ORIGINAL_TOP:
            out[_ORIGINAL_TOP[k]] = value
            continue
        m = _ORIGINAL_BLOCK_KEY.match(k)
        if m:
            layer, module, param = m.groups()
            base = f"{HF_PREFIX}encoder.layer.{layer}."
            if module == "attn.qkv":
                if value.shape[0] % 3 != 0:
                    raise WeightsError(f"key {key!r} has shape {tuple(value.shape)}, not three stacked projections")
                q, k_, v = value.chunk(3, dim=0)  # timm stacks [query; key; value] along dim 0
                out[base + f"attention.attention.query.{param}"] = q
                out[base + f"attention.attention.key.{param}"] = k_
                out[base + f"attention.attention.value.{param}"] = v
                continue
            if module in _ORIGINAL_BLOCK:
                out[base + f"{_ORIGINAL_BLOCK[module]}.{param}"] = value
                continue
        out[key] = value  # unknown: strict_load names it
    return out


def _rename_layers(state_dict: Mapping[str, torch.Tensor], pattern, table, fmt: str) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = pattern.match(key)
        if m and m.group(2) in table:
            key = fmt.format(layer=m.group(1), module=table[m.group(2)], param=m.group(3))
        out[key] = value
    return out


def to_net_layout(state_dict: Mapping[str, torch.Tensor], net_keys) -> Dict[str, torch.Tensor]:
    """Any accepted AST layout → the key layout of the installed transformers' module (``net_keys``)."""
    net_keys = list(net_keys)
    sd: Dict[str, torch.Tensor] = dict(state_dict)
    if is_original_layout(sd.keys()):
        sd = original_to_hf_legacy(sd)
    net_is_current = any(".layers." in k for k in net_keys)
    if net_is_current:
        return _rename_layers(sd, _LEGACY_LAYER, _LEGACY_TO_CURRENT, HF_PREFIX + "layers.{layer}.{module}.{param}")
    return _rename_layers(sd, _CURRENT_LAYER, _CURRENT_TO_LEGACY, HF_PREFIX + "encoder.layer.{layer}.{module}.{param}")


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def read_hf_folder(path: Path, arch: Mapping[str, Any], n_classes: int) -> Dict[str, torch.Tensor]:
    """Read a Hugging Face AST folder safely (JSON config, tensors only) and check its config."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(f"{path}: not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{cfg_path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{cfg_path}: expected a JSON object")
    model_type = config.get("model_type")
    if model_type not in (None, "audio-spectrogram-transformer"):
        raise WeightsError(f"{cfg_path}: model_type is {model_type!r}, expected 'audio-spectrogram-transformer'")
    # a field absent from config.json takes transformers' ASTConfig default (= AST_BASE_10_10)
    for field, want in arch.items():
        got = config.get(field, AST_BASE_10_10.get(field, want))
        if isinstance(want, float) and isinstance(got, (int, float)):
            same = abs(float(got) - want) <= 1e-6 * abs(want)
        else:
            same = got == want
        if not same:
            raise WeightsError(f"{cfg_path}: {field} is {got!r}, this model expects {want!r}")
    labels = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels")
    if labels is not None and int(labels) != n_classes:
        raise WeightsError(f"{cfg_path}: {labels} labels, this model expects {n_classes}")

    for name in _WEIGHT_FILES:
        f = path / name
        if not f.is_file():
            continue
        if not name.endswith(".index.json"):
            return dict(unwrap_state_dict(read_checkpoint(f)))
        try:
            index = json.loads(f.read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WeightsError(f"{f}: not a readable shard index ({exc})") from None
        merged: Dict[str, torch.Tensor] = {}
        for shard in shards:
            if Path(shard).name != shard:
                raise WeightsError(f"{f}: shard name {shard!r} points outside the folder")
            merged.update(unwrap_state_dict(read_checkpoint(path / shard)))
        return merged
    raise WeightsError(f"{path}: no weights file (expected one of {', '.join(_WEIGHT_FILES)})")


# --- registration ------------------------------------------------------------------------------

AST_SPEC = ModelSpec(
    name="ast",
    family="transformer",
    description=(
        "Audio Spectrogram Transformer (AST-base, ImageNet-pretrained DeiT, AudioSet-finetuned, "
        "patch 16x16 stride 10/10, 12 layers, 768 hidden), 16 kHz Kaldi fbank, 10.24 s input"
    ),
    sample_rate=16000,
    frontend=dict(
        kind="kaldi_fbank",
        num_mel_bins=128,
        frame_length_ms=25.0,
        frame_shift_ms=10.0,
        window_type="hanning",
        preemphasis_coefficient=0.97,
        remove_dc_offset=True,
        dither=0.0,
        htk_compat=True,
        use_energy=False,
        low_freq_hz=20.0,
        high_freq_hz=0.0,  # 0 = Nyquist (Kaldi convention)
        fft_size=512,  # 400-sample window zero-padded to a power of two
        snip_edges=True,
        log_floor=float(torch.finfo(torch.float32).eps),
        target_frames=1024,  # zero-padded (0.0 before normalisation) or truncated
    ),
    normalisation=dict(mean=-4.2677393, std=4.5689974),  # (x - mean) / (2 * std)
    weights=WeightsSpec(
        file_name="ast-finetuned-audioset-10-10-0.4593.safetensors",
        # The hub's model.safetensors pinned to revision f826b80d (346,404,948 bytes); its sha256
        # is the LFS object id the hub reports for that file.
        url=(
            "https://huggingface.co/MIT/ast-finetuned-audioset-10-10-0.4593/resolve/"
            "f826b80d28226b62986cc218e5cec390b1096902/model.safetensors"
        ),
        sha256="ae0c1e2ad4e1381d851fa9bf298ba13ebc9c5a914cdee2dbe427a6583869924d",
        licence="BSD-3-Clause",
        source="Hugging Face hub MIT/ast-finetuned-audioset-10-10-0.4593 (conversion of YuanGongND/ast audioset_10_10_0.4593.pth)",
    ),
    reference_mAP=0.4593,
    reference="Gong et al., AST: Audio Spectrogram Transformer, Interspeech 2021 (arXiv:2104.01778); github.com/YuanGongND/ast",
    has_embedding=True,
)

register_model(AST_SPEC, functools.partial(ASTTagger, arch=AST_BASE_10_10))
