"""The one model contract and the spec every registered model carries.

Every model, whatever its origin, is wrapped to one contract::

    logits = model(waveform)   # waveform: float32 in [-1, 1], (batch, samples) at model.sample_rate
                               # logits:   (batch, spec.n_classes), pre-sigmoid

``model.sample_rate`` is the rate of the waveform the wrapper accepts (by default the model's
native rate; ``load_model(..., sample_rate=16000)`` puts a resampler in front). The resampler and
the feature front end live *inside* the wrapper, in torch, batched and differentiable, so an attack
on the waveform sees the whole pipeline: attacking features instead would skip the front end and
give numbers that cannot be compared across models.
"""

from __future__ import annotations

import abc

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's default checkpoint comes from and how to check it."""

    file_name: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    licence: str = "unknown"
    source: str = ""  # human-readable origin, e.g. "GitHub release fschmid56/EfficientAT v0.0.1"


@dataclass(frozen=True)
class ModelSpec:
    """Everything the engine needs to know about a model without branching on its name."""

    name: str
    family: str  # "cnn" | "transformer" | "crnn"
    description: str
    sample_rate: int  # native rate of the front end, Hz
    frontend: Dict[str, Any] = field(default_factory=dict)  # front-end parameters (units in keys)
    vocabulary: str = "audioset-527"  # label vocabulary name; order = AudioSet class index
    n_classes: int = 527
    output_activation: str = "sigmoid"  # what turns the logits into scores
    normalisation: Dict[str, float] = field(default_factory=dict)
    weights: Optional[WeightsSpec] = None
    reference_mAP: Optional[float] = None  # clean AudioSet eval mAP reported upstream
    reference: str = ""  # paper / code the implementation follows
    has_embedding: bool = False  # model.embed(waveform) and model.head(embedding) exist

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class AudioTagger(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every wrapped model.

    Subclasses implement :meth:`features` (waveform at ``self.sample_rate`` → normalised network
    input; includes resampling) and :meth:`forward_features` (network input → logits). Models with
    ``spec.has_embedding`` also implement :meth:`embed_features` and :meth:`head`.
    """

    spec: ModelSpec

    def __init__(self, spec: ModelSpec, sample_rate: Optional[int] = None):
        super().__init__()
        self.spec = spec
        self.sample_rate = int(sample_rate or spec.sample_rate)

    # -- the contract -------------------------------------------------------------------------
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.features(waveform))

    @abc.abstractmethod
    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform at ``self.sample_rate`` → normalised network input (resampling included)."""

    @abc.abstractmethod
    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised network input → logits (batch, n_classes)."""

    # -- optional: latent space (only where spec.has_embedding) --------------------------------
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"model {self.spec.name} exposes no embedding")

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"model {self.spec.name} exposes no embedding")

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(waveform))

    # -- weights ------------------------------------------------------------------------------
    def load_checkpoint(self, obj: Any, what: str = "checkpoint") -> None:
        """Load a checkpoint object (already read safely) in the model's reference layout.

        The default unwraps ``{"model": sd}`` / ``{"state_dict": sd}`` and loads it strictly into
        ``self.net`` (the reference network, front-end buffers included where upstream has them);
        wrappers whose upstream layout differs override this.
        """
        from audiobench.models.checkpoints import strict_load, unwrap_state_dict

        strict_load(self.net, unwrap_state_dict(obj), what)
