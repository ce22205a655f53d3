"""verify-run: recompute a finished run's tables from its stored arrays and check every recorded hash.

What is checked (each check is one line of the report; ``SECURITY.md`` says which test proves
each):

* **run.json**: complete, well-typed (:class:`~audiobench.results.schema.RunInfo`), its config
  hashes to its ``config_hash`` and every condition's ``params`` are the config's.
* **data**: the shards (and manifest) the run recorded are re-hashed on this machine by
  :func:`audiobench.data.verify.verify_recorded_data` (found by their recorded path relative to
  ``--data-root`` or the recorded data root, or their recorded absolute path), and the clips in
  ``scores.npz`` hash to the recorded clip list.
* **models**: :func:`audiobench.models.resolve.verify_provenance` re-hashes the recorded
  checkpoint, plugin source files and label map; only regular files of bounded size that the
  run recorded are read (a model folder: at most :data:`MAX_FOLDER_FILES` regular files), so a
  received ``run.json`` naming ``/`` cannot make verify-run walk the file system.
* **tables**: every row of ``metrics.csv``, ``per_clip.csv`` and ``per_class.csv`` is recomputed
  by :func:`audiobench.results.tables.model_tables` (the code that wrote them) from
  ``scores.npz``: logits, the per-clip geometry arrays (realised SNR, L-inf, L2, min-eps), the
  bad-input mask and, for models with an embedding, the embeddings.
* **geometry**: ``per_clip.csv`` must hold the geometry of ``scores.npz``; each clip's geometry
  must be self-consistent (L-inf <= L2 <= sqrt(samples)·L-inf; no change ⇔ SNR = inf; SNR =
  10·log10(clean energy / L2²) with the recorded clean energy); the clean condition changes
  nothing; every attack clip stays inside its condition's budget (``params.eps`` in
  ``params.norm``; min-eps: ``eps_max``) and min-eps values are valid.
* **latent metrics**: ``density`` is recomputed from the stored embeddings; ``convexity`` needs
  the model's head, so verify-run loads the recorded model (its re-hashed checkpoint, on the
  CPU, no download) and also checks that the head maps the stored embeddings to the stored
  logits. When the model cannot be loaded here, convexity is "not re-checked" and the verdict
  is *unverified* unless ``--skip-latent``.
* **units** (checked by :func:`audiobench.engine.units.verify_stored_units`, which the command
  runs too: the engine owns the unit format): each unit's identity, and its arrays equal to
  ``scores.npz``'s.

Verdicts: **failed** (any mismatch), **unverified** (no mismatch, but something the run
recorded cannot be checked here: data or model files that cannot be found, convexity without
the model), **verified**.
"""

from __future__ import annotations

import inspect
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from audiobench.errors import AudiobenchError, ResultsError
from audiobench.results.schema import (
    CLEAN,
    GEOMETRY_ARRAY,
    METRICS_COLUMNS,
    METRICS_CSV,
    PER_CLASS_COLUMNS,
    PER_CLASS_CSV,
    PER_CLIP_CSV,
    PER_CLIP_REQUIRED,
    RUN_ONLY_CONFIG_KEYS,
    SCORES_NPZ,
    RunInfo,
    bad_input_key,
    embedding_key,
    energy_key,
    geometry_key,
    logits_key,
    measured_key,
    read_run_info,
    read_scores,
    read_table,
)

#: a recorded model folder (Hugging Face layout) is hashed only when it holds at most this many entries
MAX_FOLDER_FILES = 10_000
#: a recorded source file or label map is hashed only up to this size
MAX_SOURCE_BYTES = 64 << 20
#: slack of the budget checks: float32 rounding of ``pert - clean`` for samples in [-1, 1]
LINF_SLACK = 1e-6
#: realised SNR vs 10·log10(energy / l2²): float32 sums, printed with 10 significant digits
SNR_TOLERANCE_DB = 1e-3
#: a received run.json asking for more bootstrap resamples than this is refused (a time bomb)
MAX_BOOTSTRAP = 100_000
#: the verdicts, in order of severity
VERDICTS = ("verified", "unverified", "failed")


@dataclass
class Verification:
    """What verify-run found: ``problems`` (mismatches: failed), ``unchecked`` (recorded but not
    checkable here: unverified), ``checks`` (passed, and notes of what was skipped on request)."""

    run_dir: Path
    problems: List[str] = field(default_factory=list)
    unchecked: List[str] = field(default_factory=list)
    checks: List[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.problems:
            return "failed"
        return "unverified" if self.unchecked else "verified"

    def extend(self, problems: List[str], checks: List[str]) -> None:
        self.problems += problems
        self.checks += checks


def _close(a, b, rtol: float) -> bool:
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        try:
            return bool(a) == bool(b)
        except (TypeError, ValueError):
            return False
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rtol * max(1.0, abs(a), abs(b)) + 1e-12


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- reading -------------------------------------------------------------------------------------
def per_clip_columns() -> Tuple[str, ...]:
    """The per_clip.csv columns verify-run recomputes (a file lacking one is refused in one line)."""
    from audiobench.metrics.condition import PER_CLIP_SHIFT

    return (*PER_CLIP_REQUIRED, "snr_db", "linf", "l2", "top1_hit", "top5_hit", *PER_CLIP_SHIFT, "nonfinite", "bad_input")


def _check_conditions(info: RunInfo) -> List[Dict[str, Any]]:
    conds = info.conditions
    if not conds:
        raise ResultsError(f"{info.path}: 'conditions' is empty (the clean condition is always first)")
    for i, c in enumerate(conds):
        if not isinstance(c.get("perturbation"), str):
            raise ResultsError(f"{info.path}: conditions[{i}] lacks a string 'perturbation'")
        if c.get("params") is not None and not isinstance(c["params"], dict):
            raise ResultsError(f"{info.path}: conditions[{i}].params must be an object")
    ids = [c["id"] for c in conds]
    if len(set(ids)) != len(ids):
        raise ResultsError(f"{info.path}: a condition id appears twice in 'conditions'")
    return conds


def _check_scores(path: Path, arrays: Dict[str, np.ndarray], models: List[str], conditions) -> Tuple[np.ndarray, np.ndarray]:
    """(clip ids, targets) after checking every array verify-run reads has its shape and type."""
    clip_ids, targets = arrays.get("clip_ids"), arrays.get("targets")
    if clip_ids is None or targets is None:
        raise ResultsError(f"{path}: lacks clip_ids or targets")
    if clip_ids.ndim != 1 or clip_ids.dtype.kind not in "US":
        raise ResultsError(f"{path}: clip_ids must be a 1-D array of strings, got {clip_ids.dtype} {tuple(clip_ids.shape)}")
    n = len(clip_ids)
    if targets.ndim != 2 or targets.shape[0] != n or targets.dtype.kind not in "biu":
        raise ResultsError(f"{path}: targets must be ({n}, classes) booleans, got {targets.dtype} {tuple(targets.shape)}")
    n_classes = targets.shape[1]
    for m in models:
        for c in conditions:
            shapes = {logits_key(m, c["id"]): (n, n_classes), geometry_key(m, c["id"]): (n, len(GEOMETRY_ARRAY))}
            for key, shape in shapes.items():
                a = arrays.get(key)
                if a is not None and (a.shape != shape or a.dtype.kind != "f"):
                    raise ResultsError(f"{path}: {key} must be float {shape}, got {a.dtype} {tuple(a.shape)}")
            e = arrays.get(embedding_key(m, c["id"]))
            if e is not None and (e.ndim != 2 or e.shape[0] != n or e.dtype.kind != "f" or not np.isfinite(e).all()):
                raise ResultsError(f"{path}: {embedding_key(m, c['id'])} must be finite float (clips, dims), "
                                   f"got {e.dtype} {tuple(e.shape)}")
        for key, kinds in ((bad_input_key(m), "b"), (energy_key(m), "f")):
            a = arrays.get(key)
            if a is not None and (a.shape != (n,) or a.dtype.kind not in kinds):
                raise ResultsError(f"{path}: {key} must be ({n},), got {a.dtype} {tuple(a.shape)}")
    return clip_ids.astype(str), targets.astype(bool)


# -- run.json's own consistency --------------------------------------------------------------------
def _check_config(info: RunInfo, v: Verification) -> None:
    from audiobench.results.provenance import config_hash

    cfg = {k: val for k, val in info.config.items() if k not in RUN_ONLY_CONFIG_KEYS}
    if info.config_hash is not None:
        got = config_hash(cfg)
        if got != info.config_hash:
            v.problems.append(f"run.json's config hashes to {got[:12]}, not its recorded config_hash "
                              f"{info.config_hash[:12]} (config edited by hand?)")
        else:
            v.checks.append("run.json's config hashes to its config_hash")
    listed = info.config.get("conditions")
    if isinstance(listed, list):
        if len(listed) != len(info.conditions):
            v.problems.append(f"run.json lists {len(info.conditions)} conditions but its config {len(listed)}")
            return
        for c, p in zip(info.conditions, listed):
            if c.get("params") is not None and c["params"] != p:
                v.problems.append(f"run.json: condition {c['id']}'s params differ from the config's (edited by hand?)")
                return
        v.checks.append("every condition's params are the config's")


# -- data --------------------------------------------------------------------------------------
def _check_data(info: RunInfo, clip_ids: np.ndarray, v: Verification, data_root, skip_data: bool,
                run_cwd: Optional[Path]) -> None:
    from audiobench.data.shards import clip_list_hash
    from audiobench.data.verify import NOT_FOUND, verify_recorded_data

    data = info.data
    used = clip_list_hash(list(clip_ids))
    recorded = data.get("used_clip_list_hash")
    if recorded is None:
        v.unchecked.append("run.json records no used_clip_list_hash: the clips in scores.npz cannot be matched to the data")
    elif used != recorded:
        v.problems.append(f"clip list hash {used[:12]} of scores.npz != recorded {str(recorded)[:12]}")
    else:
        v.checks.append(f"clip list hash of {len(clip_ids)} clips")
    if isinstance(data.get("n_clips"), int) and data["n_clips"] != len(clip_ids):
        v.problems.append(f"scores.npz holds {len(clip_ids)} clips, run.json's data block says {data['n_clips']}")
    if skip_data:
        v.checks.append("data not re-hashed (--skip-data)")
        return
    if data_root is None and data.get("kind") in ("shard", "datafile") and run_cwd is not None:
        # a shard or datafile named on the command line: its recorded path is relative to the
        # folder the run was started from (found first there, then at its recorded absolute path)
        data_root = run_cwd
    problems, checks = verify_recorded_data(data, data_root)
    for p in problems:
        (v.unchecked if NOT_FOUND in p else v.problems).append(p)
    v.checks += checks


# -- model files ---------------------------------------------------------------------------------
def _run_cwd(run_dir: Path, out: Any) -> Optional[Path]:
    """The folder the run was started from, inferred from its recorded relative ``--out``
    (``<cwd>/<out>/<run_id>``); None when ``out`` was absolute or unknown."""
    if not isinstance(out, str) or not out or os.path.isabs(out) or "\x00" in out:
        return None
    depth = len([p for p in Path(out).parts if p not in (".",)])
    parents = Path(os.path.abspath(run_dir)).parents
    return parents[depth] if depth < len(parents) else None


def _locate(recorded: Any, roots: List[Path]) -> Optional[Path]:
    """The recorded path (absolute, or relative to one of ``roots``) that exists here, or None."""
    if not isinstance(recorded, str) or not recorded or "\x00" in recorded or len(recorded) > 4096:
        return None
    p = Path(recorded)
    cands = [p] if p.is_absolute() else [root / p for root in roots]
    return next((c for c in cands if os.path.lexists(c)), None)


def _bounded(path: Path, *, folder_ok: bool, limit: int) -> Optional[str]:
    """Why ``path`` is not hashed, or None: a regular file of at most ``limit`` bytes, or (a model
    folder) a folder of at most MAX_FOLDER_FILES regular files, no linked folders, ``limit`` in all."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(st.st_mode):
        return None if st.st_size <= limit else f"is {st.st_size} bytes, over the {limit}-byte limit for re-hashing"
    if not stat.S_ISDIR(st.st_mode) or not folder_ok:
        return "is not a regular file; not hashed"
    if os.path.ismount(path):
        return "is a file-system root or mount point, not a model folder; not hashed"
    count, total = 0, 0
    for top, dirs, files in os.walk(path, followlinks=False):
        for d in dirs:
            if os.path.islink(os.path.join(top, d)):
                return "is a folder holding a linked folder; not hashed"
        count += len(dirs) + len(files)
        if count > MAX_FOLDER_FILES:
            return f"is a folder of more than {MAX_FOLDER_FILES} entries, not a model folder; not hashed"
        for f in files:
            try:
                fst = os.stat(os.path.join(top, f))
            except OSError:
                return f"holds {f}, which cannot be read; not hashed"
            if not stat.S_ISREG(fst.st_mode):
                return f"holds {f}, which is not a regular file; not hashed"
            total += fst.st_size
            if total > limit:
                return f"holds more than {limit} bytes; not hashed"
    return None


def _check_model_files(name: str, record: Dict[str, Any], roots: List[Path], v: Verification) -> Optional[Path]:
    """Re-hash the files model ``name``'s provenance records; returns the checkpoint found here
    (verified) or None."""
    from audiobench.data.verify import NOT_FOUND, MAX_VERIFY_BYTES
    from audiobench.models.resolve import verify_provenance

    prov = record.get("provenance")
    if not isinstance(prov, dict):  # run.json of an older audiobench: the checkpoint fields only
        prov = {"name": name, "checkpoint": record.get("checkpoint"), "checkpoint_sha256": record.get("checkpoint_sha256")}
    prov = {**prov, "name": name}
    checked: Dict[str, Any] = {"name": name}
    bad_before = len(v.problems) + len(v.unchecked)
    found_ckpt = None
    files = []
    listed = prov.get("source_files") if isinstance(prov.get("source_files"), list) else []
    for i, rec in enumerate(listed):
        if not (isinstance(rec, dict) and isinstance(rec.get("sha256"), str)):
            v.problems.append(f"model {name}: provenance source_files[{i}] is not a {{path, sha256}} record")
            continue
        p = _locate(rec.get("path"), roots)
        if p is None:
            v.unchecked.append(f"model {name}: source file {str(rec.get('path'))[:200]} {NOT_FOUND}")
            continue
        why = _bounded(p, folder_ok=False, limit=MAX_SOURCE_BYTES)
        if why:
            v.problems.append(f"model {name}: source file {p} {why}")
            continue
        files.append({"path": str(p), "sha256": rec["sha256"]})
    checked["source_files"] = files
    ck, sha = prov.get("checkpoint"), prov.get("checkpoint_sha256")
    if ck and isinstance(sha, str):
        p = _locate(ck, roots)
        if p is None:
            v.unchecked.append(f"model {name}: checkpoint {str(ck)[:200]} {NOT_FOUND}; its sha256 is not re-checked")
        else:
            why = _bounded(p, folder_ok=True, limit=MAX_VERIFY_BYTES)
            if why:
                v.problems.append(f"model {name}: checkpoint {p} {why}")
            else:
                checked.update(checkpoint=str(p), checkpoint_sha256=sha)
    elif ck:
        v.problems.append(f"model {name}: run.json records checkpoint {str(ck)[:200]} without its sha256")
    labels = prov.get("labels") if isinstance(prov.get("labels"), dict) else {}
    if labels.get("label_map") and isinstance(labels.get("label_map_sha256"), str):
        p = _locate(labels["label_map"], roots)
        if p is None:
            v.unchecked.append(f"model {name}: label map {str(labels['label_map'])[:200]} {NOT_FOUND}")
        else:
            why = _bounded(p, folder_ok=False, limit=MAX_SOURCE_BYTES)
            if why:
                v.problems.append(f"model {name}: label map {p} {why}")
            else:
                checked["labels"] = {"label_map": str(p), "label_map_sha256": labels["label_map_sha256"]}
    try:
        found = verify_provenance(checked)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        found = [f"model {name}: its recorded files cannot be re-hashed ({_first_line(exc)})"]
    v.problems += found
    hashed = len(files) + ("checkpoint" in checked) + ("labels" in checked)
    if not found and len(v.problems) + len(v.unchecked) == bad_before:
        v.checks.append(f"model {name}: {hashed} recorded file(s) re-hashed" if hashed else
                        f"model {name}: no files recorded ({prov.get('kind', 'registered')} model, weights {prov.get('weights', 'default')})")
        if "checkpoint" in checked:
            found_ckpt = Path(checked["checkpoint"])
    return found_ckpt if not found else None


# -- the model head (convexity) ---------------------------------------------------------------------
def _load_head(info: RunInfo, name: str, checkpoint: Optional[Path]) -> Tuple[Optional[Callable], str]:
    """(head function, "") of the recorded model rebuilt on the CPU, or (None, why not)."""
    from audiobench.models.resolve import resolve_model
    from audiobench.results.tables import head_function

    record = info.models.get(name) or {}
    prov = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    if prov.get("kind") == "object":
        return None, "the model was given as a Python object"
    reason = _not_reloadable(name)
    if reason:
        return None, reason
    if (prov.get("checkpoint") or record.get("checkpoint")) and checkpoint is None:
        return None, "its checkpoint is not verified here"
    cfg = info.config
    labels = prov.get("labels") if isinstance(prov.get("labels"), dict) else {}
    vocab, label_map = None, None
    if labels and not labels.get("identity", True):
        try:
            vocab = _dataset_vocab(info)
        except AudiobenchError as exc:
            return None, f"its labels were mapped onto the dataset's, which cannot be opened here ({_first_line(exc)})"
        lm = cfg.get("label_map")
        label_map = lm.get("path") if isinstance(lm, dict) else None
    rate = info.data.get("sample_rate")
    try:
        model = resolve_model(name, checkpoint=str(checkpoint) if checkpoint else None, device="cpu",
                              sample_rate=int(rate) if isinstance(rate, int) else None,
                              weights=str(cfg.get("weights", "default")), label_map=label_map, dataset_vocab=vocab,
                              download=False)
    except AudiobenchError as exc:
        return None, f"the model cannot be loaded here ({_first_line(exc)})"
    except Exception as exc:  # a plugin's own factory failing: the model is not available here
        return None, f"the model cannot be loaded here ({type(exc).__name__}: {_first_line(exc)})"
    if not model.spec.has_embedding:
        return None, "the model loaded here has no embedding"
    return head_function(model), ""


def _not_reloadable(source: str) -> str:
    """Why verify-run does not rebuild model ``source`` named in a (possibly received) run.json, or
    "": only registered models, installed plugin models and ``hf:`` folders are rebuilt; a
    ``module:factory`` would make a received file choose which installed function to call."""
    from audiobench.models import MODELS
    from audiobench.models.plugins import plugin_entry
    from audiobench.models.resolve import split_variant

    try:
        base, _ = split_variant(str(source))
    except AudiobenchError as exc:
        return _first_line(exc)
    if base.startswith("hf:") or base in MODELS or plugin_entry(base) is not None:
        return ""
    return "verify-run does not import a module:factory model named by run.json"


def _dataset_vocab(info: RunInfo):
    from audiobench.data import open_dataset

    data = info.data
    target = data.get("manifest") or next((s.get("abs_path") for s in data.get("shards") or [] if isinstance(s, dict)), None)
    if not isinstance(target, str):
        raise ResultsError("run.json records no data path")
    ds = open_dataset(target, data.get("data_root"))
    try:
        if ds.vocab_hash != data.get("vocab_hash"):
            raise ResultsError("its vocabulary hash differs from the recorded one")
        return ds.vocab
    finally:
        ds.close()


def _convexity_step() -> float:
    """One interpolation point of convexity (1 / (pairs × lambdas)): how much the value moves when
    the head's score of one point crosses the threshold."""
    from audiobench.metrics import latent

    sig = inspect.signature(latent.convexity_per_class).parameters
    return 1.0 / (int(sig["n_pairs"].default) * len(np.asarray(sig["lambdas"].default)))


# -- geometry ------------------------------------------------------------------------------------
def _budget(cond: Dict[str, Any]) -> Optional[Tuple[str, float]]:
    """(norm, eps) every clip of ``cond`` must stay within, or None (no budget, or a chain whose
    geometry includes its base's change)."""
    params = cond.get("params") or {}
    if cond["perturbation"] == "transfer":  # clips crafted on the source with the attack's budget
        attack = params.get("attack") if isinstance(params.get("attack"), dict) else {}
        if attack.get("perturbation") not in ("pgd", "fgsm", "apgd"):
            return None
        params = {"domain": "waveform", "eps": attack.get("eps"), "norm": attack.get("norm", "linf")}
    if cond["perturbation"] == "chain" or params.get("domain", "waveform") != "waveform":
        return None
    if cond["perturbation"] == "min-eps":
        eps, norm = params.get("eps_max"), "linf"
    else:
        eps, norm = params.get("eps"), params.get("norm")
    if norm not in ("linf", "l2") or isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        return None
    return norm, float(eps)


def _geometry_problems(where: str, cond: Dict[str, Any], geom: np.ndarray, clip_ids: np.ndarray,
                       energy: Optional[np.ndarray], num_samples: Optional[int]) -> List[str]:
    snr, linf, l2, min_eps = (geom[:, j] for j in range(4))
    out: List[str] = []

    def first(mask, what: str) -> None:
        if mask.any():
            i = int(np.argmax(mask))
            out.append(f"{where}/{clip_ids[i]}: {what} (snr_db {snr[i]:.6g}, linf {linf[i]:.6g}, l2 {l2[i]:.6g})")

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        first(~(linf >= 0) | ~(l2 >= 0) | ~np.isfinite(linf) | ~np.isfinite(l2), "norms must be finite and >= 0")
        first(linf > l2 * (1 + 1e-6) + 1e-12, "linf exceeds l2 (impossible)")
        if num_samples:
            first(l2 > math.sqrt(num_samples) * linf * (1 + 1e-6) + 1e-12, f"l2 exceeds sqrt({num_samples})·linf (impossible)")
        zero = l2 == 0
        first(zero & (snr != np.inf), "no change but a finite realised SNR")
        first(~zero & (snr == np.inf), "a change but an infinite realised SNR")
        if cond["perturbation"] == CLEAN:
            first(~zero | (linf != 0), "the clean condition changed the clip")
        budget = _budget(cond)
        if budget is not None:
            norm, eps = budget
            value = linf if norm == "linf" else l2
            slack = LINF_SLACK if norm == "linf" else LINF_SLACK * math.sqrt(num_samples or 1)
            first(value > eps * (1 + 1e-6) + slack, f"{norm} exceeds the condition's {norm} budget {eps:g}")
        if cond["perturbation"] == "min-eps" and budget is not None:
            eps_max = budget[1]
            ok = np.isnan(min_eps) | (min_eps == np.inf) | (min_eps == -1.0) | ((min_eps > 0) & (min_eps <= eps_max * (1 + 1e-6)))
            if not ok.all():
                i = int(np.argmin(ok))
                out.append(f"{where}/{clip_ids[i]}: min_eps {min_eps[i]:.6g} is not in (0, eps_max {eps_max:g}], inf, -1 or NaN")
        elif (~np.isnan(min_eps)).any():
            i = int(np.argmax(~np.isnan(min_eps)))
            out.append(f"{where}/{clip_ids[i]}: min_eps {min_eps[i]:.6g} recorded for a condition that is not min-eps")
        if energy is not None:
            moved = ~zero & np.isfinite(l2)
            silent = moved & (energy == 0)
            first(silent & ~np.isnan(snr), "the clean clip is silent, so its realised SNR must be NaN")
            m = moved & (energy > 0) & np.isfinite(energy)
            expected = np.full_like(snr, np.nan)
            expected[m] = 10.0 * np.log10(energy[m] / l2[m] ** 2)
            first(m & ~(np.abs(snr - expected) <= SNR_TOLERANCE_DB),
                  "realised SNR disagrees with 10·log10(clean energy / l2²)")
    return out


# -- the recomputation ------------------------------------------------------------------------------
def verify_run_dir(run_dir: Path, *, data_root: Optional[str] = None, skip_data: bool = False,
                   skip_models: bool = False, skip_latent: bool = False, rtol: float = 1e-8) -> Verification:
    """Check one run folder (see the module docstring). Raises ResultsError (one line) only when
    the folder is unusable (no run.json, unreadable tables, arrays of the wrong shape)."""
    import pandas as pd

    from audiobench.results.tables import model_tables, suite_rows, summary_conditions

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"{run_dir}: not a directory")
    info = read_run_info(run_dir)
    v = Verification(run_dir)
    if not info.complete:
        v.problems.append("run.json says the run is not complete")
    conditions = _check_conditions(info)
    if not 0 <= info.bootstrap <= MAX_BOOTSTRAP:
        raise ResultsError(f"{info.path}: config.bootstrap {info.bootstrap} is outside 0..{MAX_BOOTSTRAP}, "
                           f"more resamples than verify-run recomputes")
    models = info.model_names
    arrays = read_scores(run_dir / SCORES_NPZ)
    clip_ids, targets = _check_scores(run_dir / SCORES_NPZ, arrays, models, conditions)
    metrics = read_table(run_dir / METRICS_CSV, METRICS_COLUMNS)
    per_clip = read_table(run_dir / PER_CLIP_CSV, per_clip_columns())
    per_class = read_table(run_dir / PER_CLASS_CSV, PER_CLASS_COLUMNS)
    _check_config(info, v)
    run_cwd = _run_cwd(run_dir, info.config.get("out"))
    _check_data(info, clip_ids, v, data_root, skip_data, run_cwd)

    roots = [Path.cwd()] + ([run_cwd] if run_cwd is not None else [])
    n = len(clip_ids)
    names = info.class_names or [f"class {i}" for i in range(targets.shape[1])]
    num_samples = info.data.get("num_samples") if isinstance(info.data.get("num_samples"), int) else None
    cpu_run = str(info.raw.get("device", "cpu")).startswith("cpu")
    rows_by_model: Dict[str, List[dict]] = {}
    logits_of: Dict[str, Dict[str, np.ndarray]] = {}
    valid_of: Dict[str, np.ndarray] = {}
    for model_name in models:
        record = info.models.get(model_name)
        if not isinstance(record, dict):
            v.problems.append(f"run.json's models lacks {model_name}")
            continue
        checkpoint = None
        if skip_models:
            v.checks.append(f"model {model_name}: files not re-hashed (--skip-models)")
        else:
            checkpoint = _check_model_files(model_name, record, roots, v)
        logits, extras, embeddings = {}, {}, {}
        geometry_stored = True
        rows_of = {}
        for c in conditions:
            cid = c["id"]
            key = logits_key(model_name, cid)
            if key not in arrays:
                v.problems.append(f"scores.npz lacks {key}")
                continue
            rows = per_clip[(per_clip["model"] == model_name) & (per_clip["condition"] == cid)]
            if len(rows) != n or list(rows["clip_id"].astype(str)) != list(clip_ids):
                v.problems.append(f"per_clip.csv rows of {model_name}/{cid} do not match the clip list")
                continue
            rows_of[cid] = rows
            logits[cid] = arrays[key]
            geom = arrays.get(geometry_key(model_name, cid))
            if geom is None:  # scores.npz of an older audiobench: the geometry from per_clip.csv
                geometry_stored = False
                geom = np.stack([rows[k].to_numpy(dtype=np.float64) for k in GEOMETRY_ARRAY], axis=1)
            geom = np.asarray(geom, dtype=np.float64)
            extras[cid] = {k: geom[:, j] for j, k in enumerate(GEOMETRY_ARRAY)}
            if geometry_key(model_name, cid) in arrays:
                min_eps = extras[cid]["min_eps"]
                extras[cid]["min_eps"] = None if np.isnan(min_eps).all() else min_eps
            prefix = measured_key(model_name, cid, "")
            extras[cid]["measured"] = {k[len(prefix):]: np.asarray(a, dtype=np.float64) for k, a in arrays.items()
                                       if k.startswith(prefix) and a.shape == (n,)}
            emb = arrays.get(embedding_key(model_name, cid))
            if emb is not None:
                embeddings[cid] = np.asarray(emb, dtype=np.float32)
        if len(logits) != len(conditions):
            continue
        # -- geometry: consistent, inside every budget
        energy = arrays.get(energy_key(model_name))
        found = []
        for c in conditions:
            g = np.stack([np.asarray(extras[c["id"]][k] if extras[c["id"]][k] is not None else np.full(n, np.nan),
                                     dtype=np.float64) for k in GEOMETRY_ARRAY], axis=1)
            found += _geometry_problems(f"{model_name}/{c['id']}", c, g, clip_ids, energy, num_samples)
        v.problems += found[:5] + ([f"... and {len(found) - 5} more geometry problems"] if len(found) > 5 else [])
        if not found:
            budgets = sum(_budget(c) is not None for c in conditions)
            v.checks.append(f"per-clip geometry of {model_name}: consistent, {budgets} budgeted condition(s) within "
                            f"their eps" + ("" if energy is not None else " (no clean energy recorded: SNR vs L2 not checked)"))
        if not geometry_stored:
            v.checks.append(f"scores.npz of {model_name} holds no geometry (older audiobench): per_clip.csv's is used as is")
        bad = arrays.get(bad_input_key(model_name))
        if bad is None:
            bad = rows_of[conditions[0]["id"]]["bad_input"].to_numpy(dtype=bool)
        # -- latent metrics
        head, why_not = None, ""
        if embeddings:
            if skip_latent or skip_models:
                why_not = "--skip-latent" if skip_latent else "--skip-models"
            else:
                head, why_not = _load_head(info, model_name, checkpoint)
            if head is not None and info.raw.get("precision", "fp32") == "fp32":
                worst = max(_head_gap(head, embeddings[cid], logits[cid]) for cid in embeddings)
                if worst > 1e-3:
                    v.problems.append(f"model {model_name}: its head maps the stored embeddings to logits up to "
                                      f"{worst:.3g} away from the stored logits (embeddings or logits edited?)")
                else:
                    v.checks.append(f"model {model_name}: its head maps the stored embeddings to the stored logits")
        m_rows, c_frames, k_frames, _ = model_tables(
            info.run_id, model_name, conditions, logits, targets, clip_ids, np.asarray(bad, dtype=bool), extras,
            {c["id"]: info.suspect(model_name, c["id"]) for c in conditions}, n_boot=info.bootstrap, seed=info.seed,
            names=names, embeddings_by_cond=embeddings or None, head_fn=head, clean_energy=energy,
        )
        rows_by_model[model_name] = m_rows
        logits_of[model_name], valid_of[model_name] = logits, ~np.asarray(bad, dtype=bool)
        _compare_per_clip(v, per_clip, model_name, pd.concat(c_frames, ignore_index=True), rtol)
        step = 0.0 if cpu_run else _convexity_step()
        _compare_per_class(v, per_class, model_name, pd.concat(k_frames, ignore_index=True), rtol, step,
                           bool(embeddings), head is not None, why_not)
    # the corruption-suite summaries, as the aggregator computes them (one model may be the reference)
    summaries = summary_conditions(conditions, info.config.get("suite"))
    if info.raw.get("summaries") is not None and info.raw["summaries"] != summaries:
        v.problems.append("run.json's summaries are not those of its conditions (edited by hand?)")
    if summaries and len(rows_by_model) == len(models):
        ref_name = info.config.get("reference_model") or (models[0] if len(models) > 1 else None)
        if ref_name is not None and ref_name not in logits_of:
            v.problems.append(f"run.json names reference model {str(ref_name)[:80]}, which is not one of its models")
            ref_name = None
        for model_name in models:
            valid = valid_of[model_name] & (valid_of[ref_name] if ref_name is not None else True)
            rows_by_model[model_name] = rows_by_model[model_name] + suite_rows(
                info.run_id, model_name, conditions, logits_of[model_name], targets, valid, suite=info.config.get("suite"),
                n_boot=info.bootstrap, seed=info.seed, reference=logits_of.get(ref_name) if ref_name is not None else None)
    for model_name, m_rows in rows_by_model.items():
        _compare_metrics(v, metrics, model_name, m_rows, rtol)
    return v


def _head_gap(head, emb: np.ndarray, logits: np.ndarray) -> float:
    got = np.asarray(head(emb), dtype=np.float64)
    ref = np.asarray(logits, dtype=np.float64)
    if got.shape != ref.shape:
        return math.inf
    ok = np.isfinite(ref).all(axis=1)
    if not ok.any():
        return 0.0
    return float((np.abs(got[ok] - ref[ok]) / np.maximum(1.0, np.abs(ref[ok]))).max())


def _compare_metrics(v: Verification, metrics, model_name: str, m_rows: List[dict], rtol: float) -> None:
    stored = metrics[metrics["model"] == model_name]
    if len(stored) != len(m_rows):
        v.problems.append(f"metrics.csv has {len(stored)} rows for {model_name}, recomputed {len(m_rows)}")
    index = {(r.condition, r.metric): r for r in stored.itertuples()}
    for r in m_rows:
        s = index.get((r["condition"], r["metric"]))
        if s is None:
            v.problems.append(f"metrics.csv lacks {model_name}/{r['condition']}/{r['metric']}")
            continue
        for col in ("value", "ci_low", "ci_high", "n_clips", "n_classes", "suspect"):
            if not _close(getattr(s, col), r[col], rtol):
                v.problems.append(f"metrics.csv {model_name}/{r['condition']}/{r['metric']} {col}: stored {getattr(s, col)} "
                                  f"!= recomputed {r[col]}")
    v.checks.append(f"{len(m_rows)} metric rows of {model_name}")


def _compare_per_clip(v: Verification, per_clip, model_name: str, rc, rtol: float) -> None:
    sc = per_clip[per_clip["model"] == model_name].reset_index(drop=True)
    if len(rc) != len(sc):
        v.problems.append(f"per_clip.csv has {len(sc)} rows for {model_name}, expected {len(rc)}")
        return
    unchecked = sorted(set(sc.columns) - set(rc.columns))
    if unchecked:  # what a perturbation measured, in a folder whose scores.npz does not hold it
        v.unchecked.append(f"per_clip.csv column(s) {', '.join(unchecked)} of {model_name} not re-checked "
                           f"(scores.npz does not hold them)")
    for col in rc.columns:
        if col in ("run_id", "model", "perturbation", "param", "level"):
            continue
        a, b = sc[col].to_numpy(), rc[col].to_numpy()
        if col in ("condition", "clip_id"):
            bad_rows = np.flatnonzero(a.astype(str) != b.astype(str))
        else:
            bad_rows = [i for i in range(len(a)) if not _close(a[i], b[i], rtol)]
        if len(bad_rows):
            i = int(bad_rows[0])
            v.problems.append(f"per_clip.csv {model_name}/{sc['condition'][i]}/{sc['clip_id'][i]} {col}: stored {a[i]} "
                              f"!= recomputed {b[i]}")
    v.checks.append(f"per-clip rows of {model_name} (geometry, hits, shift statistics, flags)")


def _compare_per_class(v: Verification, per_class, model_name: str, kc, rtol: float, convexity_step: float,
                       has_embeddings: bool, has_head: bool, why_not: str) -> None:
    sk = per_class[per_class["model"] == model_name]
    key = ["condition", "metric", "class_index"]
    stored = {tuple(r[:3]): (r[3], r[4]) for r in sk[key + ["value", "class_name"]].itertuples(index=False, name=None)}
    if len(stored) != len(sk):
        v.problems.append(f"per_class.csv has a (condition, metric, class) of {model_name} twice")
    recomputed = {tuple(r[:3]): (r[3], r[4]) for r in kc[key + ["value", "class_name"]].itertuples(index=False, name=None)}
    for k, (value, cname) in recomputed.items():
        s = stored.get(k)
        if s is None:
            v.problems.append(f"per_class.csv lacks {model_name}/{k[0]}/{k[1]}/class {k[2]}")
            break
        ok = _close(s[0], value, rtol)
        if not ok and k[1] == "convexity" and convexity_step and all(np.isfinite([s[0], value])):
            ok = abs(float(s[0]) - float(value)) <= convexity_step + 1e-12  # recomputed on another device
        if not ok or str(s[1]) != str(cname):
            v.problems.append(f"per_class.csv {model_name}/{k[0]}/{k[1]}/class {k[2]}: stored {s[0]} != recomputed {value}")
            break
    extra = sorted({k[1] for k in stored if k not in recomputed})
    for metric in extra:
        if metric == "convexity" and has_embeddings and not has_head:
            note = f"convexity of {model_name} not re-checked ({why_not})"
            (v.checks if why_not.startswith("--skip") else v.unchecked).append(note)
        elif metric in ("convexity", "density") and not has_embeddings:
            v.unchecked.append(f"{metric} of {model_name} not re-checked (scores.npz holds no embeddings: written by an "
                               f"older audiobench)")
        else:
            v.problems.append(f"per_class.csv has {metric} rows for {model_name} that the run did not compute")
    latent = [m for m in ("convexity", "density") if any(k[1] == m for k in recomputed)]
    v.checks.append(f"per-class rows of {model_name} ({', '.join(['AP', 'AUC', 'delta_AP', *latent])})")
