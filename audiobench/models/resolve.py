"""One resolver for every way of naming a model, and the provenance that makes a run repeatable.

:func:`resolve_model` accepts

* a registered name (``audiobench list models``), e.g. ``"toy-cnn"``;
* a plugin model's name (a package installed with an ``audiobench.models`` entry point);
* ``"package.module:factory"`` (:mod:`audiobench.models.plugins` has the calling convention);
* ``"hf:PATH_OR_HUB_ID"`` (:mod:`audiobench.models.hf`);
* an ``nn.Module`` object that follows the contract (:mod:`audiobench.models.contract`);

optionally with a ``@VARIANT`` suffix (quantized variants; :func:`split_variant`), and returns a
ready :class:`audiobench.models.base.AudioTagger`: in eval mode, frozen, on the device, taking
waveforms at ``sample_rate``, with logits in the DATASET's class order when ``dataset_vocab`` is
given (:mod:`audiobench.models.labels`). The returned model carries ``checkpoint_path``,
``checkpoint_sha256`` and ``provenance`` (:func:`model_provenance`).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import inspect
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from audiobench.errors import ConfigError, WeightsError
from audiobench.models import base as _base

KINDS = ("registered", "plugin", "module", "hf", "object")


def split_variant(source: str) -> Tuple[str, Optional[str]]:
    """``"NAME@VARIANT"`` → ("NAME", "VARIANT"); no ``@`` → (source, None).

    The variant is what follows the LAST ``@`` (an ``hf:`` folder whose path itself contains
    ``@`` is kept whole). A hub revision is written ``hf:ORG/NAME#REVISION``, not with ``@``.
    """
    if "@" not in source:
        return source, None
    if source.startswith("hf:") and Path(source[3:]).expanduser().exists():
        return source, None
    base, _, variant = source.rpartition("@")
    if not base or not variant:
        raise ConfigError(f"model {source!r}: expected NAME@VARIANT")
    return base, variant


def apply_model_variant(model: _base.AudioTagger, variant: str, source: str) -> _base.AudioTagger:
    """The one place a ``@VARIANT`` suffix is applied (``audiobench.models.quantize.apply_variant``)."""
    try:
        from audiobench.models.quantize import apply_variant
    except ModuleNotFoundError as exc:
        if exc.name != "audiobench.models.quantize":
            raise
        raise ConfigError(f"model {source!r}: model variants ('@{variant}') are not available in this version of audiobench") from None
    varied = apply_variant(model, variant)
    for attr in ("checkpoint_path", "checkpoint_sha256"):
        if not hasattr(varied, attr):
            setattr(varied, attr, getattr(model, attr, None))
    return varied


def check_model_source(source) -> None:
    """Validate a model string cheaply (no import, no weights), for command-line parsing:
    a registered or plugin name, ``module:factory`` syntax, ``hf:...``, an optional ``@VARIANT``.
    Raises one :class:`~audiobench.errors.AudiobenchError` line (unknown names: "did you mean")."""
    from audiobench.models import MODELS
    from audiobench.models import plugins

    if isinstance(source, nn.Module):
        return
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"model {source!r}: expected a model name, 'module:factory', 'hf:FOLDER' or an nn.Module")
    text, variant = split_variant(source.strip())
    if variant is not None:
        try:
            import audiobench.models.quantize  # noqa: F401
        except ModuleNotFoundError as exc:
            if exc.name != "audiobench.models.quantize":
                raise
            raise ConfigError(f"model {source!r}: model variants ('@{variant}') are not available in this version of audiobench") from None
    if text.startswith("hf:"):
        if not text[3:]:
            raise ConfigError("hf: needs a folder or a hub id, e.g. hf:./my-ast")
        return
    if text in MODELS or plugins.plugin_entry(text) is not None or plugins.is_factory_reference(text):
        return
    raise plugins.unknown_model(text)


def _device(device) -> torch.device:
    from audiobench.models.loading import _device as parse

    return parse(device)


def _check_options(weights: str, sample_rate) -> None:
    from audiobench.models.loading import WEIGHT_CHOICES

    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights={weights!r} is not one of {', '.join(WEIGHT_CHOICES)}")
    if sample_rate is not None:
        try:
            ok = not isinstance(sample_rate, bool) and int(sample_rate) == sample_rate and sample_rate > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"sample_rate={sample_rate!r} must be a positive integer number of Hz")


def _checkpoint_file(checkpoint) -> Optional[str]:
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise WeightsError(f"{path}: checkpoint not found")
    return str(path)


def resolve_model(
    source: Union[str, nn.Module],
    *,
    checkpoint: Union[str, Path, None] = None,
    device: Union[str, torch.device] = "cpu",
    sample_rate: Optional[int] = None,
    weights: str = "default",
    label_map: Union[str, Path, None] = None,
    dataset_vocab=None,
    download: bool = True,
    name: Optional[str] = None,
) -> _base.AudioTagger:
    """Build the model ``source`` names (see the module doc), ready to score.

    Args:
        source: registered or plugin name, ``"module:factory"``, ``"hf:PATH_OR_HUB_ID"``, or an
            ``nn.Module`` object; strings may end in ``@VARIANT``.
        checkpoint: a weights file: loaded strictly for registered models, passed to the factory
            for plugin and module models, refused for ``hf:`` (its folder holds the weights) and
            objects.
        device: where the model runs.
        sample_rate: the rate the waveforms will arrive at (the dataset's), Hz; a resampler
            inside the model converts it. Default: the model's own rate.
        weights: ``"default"`` or ``"random"`` (registered and hf models: seeded random
            initialisation; plugin/module factories: called without a checkpoint).
        label_map: a CSV ``model_class,dataset_class`` (:mod:`audiobench.models.labels`); needs
            ``dataset_vocab``.
        dataset_vocab: the dataset's :class:`~audiobench.data.vocab.Vocabulary`; when given, the
            returned model's logits follow its class order (or the call is refused with one line).
        download: allow downloading missing default weights / hub files.
        name: the model's name in results (default: ``source`` as given; for objects, the class).

    Every user error is one :class:`~audiobench.errors.AudiobenchError` line.
    """
    _check_options(weights, sample_rate)
    dev = _device(device)
    if label_map is not None and dataset_vocab is None:
        raise ConfigError("a label map needs the dataset vocabulary (dataset_vocab=) to map onto")
    variant = None
    if isinstance(source, nn.Module):
        model = _from_object(source, checkpoint=checkpoint, sample_rate=sample_rate, name=name)
    elif isinstance(source, str) and source.strip():
        text, variant = split_variant(source.strip())
        model = _from_string(text, checkpoint=checkpoint, sample_rate=sample_rate, weights=weights, download=download,
                             device=dev)
        if name is not None:
            model.spec = _renamed(model.spec, name)
    else:
        raise ConfigError(f"model {source!r}: expected a model name, 'module:factory', 'hf:FOLDER' or an nn.Module")
    provenance = model.provenance
    model = model.to(dev)
    model.eval()
    model.requires_grad_(False)
    if variant is not None:  # the single place a @VARIANT suffix is applied
        model = apply_model_variant(model, variant, str(source))
        provenance["variant"] = variant
    if dataset_vocab is not None:
        model, provenance["labels"] = _map_labels(model, dataset_vocab, label_map)
    model.provenance = provenance
    return model


def _renamed(spec: _base.ModelSpec, name: str) -> _base.ModelSpec:
    import dataclasses

    return dataclasses.replace(spec, name=str(name))


def _from_string(text: str, *, checkpoint, sample_rate, weights, download, device) -> _base.AudioTagger:
    from audiobench.models import MODELS
    from audiobench.models import plugins

    if text.startswith("hf:"):
        return _from_hf(text[3:], checkpoint=checkpoint, sample_rate=sample_rate, weights=weights, download=download)
    if text in MODELS:
        from audiobench.models.loading import load_model as load_registered

        model = load_registered(text, checkpoint=checkpoint, device="cpu", sample_rate=sample_rate, weights=weights,
                                download=download)
        model.provenance = {
            "kind": "registered", "name": text, "source": "audiobench", "distribution": "audiobench",
            "version": _audiobench_version(), "weights": weights,
            "checkpoint": model.checkpoint_path, "checkpoint_sha256": model.checkpoint_sha256,
        }
        return model
    entry = plugins.plugin_entry(text)
    if entry is not None:
        return _from_plugin(text, entry, checkpoint=checkpoint, sample_rate=sample_rate, weights=weights,
                            download=download, device=device)
    if plugins.is_factory_reference(text):
        return _from_module(text, checkpoint=checkpoint, sample_rate=sample_rate, weights=weights, device=device)
    raise plugins.unknown_model(text)


def _factory_checkpoint(label: str, checkpoint, weights: str) -> Optional[str]:
    if weights == "random" and checkpoint is not None:
        raise ConfigError(f"{label}: weights='random' and a checkpoint exclude each other")
    return _checkpoint_file(checkpoint)


def _from_module(text: str, *, checkpoint, sample_rate, weights, device) -> _base.AudioTagger:
    from audiobench.models import plugins
    from audiobench.models.adapter import wrap_contract_model

    ckpt = _factory_checkpoint(f"model {text}", checkpoint, weights)
    factory = plugins.load_factory(text)
    obj = plugins.call_factory(factory, label=f"model {text}", checkpoint=ckpt, sample_rate=sample_rate, device=str(device))
    model = wrap_contract_model(obj, name=text, sample_rate=sample_rate)
    module_name = text.partition(":")[0]
    files = _source_files([sys.modules.get(module_name), type(obj)])
    model.provenance = {
        "kind": "module", "name": text, "module": module_name, "factory": text.partition(":")[2],
        "distribution": _distribution_of(module_name), "version": _version_of(module_name),
        "source_files": files, "weights": weights, **_weights_record(model, obj, ckpt),
    }
    return model


def _from_plugin(text: str, entry, *, checkpoint, sample_rate, weights, download, device) -> _base.AudioTagger:
    from audiobench.models import plugins
    from audiobench.models.adapter import wrap_contract_model

    label = f"plugin model {text}"
    ckpt = plugins.plugin_checkpoint(entry, _factory_checkpoint(label, checkpoint, weights), weights, download)
    obj = plugins.call_factory(entry.factory, label=label, checkpoint=ckpt, sample_rate=sample_rate, device=str(device))
    model = wrap_contract_model(obj, name=text, sample_rate=sample_rate, spec=entry.spec)
    origin = entry.origin
    model.provenance = {
        "kind": "plugin", "name": text, "entry_point": origin.entry_point, "module": origin.module,
        "register": origin.value, "distribution": origin.distribution, "version": origin.version,
        "source_files": _distribution_files(origin.distribution) or _source_files([sys.modules.get(origin.module), type(obj)]),
        "weights": weights, **_weights_record(model, obj, ckpt),
    }
    return model


def _from_hf(ref: str, *, checkpoint, sample_rate, weights, download) -> _base.AudioTagger:
    from audiobench.models.hf import load_hf_model

    if checkpoint is not None:
        raise ConfigError(f"hf:{ref}: the folder holds the weights; a separate checkpoint does not apply")
    model = load_hf_model(ref, sample_rate=sample_rate, weights=weights, download=download)
    model.provenance = {
        "kind": "hf", "name": model.spec.name, **model.hf_info,
        "checkpoint": model.checkpoint_path, "checkpoint_sha256": model.checkpoint_sha256,
    }
    return model


def _from_object(obj: nn.Module, *, checkpoint, sample_rate, name) -> _base.AudioTagger:
    from audiobench.models.adapter import wrap_contract_model

    if checkpoint is not None:
        raise ConfigError("a model object carries its own weights; a checkpoint does not apply")
    cls = type(obj)
    label = name or f"{cls.__module__}.{cls.__qualname__}"
    model = wrap_contract_model(obj, name=label, sample_rate=sample_rate)
    model.provenance = {
        "kind": "object", "name": label, "class": f"{cls.__module__}.{cls.__qualname__}",
        "distribution": _distribution_of(cls.__module__), "version": _version_of(cls.__module__),
        "source_files": _source_files([cls]), **_weights_record(model, obj, None),
    }
    return model


# --- provenance ---------------------------------------------------------------------------------------
def _audiobench_version() -> str:
    from audiobench import __version__

    return __version__


def _source_files(objs: List[Any]) -> List[Dict[str, str]]:
    """[{path, sha256}] of the source files defining ``objs`` (modules or classes), outside torch
    and audiobench, deduplicated."""
    from audiobench.models.weights import file_sha256

    out: Dict[str, str] = {}
    for obj in objs:
        if obj is None:
            continue
        top = (getattr(obj, "__module__", None) or getattr(obj, "__name__", "")).split(".")[0]
        if top in ("torch", "audiobench", "builtins"):
            continue
        try:
            src = inspect.getsourcefile(obj)
        except TypeError:
            src = None
        if src and Path(src).is_file():
            p = str(Path(src).resolve())
            out.setdefault(p, file_sha256(Path(p)))
    return [{"path": p, "sha256": h} for p, h in out.items()]


def _distribution_files(dist_name: Optional[str]) -> List[Dict[str, str]]:
    """[{path, sha256}] of every Python source file of an installed distribution."""
    from audiobench.models.weights import file_sha256

    if not dist_name:
        return []
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return []
    out = []
    for f in dist.files or []:
        if str(f).endswith(".py"):
            p = Path(dist.locate_file(f)).resolve()
            if p.is_file():
                out.append({"path": str(p), "sha256": file_sha256(p)})
    return sorted(out, key=lambda r: r["path"])


def _top_package(module_name: str) -> str:
    return module_name.split(".")[0]


def _distribution_of(module_name: str) -> Optional[str]:
    dists = importlib.metadata.packages_distributions().get(_top_package(module_name))
    return dists[0] if dists else None


def _version_of(module_name: str) -> Optional[str]:
    dist = _distribution_of(module_name)
    if dist is None:
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the (name, dtype, shape, bytes) of every tensor of ``module.state_dict()``."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().cpu().contiguous()
        h.update(f"{key}\x00{t.dtype}\x00{tuple(t.shape)}\x00".encode("utf-8"))
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _weights_record(model, obj, ckpt: Optional[str]) -> Dict[str, Any]:
    from audiobench.models.weights import checkpoint_sha256

    path = ckpt or getattr(obj, "checkpoint_path", None)
    sha = checkpoint_sha256(Path(path)) if path and Path(path).exists() else None
    model.checkpoint_path = str(path) if path else None
    model.checkpoint_sha256 = sha
    return {"checkpoint": model.checkpoint_path, "checkpoint_sha256": sha,
            "state_dict_sha256": state_dict_sha256(obj) if isinstance(obj, nn.Module) else None}


def model_provenance(model) -> Dict[str, Any]:
    """Where a resolved model comes from, for ``run.json``: a JSON-ready dict with

    * ``kind``: registered / plugin / module / hf / object; ``name``;
    * plugins and modules: ``module``, ``distribution``, ``version``, ``entry_point`` (plugins);
      ``source_files``: [{path, sha256}] (a plugin: every .py file of its distribution);
    * ``checkpoint`` and ``checkpoint_sha256`` (a folder: the hash of all its files), and for
      models built in Python ``state_dict_sha256`` (their weights as loaded);
    * hf: ``folder``, ``revision`` (hub commit), ``model_class``, ``extractor_class``,
      ``transformers_version``;
    * ``labels``: how the classes were mapped (``how``, ``label_map``, ``label_map_sha256``);
    * ``variant`` when a ``@VARIANT`` was applied.

    :func:`verify_provenance` re-checks the hashes against the files on disk.
    """
    prov = getattr(model, "provenance", None)
    if prov is None:  # a model built without resolve_model
        spec = getattr(model, "spec", None)
        prov = {"kind": "registered" if spec is not None and spec.name in _registered_names() else "object",
                "name": getattr(spec, "name", type(model).__name__),
                "checkpoint": getattr(model, "checkpoint_path", None),
                "checkpoint_sha256": getattr(model, "checkpoint_sha256", None)}
    return copy.deepcopy(prov)


def _registered_names() -> List[str]:
    from audiobench.models import MODELS

    return MODELS.names()


def verify_provenance(provenance: Dict[str, Any]) -> List[str]:
    """Problems (one line each) between recorded provenance and the files on disk now: a source
    file, checkpoint or label map that is missing or whose sha256 changed. Empty = all match."""
    from audiobench.models.weights import checkpoint_sha256, file_sha256

    problems = []
    name = provenance.get("name", "?")
    for rec in provenance.get("source_files") or []:
        p = Path(rec["path"])
        if not p.is_file():
            problems.append(f"model {name}: source file {p} is gone")
        elif file_sha256(p) != rec["sha256"]:
            problems.append(f"model {name}: source file {p} changed (sha256 {file_sha256(p)[:12]}, recorded {rec['sha256'][:12]})")
    ck, sha = provenance.get("checkpoint"), provenance.get("checkpoint_sha256")
    if ck and sha:
        p = Path(ck)
        if not p.exists():
            problems.append(f"model {name}: checkpoint {p} is gone")
        elif checkpoint_sha256(p) != sha:
            problems.append(f"model {name}: checkpoint {p} changed (sha256 {checkpoint_sha256(p)[:12]}, recorded {sha[:12]})")
    labels = provenance.get("labels") or {}
    if labels.get("label_map") and labels.get("label_map_sha256"):
        p = Path(labels["label_map"])
        if not p.is_file():
            problems.append(f"model {name}: label map {p} is gone")
        elif file_sha256(p) != labels["label_map_sha256"]:
            problems.append(f"model {name}: label map {p} changed")
    return problems


# --- labels ------------------------------------------------------------------------------------------
def _map_labels(model: _base.AudioTagger, vocab, label_map):
    from audiobench.data.vocab import AUDIOSET_SIZE, AUDIOSET_VOCAB_HASH
    from audiobench.models.labels import LabelMappedTagger, plan_labels

    spec = model.spec
    labels = getattr(model, "labels", None)
    model_vocab_hash = model_vocab = None
    if labels is None and spec.vocabulary == "audioset-527" and spec.n_classes == AUDIOSET_SIZE:
        # the registered taggers (and registered-style plugin models): AudioSet class order
        from audiobench.data.vocab import default_vocabulary

        model_vocab_hash = AUDIOSET_VOCAB_HASH
        model_vocab = default_vocabulary() if label_map is not None else None
    plan = plan_labels(spec.name, n_model_classes=int(spec.n_classes), labels=labels, vocab=vocab, label_map=label_map,
                       model_vocab_hash=model_vocab_hash, model_vocab=model_vocab)
    record = plan.describe()
    if plan.is_identity:
        return model, record
    from audiobench.models.contract import model_device

    mapped = LabelMappedTagger(model, plan).to(model_device(model))
    mapped.eval()
    mapped.requires_grad_(False)
    return mapped, record
