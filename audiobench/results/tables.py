"""One model's rows of the three tables, from arrays: the code shared by the aggregator (which
reads the engine's units) and ``verify-run`` (which reads scores.npz and per_clip.csv), so a
recomputation goes through exactly the code that wrote the tables."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np

from audiobench.metrics.condition import (
    PER_CLIP_SHIFT,
    condition_metrics,
    finite_rows,
    min_eps_summary,
    sigmoid,
)
from audiobench.results.schema import (bad_input_key, embedding_key, energy_key, geometry_key, hist_key, logits_key,
                                       measured_key)


def model_tables(run_id: str, model_name: str, conditions: List[Dict[str, Any]], logits_by_cond: Dict[str, np.ndarray],
                 targets: np.ndarray, clip_ids: np.ndarray, bad_input: np.ndarray, extras_by_cond: Dict[str, Dict[str, np.ndarray]],
                 suspect_by_cond: Dict[str, bool], *, n_boot: int, seed: int, names: List[str],
                 embeddings_by_cond: Optional[Dict[str, np.ndarray]] = None, head_fn=None,
                 clean_energy: Optional[np.ndarray] = None):
    """Every table row of one model, from its logits per condition and the per-clip geometry.

    Shared by the aggregator (from units) and ``verify-run`` (from scores.npz). Returns
    (metric rows, per-clip frames, per-class frames, scores.npz arrays). The arrays hold what
    verify-run needs to recompute or bound every table: the logits, the per-clip geometry
    (:data:`~audiobench.results.schema.GEOMETRY_ARRAY`), the bad-input mask, the embeddings
    (when given) and ``clean_energy`` (when given: each clean clip's sum of squares, which ties
    the realised SNR to the L2 norm). Latent metrics: ``density`` when embeddings are given,
    ``convexity`` when a ``head_fn`` is given too.
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
        # a min-eps condition has a value per clip (inf for clips never broken, -1 for clips missed
        # clean); NaN everywhere means the condition records none
        has_min_eps = min_eps is not None and (~np.isnan(np.asarray(min_eps, dtype=float))).any()
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
        pc["nonfinite"] = ~finite_rows(lg)
        pc["bad_input"] = ~valid
        pc["min_eps"] = np.asarray(min_eps, dtype=np.float64) if has_min_eps else np.nan
        # what the perturbation measured per clip (realised SNR, RT60, bitrate, bad-gradient steps ...)
        for name, values in sorted((ex.get("measured") or {}).items()):
            values = np.asarray(values, dtype=np.float64).reshape(-1)
            if len(values) == n_clips:
                pc[name] = values
                arrays[measured_key(model_name, cid, name)] = values
        clip_frames.append(pc)
        cls = [("AP", res["ap"]), ("AUC", res["auc"]), ("delta_AP", res["ap"] - clean_ap)]
        emb = (embeddings_by_cond or {}).get(cid)
        if emb is not None:
            from audiobench.metrics import latent

            use = res["use"]
            if head_fn is not None:
                cls.append(("convexity", latent.convexity_per_class(emb[use], targets[use], head_fn, seed=seed)))
            cls.append(("density", latent.density_per_class(emb[use], targets[use])))
            arrays[embedding_key(model_name, cid)] = np.asarray(emb, dtype=np.float32)
        for metric, values in cls:
            class_frames.append(pd.DataFrame({**{k: [v] * len(values) for k, v in key.items()},
                                              "class_index": np.arange(len(values)),
                                              "class_name": names[: len(values)], "metric": metric, "value": values}))
        arrays[logits_key(model_name, cid)] = lg.astype(np.float32)
        arrays[geometry_key(model_name, cid)] = np.stack(
            [np.asarray(pc[k], dtype=np.float64) for k in ("snr_db", "linf", "l2", "min_eps")], axis=1)
        arrays[hist_key(model_name, cid)] = np.stack([
            shift.score_histogram(clean[res["use"]], bins=20), shift.score_histogram(lg[res["use"]], bins=20)
        ]).astype(np.int64)
    arrays[bad_input_key(model_name)] = ~valid
    if clean_energy is not None:
        arrays[energy_key(model_name)] = np.asarray(clean_energy, dtype=np.float64)
    return metric_rows, clip_frames, class_frames, arrays


def head_function(model):
    """``model.head`` as the latent metrics call it: (M, D) float32 numpy embeddings → (M, C)
    numpy logits, on the model's device, without gradients."""
    import torch

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")

    @torch.no_grad()
    def head(z):
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=device)
        return model.head(z).float().cpu().numpy()

    return head


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


# --- the corruption suite's summary rows -----------------------------------------------------------
SUITE_PERTURBATION = "suite"


def corruption_conditions(conditions: List[Dict[str, Any]]) -> Dict[str, tuple]:
    """condition id -> (corruption name, severity) for the run's natural-corruption conditions."""
    from audiobench.perturb.corruptions import CORRUPTION_NAMES

    out = {}
    for c in conditions:
        params = c.get("params") or {}
        if c.get("perturbation") in CORRUPTION_NAMES and "severity" in params:
            out[c["id"]] = (c["perturbation"], int(params["severity"]))
    return out


def summary_conditions(conditions: List[Dict[str, Any]], suite: Optional[str]) -> List[Dict[str, Any]]:
    """run.json's ``summaries``: the rows a run's corruption conditions summarise to (the suite,
    then each corruption), or none when the run has no corruption conditions."""
    index = corruption_conditions(conditions)
    if not index:
        return []
    sid = suite or "corruptions"
    rows = [{"id": sid, "perturbation": SUITE_PERTURBATION, "param": "", "level": None, "kind": "suite"}]
    for name in dict.fromkeys(n for n, _ in index.values()):
        rows.append({"id": f"{sid}/{name}", "perturbation": name, "param": "", "level": None,
                     "kind": "corruption"})
    return rows


def suite_rows(run_id: str, model_name: str, conditions: List[Dict[str, Any]], logits_by_cond: Dict[str, np.ndarray],
               targets: np.ndarray, valid: np.ndarray, *, suite: Optional[str], n_boot: int, seed: int,
               reference: Optional[Dict[str, np.ndarray]] = None) -> List[dict]:
    """metrics.csv rows of the corruption summaries of one model (mean corruption mAP, relative
    robustness, per-corruption mAP and error; mCE, relative mCE and normalised CE when the
    ``reference`` model's logits (same condition ids, ``"none"`` included) are given). Clips left
    out as bad input are left out here too; CIs from one bootstrap over clips shared by every
    condition and the reference."""
    from audiobench.metrics.corruption import corruption_summary

    index = corruption_conditions(conditions)
    if not index:
        return []
    clean_id = conditions[0]["id"]
    keep = np.asarray(valid, dtype=bool)

    def scores(lg):
        return sigmoid(np.asarray(lg, dtype=np.float64)[keep])

    ref = None
    if reference is not None:
        ref = {cid: scores(reference[cid]) for cid in index}
    res = corruption_summary({cid: scores(logits_by_cond[cid]) for cid in index}, scores(logits_by_cond[clean_id]),
                             np.asarray(targets, dtype=bool)[keep], index, reference_scores=ref,
                             reference_clean_scores=None if reference is None else scores(reference[clean_id]),
                             n_boot=n_boot, seed=seed)
    sid = suite or "corruptions"
    n_classes = int(np.asarray(targets, dtype=bool)[keep].any(axis=0).sum())
    out = []

    def add(cond_id, perturbation, param, metric, row):
        out.append({"run_id": run_id, "model": model_name, "condition": cond_id, "perturbation": perturbation,
                    "param": param, "level": math.nan, "metric": metric, "value": row["value"],
                    "ci_low": row.get("ci_low", math.nan), "ci_high": row.get("ci_high", math.nan),
                    "n_clips": res["n_clips"], "n_classes": n_classes, "suspect": False})

    for metric, row in res["metrics"].items():
        add(sid, SUITE_PERTURBATION, "", metric, row)
    for corruption, rows in res["by_corruption"].items():
        for metric, row in rows.items():
            add(f"{sid}/{corruption}", corruption, "", metric, row)
    return out
