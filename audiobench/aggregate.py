"""Turn a run folder's stored units into its tables (metrics.csv/.parquet, per_clip.csv,
per_class.csv, scores.npz). Always recomputed from the units, so a resumed run gives exactly the
tables of an uninterrupted one; ``verify-run`` recomputes with the same code path from scores."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from audiobench import results as R
from audiobench.engine import load_units, unit_dir
from audiobench.metrics.condition import (
    PER_CLIP_SHIFT,
    finite_rows as _finite_rows,
    condition_metrics,
    min_eps_summary,
    sigmoid,
)


def model_tables(run_id: str, model_name: str, conditions: List[Dict[str, Any]], logits_by_cond: Dict[str, np.ndarray],
                 targets: np.ndarray, clip_ids: np.ndarray, bad_input: np.ndarray, extras_by_cond: Dict[str, Dict[str, np.ndarray]],
                 suspect_by_cond: Dict[str, bool], *, n_boot: int, seed: int, names: List[str],
                 embeddings_by_cond: Optional[Dict[str, np.ndarray]] = None, head_fn=None):
    """Every table row of one model, from its logits per condition and the per-clip geometry.

    Shared by :func:`aggregate_run` (from units) and ``verify-run`` (from scores.npz + per_clip.csv).
    """
    import pandas as pd

    from audiobench.metrics import shift

    n_clips = len(clip_ids)
    clean_id = conditions[0]["id"]
    clean = logits_by_cond[clean_id].astype(np.float64)
    valid = ~np.asarray(bad_input, dtype=bool)
    metric_rows: List[dict] = []
    clip_frames: List[pd.DataFrame] = []
    class_frames: List[pd.DataFrame] = []
    arrays: Dict[str, np.ndarray] = {}
    results = {c["id"]: condition_metrics(clean, logits_by_cond[c["id"]].astype(np.float64), targets, n_boot=n_boot,
                                          seed=seed, valid=valid) for c in conditions}
    clean_ap = results[clean_id]["ap"]
    for c in conditions:
        cid = c["id"]
        res, ex, lg = results[cid], extras_by_cond[cid], logits_by_cond[cid]
        suspect = bool(suspect_by_cond.get(cid, False))
        key = dict(run_id=run_id, model=model_name, condition=cid, perturbation=c["perturbation"],
                   param=c["param"] or "", level=_level(c))
        extra = {"snr_db_mean": _finite_mean(np.asarray(ex["snr_db"])[res["use"]]),
                 "bad_input_clips": float((~valid).sum())}
        min_eps = ex.get("min_eps")
        has_min_eps = min_eps is not None and np.isfinite(np.asarray(min_eps, dtype=np.float64)).any()
        if has_min_eps:
            extra.update(min_eps_summary(np.asarray(min_eps, dtype=np.float64)[res["use"]]))
        for name, d in list(res["rows"].items()) + [(k, {"value": v}) for k, v in extra.items()]:
            metric_rows.append({**key, "metric": name, "value": d["value"], "ci_low": d.get("ci_low", math.nan),
                                "ci_high": d.get("ci_high", math.nan), "n_clips": res["n_clips"],
                                "n_classes": res["n_classes"], "suspect": suspect})
        pc = pd.DataFrame({**{k: [v] * n_clips for k, v in key.items()}, "clip_id": clip_ids})
        pc["snr_db"], pc["linf"], pc["l2"] = ex["snr_db"], ex["linf"], ex["l2"]
        from audiobench.metrics.tagging import tagging_per_clip

        hits = tagging_per_clip(sigmoid(lg), targets)  # NaN for clips without labels
        pc["top1_hit"], pc["top5_hit"] = hits["top1_hit"], hits["top5_hit"]
        for k in PER_CLIP_SHIFT:
            pc[k] = res["per_clip"][k]
        pc["nonfinite"] = ~_finite_rows(lg)
        pc["bad_input"] = ~valid
        pc["min_eps"] = np.asarray(min_eps, dtype=np.float64) if has_min_eps else np.nan
        clip_frames.append(pc)
        cls = [("AP", res["ap"]), ("AUC", res["auc"]), ("delta_AP", res["ap"] - clean_ap)]
        emb = (embeddings_by_cond or {}).get(cid)
        if emb is not None and head_fn is not None:
            from audiobench.metrics import latent

            use = res["use"]
            cls.append(("convexity", latent.convexity_per_class(emb[use], targets[use], head_fn, seed=seed)))
            cls.append(("density", latent.density_per_class(emb[use], targets[use])))
        for metric, values in cls:
            class_frames.append(pd.DataFrame({**{k: [v] * len(values) for k, v in key.items()},
                                              "class_index": np.arange(len(values)),
                                              "class_name": names[: len(values)], "metric": metric, "value": values}))
        arrays[f"logits__{model_name}__{cid}"] = lg.astype(np.float32)
        arrays[f"hist__{model_name}__{cid}"] = np.stack([
            shift.score_histogram(clean[res["use"]], bins=20), shift.score_histogram(lg[res["use"]], bins=20)
        ]).astype(np.int64)
    return metric_rows, clip_frames, class_frames, arrays


def aggregate_run(run_dir: Path, meta: Dict[str, Any], dataset, n_clips: int, models: Optional[Dict[str, Any]] = None) -> None:
    """Write every table of ``run_dir`` from its units (and update ``meta['trust']``)."""
    import pandas as pd

    from audiobench import trust
    from audiobench.errors import ResultsError
    from audiobench.metrics import tagging
    from audiobench.perturb import PERTURBATIONS

    run_dir = Path(run_dir)
    models = models or {}
    run_id = meta["run_id"]
    n_boot = int(meta["config"].get("bootstrap", 1000))
    seed = int(meta.get("seed", 0))
    targets = np.asarray(dataset.targets()[:n_clips], dtype=bool)
    clip_ids = np.asarray(list(dataset.clip_ids[:n_clips]), dtype=str)
    names = meta.get("vocab", {}).get("names") or [f"class {i}" for i in range(targets.shape[1])]
    conditions = meta["conditions"]
    cond_objs = [_rebuild(c, PERTURBATIONS) for c in conditions]
    metric_rows: List[dict] = []
    clip_frames: List[pd.DataFrame] = []
    class_frames: List[pd.DataFrame] = []
    arrays: Dict[str, np.ndarray] = {"clip_ids": clip_ids, "targets": targets}
    meta["trust"] = {}
    for model_name in meta["config"]["models"]:
        units = {c["id"]: load_units(unit_dir(run_dir, model_name, ci), n_clips) for ci, c in enumerate(conditions)}
        for cid, u in units.items():
            if not np.array_equal(u["clip_ids"], clip_ids):
                raise ResultsError(f"{run_dir}: units of {model_name}/{cid} hold other clips than the dataset order")
        clean_id = conditions[0]["id"]
        clean = units[clean_id]["logits"].astype(np.float64)
        bad_input = units[clean_id]["bad_input"].astype(bool)
        use_clean = ~bad_input & _finite_rows(clean)

        def map_fn(logits, t=None):
            if t is None:
                keep = use_clean & _finite_rows(logits)
                return float(tagging.tagging_metrics(sigmoid(logits[keep]), targets[keep])["mAP"])
            keep = _finite_rows(logits)
            return float(tagging.tagging_metrics(sigmoid(logits[keep]), t[keep])["mAP"])

        mAP_of = {cid: map_fn(u["logits"].astype(np.float64)) for cid, u in units.items()}
        verdicts = trust.assess(model_name, conditions, cond_objs, mAP_of, units, targets, clean, run_dir, map_fn)
        meta["trust"][model_name] = verdicts
        extras = {cid: {"snr_db": u["snr_db"], "linf": u["linf"], "l2": u["l2"], "min_eps": u.get("pc_min_eps")}
                  for cid, u in units.items()}
        model = models.get(model_name)
        embs = {cid: u["embedding"] for cid, u in units.items() if "embedding" in u}
        m_rows, c_frames, k_frames, arr = model_tables(
            run_id, model_name, conditions, {cid: u["logits"] for cid, u in units.items()}, targets, clip_ids, bad_input,
            extras, {cid: v["suspect"] for cid, v in verdicts.items()}, n_boot=n_boot, seed=seed, names=names,
            embeddings_by_cond=embs if model is not None else None, head_fn=_head_fn(model) if model is not None else None,
        )
        metric_rows += m_rows
        clip_frames += c_frames
        class_frames += k_frames
        arrays.update(arr)
    write_tables(run_dir, metric_rows, clip_frames, class_frames, arrays)


def write_tables(run_dir: Path, metric_rows, clip_frames, class_frames, arrays) -> None:
    import pandas as pd

    metrics = pd.DataFrame(metric_rows)
    R.atomic_write_csv(run_dir / "metrics.csv", metrics)
    R.atomic_write_parquet(run_dir / "metrics.parquet", metrics)
    R.atomic_write_csv(run_dir / "per_clip.csv", pd.concat(clip_frames, ignore_index=True))
    R.atomic_write_csv(run_dir / "per_class.csv", pd.concat(class_frames, ignore_index=True))
    R.atomic_write_npz(run_dir / "scores.npz", **arrays)


def _head_fn(model):
    import torch

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")

    @torch.no_grad()
    def head(z):
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=device)
        return model.head(z).float().cpu().numpy()

    return head


def _rebuild(cinfo: Dict[str, Any], registry):
    params = dict(cinfo["params"])
    kind = params.pop("perturbation", cinfo["perturbation"])
    cls = registry.get(kind)
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return cls(**{k: v for k, v in params.items() if k in fields})


def _level(c: Dict[str, Any]) -> float:
    lv = c.get("level")
    try:
        return float(lv)
    except (TypeError, ValueError):
        return math.nan


def _finite_mean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan
