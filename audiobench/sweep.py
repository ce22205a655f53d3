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
ENTRY_META_KEYS = {"kind", "name", "base"}
MAX_CELLS = 10_000  # conditions (runs x levels) one sweep file may expand to, unless --max-cells allows more
MAX_SWEEP_BYTES = 1 << 20  # not "on": YAML 1.1 reads `on:` as True
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
        """The :class:`~audiobench.engine.RunConfig` of one expanded run (built and checked by
        the same function as ``audiobench run`` and :func:`audiobench.evaluate`)."""
        from audiobench.api import build_run_config

        s = self.settings
        return build_run_config(
            [run.model], list(run.conditions), data=s["data"], data_root=s["data_root"],
            checkpoint={run.model: run.checkpoint} if run.checkpoint else None, device=device or s["device"],
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


def _yaml_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    dup = key in seen
                except TypeError:  # an unhashable key: SafeLoader reports it
                    break
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_sweep(path: str | Path, *, max_cells: int = MAX_CELLS) -> Sweep:
    """Read and validate a sweep file and expand its grid (see the module docstring)."""
    import yaml

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: sweep file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a sweep file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_SWEEP_BYTES:
        raise ConfigError(f"{path}: {len(data):,} bytes is not a sweep file (at most {MAX_SWEEP_BYTES:,})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the sweep file as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({where}{problem})") from None
    return parse_sweep(raw, path, max_cells=max_cells)


def _chained(on: Any, conds: list, max_cells: int) -> list:
    """``base:`` of an entry (the CLI's ``--on``): the base condition alone, then every condition applied on top of it
    (a mapping ``{kind: gaussian, snr_db: 20}`` or the CLI form ``"gaussian:snr_db=20"``)."""
    from audiobench.perturb.chain import parse_on
    from audiobench.perturb.spec import chained

    if isinstance(on, dict):
        spec = {("perturbation" if k == "kind" else k): v for k, v in on.items()}
        if not isinstance(spec.get("perturbation"), str):
            raise ConfigError(f"base must name its kind (e.g. base: {{kind: gaussian, snr_db: 20}}), got {on!r}")
        spec = parse_on(spec.pop("perturbation") + ":" + ";".join(f"{k}={v}" for k, v in spec.items()))
    else:
        spec = parse_on(str(on))
    return chained(spec, conds, max_cells=max_cells)


def parse_sweep(raw: Any, path: Path = Path("<sweep>"), *, max_cells: int = MAX_CELLS) -> Sweep:
    """Validate a parsed sweep mapping and expand it to runs."""
    from audiobench.models.resolve import check_model_source
    from audiobench.perturb import PERTURBATIONS
    from audiobench.perturb.spec import count_grid, expand_counted

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
            check_model_source(m)
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
    cells = 0  # conditions of all entries so far, counted before expanding them
    n_models = sum(len(checkpoints.get(m, [None])) for m in models)
    for i, entry in enumerate(entries):
        where = f"perturbations[{i}]"
        if not isinstance(entry, dict) or "kind" not in entry:
            raise _err(path, where, "must be a mapping with a 'kind' (see audiobench list perturbations)")
        kind = entry["kind"]
        if not isinstance(kind, str):
            raise _err(path, where, f"kind must be one perturbation name, got {kind!r}")
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
                cells += count_grid(kind, **options)
                if cells * n_models > max_cells:
                    raise ConfigError(f"the grid expands to more than {max_cells:,} conditions "
                                      f"(raise the limit with --max-cells if you mean it)")
                conds = expand_counted(kind, max_cells=max_cells, **options)
                if entry.get("base") is not None:
                    conds = _chained(entry["base"], conds, max_cells)
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
    """(forward, backward) model passes per clip of one condition: its own passes
    (:meth:`~audiobench.perturb.base.Perturbation.cost`), its evaluation forward and, with trust
    checks, those of its companions that run on every clip (the 10x-eps companion runs on a fixed
    number of clips and is counted in :func:`run_cost`). An upper bound where an attack may stop
    early (min-eps bisection)."""
    from audiobench.engine.plan import plan_model

    plan = plan_model([cond], 1, trust_checks=trust_checks)
    fwd = bwd = 0.0
    for job in plan.jobs:
        if job.companion is None or job.companion.clip_limit is None:
            f, b = job.cost_per_clip()
            fwd, bwd = fwd + f, bwd + b
    return fwd, bwd


def run_cost(run: SweepRun, trust_checks: bool, n_clips: Optional[int]) -> Dict[str, Any]:
    """Model passes of one run, from the engine's own plan of its jobs (conditions and trust
    companions): per clip, and in total when the clip count is known."""
    from audiobench.engine.plan import plan_model

    plan = plan_model(run.conditions, n_clips if n_clips is not None else 1, trust_checks=trust_checks)
    if n_clips is None:
        fwd = sum(condition_cost(c, trust_checks)[0] for c in run.conditions)
        bwd = sum(condition_cost(c, trust_checks)[1] for c in run.conditions)
        return {"fwd_per_clip": fwd, "bwd_per_clip": bwd}
    return plan.passes(n_clips)


def missing_weights(sweep: Sweep) -> List[str]:
    """One line per model whose weights cannot be found here (no download is attempted)."""
    from audiobench.errors import WeightsError
    from audiobench.models import MODELS
    from audiobench.models.weights import resolve_weights

    if sweep.settings["weights"] == "random":
        return []
    lines = []
    with_ckpt = {r.model for r in sweep.runs if r.checkpoint}
    for model in dict.fromkeys(r.model for r in sweep.runs):
        if model in with_ckpt:
            for r in sweep.runs:
                if r.model == model and r.checkpoint and not Path(r.checkpoint).is_file():
                    lines.append(f"missing checkpoint for {model}: {r.checkpoint}")
                    break
            continue
        try:
            resolve_weights(MODELS.get(model).spec, download=False)
        except WeightsError as exc:
            lines.append(f"missing weights: {str(exc).splitlines()[0]}")
    return lines


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
    from audiobench.results.schema import read_run_info

    if not (Path(out) / run_id / "run.json").exists():
        return "new"
    try:
        return "complete" if read_run_info(Path(out) / run_id).complete else "partial"
    except AudiobenchError:
        return "partial"


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
    lines.extend(missing_weights(sweep))
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
