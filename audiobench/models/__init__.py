"""Model registry: name → :class:`ModelEntry` (frozen spec + factory).

Adding a model = one new module that calls ``register_model`` + one import line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from audiobench.models.base import AudioTagger, ModelSpec, WeightsSpec
from audiobench.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    # factory(spec, sample_rate) -> AudioTagger with random weights; weights are loaded separately
    factory: Callable[..., AudioTagger]


class ModelRegistry(Registry[ModelEntry]):
    """The model registry; ``get("NAME@VARIANT")`` also resolves quantized variants
    (:mod:`audiobench.models.quantize`): the base's entry with the variant's spec (the factory
    builds the float base; ``load_model`` applies the variant after loading its weights)."""

    def get(self, name: str) -> ModelEntry:
        from audiobench.models.quantize import parse_variant, variant_spec

        base, variant = parse_variant(name)
        entry = super().get(base)
        return entry if variant is None else ModelEntry(variant_spec(entry.spec, variant), entry.factory)


MODELS = ModelRegistry("model")


def register_model(spec: ModelSpec, factory: Callable[..., AudioTagger]) -> None:
    MODELS.register(spec.name, ModelEntry(spec, factory))


def load_model(name, checkpoint=None, device="cpu", **kwargs):
    """A registered model (:func:`audiobench.models.loading.load_model`), or anything else
    :func:`audiobench.models.resolve.resolve_model` accepts (plugin name, ``module:factory``,
    ``hf:FOLDER``, ``nn.Module``, ``NAME@VARIANT``)."""
    if isinstance(name, str) and name in MODELS:
        from audiobench.models.loading import load_model as _impl
    else:
        from audiobench.models.resolve import resolve_model as _impl

    return _impl(name, checkpoint=checkpoint, device=device, **kwargs)


def resolve_model(source, **kwargs):
    """See :func:`audiobench.models.resolve.resolve_model`."""
    from audiobench.models.resolve import resolve_model as _impl

    return _impl(source, **kwargs)


def list_models():
    """Every model usable by name, built-in and plugin (:func:`audiobench.models.plugins.list_models`)."""
    from audiobench.models.plugins import list_models as _impl

    return _impl()


# --- one import line per model module (each registers its models) ------------------------------
import importlib as _importlib

for _mod in ("toy", "efficientat", "panns", "ast", "atdr", "psla", "dymn"):
    _importlib.import_module(f"audiobench.models.{_mod}")
