"""Wrap any module that follows the public contract into the engine's model interface.

:class:`ContractTagger` presents a user model (:class:`audiobench.models.contract.AudioTagger`)
as an :class:`audiobench.models.base.AudioTagger`, the interface the engine, the attacks and the
fast path use (``spec``, ``sample_rate``, ``features``, ``forward_features``, ``embed_features``,
``head``, ``checkpoint_path``, ``checkpoint_sha256``):

* waveforms arrive at the dataset's rate and are resampled to the model's ``sample_rate`` by the
  project's resampler (:class:`~audiobench.models.frontends.WaveformResampler`, torch, batched,
  differentiable), so attacks see the whole pipeline;
* ``features(w)`` = the model's ``features(resampled w)`` when it has one, else the resampled
  waveform itself (identity features: every waveform condition and attack works);
* ``forward(w)`` calls the model itself (its ``__call__``), so :func:`~audiobench.models.contract.probe_model`
  can check that the split pipeline computes the same logits;
* ``embed_features``/``head`` exist when the model has ``embed``/``head`` (and, if it has its own
  features, ``embed_features``).

A registered-style model (a :class:`~audiobench.models.base.AudioTagger` subclass returned by a
factory) is wrapped the same way: only the resampling changes.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import List, Optional

import torch
from torch import nn

from audiobench.models import base as _base
from audiobench.models.contract import EMBEDDING, FEATURES, ModelContractError, check_logits, probe_waveform, run_checked
from audiobench.models.frontends import WaveformResampler


def _callable(obj, attr: str) -> bool:
    return callable(getattr(obj, attr, None))


def contract_sample_rate(module, name: str) -> int:
    rate = getattr(module, "sample_rate", None)
    try:
        ok = rate is not None and not isinstance(rate, bool) and int(rate) == rate and int(rate) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelContractError(
            f"model {name}: sample_rate is {rate!r}; a contract model needs an integer sample_rate attribute "
            f"(the rate in Hz of the waveform its forward() expects)"
        )
    return int(rate)


def contract_labels(module, name: str) -> Optional[List[str]]:
    """The model's ``labels`` as a list of strings, or None when it has none."""
    labels = getattr(module, "labels", None)
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise ModelContractError(f"model {name}: labels must be a sequence of class names or MIDs, got {type(labels).__name__}")
    out = list(labels)
    if not out or not all(isinstance(v, str) and v.strip() for v in out):
        raise ModelContractError(f"model {name}: labels must be a non-empty sequence of non-empty strings")
    return [v.strip() for v in out]


def contract_capabilities(module, name: str) -> frozenset:
    """FEATURES / EMBEDDING offered by a contract model (see :mod:`audiobench.models.contract`)."""
    if isinstance(module, _base.AudioTagger):  # a registered-style model: its spec says
        caps = {FEATURES}
        if module.spec.has_embedding:
            caps.add(EMBEDDING)
        return frozenset(caps)
    caps = set()
    has_f, has_ff = _callable(module, "features"), _callable(module, "forward_features")
    if has_f != has_ff:
        missing = "forward_features()" if has_f else "features()"
        raise ModelContractError(f"model {name}: has {'features()' if has_f else 'forward_features()'} but no {missing}; give both or neither")
    if has_f:
        caps.add(FEATURES)
    if _callable(module, "head") and (_callable(module, "embed_features") if has_f else _callable(module, "embed")):
        caps.add(EMBEDDING)
    return frozenset(caps)


def _first_doc_line(obj) -> str:
    doc = inspect.getdoc(type(obj)) or ""
    line = doc.strip().splitlines()[0].strip() if doc.strip() else ""
    if not line or type(obj).__doc__ is None or type(obj).__doc__ is nn.Module.__doc__:
        return f"{type(obj).__module__}.{type(obj).__qualname__}"
    return line


class ContractTagger(_base.AudioTagger):
    """An outside model (``module``) behind the engine's model interface; see the module doc."""

    def __init__(self, module: nn.Module, spec: _base.ModelSpec, sample_rate: Optional[int], caps: frozenset,
                 labels: Optional[List[str]] = None):
        super().__init__(spec, sample_rate)
        self.module = module
        self.resampler = WaveformResampler(self.sample_rate, spec.sample_rate)
        self.contract_capabilities = frozenset(caps)
        self.labels = labels
        self._user_features = FEATURES in caps and not isinstance(module, _base.AudioTagger)
        self._registered_style = isinstance(module, _base.AudioTagger)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.module(self.resampler(waveform))

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.resampler(waveform)
        if self._registered_style or self._user_features:
            return self.module.features(x)
        return x  # identity features: the (resampled) waveform

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        if self._registered_style or self._user_features:
            return self.module.forward_features(features)
        return self.module(features)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        if EMBEDDING not in self.contract_capabilities:
            return super().embed_features(features)
        if self._registered_style or self._user_features:
            return self.module.embed_features(features)
        return self.module.embed(features)

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        if EMBEDDING not in self.contract_capabilities:
            return super().head(embedding)
        return self.module.head(embedding)

    def load_checkpoint(self, obj, what: str = "checkpoint") -> None:
        raise TypeError(f"model {self.spec.name} builds its own weights (its factory receives the checkpoint)")


def output_width(module: nn.Module, name: str, sample_rate: int) -> int:
    """C of a contract model without labels: one no-grad forward on a short seeded noise clip."""
    x = probe_waveform(sample_rate, batch=1)
    try:
        dev = next(iter(module.parameters())).device
        x = x.to(dev)
    except StopIteration:
        pass
    with torch.no_grad():
        out = check_logits(name, run_checked(name, f"forward() on a probe clip of shape {tuple(x.shape)}", module, x), 1)
    return int(out.shape[1])


def wrap_contract_model(module, *, name: str, sample_rate: Optional[int] = None,
                        spec: Optional[_base.ModelSpec] = None) -> ContractTagger:
    """Wrap a contract model into a :class:`ContractTagger` (eval mode; frozen by the caller).

    ``name``: how the model is called in results and messages (``"mymodel:make"``).
    ``sample_rate``: the rate the waveforms will arrive at (default: the model's own).
    ``spec``: a registered spec (plugins) to check the model against and to keep its listing
    fields; without one a spec is derived from the model.
    """
    if not isinstance(module, nn.Module):
        raise ModelContractError(
            f"{name} gave a {type(module).__module__}.{type(module).__qualname__}, expected a torch.nn.Module with "
            f"forward(waveform) and sample_rate (the contract audiobench.models.contract.AudioTagger)"
        )
    registered_style = isinstance(module, _base.AudioTagger)
    rate = contract_sample_rate(module, name)
    caps = contract_capabilities(module, name)
    labels = None if registered_style else contract_labels(module, name)
    module.eval()
    if registered_style:
        width = int(module.spec.n_classes)
    elif labels is not None:
        width = len(labels)
    else:
        width = output_width(module, name, rate)
    family = getattr(module, "family", None)
    derived = dict(
        n_classes=width,
        has_embedding=EMBEDDING in caps,
        sample_rate=rate,
    )
    if spec is not None:
        if int(spec.sample_rate) != rate:
            raise ModelContractError(f"model {name}: its spec says {spec.sample_rate} Hz but the model's sample_rate is {rate}")
        if int(spec.n_classes) != width:
            raise ModelContractError(f"model {name}: its spec says {spec.n_classes} classes but the model has {width}")
        spec = dataclasses.replace(spec, **derived)
    elif registered_style:
        spec = dataclasses.replace(module.spec, name=name)
    else:
        spec = _base.ModelSpec(
            name=name,
            family=family if isinstance(family, str) and family else "unknown",
            description=_first_doc_line(module),
            frontend={"kind": "model features()" if FEATURES in caps else "waveform (identity)"},
            vocabulary="model labels" if labels is not None else "unlabelled (column order)",
            weights=None,
            reference=f"{type(module).__module__}.{type(module).__qualname__}",
            **derived,
        )
    return ContractTagger(module, spec, sample_rate if sample_rate is not None else rate, caps, labels)
