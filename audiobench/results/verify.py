"""Recompute a finished run's aggregates from its stored scores and check its recorded hashes.

``scores.npz`` holds the logits of every (model, condition) and the targets; ``per_clip.csv``
holds the per-clip geometry of each perturbation (realised SNR, norms, min-eps), which cannot be
recomputed without rerunning the attack. From those, the same code that wrote the tables
(:func:`audiobench.results.tables.model_tables`) recomputes every row of ``metrics.csv``,
``per_clip.csv`` and ``per_class.csv`` (except the latent-space metrics, which need the model),
and each value must agree within a relative tolerance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from audiobench.errors import ResultsError
from audiobench.results.schema import (
    METRICS_COLUMNS,
    METRICS_CSV,
    PER_CLASS_COLUMNS,
    PER_CLASS_CSV,
    PER_CLIP_CSV,
    PER_CLIP_REQUIRED,
    SCORES_NPZ,
    read_run_info,
    read_scores,
    read_table,
)


def _close(a, b, rtol: float) -> bool:
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return bool(a) == bool(b)
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rtol * max(1.0, abs(a), abs(b)) + 1e-12


def verify_run_dir(run_dir: Path, *, data_root: Optional[str] = None, rtol: float = 1e-8) -> Tuple[List[str], List[str]]:
    """Returns (problems, checks passed). Raises ResultsError only when the folder is unusable."""
    from audiobench.data.shards import clip_list_hash
    from audiobench.metrics.condition import PER_CLIP_SHIFT
    from audiobench.results.tables import model_tables

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"{run_dir}: not a directory")
    meta = read_run_info(run_dir).raw
    problems: List[str] = []
    checks: List[str] = []
    if not meta.get("complete"):
        problems.append("run.json says the run is not complete")
    arrays = read_scores(run_dir / SCORES_NPZ)
    metrics = read_table(run_dir / METRICS_CSV, METRICS_COLUMNS)
    per_clip = read_table(run_dir / PER_CLIP_CSV, PER_CLIP_REQUIRED)
    per_class = read_table(run_dir / PER_CLASS_CSV, PER_CLASS_COLUMNS)
    clip_ids = arrays.get("clip_ids")
    targets = arrays.get("targets")
    if clip_ids is None or targets is None:
        raise ResultsError(f"{run_dir / 'scores.npz'}: lacks clip_ids or targets")
    clip_ids = clip_ids.astype(str)
    data = meta.get("data", {})
    # -- clip list: the used clips must hash to the recorded value
    used_hash = clip_list_hash(list(clip_ids))
    if data.get("used_clip_list_hash") and used_hash != data["used_clip_list_hash"]:
        problems.append(f"clip list hash {used_hash[:12]} != recorded {data['used_clip_list_hash'][:12]}")
    else:
        checks.append(f"clip list hash of {len(clip_ids)} clips")
    if data_root is not None or data.get("manifest"):
        try:
            from audiobench.data import open_dataset

            ds = open_dataset(data.get("manifest") or data.get("name"), data_root)
            if ds.clip_list_hash != data.get("clip_list_hash"):
                problems.append(f"dataset clip list hash {ds.clip_list_hash[:12]} != recorded {str(data.get('clip_list_hash'))[:12]}")
            elif list(ds.clip_ids[: len(clip_ids)]) != list(clip_ids):
                problems.append("scores.npz clip ids are not the dataset's first clips in order")
            else:
                checks.append("dataset clip list hash matches the data on disk")
        except Exception as exc:  # data not present here: not a mismatch, just unchecked
            checks.append(f"dataset not re-hashed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    # -- checkpoints
    from audiobench.models.weights import checkpoint_sha256

    for name, info in meta.get("models", {}).items():
        path, sha = info.get("checkpoint"), info.get("checkpoint_sha256")
        if path and sha and Path(path).exists():
            now = checkpoint_sha256(Path(path))
            if now != sha:
                problems.append(f"checkpoint of {name} ({path}) sha256 {now[:12]} != recorded {sha[:12]}")
            else:
                checks.append(f"checkpoint sha256 of {name}")
        elif path and sha:
            checks.append(f"checkpoint of {name} not present here ({path}); sha256 not re-checked")
    # -- recompute the tables
    conditions = meta["conditions"]
    names = meta.get("vocab", {}).get("names") or [f"class {i}" for i in range(targets.shape[1])]
    n_boot = int(meta["config"].get("bootstrap", 1000))
    seed = int(meta.get("seed", 0))
    for model_name in meta["config"]["models"]:
        logits, extras, suspect = {}, {}, {}
        for c in conditions:
            key = f"logits__{model_name}__{c['id']}"
            if key not in arrays:
                problems.append(f"scores.npz lacks {key}")
                continue
            logits[c["id"]] = arrays[key]
            rows = per_clip[(per_clip["model"] == model_name) & (per_clip["condition"] == c["id"])]
            if len(rows) != len(clip_ids) or list(rows["clip_id"].astype(str)) != list(clip_ids):
                problems.append(f"per_clip.csv rows of {model_name}/{c['id']} do not match the clip list")
                continue
            extras[c["id"]] = {k: rows[k].to_numpy(dtype=np.float64) for k in ("snr_db", "linf", "l2", "min_eps")}
            suspect[c["id"]] = bool(meta.get("trust", {}).get(model_name, {}).get(c["id"], {}).get("suspect", False))
        if len(logits) != len(conditions) or len(extras) != len(conditions):
            continue
        bad = per_clip[(per_clip["model"] == model_name) & (per_clip["condition"] == conditions[0]["id"])]["bad_input"]
        m_rows, c_frames, k_frames, _ = model_tables(
            meta["run_id"], model_name, conditions, logits, targets.astype(bool), clip_ids, bad.to_numpy(dtype=bool),
            extras, suspect, n_boot=n_boot, seed=seed, names=names,
        )
        stored = metrics[metrics["model"] == model_name]
        if len(stored) != len(m_rows):
            problems.append(f"metrics.csv has {len(stored)} rows for {model_name}, recomputed {len(m_rows)}")
        index = {(r.condition, r.metric): r for r in stored.itertuples()}
        for r in m_rows:
            s = index.get((r["condition"], r["metric"]))
            if s is None:
                problems.append(f"metrics.csv lacks {model_name}/{r['condition']}/{r['metric']}")
                continue
            for col in ("value", "ci_low", "ci_high", "n_clips", "n_classes", "suspect"):
                if not _close(getattr(s, col), r[col], rtol):
                    problems.append(f"metrics.csv {model_name}/{r['condition']}/{r['metric']} {col}: stored {getattr(s, col)} != recomputed {r[col]}")
        checks.append(f"{len(m_rows)} metric rows of {model_name}")
        import pandas as pd

        rc = pd.concat(c_frames, ignore_index=True)
        sc = per_clip[per_clip["model"] == model_name].reset_index(drop=True)
        for col in ("top1_hit", "top5_hit", *PER_CLIP_SHIFT, "nonfinite"):
            if len(rc) != len(sc):
                problems.append(f"per_clip.csv has {len(sc)} rows for {model_name}, expected {len(rc)}")
                break
            a, b = sc[col].to_numpy(), rc[col].to_numpy()
            bad_rows = [i for i in range(len(a)) if not _close(a[i], b[i], rtol)]
            if bad_rows:
                i = bad_rows[0]
                problems.append(f"per_clip.csv {model_name}/{sc['condition'][i]}/{sc['clip_id'][i]} {col}: stored {a[i]} != recomputed {b[i]}")
        checks.append(f"per-clip statistics of {model_name}")
        kc = pd.concat(k_frames, ignore_index=True)
        sk = per_class[(per_class["model"] == model_name) & per_class["metric"].isin(["AP", "AUC", "delta_AP"])].reset_index(drop=True)
        if len(sk) != len(kc):
            problems.append(f"per_class.csv has {len(sk)} AP/AUC rows for {model_name}, expected {len(kc)}")
        else:
            a, b = sk["value"].to_numpy(dtype=np.float64), kc["value"].to_numpy(dtype=np.float64)
            ok = np.isclose(a, b, rtol=rtol, atol=1e-12, equal_nan=True)
            if not ok.all():
                i = int(np.argmin(ok))
                problems.append(f"per_class.csv {model_name}/{sk['condition'][i]}/{sk['metric'][i]}/class {sk['class_index'][i]}: stored {a[i]} != recomputed {b[i]}")
            checks.append(f"per-class AP/AUC of {model_name}")
    return problems, checks
