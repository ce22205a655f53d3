"""Sharpness of a model's loss in weight space: average-case, worst-case (adaptive SAM) and the top
Hessian eigenvalue.

The loss is the one the attacks maximise (:func:`audiobench.perturb.attacks.bce_per_clip`): binary
cross-entropy with logits, mean over the vocabulary's classes, then mean over the clips,

    L(w) = 1/N · Σ_clips mean_classes BCE(f_w(x), y)          (nats)

and the weights ``w`` are the *network's* floating parameters
(:func:`audiobench.models.network.network_parameters`: everything after the fixed front end;
buffers such as batch-norm running statistics are not weights and stay as they are). The front end
does not depend on ``w``, so the network inputs are computed once per clip and reused.

Measures, each a row of the table (``measure`` column):

``loss``
    ``L(w)`` on the clips (rho 0).
``average_sharpness`` (per rho)
    ``E_z[L(w + rho·|w|⊙z)] − L(w)``, ``z ~ N(0, I)``: every weight moves by Gaussian noise with
    standard deviation ``rho·|w_i|``, a fraction ``rho`` of its own magnitude (element-wise
    relative noise, the adaptive scaling of Kwon et al. 2021 and Andriushchenko et al. 2023).
    Element-wise rather than per tensor (``rho·‖W‖``) because it is invariant to rescaling single
    channels: a convolution followed by batch norm, or a ReLU unit, computes the same function
    when one channel's weights are multiplied by ``a > 0`` and the next layer's by ``1/a``; a
    per-element relative perturbation of the rescaled network is the rescaled perturbation, so
    the measure gives the same value, while a per-tensor one does not. Mean over ``draws`` draws,
    with a 95 % t-interval over the draws (it describes the noise draws, not the choice of clips);
    the same ``z`` are used for every rho (common random numbers: a smoother curve in rho).
``worst_sharpness`` (per rho)
    ``max_{‖δ‖∞ ≤ rho} L(w + |w|⊙δ) − L(w)``: the largest loss increase when every weight may
    move by up to a fraction ``rho`` of its own magnitude (the adaptive ℓ∞ worst-case sharpness
    of Andriushchenko et al. 2023, SAM's inner maximisation with the element-wise scaling of
    adaptive SAM), approximated by ``steps`` signed ascent steps in weight space,
    ``δ ← clip(δ + α·sign(∇L), −rho, rho)``, ``α = rho`` for one step (then it is exactly the
    first-order maximiser, ASAM's step in the ℓ∞ geometry) and ``2.5·rho/steps`` for several, as
    the input attacks do; the largest loss over the iterates (and δ = 0) is kept, so the value is
    >= 0 and a lower bound on the true maximum. ℓ∞ rather than SAM's ℓ2 ball so that rho means
    what it means for the average case, a relative change of each weight (rounding a weight to a
    quantization grid is such a bounded relative change): an ℓ2 ball with the same root-mean-square
    change (radius ``rho·√d``) lets the ascent put the whole budget on a few weights and change
    them by many times their size.
``hessian_max_eig``
    The eigenvalue of largest magnitude of ``∇²L(w)`` (raw weight coordinates), by power iteration
    on Hessian-vector products (double backward), from a seeded random start, until the Rayleigh
    quotient changes by at most ``hessian_tol`` (relative) or after ``hessian_iters`` products;
    ``converged`` says which. Units: nats per squared weight unit. Not invariant to the rescalings
    above (unlike the two measures in rho); at a minimum it is the largest curvature.

Sharpness values are losses (nats, the unit of ``L``). Randomness comes only from
``torch.Generator`` objects seeded from ``(seed, measure, draw, parameter name)``
(:func:`audiobench.rng.derive_seed`), drawn on the CPU, so values do not depend on the device,
the parameter order or the other measures requested. The model itself is never modified: the
perturbed weights are passed with :func:`torch.func.functional_call` (frozen models work as they
are; their weights stay bit-identical, which the tests check).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from audiobench.errors import ConfigError
from audiobench.models.network import eval_mode, model_parts, network_parameters
from audiobench.perturb.attacks import bce_per_clip
from audiobench.rng import derive_seed

MEASURES = ("average", "worst", "hessian")
ROW_MEASURES = {"average": "average_sharpness", "worst": "worst_sharpness", "hessian": "hessian_max_eig"}
COLUMNS = ("run_id", "model", "measure", "rho", "value", "ci_low", "ci_high", "n_clips", "n_draws", "steps",
           "converged", "unit")
LOSS_UNIT = "nats"
HESSIAN_UNIT = "nats/weight^2"
DEFAULT_RHOS = (0.01, 0.02, 0.05, 0.1)
FEATURE_CACHE_BYTES = 2 * 2 ** 30  # network inputs kept in memory up to this size, else recomputed per pass

Params = Dict[str, torch.Tensor]
LossTerms = Callable[[Mapping[str, torch.Tensor]], Iterable[torch.Tensor]]


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharpnessSettings:
    """What to measure. ``rhos``: relative perturbation sizes (dimensionless, >= 0); ``draws``:
    noise draws per rho (average case); ``steps``: ascent steps (worst case); ``hessian_iters`` /
    ``hessian_tol``: power-iteration budget and relative tolerance; ``seed``: the run seed."""

    rhos: Tuple[float, ...] = DEFAULT_RHOS
    draws: int = 8
    steps: int = 3
    hessian_iters: int = 20
    hessian_tol: float = 1e-3
    measures: Tuple[str, ...] = MEASURES
    seed: int = 0

    def __post_init__(self):
        rhos = tuple(self.rhos)
        if not rhos:
            raise ConfigError("--rho: no values given")
        for r in rhos:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(float(r)) or r < 0:
                raise ConfigError(f"--rho {r!r}: must be a finite number >= 0 (a relative weight change)")
        if len(set(rhos)) != len(rhos):
            raise ConfigError(f"--rho {','.join(f'{r:g}' for r in rhos)}: a value appears twice")
        object.__setattr__(self, "rhos", tuple(float(r) for r in rhos))
        for name, low in (("draws", 1), ("steps", 1), ("hessian_iters", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"--{name.replace('_', '-')} {v!r}: must be an integer >= {low}")
        if not (isinstance(self.hessian_tol, (int, float)) and math.isfinite(self.hessian_tol) and self.hessian_tol > 0):
            raise ConfigError(f"--hessian-tol {self.hessian_tol!r}: must be a finite number > 0")
        measures = tuple(self.measures)
        unknown = [m for m in measures if m not in MEASURES]
        if unknown or not measures:
            raise ConfigError(f"--measures {','.join(measures) or '(none)'}: choose from {', '.join(MEASURES)}")
        object.__setattr__(self, "measures", measures)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["rhos"], d["measures"] = list(self.rhos), list(self.measures)
        return d


# ------------------------------------------------------------------------------------------------
# pure pieces on (loss terms, parameters)
# ------------------------------------------------------------------------------------------------
def _total(terms: Iterable[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(sum(float(t.double()) for t in terms))


def _loss_and_grad(loss_terms: LossTerms, params: Params) -> Tuple[float, Params]:
    """Loss and its gradient w.r.t. ``params`` (summed over the terms; only one term's graph is
    alive at a time)."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    total = 0.0
    with torch.enable_grad():
        for term in loss_terms(leaves):
            gs = torch.autograd.grad(term, list(leaves.values()), allow_unused=True)
            for n, g in zip(leaves, gs):
                if g is not None:
                    grads[n] += g
            total += float(term.detach().double())
    return total, grads


def hessian_vector_product(loss_terms: LossTerms, params: Params, vector: Params) -> Params:
    """``∇²L(params) · vector`` by double backward, summed over the terms."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    with torch.enable_grad():
        for term in loss_terms(leaves):
            gs = torch.autograd.grad(term, list(leaves.values()), create_graph=True, allow_unused=True)
            dot = sum((g * vector[n]).sum() for n, g in zip(leaves, gs) if g is not None)
            if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                continue  # this term does not depend on the weights (or is linear in them)
            hs = torch.autograd.grad(dot, list(leaves.values()), allow_unused=True)
            for n, h in zip(leaves, hs):
                if h is not None:
                    out[n] += h.detach()
    return out


def _dot(a: Params, b: Params) -> float:
    return float(sum(float((a[n].double() * b[n].double()).sum()) for n in a))


def _normal_like(params: Params, seed: int, *key) -> Params:
    """Standard normal tensors shaped like ``params``, each from its own CPU generator seeded from
    (seed, *key, parameter name): independent of parameter order and device."""
    out = {}
    for n, p in params.items():
        g = torch.Generator().manual_seed(derive_seed(seed, *key, n))
        out[n] = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32).to(p.device)
    return out


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in at least float32 (float64 stays float64): the precision perturbations are formed in."""
    return t if t.dtype == torch.float64 else t.float()


def _perturbed(params: Params, direction: Params, scale: float) -> Params:
    """``w + scale·|w|⊙direction`` per tensor (formed in at least float32), in each weight's dtype."""
    return {n: (_wide(p) + scale * _wide(p).abs() * direction[n].to(_wide(p).dtype)).to(p.dtype)
            for n, p in params.items()}


def t_interval(values: Sequence[float], level: float = 0.95) -> Tuple[float, float, float]:
    """(mean, low, high): the Student-t confidence interval of the mean of ``values``
    (NaN bounds for fewer than two values)."""
    from scipy import stats

    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * float(x.std(unbiased=True)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def average_sharpness(loss_terms: LossTerms, params: Params, rhos: Sequence[float], draws: int, seed: int = 0,
                      base_loss: Optional[float] = None, on_pass: Optional[Callable[[], None]] = None
                      ) -> Dict[float, List[float]]:
    """{rho: [L(w + rho·|w|⊙z_d) − L(w) for each draw d]} (see the module docstring)."""
    base = _total(loss_terms(params)) if base_loss is None else base_loss
    out: Dict[float, List[float]] = {float(r): [] for r in rhos}
    for d in range(draws):
        z = _normal_like(params, seed, "average", d)
        for r in rhos:
            out[float(r)].append(_total(loss_terms(_perturbed(params, z, float(r)))) - base)
            if on_pass is not None:
                on_pass()
        del z
    return out


def worst_sharpness(loss_terms: LossTerms, params: Params, rho: float, steps: int,
                    base_loss: Optional[float] = None, on_pass: Optional[Callable[[], None]] = None) -> float:
    """``max L(w + |w|⊙δ) − L(w)`` over the ascent iterates in ``‖δ‖∞ ≤ rho`` (module docstring)."""
    rho = float(rho)
    step = rho if steps == 1 else 2.5 * rho / steps
    delta = {n: torch.zeros_like(_wide(p)) for n, p in params.items()}
    base = base_loss
    best = 0.0  # δ = 0 is in the ball

    def point() -> Params:
        return _perturbed(params, delta, 1.0)

    for t in range(steps):
        loss, grad = _loss_and_grad(loss_terms, point())
        if on_pass is not None:
            on_pass()
        if base is None:
            base = loss  # t = 0 is the unperturbed point
        if t > 0:
            best = max(best, loss - base)
        if rho == 0:
            break
        # sign(|w|⊙∇L) = sign(∇L) where w != 0; zero weights do not move whatever δ is
        delta = {n: (delta[n] + step * torch.sign(grad[n])).clamp_(-rho, rho) for n in params}
    final = _total(loss_terms(point()))
    if on_pass is not None:
        on_pass()
    return max(best, final - (base if base is not None else final))


@dataclass
class PowerIterationResult:
    eigenvalue: float
    iterations: int
    converged: bool
    relative_change: float


def hessian_max_eigenvalue(loss_terms: LossTerms, params: Params, iters: int = 20, tol: float = 1e-3, seed: int = 0,
                           on_pass: Optional[Callable[[], None]] = None) -> PowerIterationResult:
    """Power iteration on Hessian-vector products: the eigenvalue of largest magnitude of
    ``∇²L(params)`` (the Rayleigh quotient ``vᵀHv`` of the last unit vector), stopping once it
    changes by at most ``tol`` relative to itself."""
    v = _normal_like(params, seed, "hessian")
    n0 = math.sqrt(_dot(v, v))
    v = {n: t / n0 for n, t in v.items()}
    prev = None
    lam, change = 0.0, math.inf
    for k in range(1, iters + 1):
        hv = hessian_vector_product(loss_terms, params, v)
        if on_pass is not None:
            on_pass()
        lam = _dot(v, hv)
        norm = math.sqrt(_dot(hv, hv))
        if norm == 0 or not math.isfinite(norm):
            return PowerIterationResult(lam if math.isfinite(norm) else math.nan, k, norm == 0, 0.0)
        v = {n: t / norm for n, t in hv.items()}
        if prev is not None:
            change = abs(lam - prev) / max(abs(lam), 1e-30)
            if change <= tol:
                return PowerIterationResult(lam, k, True, change)
        prev = lam
    return PowerIterationResult(lam, iters, False, change)


# ------------------------------------------------------------------------------------------------
# models and data
# ------------------------------------------------------------------------------------------------
class _Network(nn.Module):
    """``tagger.forward_features`` as a module's forward, so functional_call can swap its weights."""

    def __init__(self, tagger: nn.Module):
        super().__init__()
        self.tagger = tagger

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.tagger.forward_features(features)


def _pair(b) -> Tuple[torch.Tensor, torch.Tensor]:
    if hasattr(b, "waveform") and hasattr(b, "targets"):
        return b.waveform, b.targets
    wave, targets = b
    return wave, targets


class _NetworkInputs:
    """The clips' network inputs (``model.features``, no gradient) and float targets on the
    model's device. ``batches`` is iterated once up front; the inputs are kept in memory when they
    fit in ``cache_bytes``, otherwise ``batches`` is iterated again for every pass (it must then
    be re-iterable, e.g. a list or an object whose ``__iter__`` reopens the data)."""

    def __init__(self, model: nn.Module, batches, cache_bytes: int = FEATURE_CACHE_BYTES):
        self.model = model
        self.batches = batches
        self.device = next(iter(model.parameters())).device
        self.cached: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = []
        self.n_clips = 0
        size = 0
        for b in batches:
            wave, y = _pair(b)
            self.n_clips += int(wave.shape[0])
            if self.cached is not None:
                item = self._prepare(wave, y)
                size += item[0].element_size() * item[0].numel()
                if size <= cache_bytes:
                    self.cached.append(item)
                else:
                    self.cached = None  # too big: recompute per pass

    def _prepare(self, wave: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.model.features(wave.to(self.device)), y.to(self.device).float()

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.cached is not None:
            return iter(self.cached)
        return (self._prepare(*_pair(b)) for b in self.batches)


def model_loss_terms(model: nn.Module, inputs: _NetworkInputs) -> LossTerms:
    """loss_terms(params) yields, per batch, Σ_clips bce_per_clip / N for the network with weights
    ``params`` (names as in :func:`network_parameters`)."""
    net = _Network(model)
    n = inputs.n_clips

    def terms(params: Mapping[str, torch.Tensor]):
        full = {f"tagger.{k}": v for k, v in params.items()}
        for feats, targets in inputs:
            logits = torch.func.functional_call(net, full, (feats,))
            if logits.shape[-1] != targets.shape[-1]:
                raise ConfigError(f"model {model.spec.name} outputs {logits.shape[-1]} classes but the data "
                                  f"has {targets.shape[-1]}")
            yield bce_per_clip(logits, targets).sum() / n

    return terms


def _weights_of(name: str, model: nn.Module) -> Params:
    info = getattr(model, "variant_info", None) or {}
    if info.get("float_weights") is False:
        raise ConfigError(f"model {name}: its weights are packed int8 kernels, not float parameters; measure the "
                          f"float model or a float-weight variant (@w4, @fp16, @bf16)")
    params = network_parameters(model, model_parts(model))
    if not params:
        raise ConfigError(f"model {name}: no network weights to perturb")
    return {n: p.detach() for n, p in params.items()}


def measure_sharpness(
    models: Union[Mapping[str, nn.Module], Sequence[nn.Module]],
    batches: Sequence,
    settings: SharpnessSettings = SharpnessSettings(),
    *,
    run_id: str = "",
    on_pass: Optional[Callable[[str], None]] = None,
    cache_bytes: int = FEATURE_CACHE_BYTES,
):
    """Measure every model on the same clips; returns ``(table, provenance)``.

    Args:
        models: ``{name: AudioTagger}`` or a sequence of AudioTaggers (named by ``spec.name``).
        batches: the clips, as :class:`~audiobench.data.Batch` objects or ``(waveform, targets)``
            pairs (waveform (B, T) float32 at each model's ``sample_rate``; targets (B, C) 0/1);
            a list, or any re-iterable when the network inputs may exceed ``cache_bytes``.
        settings: :class:`SharpnessSettings`.
        run_id: written into the table's ``run_id`` column.
        on_pass: called with the model's name after every full pass over the clips (progress).
        cache_bytes: keep the network inputs in memory up to this many bytes.

    Returns a pandas DataFrame with :data:`COLUMNS` (rows: ``loss``, then per rho
    ``average_sharpness`` and ``worst_sharpness``, then ``hessian_max_eig``; see the module
    docstring) and a JSON-able provenance dict (settings, definitions, per model: number of
    weights and tensors, per-draw values, power-iteration details). The models are left exactly
    as they were.
    """
    import pandas as pd

    if not isinstance(settings, SharpnessSettings):
        raise TypeError("settings must be a SharpnessSettings")
    named = dict(models) if isinstance(models, Mapping) else {m.spec.name: m for m in models}
    if not named:
        raise ConfigError("no model given")
    rows: List[Dict[str, Any]] = []
    prov: Dict[str, Any] = {"settings": settings.to_dict(), "models": {}, "definitions": definitions()}
    for name, model in named.items():
        tick = (lambda: on_pass(name)) if on_pass is not None else None
        with eval_mode(model):
            params = _weights_of(name, model)
            inputs = _NetworkInputs(model, batches, cache_bytes)
            n = inputs.n_clips
            if n == 0:
                raise ConfigError("no clips to measure sharpness on (check --limit and the data)")
            terms = model_loss_terms(model, inputs)
            base = _total(terms(params))
            if tick:
                tick()
            if not math.isfinite(base):
                raise ConfigError(f"model {name}: the loss on these clips is not finite ({base})")
            info: Dict[str, Any] = {"n_weights": int(sum(p.numel() for p in params.values())),
                                    "n_tensors": len(params), "loss": base,
                                    "features_cached": inputs.cached is not None}
            row = dict(run_id=run_id, model=name, n_clips=n)
            rows.append({**row, "measure": "loss", "rho": 0.0, "value": base, "ci_low": math.nan, "ci_high": math.nan,
                         "n_draws": 1, "steps": 0, "converged": None, "unit": LOSS_UNIT})
            if "average" in settings.measures:
                per_draw = average_sharpness(terms, params, settings.rhos, settings.draws, settings.seed, base, tick)
                info["average_draws"] = {f"{r:g}": v for r, v in per_draw.items()}
                for r, vals in per_draw.items():
                    mean, lo, hi = t_interval(vals)
                    rows.append({**row, "measure": ROW_MEASURES["average"], "rho": r, "value": mean, "ci_low": lo,
                                 "ci_high": hi, "n_draws": len(vals), "steps": 0, "converged": None, "unit": LOSS_UNIT})
            if "worst" in settings.measures:
                for r in settings.rhos:
                    v = worst_sharpness(terms, params, r, settings.steps, base, tick)
                    rows.append({**row, "measure": ROW_MEASURES["worst"], "rho": r, "value": v, "ci_low": math.nan,
                                 "ci_high": math.nan, "n_draws": 1, "steps": settings.steps, "converged": None,
                                 "unit": LOSS_UNIT})
            if "hessian" in settings.measures:
                # a variant that scales its backward pass (fp16, against underflow) turns that off for
                # the Hessian products, whose values count; the worst case uses only gradient signs,
                # which the scaling leaves unchanged while keeping small gradients from flushing to 0
                exact = getattr(model, "exact_weight_gradients", contextlib.nullcontext)
                with exact():
                    res = hessian_max_eigenvalue(terms, params, settings.hessian_iters, settings.hessian_tol,
                                                 settings.seed, tick)
                info["hessian"] = asdict(res)
                rows.append({**row, "measure": ROW_MEASURES["hessian"], "rho": math.nan, "value": res.eigenvalue,
                             "ci_low": math.nan, "ci_high": math.nan, "n_draws": 1, "steps": res.iterations,
                             "converged": res.converged, "unit": HESSIAN_UNIT})
        del inputs, terms, params
        prov["models"][name] = info
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table, prov


def passes_per_model(settings: SharpnessSettings) -> int:
    """Upper bound on full passes over the clips per model (for progress bars): the loss, each
    draw × rho, (steps + 1) per rho, up to ``hessian_iters`` products."""
    n = 1
    if "average" in settings.measures:
        n += settings.draws * len(settings.rhos)
    if "worst" in settings.measures:
        n += (settings.steps + 1) * len(settings.rhos)
    if "hessian" in settings.measures:
        n += settings.hessian_iters
    return n


def definitions() -> Dict[str, str]:
    """One-line definitions of the measures (stored in run.json)."""
    return {
        "loss": "L(w) = mean over clips of mean over classes of BCE-with-logits (nats); w = the network's float parameters",
        "average_sharpness": "E_z[L(w + rho*|w|*z)] - L(w), z ~ N(0, I) per element; mean over draws, 95% t-interval over draws",
        "worst_sharpness": "max over signed ascent iterates of L(w + |w|*delta) - L(w), |delta_i| <= rho "
                           "(adaptive l-inf SAM-style); delta = 0 included",
        "hessian_max_eig": "largest-magnitude eigenvalue of the Hessian of L w.r.t. w, power iteration on "
                           "Hessian-vector products (nats/weight^2)",
    }
