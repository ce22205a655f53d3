"""Hugging Face audio classifiers: ``--model hf:PATH_OR_HUB_ID``.

``hf:FOLDER`` is a local folder written by ``model.save_pretrained(FOLDER)`` and
``feature_extractor.save_pretrained(FOLDER)`` (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, ``preprocessor_config.json``) holding a ``transformers`` audio
classification model (``AutoModelForAudioClassification``). ``hf:ORG/NAME`` (optionally
``hf:ORG/NAME#REVISION``, a branch, tag or commit) is a hub repository: it is fetched into (or,
offline, read from) transformers' own cache by ``huggingface_hub.snapshot_download``, which
checks every file against the hub's hashes; the commit it resolved to is recorded as the
revision. Weights are read by transformers (safetensors, or ``torch.load(weights_only=True)``);
no code from the folder runs (``trust_remote_code`` is never set).

The feature extractor is NOT called: its front end is rebuilt in torch, batched and
differentiable, so attacks reach the waveform and the logits match transformers' own pipeline:

* ``ASTFeatureExtractor`` (the AST family): Kaldi log-mel fbank exactly as the extractor calls
  ``torchaudio.compliance.kaldi.fbank`` (Hann window, ``num_mel_bins``, 25 ms / 10 ms, dither 0,
  pre-emphasis 0.97, DC removal, 512-point FFT), via the batched
  :class:`~audiobench.models.kaldi.KaldiFbank`; zero frames appended or frames cut to
  ``max_length``; ``(x - mean) / (2 * std)`` when ``do_normalize``.
* ``Wav2Vec2FeatureExtractor`` (wav2vec2, HuBERT, WavLM, data2vec-audio, UniSpeech, SEW...):
  per-clip zero mean / unit variance, ``(x - mean) / sqrt(var + 1e-7)``, when ``do_normalize``;
  clips of one batch share a length, so no padding or attention mask is involved.

Any other extractor class is refused with one line naming it (e.g. Whisper's log-mel extractor
and SeamlessM4T's are not rebuilt here). Waveforms at another rate than the extractor's
``sampling_rate`` go through :class:`~audiobench.models.frontends.WaveformResampler` first.

Labels come from ``config.id2label`` (transformers' placeholder names ``LABEL_0``... count as no
labels); :mod:`audiobench.models.labels` aligns them with the dataset's vocabulary.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from audiobench.errors import AudiobenchError, ConfigError, WeightsError
from audiobench.models import base as _base
from audiobench.models.contract import EMBEDDING, FEATURES, first_line
from audiobench.models.frontends import WaveformResampler
from audiobench.models.kaldi import KaldiFbank

PREFIX = "hf:"
SUPPORTED_EXTRACTORS = ("ASTFeatureExtractor", "Wav2Vec2FeatureExtractor")
EXTRACTOR_FILE = "preprocessor_config.json"
WAV2VEC2_VARIANCE_EPS = 1e-7  # transformers' zero_mean_unit_var_norm
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_PLACEHOLDER_LABEL = re.compile(r"LABEL_\d+")


# --- front ends ------------------------------------------------------------------------------------
class ASTExtractorFrontEnd(nn.Module):
    """``ASTFeatureExtractor`` in torch: (B, S) waveform at ``sampling_rate`` → (B, max_length, bins)."""

    def __init__(self, extractor):
        super().__init__()
        self.sampling_rate = int(extractor.sampling_rate)
        # torchaudio.compliance.kaldi.fbank's defaults for everything the extractor does not pass
        self.fbank = KaldiFbank(sample_frequency=self.sampling_rate, num_mel_bins=int(extractor.num_mel_bins),
                                window_type="hanning", htk_compat=False, use_energy=False)
        self.max_length = int(extractor.max_length)
        self.do_normalize = bool(extractor.do_normalize)
        self.mean = float(extractor.mean)
        self.std = float(extractor.std)

    def describe(self) -> Dict[str, Any]:
        return {"kind": "ASTFeatureExtractor (Kaldi fbank)", "sampling_rate_hz": self.sampling_rate,
                "num_mel_bins": self.fbank.options["num_mel_bins"], "frame_length_ms": 25.0, "frame_shift_ms": 10.0,
                "max_length_frames": self.max_length, "do_normalize": self.do_normalize}

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.shape[-1] < self.fbank.window_size:
            # shorter than one 25 ms frame: padded to one frame (transformers would give all-zero features)
            waveform = F.pad(waveform, (0, self.fbank.window_size - waveform.shape[-1]))
        fb = self.fbank(waveform)
        n = fb.shape[-2]
        if n < self.max_length:
            fb = F.pad(fb, (0, 0, 0, self.max_length - n))  # zero frames, before normalisation (as transformers)
        elif n > self.max_length:
            fb = fb[..., : self.max_length, :]
        if self.do_normalize:
            fb = (fb - self.mean) / (self.std * 2.0)
        return fb


class Wav2Vec2ExtractorFrontEnd(nn.Module):
    """``Wav2Vec2FeatureExtractor`` in torch: per-clip zero mean, unit variance (if ``do_normalize``)."""

    def __init__(self, extractor):
        super().__init__()
        if int(getattr(extractor, "feature_size", 1)) != 1:
            raise WeightsError(f"Wav2Vec2FeatureExtractor with feature_size {extractor.feature_size}: only mono (1) is supported")
        self.sampling_rate = int(extractor.sampling_rate)
        self.do_normalize = bool(extractor.do_normalize)

    def describe(self) -> Dict[str, Any]:
        return {"kind": "Wav2Vec2FeatureExtractor", "sampling_rate_hz": self.sampling_rate, "do_normalize": self.do_normalize}

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if not self.do_normalize:
            return waveform
        mean = waveform.mean(dim=-1, keepdim=True)
        var = waveform.var(dim=-1, unbiased=False, keepdim=True)
        return (waveform - mean) / torch.sqrt(var + WAV2VEC2_VARIANCE_EPS)


_FRONT_ENDS = {"ASTFeatureExtractor": ASTExtractorFrontEnd, "Wav2Vec2FeatureExtractor": Wav2Vec2ExtractorFrontEnd}


# --- the wrapper ------------------------------------------------------------------------------------
class HFAudioTagger(_base.AudioTagger):
    """A ``transformers`` audio classifier behind the engine's interface.

    ``features(w)`` = resample → the rebuilt extractor (``input_values``); ``forward_features`` =
    the transformers model's logits. ``embed_features`` is the input of the model's
    ``classifier`` (the pooled representation; captured with a forward pre-hook, so it is
    exactly what the model classifies) and ``head`` is that ``classifier``.
    """

    def __init__(self, spec: _base.ModelSpec, net: nn.Module, frontend: nn.Module, sample_rate: Optional[int],
                 labels: Optional[List[str]]):
        super().__init__(spec, sample_rate)
        self.resampler = WaveformResampler(self.sample_rate, spec.sample_rate)
        self.frontend = frontend
        self.net = net
        self.labels = labels
        caps = {FEATURES}
        if spec.has_embedding:
            caps.add(EMBEDDING)
        self.contract_capabilities = frozenset(caps)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(waveform.shape)}")
        return self.frontend(self.resampler(waveform))

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(input_values=features).logits

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        if not self.spec.has_embedding:
            return super().embed_features(features)
        captured: List[torch.Tensor] = []
        hook = self.net.classifier.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.net(input_values=features)
        finally:
            hook.remove()
        return captured[-1]

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        if not self.spec.has_embedding:
            return super().head(embedding)
        return self.net.classifier(embedding)

    def load_checkpoint(self, obj, what: str = "checkpoint") -> None:
        raise TypeError(f"model {self.spec.name} reads its weights from its folder")


# --- locating the folder ----------------------------------------------------------------------------
def split_reference(ref: str) -> Tuple[str, Optional[str]]:
    """``"ORG/NAME#REV"`` → ("ORG/NAME", "REV"); a folder path is returned whole."""
    if "#" in ref and not Path(ref).expanduser().exists():
        repo, _, rev = ref.partition("#")
        return repo, rev or None
    return ref, None


def locate(ref: str, *, download: bool = True) -> Tuple[Path, Optional[str], bool]:
    """(local folder, resolved hub commit or None, from the hub?) for ``hf:ref``."""
    from audiobench.models.weights import offline

    if not ref:
        raise ConfigError("hf: needs a folder or a hub id, e.g. hf:./my-ast or hf:MIT/ast-finetuned-audioset-10-10-0.4593")
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve(), None, False
    repo, revision = split_reference(ref)
    looks_local = ref.startswith((".", "/", "~")) or path.exists() or repo.count("/") > 1 or not _HUB_ID.fullmatch(repo)
    if looks_local:
        raise WeightsError(f"hf:{ref}: no such folder" + (" (it is a file; give the folder that holds config.json)" if path.is_file() else ""))
    local_only = offline() or not download
    try:
        from huggingface_hub import snapshot_download

        kwargs = dict(revision=revision, local_files_only=local_only)
        folder = Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors"], **kwargs))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo, allow_patterns=["*.json", "pytorch_model*.bin"], **kwargs))
    except AudiobenchError:
        raise
    except Exception as exc:
        how = "is not in the local Hugging Face cache (offline)" if local_only else "could not be fetched from the Hugging Face hub"
        raise WeightsError(f"hf:{ref}: not a local folder, and hub repository {repo!r} {how}: {first_line(exc)}") from None
    return folder, folder.name, True


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path.parent}: not a Hugging Face model folder (no {path.name})") from None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not readable JSON ({first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return obj


def extractor_class(folder: Path) -> str:
    """The feature extractor class named by the folder's ``preprocessor_config.json``, refused
    unless its front end is rebuilt here."""
    cfg_path = folder / EXTRACTOR_FILE
    if not cfg_path.is_file():
        raise WeightsError(
            f"{folder}: no {EXTRACTOR_FILE} (the feature extractor); save it beside the model with "
            f"feature_extractor.save_pretrained(folder)"
        )
    cls = _read_json(cfg_path).get("feature_extractor_type")
    if cls not in SUPPORTED_EXTRACTORS:
        raise WeightsError(
            f"{folder}: feature extractor {cls!r} is not supported: its front end is not rebuilt in torch here "
            f"(supported: {', '.join(SUPPORTED_EXTRACTORS)})"
        )
    return str(cls)


def model_labels(config) -> Optional[List[str]]:
    id2label = getattr(config, "id2label", None) or {}
    n = int(getattr(config, "num_labels", len(id2label)))
    try:
        labels = [str(id2label[i]) for i in range(n)]
    except KeyError:
        return None
    if all(_PLACEHOLDER_LABEL.fullmatch(lab) for lab in labels):
        return None
    return labels


# --- loading ------------------------------------------------------------------------------------------
def load_hf_model(ref: str, *, sample_rate: Optional[int] = None, weights: str = "default",
                  download: bool = True) -> HFAudioTagger:
    """Build ``hf:ref`` (see the module doc) on the CPU, in eval mode.

    The returned model carries ``checkpoint_path`` (the folder), ``checkpoint_sha256`` (of all
    its files, :func:`audiobench.models.weights.checkpoint_sha256`) and ``hf_info`` (class
    names, revision, transformers version) for provenance.
    """
    import transformers

    from audiobench.models.weights import checkpoint_sha256

    folder, revision, from_hub = locate(ref, download=download)
    cls_name = extractor_class(folder)
    model_cfg = _read_json(folder / "config.json")
    if "auto_map" in model_cfg:
        raise WeightsError(f"{folder}: config.json asks for custom code (auto_map); audiobench never runs code from a model folder")
    try:
        extractor = getattr(transformers, cls_name).from_pretrained(str(folder))
        config = transformers.AutoConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise WeightsError(f"{folder}: cannot read the configuration: {first_line(exc)}") from None
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no per-tensor loading bar in audiobench's output
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # "random" weights are seeded, as for registered models
            if weights == "random":
                net = transformers.AutoModelForAudioClassification.from_config(config)
                missing: List[str] = []
            else:
                net, info = transformers.AutoModelForAudioClassification.from_pretrained(
                    str(folder), local_files_only=True, output_loading_info=True)
                missing = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    except Exception as exc:
        raise WeightsError(f"{folder}: cannot load an audio-classification model: {first_line(exc)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if missing:
        raise WeightsError(
            f"{folder}: the weights lack {len(missing)} tensor(s) of {type(net).__name__} (first: {missing[0]}); "
            f"not a complete fine-tuned audio classifier"
        )
    net.eval()
    frontend = _FRONT_ENDS[cls_name](extractor)
    if cls_name == "ASTFeatureExtractor":
        for field, fe_value in (("num_mel_bins", frontend.fbank.options["num_mel_bins"]), ("max_length", frontend.max_length)):
            if int(getattr(config, field, fe_value)) != int(fe_value):
                raise WeightsError(f"{folder}: the extractor's {field} is {fe_value} but the model's is {getattr(config, field)}")
    labels = model_labels(config)
    has_embedding = isinstance(getattr(net, "classifier", None), nn.Module)
    layers = getattr(config, "num_hidden_layers", "?")
    hidden = getattr(config, "hidden_size", "?")
    spec = _base.ModelSpec(
        name=PREFIX + ref,
        family="transformer",
        description=f"{type(net).__name__} ({layers} layers, hidden {hidden}) with {cls_name}, from {ref}",
        sample_rate=frontend.sampling_rate,
        frontend=frontend.describe(),
        vocabulary="config.id2label" if labels is not None else "unlabelled (column order)",
        n_classes=int(config.num_labels),
        normalisation={"mean": frontend.mean, "std": frontend.std} if cls_name == "ASTFeatureExtractor" else {},
        weights=None,
        reference=f"Hugging Face {'hub ' + ref if from_hub else 'folder ' + str(folder)}",
        has_embedding=has_embedding,
    )
    model = HFAudioTagger(spec, net, frontend, sample_rate, labels)
    model.checkpoint_path = str(folder)
    model.checkpoint_sha256 = checkpoint_sha256(folder) if weights != "random" else None
    model.hf_info = {
        "reference": ref,
        "folder": str(folder),
        "from_hub": from_hub,
        "revision": revision,
        "model_class": type(net).__name__,
        "model_type": getattr(config, "model_type", None),
        "extractor_class": cls_name,
        "transformers_version": transformers.__version__,
        "weights": weights,
    }
    return model
