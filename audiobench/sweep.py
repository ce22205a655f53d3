"""Sweeps: a YAML grid of models × (checkpoints) × perturbations × levels, expanded to runs.

A sweep file names the shared data, seed and settings once, then the grid::

    name: li2022-toy                 # required; prefix of every run id
    models: [toy-cnn, toy-transformer]
    checkpoints:                     # optional: a path or a list of paths per model (× checkpoints)
      toy-cnn: [a.pt, b.pt]
    data: null                       # as `run --data` (null: the embedded toy set)
    limit: 16                        # and seed, batch_size, bootstrap, precision, device, data_root,
    seed: 0                          #   trust_checks, on_bad_clip, weights (default | random)
    perturbations:                   # one run per (model, checkpoint, entry); all levels of an
      - kind: gaussian               #   entry are conditions of that run (clean included)
        snr_db: [30, 20, 10]         # any field of the perturbation (`audiobench list perturbations`);
      - kind: pgd                    #   lists are swept (cartesian product within the entry)
        name: pgd-linf               # optional label for the run id (default: the kind)
        eps: [0.001, 0.002]
        steps: 10

Each run is an ordinary run folder ``<out>/<run id>`` with the deterministic id
``<name>--<model>[@<checkpoint label>]--<entry label>``; a run whose ``run.json`` says complete is
skipped, an interrupted one resumes from its stored units. :func:`estimate_cost` gives the model
forward/backward passes per clip of each run, for ``--dry-run``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from audiobench.errors import AudiobenchError, ConfigError

TOP_KEYS = {
    "name", "models", "checkpoints", "perturbations", "data", "data_root", "limit", "seed", "batch_size",
    "bootstrap", "precision", "device", "trust_checks", "on_bad_clip", "weights", "description",
}
ENTRY_META_KEYS = {"kind", "name", "base"}  # not "on": YAML 1.1 reads `on:` as True
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class SweepRun:
    """One expanded run: its id, the model (and checkpoint) and its conditions."""

    run_id: str
    model: str
    checkpoint: Optional[str]
    entry: str
    conditions: list  # Perturbation objects, clean first

    def levels(self) -> str:
        return ", ".join(c.condition_id for c in self.conditions[1:]) or "(clean only)"


@dataclass
class Sweep:
    name: str
    path: Path
    settings: Dict[str, Any]
    runs: List[SweepRun] = field(default_factory=list)

    def run_config(self, run: SweepRun, out: Path, *, device: Optional[str] = None):
        """The :class:`~audiobench.engine.RunConfig` of one expanded run."""
        from audiobench.engine import RunConfig

        s = self.settings
        return RunConfig(
            models=[run.model], conditions=list(run.conditions), data=s["data"], data_root=s["data_root"],
            checkpoints={run.model: run.checkpoint} if run.checkpoint else {}, device=device or s["device"],
            batch_size=s["batch_size"], limit=s["limit"], seed=s["seed"], out=Path(out), run_id=run.run_id,
            resume=False, precision=s["precision"], bootstrap=s["bootstrap"], weights=s["weights"],
            trust_checks=s["trust_checks"], on_bad_clip=s["on_bad_clip"],
        )


def _err(path: Path, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {where}{': ' if where else ''}{msg}")


def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(str(key), sorted(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(options))})"


def _int(path, key, value, minimum, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(path, key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file and expand its grid (see the module docstring)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: sweep file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({where}{problem})") from None
    return parse_sweep(raw, path)


def _chained(on: Any, conds: list) -> list:
    """``base:`` of an entry (the CLI's ``--on``): the base condition alone, then every condition applied on top of it
    (a mapping ``{kind: gaussian, snr_db: 20}`` or the CLI form ``"gaussian:snr_db=20"``)."""
    import dataclasses

    from audiobench.perturb.chain import Chain, parse_on
    from audiobench.perturb.grid import expand_grid

    if isinstance(on, dict):
        spec = {("perturbation" if k == "kind" else k): v for k, v in on.items()}
        spec = parse_on(spec.pop("perturbation") + ":" + ";".join(f"{k}={v}" for k, v in spec.items()))
    else:
        spec = parse_on(str(on))
    base = expand_grid(spec["perturbation"], **{k: v for k, v in spec.items() if k != "perturbation"})
    chained = [Chain(base=spec, attack={"perturbation": c.name, **{f.name: getattr(c, f.name) for f in dataclasses.fields(c)}})
               for c in conds]
    return base + chained


def parse_sweep(raw: Any, path: Path = Path("<sweep>")) -> Sweep:
    """Validate a parsed sweep mapping and expand it to runs."""
    from audiobench.models import MODELS
    from audiobench.perturb import PERTURBATIONS
    from audiobench.perturb.grid import expand_grid

    if not isinstance(raw, dict):
        raise _err(path, "", "a sweep file must be a mapping with name, models and perturbations")
    for key in raw:
        if key not in TOP_KEYS:
            raise _err(path, "", f"unknown key {key!r}{_did_you_mean(key, TOP_KEYS)}")
    for key in ("name", "models", "perturbations"):
        if key not in raw or raw[key] in (None, "", []):
            raise _err(path, "", f"missing required key {key!r}")
    name = raw["name"]
    if not isinstance(name, str) or not _LABEL.match(name):
        raise _err(path, "name", f"{name!r} must be a plain label (letters, digits, . _ + -)")
    models = raw["models"]
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise _err(path, "models", "must be a list of model names")
    for m in models:
        try:
            MODELS.get(m)
        except AudiobenchError as exc:
            raise _err(path, "models", str(exc)) from None
    if len(set(models)) != len(models):
        raise _err(path, "models", "a model is listed twice")

    settings = {
        "data": raw.get("data"), "data_root": raw.get("data_root"),
        "limit": _int(path, "limit", raw.get("limit"), 1, allow_none=True),
        "seed": _int(path, "seed", raw.get("seed", 0), 0),
        "batch_size": _int(path, "batch_size", raw.get("batch_size", 16), 1),
        "bootstrap": _int(path, "bootstrap", raw.get("bootstrap", 1000), 0),
        "precision": raw.get("precision", "fp32"), "device": raw.get("device", "auto"),
        "trust_checks": raw.get("trust_checks", True), "on_bad_clip": raw.get("on_bad_clip", "fail"),
        "weights": raw.get("weights", "default"),
    }
    for key, choices in (("precision", ("fp32", "bf16")), ("on_bad_clip", ("fail", "skip")), ("weights", ("default", "random"))):
        if settings[key] not in choices:
            raise _err(path, key, f"must be one of {', '.join(choices)}, got {settings[key]!r}")
    if not isinstance(settings["trust_checks"], bool):
        raise _err(path, "trust_checks", f"must be true or false, got {settings['trust_checks']!r}")
    for key in ("data", "data_root", "device"):
        if settings[key] is not None and not isinstance(settings[key], str):
            raise _err(path, key, f"must be a string, got {settings[key]!r}")
    if settings["data"] and not Path(settings["data"]).is_absolute() and settings["data"].endswith((".json", ".h5", ".hdf5")):
        # file paths in a sweep file are relative to the sweep file, like an include
        candidate = (path.parent / settings["data"])
        if candidate.exists():
            settings["data"] = str(candidate)

    checkpoints = _checkpoints(path, raw.get("checkpoints"), models)

    entries = raw["perturbations"]
    if not isinstance(entries, list):
        raise _err(path, "perturbations", "must be a list of entries with a 'kind'")
    labelled: List[Tuple[str, list]] = []
    for i, entry in enumerate(entries):
        where = f"perturbations[{i}]"
        if not isinstance(entry, dict) or "kind" not in entry:
            raise _err(path, where, "must be a mapping with a 'kind' (see audiobench list perturbations)")
        kind = entry["kind"]
        try:
            PERTURBATIONS.get(kind)
        except AudiobenchError as exc:
            raise _err(path, where, str(exc)) from None
        label = entry.get("name", kind)
        if not isinstance(label, str) or not _LABEL.match(label):
            raise _err(path, where, f"name {label!r} must be a plain label (letters, digits, . _ + -)")
        options = {k: v for k, v in entry.items() if k not in ENTRY_META_KEYS}
        if kind == "none":
            if options:
                raise _err(path, where, "kind none takes no options")
            conds = []
        else:
            try:
                conds = expand_grid(kind, **options)
                if entry.get("base") is not None:
                    conds = _chained(entry["base"], conds)
            except (AudiobenchError, TypeError, ValueError) as exc:
                raise _err(path, f"{where} ({kind})", str(exc).splitlines()[0]) from None
        labelled.append((label, conds))
    labels = [lab for lab, _ in labelled]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise _err(path, "perturbations", f"two entries are labelled {dup[0]!r}; give them distinct 'name's")

    from audiobench.perturb import PERTURBATIONS as P

    sweep = Sweep(name=name, path=path, settings=settings)
    for model in models:
        for ck_label, ck_path in checkpoints.get(model, [(None, None)]):
            for label, conds in labelled:
                mid = model if ck_label is None else f"{model}@{ck_label}"
                run_id = f"{name}--{mid}--{label}"
                sweep.runs.append(SweepRun(run_id, model, ck_path, label, [P.get("none")(), *conds]))
    return sweep


def _checkpoints(path: Path, value, models) -> Dict[str, List[Tuple[Optional[str], Optional[str]]]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(path, "checkpoints", "must map model names to a path or a list of paths")
    out = {}
    for model, paths in value.items():
        if model not in models:
            raise _err(path, "checkpoints", f"model {model!r} is not in models")
        items = paths if isinstance(paths, list) else [paths]
        if not items or not all(isinstance(p, str) and p for p in items):
            raise _err(path, f"checkpoints.{model}", "must be a path or a list of paths")
        pairs, seen = [], set()
        for p in items:
            full = Path(p).expanduser()
            if not full.is_absolute():
                full = path.parent / full
            label = re.sub(r"[^A-Za-z0-9._+-]", "_", Path(p).stem) or "ckpt"
            if label in seen:
                raise _err(path, f"checkpoints.{model}", f"two checkpoints have the file name {Path(p).stem!r}")
            seen.add(label)
            pairs.append((label if len(items) > 1 else None, str(full)))
        out[model] = pairs
    return out


# --- cost ---------------------------------------------------------------------------------------
def condition_cost(cond, trust_checks: bool = True) -> Tuple[float, float]:
    """(forward passes, backward passes) of the model per clip for one condition, including the
    final evaluation forward and the attack trust references (an upper bound where an attack
    may stop early, e.g. min-eps bisection)."""
    if getattr(cond, "name", "") == "chain":  # base then attack: the attack's passes
        f, b = condition_cost(cond._attack, trust_checks)
        f0, b0 = condition_cost(cond._base, False)
        return f + f0 - 1.0, b + b0
    name = getattr(cond, "name", "")
    steps = int(getattr(cond, "steps", 0) or 0)
    restarts = max(int(getattr(cond, "restarts", 1) or 1), 1)
    fwd, bwd = 1.0, 0.0  # the evaluation forward of every condition
    if name in ("pgd", "feature-pgd"):
        fwd += restarts * (steps + 1)
        bwd += restarts * steps
    elif name == "apgd":
        fwd += restarts * (steps + 1)
        bwd += restarts * steps
    elif name == "fgsm":
        fwd += 2
        bwd += 1
    elif name == "min-eps":
        probes = int(getattr(cond, "probes", 1) or 1)
        fwd += 1 + probes * (restarts * (steps + 1) + 1)
        bwd += probes * restarts * steps
    elif name == "universal":
        epochs = int(getattr(cond, "epochs", 1) or 1)
        fwd += epochs
        bwd += epochs
    if trust_checks and getattr(cond, "uses_model", False) and getattr(cond, "param", None) == "eps":
        fwd += 1  # Gaussian noise of the same L2 norm
        if name != "fgsm" and getattr(cond, "domain", "waveform") != "feature":
            fwd += 1  # FGSM at the same eps
            bwd += 1
    return fwd, bwd


def run_cost(run: SweepRun, trust_checks: bool, n_clips: Optional[int]) -> Dict[str, Any]:
    """Per-clip passes of one run summed over its conditions, plus the 10x-eps trust checks
    (once per attack kind, on at most 32 clips) and totals when the clip count is known."""
    from audiobench.trust import TENFOLD_CLIPS, is_attack

    fwd = bwd = 0.0
    groups = {}
    for c in run.conditions:
        f, b = condition_cost(c, trust_checks)
        fwd, bwd = fwd + f, bwd + b
        if trust_checks and is_attack(c) and c.name != "min-eps" and not getattr(c, "requires_fit", False):
            groups[(c.name, getattr(c, "norm", None))] = c
    extra_f = extra_b = 0.0
    for c in groups.values():
        f, b = condition_cost(c, trust_checks=False)
        extra_f, extra_b = extra_f + f, extra_b + b
    out = {"fwd_per_clip": fwd, "bwd_per_clip": bwd}
    if n_clips is not None:
        k = min(TENFOLD_CLIPS, n_clips)
        out["fwd_total"] = fwd * n_clips + extra_f * k
        out["bwd_total"] = bwd * n_clips + extra_b * k
    return out


def count_clips(sweep: Sweep) -> Optional[int]:
    """The number of clips each run uses (data size capped by ``limit``), or None if the data
    cannot be opened here (the dry run then shows per-clip costs only)."""
    from audiobench.data import open_dataset

    try:
        ds = open_dataset(sweep.settings["data"], sweep.settings["data_root"])
    except AudiobenchError:
        return None
    try:
        n = len(ds)
    finally:
        close = getattr(ds, "close", None)
        if close:
            close()
    limit = sweep.settings["limit"]
    return n if limit is None else min(n, limit)


def run_status(out: Path, run_id: str) -> str:
    """'complete', 'partial' (run.json exists, not complete) or 'new'."""
    import json

    p = Path(out) / run_id / "run.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return "new"
    return "complete" if meta.get("complete") else "partial"


def format_plan(sweep: Sweep, out: Path, n_clips: Optional[int]) -> List[str]:
    """The dry-run lines: one per run (status, conditions, passes per clip), then the totals."""
    trust = sweep.settings["trust_checks"]
    lines = [
        f"sweep {sweep.name}: {len(sweep.runs)} run(s), "
        f"{sum(len(r.conditions) for r in sweep.runs)} condition(s) incl. clean; "
        f"clips per run: {n_clips if n_clips is not None else 'unknown (data not readable here)'}",
        "status\trun_id\tconditions\tfwd/clip\tbwd/clip",
    ]
    tot_f = tot_b = 0.0
    todo = 0
    for run in sweep.runs:
        status = run_status(out, run.run_id)
        cost = run_cost(run, trust, n_clips)
        if status != "complete":
            todo += 1
            tot_f += cost.get("fwd_total", 0.0)
            tot_b += cost.get("bwd_total", 0.0)
        lines.append(f"{status}\t{run.run_id}\t{len(run.conditions)}: {run.levels()}\t"
                     f"{_num(cost['fwd_per_clip'])}\t{_num(cost['bwd_per_clip'])}")
    if n_clips is not None:
        lines.append(f"to run: {todo} run(s), about {_num(tot_f)} forward and {_num(tot_b)} backward passes "
                     f"(model passes over one clip, incl. trust checks; skipped: complete runs)")
    else:
        lines.append(f"to run: {todo} run(s)")
    return lines


def _num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.1f}"
