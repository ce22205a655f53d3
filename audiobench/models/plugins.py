"""Models from outside audiobench: ``module:factory`` strings and installed plugin packages.

``module:factory``
    ``--model my_package.my_module:make`` imports ``my_package.my_module`` (installed, on
    ``PYTHONPATH``, or in the current directory) and calls ``make``. ``factory`` may be a dotted
    attribute path (``module:Class.build``).

The factory calling convention (module factories and plugin factories alike)
    ``factory(checkpoint=None, sample_rate=None, device=None)``; each keyword is passed only if
    the factory's signature names it (or takes ``**kwargs``), so a zero-argument factory works.
    ``checkpoint`` is the ``--checkpoint`` path as a string (a factory that takes no
    ``checkpoint`` refuses one), ``sample_rate`` the rate the data will arrive at (a hint: the
    adapter resamples to the model's own ``sample_rate`` anyway) and ``device`` where the model
    will run (e.g. ``"cuda:0"``; the model is moved there afterwards in any case). The factory is
    called with torch's global RNG seeded (0) and restored afterwards, so a randomly initialised
    model is the same in every process. It returns a contract model
    (:class:`audiobench.models.contract.AudioTagger`: an ``nn.Module`` with ``forward`` and
    ``sample_rate``) or a subclass of :class:`audiobench.models.base.AudioTagger`.

Plugin packages: the entry-point group ``audiobench.models``
    A distribution declares, e.g. in its ``setup.cfg``::

        [options.entry_points]
        audiobench.models =
            my_models = my_package.models:register

    and the object named is a callable ``register(registry)``: it calls
    ``registry.register_model(spec, factory)`` once per model, with a frozen
    :class:`~audiobench.models.base.ModelSpec` (its ``name`` is the model's name in
    ``--model``; family, sample rate, description, reference mAP and, optionally, default
    ``weights`` are listed by ``audiobench list models``) and a factory following the convention
    above. When the spec names default weights (``WeightsSpec`` with a file name and, for a
    download, url + sha256) and no ``--checkpoint`` is given, those weights are found or
    downloaded and verified like a registered model's and passed as ``checkpoint``. Plugins are
    loaded on first need (listing or resolving a name), never at import time; a plugin that fails
    to load is reported with a warning and, when its model is asked for, with its error.

:func:`list_models` is the one listing of every model, built-in and plugin.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch

from audiobench.errors import AudiobenchError, ConfigError, WeightsError
from audiobench.models.base import ModelSpec
from audiobench.models.contract import ModelContractError, first_line
from audiobench.registry import Registry

ENTRY_POINT_GROUP = "audiobench.models"
FACTORY_KEYWORDS = ("checkpoint", "sample_rate", "device")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


# --- module:factory --------------------------------------------------------------------------------
def is_factory_reference(source: str) -> bool:
    """``"pkg.mod:factory"`` (a dotted module path, a colon, a dotted attribute path)?"""
    mod, sep, attr = source.partition(":")
    return bool(sep) and bool(_DOTTED.fullmatch(mod)) and bool(_DOTTED.fullmatch(attr))


def _import_or_missing(module_name: str, what: str):
    """Import ``module_name``; a ModuleNotFoundError escapes only when the module itself (or a
    parent package) is missing, anything else is one ConfigError line."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise
        raise ConfigError(f"{what}: importing module {module_name!r} failed: {first_line(exc)}") from None
    except AudiobenchError:
        raise
    except Exception as exc:
        raise ConfigError(f"{what}: importing module {module_name!r} failed: {first_line(exc)}") from None


def import_module(module_name: str, what: str):
    """Import ``module_name``; the current directory is also searched (the console script's
    ``sys.path`` does not hold it). One :class:`ConfigError` line when it cannot be imported."""
    cwd = os.getcwd()
    try:
        return _import_or_missing(module_name, what)
    except ModuleNotFoundError as exc:
        missing = exc
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
        try:
            return _import_or_missing(module_name, what)
        except ModuleNotFoundError:
            pass
        finally:
            if cwd in sys.path:
                sys.path.remove(cwd)
    raise ConfigError(
        f"{what}: cannot import module {module_name!r} ({first_line(missing)}); is it installed, on PYTHONPATH "
        f"or in the current directory?"
    )


def load_factory(reference: str) -> Callable[..., Any]:
    """The callable named by ``"pkg.mod:factory"``."""
    if not is_factory_reference(reference):
        raise ConfigError(f"model {reference!r}: expected 'package.module:factory'")
    module_name, _, attr = reference.partition(":")
    obj: Any = import_module(module_name, f"model {reference}")
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"model {reference}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"model {reference}: {attr!r} is a {type(obj).__name__}, not a callable factory")
    return obj


def factory_keywords(factory: Callable[..., Any], label: str) -> frozenset:
    """The keywords of the calling convention that ``factory`` accepts (all of them with
    ``**kwargs``; none when it has no inspectable signature). A required argument outside the
    convention is refused with one line."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and C callables: no signature
        return frozenset()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    for p in params.values():
        if p.default is inspect.Parameter.empty and p.kind not in variadic and p.name not in FACTORY_KEYWORDS:
            raise ConfigError(
                f"{label}: its factory needs the argument {p.name!r}; a factory is called as "
                f"factory(checkpoint=..., sample_rate=..., device=...) with only the keywords it names"
            )
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset(FACTORY_KEYWORDS)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(k for k in FACTORY_KEYWORDS if k in params and params[k].kind in named)


def call_factory(factory: Callable[..., Any], *, label: str, checkpoint: Optional[str] = None,
                 sample_rate: Optional[int] = None, device: Optional[str] = None) -> Any:
    """Call ``factory`` with the keywords its signature accepts (see the module doc), torch's
    global RNG seeded (0) and restored; its exceptions become one ModelContractError line."""
    accepted = factory_keywords(factory, label)
    if checkpoint is not None and "checkpoint" not in accepted:
        raise ConfigError(f"{label}: its factory takes no 'checkpoint' argument, so checkpoint {checkpoint} cannot be passed to it")
    values = {
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "sample_rate": None if sample_rate is None else int(sample_rate),
        "device": None if device is None else str(device),
    }
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return factory(**{k: v for k, v in values.items() if k in accepted})
    except AudiobenchError:
        raise
    except Exception as exc:
        raise ModelContractError(f"{label}: its factory raised {first_line(exc)}") from None


# --- plugins -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PluginOrigin:
    """Where a plugin model comes from (recorded in provenance and shown in listings)."""

    entry_point: str  # the entry point's name
    value: str  # "pkg.mod:register"
    module: str  # "pkg.mod"
    distribution: Optional[str]  # the installed distribution's name
    version: Optional[str]


@dataclasses.dataclass(frozen=True)
class PluginEntry:
    spec: ModelSpec
    factory: Callable[..., Any]  # the factory convention above
    origin: PluginOrigin


PLUGINS: Registry[PluginEntry] = Registry("plugin model")
_loaded = False
_failed: Dict[str, str] = {}  # entry point name -> its one-line error


class PluginRegistry:
    """What a plugin's ``register(registry)`` callable receives."""

    def __init__(self, origin: PluginOrigin):
        self.origin = origin
        self.names: List[str] = []

    def register_model(self, spec: ModelSpec, factory: Callable[..., Any]) -> None:
        """Register one model: a frozen :class:`ModelSpec` and its factory (module doc)."""
        where = f"plugin {self.origin.entry_point} ({self.origin.value})"
        if not isinstance(spec, ModelSpec):
            raise ConfigError(f"{where}: register_model needs an audiobench.models.base.ModelSpec, got {type(spec).__name__}")
        if not callable(factory):
            raise ConfigError(f"{where}: the factory of model {spec.name!r} is not callable")
        from audiobench.models import MODELS

        if spec.name in MODELS:
            raise ConfigError(f"{where}: model name {spec.name!r} is already a built-in audiobench model")
        if ":" in spec.name or "@" in spec.name:
            raise ConfigError(f"{where}: model name {spec.name!r} must not contain ':' or '@'")
        if spec.name in PLUGINS:
            other = PLUGINS.get(spec.name).origin
            raise ConfigError(f"{where}: model name {spec.name!r} is already registered by plugin {other.entry_point} ({other.value})")
        PLUGINS.register(spec.name, PluginEntry(spec, factory, self.origin))
        self.names.append(spec.name)


def _origin(ep) -> PluginOrigin:
    dist = getattr(ep, "dist", None)
    name = version = None
    if dist is not None:
        name = dist.metadata["Name"] if dist.metadata is not None else None
        version = dist.version
    return PluginOrigin(ep.name, ep.value, ep.value.partition(":")[0].strip(), name, version)


def load_plugins() -> Dict[str, str]:
    """Load every ``audiobench.models`` entry point once; returns {entry point: error} of failures.

    A failing plugin is skipped with a warning (listing and the other models keep working)."""
    global _loaded
    if _loaded:
        return dict(_failed)
    _loaded = True
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        origin = _origin(ep)
        where = f"plugin {origin.entry_point} ({origin.value}{', from ' + origin.distribution if origin.distribution else ''})"
        try:
            register = ep.load()
            if not callable(register):
                raise ConfigError(f"{where}: {origin.value} is not a callable register(registry)")
            register(PluginRegistry(origin))
        except AudiobenchError as exc:
            msg = str(exc) if str(exc).startswith("plugin ") else f"{where}: {exc}"
            _failed[origin.entry_point] = msg
        except Exception as exc:
            _failed[origin.entry_point] = f"{where} failed to load: {first_line(exc)}"
        if origin.entry_point in _failed:
            warnings.warn(_failed[origin.entry_point], stacklevel=2)
    return dict(_failed)


def reset_plugins() -> None:
    """Forget the loaded plugins (tests; a changed ``sys.path``)."""
    global _loaded
    PLUGINS._entries.clear()
    _failed.clear()
    _loaded = False


def plugin_entry(name: str) -> Optional[PluginEntry]:
    load_plugins()
    return PLUGINS.get(name) if name in PLUGINS else None


def unknown_model(name: str) -> AudiobenchError:
    """The error for a name that is neither built-in nor a plugin model: "did you mean", the
    known names, and a failed plugin's own error where the name is that plugin's."""
    from audiobench.errors import UnknownNameError
    from audiobench.models import MODELS

    load_plugins()
    if name in _failed:
        return ConfigError(_failed[name])
    combined: Registry[object] = Registry("model")
    for n in MODELS.names() + PLUGINS.names():
        combined.register(n, n)
    msg = combined.unknown_message(name)
    return UnknownNameError(f"{msg} (or give 'module:factory' or 'hf:FOLDER')")


# --- the listing ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelRow:
    """One row of ``audiobench list models``."""

    name: str
    family: str
    sample_rate: int
    reference_mAP: Optional[float]
    description: str
    source: str  # "audiobench" for built-ins, else the plugin's distribution name
    version: Optional[str]

    def line(self) -> str:
        ref = f"{self.reference_mAP:.3f}" if self.reference_mAP is not None else "-"
        src = self.source + (f" {self.version}" if self.version and self.source != "audiobench" else "")
        return f"{self.name}\t{self.family}\t{self.sample_rate} Hz\tmAP {ref}\t{self.description}\t[{src}]"


def list_models() -> List[ModelRow]:
    """Every model usable by name: built-ins (source ``audiobench``), then plugin models."""
    from audiobench import __version__
    from audiobench.models import MODELS

    rows = [ModelRow(n, e.spec.family, int(e.spec.sample_rate), e.spec.reference_mAP, e.spec.description, "audiobench", __version__)
            for n, e in MODELS.items()]
    load_plugins()
    for n, e in PLUGINS.items():
        src = e.origin.distribution or e.origin.module
        rows.append(ModelRow(n, e.spec.family, int(e.spec.sample_rate), e.spec.reference_mAP, e.spec.description, src,
                             e.origin.version))
    return rows


def plugin_checkpoint(entry: PluginEntry, checkpoint: Optional[str], weights: str, download: bool) -> Optional[str]:
    """The checkpoint handed to a plugin factory: ``checkpoint``, else the spec's verified default
    weights (when it names some and ``weights == "default"``), else None."""
    if checkpoint is not None:
        return checkpoint
    if weights != "default" or entry.spec.weights is None:
        return None
    from audiobench.models.weights import resolve_weights

    try:
        return str(resolve_weights(entry.spec, download=download))
    except WeightsError as exc:
        raise WeightsError(f"plugin model {entry.spec.name}: {exc}") from None
