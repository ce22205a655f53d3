"""The model contract as a public, checked type, and the checks run before any work.

A model from outside audiobench (a ``module:factory`` string, a plugin package, an ``nn.Module``
object) needs only this::

    class MyTagger(torch.nn.Module):
        sample_rate = 16000                       # Hz of the waveform forward() expects
        def forward(self, waveform):              # (B, T) float32 in [-1, 1]
            return logits                          # (B, C), pre-sigmoid

Optional members, each unlocking something:

* ``labels``: a sequence of C strings (AudioSet MIDs such as ``/m/03l9g`` or display names such
  as ``Hammer``), the meaning of each logit column; lets audiobench align the model's classes
  with the dataset's vocabulary (:mod:`audiobench.models.labels`).
* ``features(waveform) -> x`` and ``forward_features(x) -> logits`` (both or neither), with
  ``forward(w) == forward_features(features(w))``: the model's own front end, needed by the
  feature-domain conditions (``feature-gaussian``, ``feature-pgd``). Without them the features
  are the waveform itself (identity), which is all waveform conditions and attacks need.
* ``embed(waveform) -> (B, D)`` and ``head(embedding) -> logits`` with
  ``head(embed(w)) == forward(w)``: the latent-space metrics (convexity, density). A model that
  also has ``features()`` provides ``embed_features(features)`` instead of (or besides) ``embed``.
* ``family``: ``"cnn"``, ``"transformer"``, ... (shown in listings; CNNs get channels_last on CUDA).

:class:`AudioTagger` (a runtime-checkable :class:`typing.Protocol`) states the required part;
:class:`HasLabels`, :class:`HasFeatures` and :class:`HasEmbedding` the optional ones. (The engine's
own base class, :class:`audiobench.models.base.AudioTagger`, is the *internal* interface every
wrapped model presents; :mod:`audiobench.models.adapter` turns a contract model into one.)

Before any work the engine calls :func:`check_capabilities` (does the model have what every
requested condition needs?) and :func:`probe_model` (does it behave: shape, finite logits,
gradient, batch independence, consistent pipelines?). Both raise :class:`ModelContractError`,
a :class:`~audiobench.errors.ConfigError` with one line naming the model and the failed check.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Dict, Iterable, Protocol, Sequence, runtime_checkable

import torch

from audiobench.errors import AudiobenchError, ConfigError

# capability names (what :func:`capabilities` returns)
FEATURES = "features"
EMBEDDING = "embedding"

PROBE_BATCH = 2  # clips in the probe batch; clip 1 is also run alone (batch independence)
PROBE_SECONDS = 1.0
PROBE_RELATIVE_TOLERANCE = 1e-4  # of max(1, max |logit|): float rounding of batched kernels


class ModelContractError(ConfigError):
    """A model does not follow the contract (wrong type, shape, NaN, no gradient, ...): one line."""


@runtime_checkable
class AudioTagger(Protocol):
    """The required contract: ``forward(waveform (B, T) float32 in [-1, 1]) -> logits (B, C)``
    at ``sample_rate`` Hz. Any ``torch.nn.Module`` with these two members qualifies."""

    sample_rate: int

    def forward(self, waveform: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HasLabels(Protocol):
    """Optional: ``labels[c]`` names logit column ``c`` (an AudioSet MID or a display name)."""

    labels: Sequence[str]


@runtime_checkable
class HasFeatures(Protocol):
    """Optional: the model's front end, split out for feature-domain conditions."""

    def features(self, waveform: torch.Tensor) -> torch.Tensor: ...

    def forward_features(self, features: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HasEmbedding(Protocol):
    """Optional: an embedding and the head that maps it to the logits (latent-space metrics)."""

    def embed(self, waveform: torch.Tensor) -> torch.Tensor: ...

    def head(self, embedding: torch.Tensor) -> torch.Tensor: ...


# --- what a wrapped model can do -----------------------------------------------------------------
def model_name(model) -> str:
    spec = getattr(model, "spec", None)
    return str(getattr(spec, "name", None) or type(model).__name__)


def capabilities(model) -> frozenset:
    """What a wrapped model (an :class:`audiobench.models.base.AudioTagger`) offers beyond
    ``forward``: :data:`FEATURES` (its own features()/forward_features()) and :data:`EMBEDDING`
    (embed_features()/head()). Wrappers of outside models say so in ``contract_capabilities``;
    registered models all have a front end, and an embedding where their spec says so."""
    declared = getattr(model, "contract_capabilities", None)
    if declared is not None:
        return frozenset(declared)
    caps = {FEATURES}
    if getattr(getattr(model, "spec", None), "has_embedding", False):
        caps.add(EMBEDDING)
    return frozenset(caps)


def needs_gradient(conditions: Iterable[Any]) -> bool:
    """True when a condition uses the model (attacks, universal perturbations): the probe then
    checks that a gradient reaches the waveform."""
    return any(bool(getattr(c, "uses_model", False)) for c in conditions)


def check_capabilities(model, conditions: Iterable[Any], *, latent_metrics: bool = False) -> None:
    """Refuse, before any work, a model that lacks what a requested condition needs.

    ``conditions``: perturbation objects (the engine's list). Feature-domain conditions
    (``domain == "feature"``) need the model's own ``features()``/``forward_features()``;
    ``latent_metrics=True`` needs ``embed``/``head``. Raises :class:`ModelContractError` with one
    line, e.g. ``feature-pgd needs model.features(); mymodel:make has none``.
    """
    caps = capabilities(model)
    name = model_name(model)
    for cond in conditions:
        if getattr(cond, "domain", "waveform") == "feature" and FEATURES not in caps:
            kind = getattr(cond, "name", type(cond).__name__)
            raise ModelContractError(
                f"{kind} needs model.features(); {name} has none (add features() and forward_features() "
                f"to the model, or leave out the feature-domain conditions)"
            )
    if latent_metrics and EMBEDDING not in caps:
        raise ModelContractError(f"latent metrics need model.embed() and model.head(); {name} has none")


# --- the probe -----------------------------------------------------------------------------------
def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def probe_waveform(sample_rate: int, *, batch: int = PROBE_BATCH, seconds: float = PROBE_SECONDS, seed: int = 0,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """A seeded (batch, seconds * sample_rate) noise batch in [-1, 1] (std 0.1), the probe's input."""
    from audiobench.rng import ClipRNG

    n = max(1, int(round(float(seconds) * int(sample_rate))))
    rng = ClipRNG.for_clips(seed, [f"probe-{i}" for i in range(batch)], "model-probe", device)
    return (0.1 * rng.normal(n)).clamp(-1.0, 1.0)


def run_checked(name: str, what: str, fn, *args):
    """Call ``fn(*args)``; any exception but an audiobench one becomes one ModelContractError line."""
    try:
        return fn(*args)
    except AudiobenchError:
        raise
    except Exception as exc:
        raise ModelContractError(f"model {name}: {what} failed: {first_line(exc)}") from None


def check_logits(name: str, out: Any, batch: int, what: str = "forward()") -> torch.Tensor:
    """``out`` must be a floating (batch, C) tensor of finite values."""
    if not isinstance(out, torch.Tensor):
        raise ModelContractError(
            f"model {name}: {what} returned {type(out).__name__}, expected a logits tensor of shape ({batch}, C)"
        )
    if out.dim() != 2 or out.shape[0] != batch:
        raise ModelContractError(
            f"model {name}: {what} returned shape {tuple(out.shape)} for {batch} clip(s), expected ({batch}, C)"
        )
    if not out.dtype.is_floating_point:
        raise ModelContractError(f"model {name}: {what} returned {out.dtype} values, expected floating-point logits")
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        raise ModelContractError(
            f"model {name}: {what} returned NaN or inf logits ({int(bad.sum())} of {out.numel()} values) on a probe batch"
        )
    return out


def model_device(model) -> torch.device:
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def probe_model(model, *, sample_rate: int, n_classes: int, needs_grad: bool, device=None,
                seconds: float = PROBE_SECONDS, seed: int = 0) -> Dict[str, Any]:
    """Check, on a short seeded noise batch, that a wrapped model behaves; one line if not.

    ``model``: what :func:`audiobench.models.resolve.resolve_model` returned. ``sample_rate``: the
    dataset's rate (must be the model's input rate). ``n_classes``: the dataset vocabulary's size
    (after any label mapping, the model's output width must equal it). ``needs_grad``: attacks
    are requested (see :func:`needs_gradient`).

    Checks, in order: the forward runs; the output is a finite floating (B, C) tensor with
    C == ``n_classes``; a clip's logits do not depend on the other clips of the batch (clip 1 run
    alone matches its row, within 1e-4 of max(1, max |logit|)); ``forward_features(features(x))``
    matches ``forward(x)`` (the engine scores through the former); ``head(embed_features(...))``
    matches too where the model has an embedding; with ``needs_grad``, the BCE loss against
    random labels has a finite input gradient that is non-zero for every clip.

    Runs in fp32 without autocast and changes nothing in the model. Returns a summary (dict).
    """
    name = model_name(model)
    rate = int(getattr(model, "sample_rate", 0) or 0)
    if rate != int(sample_rate):
        raise ModelContractError(
            f"model {name} takes {rate} Hz waveforms but the data is {int(sample_rate)} Hz "
            f"(resolve it with sample_rate={int(sample_rate)} to put a resampler in front)"
        )
    dev = torch.device(device) if device is not None else model_device(model)
    with _exact_fp32(dev):
        return _probe(model, name, int(sample_rate), int(n_classes), bool(needs_grad), dev, seconds, seed)


@contextlib.contextmanager
def _exact_fp32(device: torch.device):
    """fp32 without autocast and without TF32 (restored after): the probe checks the model's
    maths, and TF32 convolutions would differ by ~1e-3 between batch sizes on their own."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def probe_relative_tolerance(model) -> float:
    """The probe's tolerance relative to max(1, max |logit|): float rounding of batched kernels
    in float32 (:data:`PROBE_RELATIVE_TOLERANCE`), or 16 units of roundoff of the network's
    lowest floating precision when it computes in less (``@fp16``/``@bf16`` variants: batched
    and single-clip fp16 kernels round differently, by ~1e-3 relative)."""
    dtypes = {t.dtype for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()}
    eps = max((torch.finfo(d).eps for d in dtypes), default=0.0)
    return max(PROBE_RELATIVE_TOLERANCE, 16 * eps) if eps > torch.finfo(torch.float32).eps else PROBE_RELATIVE_TOLERANCE


def _probe(model, name: str, sample_rate: int, n_classes: int, needs_grad: bool, dev: torch.device,
           seconds: float, seed: int) -> Dict[str, Any]:
    x = probe_waveform(sample_rate, seconds=seconds, seed=seed, device=dev)
    batch = x.shape[0]
    shape = tuple(x.shape)
    summary: Dict[str, Any] = {"batch_shape": list(shape), "n_classes": int(n_classes), "gradient_checked": False}
    with torch.no_grad():
        out = check_logits(name, run_checked(name, f"forward() on a probe batch of shape {shape}", model, x), batch)
        if out.shape[1] != int(n_classes):
            raise ModelContractError(
                f"model {name} outputs {out.shape[1]} classes but the dataset has {int(n_classes)} "
                f"(give the model labels that align with the dataset vocabulary, or a label map CSV model_class,dataset_class)"
            )
        scale = max(1.0, float(out.abs().max()))
        tol = probe_relative_tolerance(model) * scale
        alone = check_logits(name, run_checked(name, "forward() on one clip", model, x[1:2]), 1)
        diff = _max_diff(alone[0], out[1])
        summary["batch_independence_max_abs_diff"] = diff
        if not diff <= tol:
            raise ModelContractError(
                f"model {name}: the logits of a clip depend on the other clips of its batch (max difference {diff:.3g} "
                f"alone vs. in a batch of {batch}); batch-norm in training mode or cross-clip normalisation?"
            )
        feats = run_checked(name, "features()", model.features, x)
        via = check_logits(name, run_checked(name, "forward_features(features(x))", model.forward_features, feats), batch,
                           "forward_features(features(x))")
        diff = _max_diff(via, out)
        summary["pipeline_max_abs_diff"] = diff
        if not diff <= tol:
            raise ModelContractError(
                f"model {name}: forward_features(features(x)) differs from forward(x) by {diff:.3g}; "
                f"the two must compute the same logits"
            )
        if EMBEDDING in capabilities(model):
            emb = run_checked(name, "embed()", model.embed_features, feats)
            if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != batch:
                got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
                raise ModelContractError(f"model {name}: embed() returned {got}, expected ({batch}, D)")
            if not bool(torch.isfinite(emb).all()):
                raise ModelContractError(f"model {name}: embed() returned NaN or inf on a probe batch")
            via = check_logits(name, run_checked(name, "head(embed(x))", model.head, emb), batch, "head(embed(x))")
            diff = _max_diff(via, out)
            summary["head_max_abs_diff"] = diff
            if not diff <= tol:
                raise ModelContractError(f"model {name}: head(embed(x)) differs from forward(x) by {diff:.3g}")
    if needs_grad:
        _probe_gradient(model, name, x, int(n_classes), seed)
        summary["gradient_checked"] = True
    return summary


def _probe_gradient(model, name: str, x: torch.Tensor, n_classes: int, seed: int) -> None:
    import torch.nn.functional as F

    from audiobench.rng import ClipRNG

    targets = (ClipRNG.for_clips(seed, [f"probe-{i}" for i in range(x.shape[0])], "model-probe-targets", x.device)
               .uniform(n_classes) < 0.5).float()
    not_differentiable = (
        f"model {name} is not differentiable: no gradient reaches the waveform (torch.no_grad, .detach(), numpy or "
        f"integer steps inside forward?); attacks need one"
    )
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = run_checked(name, "forward() with gradients", model, xg)
        if not isinstance(logits, torch.Tensor) or not logits.requires_grad:
            raise ModelContractError(not_differentiable)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").mean(dim=-1).sum()
        (grad,) = run_checked(name, "the backward pass", lambda: torch.autograd.grad(loss, xg, allow_unused=True))
    if grad is None:
        raise ModelContractError(not_differentiable)
    if not bool(torch.isfinite(grad).all()):
        raise ModelContractError(f"model {name}: the input gradient holds NaN or inf on a probe batch; attacks need a finite one")
    zero = (grad.abs().amax(dim=1) == 0).nonzero()
    if zero.numel():
        # A gradient that exists but is zero is what gradient masking (a defence, or a quantised
        # front end) looks like: the model is still benchmarked, and the attack trust checks flag
        # the conditions it makes unreliable ("input gradient zero/NaN/inf for N clips").
        import warnings

        warnings.warn(f"model {name}: the input gradient is zero on probe clip {int(zero[0, 0])} (gradient masking?); "
                      f"gradient attacks may fail silently, and the trust checks will say so")
