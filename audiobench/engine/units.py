"""Unit storage: the engine's source of truth.

A *unit* is the stored result of one (model, condition, clip range): an ``.npz`` file in
``units/<model>/c<NNN>[.<role>]/<start>-<stop>.npz`` (``role`` names a trust companion, e.g.
``c002.fgsm``). Each finished batch is written atomically as soon as it completes, so a run killed
at any moment resumes where it stopped, and the tables are always recomputed from the units.

Every unit carries its identity (``_identity``: the run's config hash, the model, the job and
the clip range), so a unit copied in from another run (another seed, model or config), or moved
to another range, is refused with one line when the run is resumed or aggregated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import json

import numpy as np

from audiobench.errors import ResultsError
from audiobench.results.schema import UNITS_DIR, open_npz, safe_name

# per-batch trace arrays: summed (not concatenated) when units are merged
_SUMMED_PER_STEP = ("trace_loss_sum", "trace_n_per_step", "trace_best_loss_sum")
_SUMMED_SCALAR = ("trace_n", "trace_bad_grad")


def unit_dir(run_dir: Path, model: str, cond_index: int, role: Optional[str] = None) -> Path:
    """Folder of one (model, condition[, companion role])'s units."""
    name = f"c{cond_index:03d}" if not role else f"c{cond_index:03d}.{role}"
    return Path(run_dir) / UNITS_DIR / safe_name(model) / name


def source_dir(run_dir: Path, source: str, cond_index: int) -> Path:
    """Folder of the clips crafted on a transfer source (a model, or ``A+B``) for condition
    ``cond_index``: ``units/_sources/<source>/c<NNN>``."""
    return Path(run_dir) / UNITS_DIR / "_sources" / safe_name(source) / f"c{cond_index:03d}"


def load_range(udir: Path, start: int, stop: int, key: str, identity: Optional[Dict[str, object]] = None) -> np.ndarray:
    """``key`` of the clips [start, stop) from the stored units that cover them (units may be cut
    differently, e.g. after a resume with another batch size)."""
    parts, pos = [], start
    for a, b in stored_ranges(udir):
        if b <= pos or a >= stop:
            continue
        if a > pos:
            break
        ident = None if identity is None else {**identity, "start": a, "stop": b}
        arr = read_unit(unit_path(udir, a, b), ident, per_clip=False)[key]
        parts.append(arr[pos - a:min(stop, b) - a])
        pos = min(stop, b)
        if pos >= stop:
            break
    if pos < stop:
        raise ResultsError(f"{udir}: stored units do not cover clips {start}-{stop} (resume the run)")
    return np.concatenate(parts, axis=0)


def unit_path(udir: Path, start: int, stop: int) -> Path:
    return Path(udir) / f"{start:08d}-{stop:08d}.npz"


def stored_ranges(udir: Path) -> List[Tuple[int, int]]:
    """The clip ranges with a stored unit file, sorted."""
    udir = Path(udir)
    if not udir.is_dir():
        return []
    out = []
    for p in udir.glob("*.npz"):
        stem = p.stem
        if "-" not in stem or stem.startswith("."):
            continue
        a, b = stem.split("-", 1)
        if a.isdigit() and b.isdigit() and int(b) > int(a):
            out.append((int(a), int(b)))
    return sorted(out)


def missing_ranges(done: Sequence[Tuple[int, int]], n: int) -> List[Tuple[int, int]]:
    """Clip ranges in [0, n) not covered by ``done``."""
    out, pos = [], 0
    for a, b in sorted(done):
        if a > pos:
            out.append((pos, min(a, n)))
        pos = max(pos, b)
    if pos < n:
        out.append((pos, n))
    return [(a, b) for a, b in out if b > a]


def merge_units(units: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Concatenate per-clip arrays in order; sum the per-step trace sums and the clip counts."""
    out = {}
    # a key only some units hold (e.g. clean_energy, which units stored by an older audiobench
    # lack) is left out rather than merged short; read_unit checks the required per-clip keys
    for k in [k for k in units[0] if all(k in u for u in units)]:
        vals = [u[k] for u in units]
        if k in _SUMMED_PER_STEP:
            n = max(len(v) for v in vals)
            out[k] = sum(np.pad(v, (0, n - len(v))) for v in vals) if n else vals[0]
        elif k in _SUMMED_SCALAR:
            out[k] = np.asarray(sum(int(v) for v in vals))
        else:
            out[k] = np.concatenate(vals, axis=0)
    return out


IDENTITY_KEY = "_identity"
#: arrays every unit of a condition or companion holds, one row per clip
PER_CLIP_KEYS = ("clip_ids", "logits", "bad_input", "snr_db", "linf", "l2")


def unit_identity(config_hash: str, model: str, job: str, start: int, stop: int) -> Dict[str, object]:
    return {"config_hash": str(config_hash), "model": str(model), "job": str(job), "start": int(start), "stop": int(stop)}


def write_unit(udir: Path, start: int, stop: int, arrays: Dict[str, np.ndarray], identity: Dict[str, object]) -> Path:
    """Store one unit atomically, with its identity."""
    from audiobench.fileio import atomic_write_npz

    path = unit_path(udir, start, stop)
    atomic_write_npz(path, **arrays, **{IDENTITY_KEY: np.asarray(json.dumps(identity, sort_keys=True))})
    return path


def check_identities(udir: Path, identity: Dict[str, object]) -> None:
    """Refuse (one line) any stored unit of ``udir`` whose identity is not ``identity`` with its own
    range (reads only each unit's small identity member, not its arrays)."""
    import zipfile

    for a, b in stored_ranges(udir):
        path = unit_path(udir, a, b)
        if not path.is_file():
            raise ResultsError(f"{path}: stored unit is not a regular file (remove it and resume)")
        try:
            with open_npz(path) as z:
                stored = z[IDENTITY_KEY] if IDENTITY_KEY in z.files else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ResultsError(f"{path}: stored unit is damaged ({type(exc).__name__}); remove it and resume") from None
        _check_identity(path, stored, {**identity, "start": a, "stop": b})


def _check_identity(path: Path, stored, identity: Dict[str, object]) -> None:
    try:
        found = json.loads(str(stored[()])) if stored is not None else None
    except (ValueError, TypeError, IndexError):
        found = None
    if found == identity:
        return
    if found is None:
        what = "carries no identity"
    elif not isinstance(found, dict):
        what = "has an unreadable identity"
    elif found.get("config_hash") != identity["config_hash"]:
        what = f"belongs to another run (config hash {str(found.get('config_hash'))[:12]})"
    else:
        what = "belongs to another model, job or clip range"
    raise ResultsError(f"{path}: stored unit {what}; it was not computed by this run: remove it and resume")


def read_unit(path: Path, identity: Optional[Dict[str, object]] = None, *, per_clip: bool = True,
              n_classes: Optional[int] = None) -> Dict[str, np.ndarray]:
    """One unit file's arrays (never unpickled), checked: a damaged file, a unit of another run
    (``identity`` given) or one whose arrays do not hold one row per clip of its range (and, with
    ``n_classes``, one logit per class) is a one-line ResultsError."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: stored unit is not a regular file (remove it and resume)")
    try:
        with open_npz(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ResultsError(f"{path}: stored unit is damaged ({type(exc).__name__}); remove it and resume") from None
    stored = arrays.pop(IDENTITY_KEY, None)
    if identity is not None:
        _check_identity(path, stored, identity)
    if identity is not None and per_clip:
        n = int(identity["stop"]) - int(identity["start"])
        for key in PER_CLIP_KEYS:
            if key not in arrays:
                raise ResultsError(f"{path}: stored unit lacks {key!r}; remove it and resume")
            a = arrays[key]
            if a.ndim < 1 or a.shape[0] != n or (key == "logits" and (a.ndim != 2 or a.dtype.kind != "f")):
                raise ResultsError(f"{path}: stored unit's {key} has shape {tuple(a.shape)}, not one row per clip of "
                                   f"{identity['start']}-{identity['stop']}; remove it and resume")
        lg = arrays["logits"]
        if n_classes is not None and lg.shape[1] != n_classes:
            raise ResultsError(f"{path}: stored unit's logits has shape {tuple(lg.shape)}, expected ({n}, {n_classes}) "
                               f"for the dataset's classes; remove it and resume")
    return arrays


def load_units(udir: Path, n_clips: int, identity: Optional[Dict[str, object]] = None, *,
               n_classes: Optional[int] = None) -> Dict[str, np.ndarray]:
    """All stored units of one (model, condition) over its first ``n_clips`` clips, merged in clip
    order; checks full coverage, (``identity``: config_hash, model, job) each unit's identity and
    (``n_classes``) the logits' width."""
    stop = n_clips
    ranges = stored_ranges(udir)
    if missing_ranges(ranges, n_clips):
        raise ResultsError(f"{udir}: stored units do not cover all {n_clips} clips (resume the run)")
    units, pos = [], 0
    for a, b in ranges:
        if a < pos:  # overlapping unit from a resume with another batch size: skip fully covered
            if b <= pos:
                continue
            raise ResultsError(f"{udir}: overlapping units {a}-{b}")
        ident = None if identity is None else {**identity, "start": a, "stop": b}
        units.append(read_unit(unit_path(udir, a, b), ident, n_classes=n_classes))
        pos = b
        if pos >= stop:
            break
    merged = merge_units(units)
    if len(merged["logits"]) != n_clips:
        raise ResultsError(f"{udir}: units hold {len(merged['logits'])} clips, expected {n_clips}")
    return merged


def verify_stored_units(run_dir: Path, config_hash: Optional[str], models: Sequence[str], conditions: Sequence[dict],
                        scores: Dict[str, np.ndarray]) -> Tuple[List[str], List[str]]:
    """verify-run's check of a run folder's ``units/`` against its ``scores.npz``.

    Every stored unit must carry this run's identity (``config_hash``, the model, its job key
    ``c<NNN>`` or ``c<NNN>.<role>`` and its own clip range), and the units of each (model,
    condition) must hold exactly the clip ids, logits, per-clip geometry, embeddings and clean
    energies that ``scores.npz`` holds. Returns ``(problems, checks)``; a folder without
    ``units/`` (tables shared without them) gives no problem, only a note in ``checks``.
    """
    import re

    from audiobench.results.schema import (bad_input_key, embedding_key, energy_key, geometry_key, logits_key,
                                           measured_key)

    run_dir = Path(run_dir)
    problems: List[str] = []
    checks: List[str] = []
    root = run_dir / UNITS_DIR
    if not root.is_dir():
        return problems, [f"{root} not present: the tables were checked against scores.npz alone"]
    if not isinstance(config_hash, str):
        return [f"{run_dir}: run.json records no config_hash, so its units cannot be matched to it"], checks
    clip_ids = np.asarray(scores["clip_ids"]).astype(str)
    n = len(clip_ids)
    job_name = re.compile(r"^c(\d{3,})(?:\.([A-Za-z0-9_-]+))?$")
    for model in models:
        mdir = root / safe_name(model)
        if not mdir.is_dir():
            problems.append(f"{mdir}: missing (units/ is there, but not the units of model {model})")
            continue
        ident = {"config_hash": config_hash, "model": model}
        n_ok = 0
        for ci, cond in enumerate(conditions):
            cid = str(cond["id"])
            job = f"c{ci:03d}"
            try:
                u = load_units(unit_dir(run_dir, model, ci), n, {**ident, "job": job},
                               n_classes=np.asarray(scores["targets"]).shape[1])
            except ResultsError as exc:
                problems.append(str(exc))
                continue
            where = f"units of {model}/{cid}"
            if not np.array_equal(np.asarray(u["clip_ids"]).astype(str), clip_ids):
                problems.append(f"{where} hold other clips than scores.npz")
                continue
            pairs = [("logits", u["logits"], scores.get(logits_key(model, cid)))]
            geometry = scores.get(geometry_key(model, cid))
            if geometry is not None and geometry.ndim == 2 and geometry.shape == (n, 4):
                pairs += [(k, u[k], geometry[:, j]) for j, k in enumerate(("snr_db", "linf", "l2"))]
                if "pc_min_eps" in u:
                    pairs.append(("min_eps", u["pc_min_eps"], geometry[:, 3]))
            pairs += [(k[3:], u[k], scores.get(measured_key(model, cid, k[3:])))
                      for k in sorted(u) if k.startswith("pc_") and k != "pc_min_eps"]
            if "embedding" in u and embedding_key(model, cid) in scores:
                pairs.append(("embedding", u["embedding"], scores[embedding_key(model, cid)]))
            if ci == 0:
                pairs.append(("bad_input", u["bad_input"], scores.get(bad_input_key(model))))
                if "clean_energy" in u:
                    pairs.append(("clean_energy", u["clean_energy"], scores.get(energy_key(model))))
            for name, stored, table in pairs:
                if table is None:
                    continue
                if not _same(stored, table):
                    problems.append(f"{where}: {name} differ from scores.npz (units or scores edited, or units of another run)")
                    break
            else:
                n_ok += 1
            fitted = unit_dir(run_dir, model, ci) / "fitted_state.npz"
            if fitted.exists():
                try:
                    read_unit(fitted, unit_identity(config_hash, model, job + ".fit", 0, 0), per_clip=False)
                except ResultsError as exc:
                    problems.append(str(exc))
        for d in sorted(mdir.iterdir()):
            m = job_name.match(d.name)
            if m is None or not d.is_dir():
                problems.append(f"{d}: not a unit folder of this run")
                continue
            if int(m.group(1)) >= len(conditions):
                problems.append(f"{d}: units of a condition run.json does not list")
                continue
            if m.group(2) is None:
                continue  # checked above
            try:
                check_identities(d, {**ident, "job": d.name})
            except ResultsError as exc:
                problems.append(str(exc))
        checks.append(f"units of {model}: identity and contents of {n_ok} of {len(conditions)} condition(s) match scores.npz")
    # clips crafted on a transfer source: identity "source:<source>", job c<NNN>
    n_sources = 0
    for ci, cond in enumerate(conditions):
        source = (cond.get("params") or {}).get("source") if cond.get("perturbation") == "transfer" else None
        if not isinstance(source, str):
            continue
        d = source_dir(run_dir, source, ci)
        if d.is_dir():
            try:
                check_identities(d, {"config_hash": config_hash, "model": f"source:{source}", "job": f"c{ci:03d}"})
                n_sources += 1
            except ResultsError as exc:
                problems.append(str(exc))
    if n_sources:
        checks.append(f"identity of the clips crafted on {n_sources} transfer source folder(s)")
    known = {safe_name(m) for m in models} | {"_sources"}
    for entry in sorted(root.iterdir()):
        if entry.name not in known:
            problems.append(f"{entry}: not a unit folder of this run's models")
    return problems, checks


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        try:
            return bool(np.array_equal(a.astype(np.float64), b.astype(np.float64), equal_nan=True))
        except (TypeError, ValueError):
            return False
    return bool(np.array_equal(a, b))
