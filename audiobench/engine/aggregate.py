"""Turn a run folder's stored units into its tables and trust verdicts.

Always recomputed from the units, so a resumed run gives exactly the tables of an uninterrupted
one. The rows themselves come from :func:`audiobench.results.tables.model_tables`, the code
``verify-run`` recomputes them with; the verdicts from :func:`audiobench.trust.assess`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from audiobench import trust
from audiobench.engine.plan import ModelPlan
from audiobench.engine.units import load_units, unit_dir
from audiobench.errors import ResultsError
from audiobench.metrics.condition import finite_rows, sigmoid
from audiobench.results.schema import write_tables
from audiobench.results.tables import head_function, model_tables, suite_rows, summary_conditions


def _map(logits: np.ndarray, targets: np.ndarray, keep: np.ndarray) -> float:
    from audiobench.metrics import tagging

    keep = keep & finite_rows(logits)
    return float(tagging.tagging_metrics(sigmoid(logits[keep]), targets[keep])["mAP"])


def trust_evidence(plan: ModelPlan, units: Dict[int, Dict[str, np.ndarray]], companions: Dict[tuple, Dict[str, np.ndarray]],
                   targets: np.ndarray, use_clean: np.ndarray, clean: np.ndarray) -> List[trust.AttackEvidence]:
    """The measurements :func:`audiobench.trust.assess` judges, for each attack of one model."""
    out = []
    for ci, cond in enumerate(plan.conditions):
        if not cond.is_attack:
            continue
        u = units[ci]
        ev = trust.AttackEvidence(
            condition_id=cond.condition_id, group=tuple(cond.trust_group), eps=float(cond.eps),
            map_attack=_map(u["logits"].astype(np.float64), targets, use_clean),
            loss_sum_per_step=u.get("trace_loss_sum", ()), n_per_step=u.get("trace_n_per_step", ()),
            best_loss_sum_per_step=u.get("trace_best_loss_sum"),
            n_clips=int(u.get("trace_n", 0)), bad_grad_clips=int(u.get("trace_bad_grad", 0)),
        )
        for job in plan.companions_of(ci):
            cu = companions[(ci, job.companion.role)]
            lg = cu["logits"].astype(np.float64)
            if job.companion.role == "fgsm":
                ev.map_fgsm = _map(lg, targets, use_clean)
            elif job.companion.role == "gauss-same-l2":
                ev.map_gauss = _map(lg, targets, use_clean)
            elif job.companion.role == "tenfold":
                k = job.n_clips
                sub = targets[:k]
                every = np.ones(k, dtype=bool)
                ev.tenfold = trust.TenfoldEvidence(
                    eps=float(job.companion.condition.eps), map_strong=_map(lg, sub, every),
                    map_clean=_map(clean[:k], sub, every), chance=trust.chance_map(sub),
                )
        out.append(ev)
    return out


def aggregate_run(run_dir: Path, meta: Dict[str, Any], dataset, n_clips: int, plans: Dict[str, ModelPlan],
                  models: Optional[Dict[str, Any]] = None) -> None:
    """Write every table of ``run_dir`` from its units (and set ``meta['trust']``)."""
    run_dir = Path(run_dir)
    models = models or {}
    run_id = meta["run_id"]
    n_boot = int(meta["config"].get("bootstrap", 1000))
    seed = int(meta.get("seed", 0))
    targets = np.asarray(dataset.targets()[:n_clips], dtype=bool)
    clip_ids = np.asarray(list(dataset.clip_ids[:n_clips]), dtype=str)
    names = meta.get("vocab", {}).get("names") or [f"class {i}" for i in range(targets.shape[1])]
    conditions = meta["conditions"]
    metric_rows: List[dict] = []
    clip_frames: list = []
    class_frames: list = []
    arrays: Dict[str, np.ndarray] = {"clip_ids": clip_ids, "targets": targets}
    meta["trust"] = {}
    meta["summaries"] = summary_conditions(conditions, meta["config"].get("suite"))
    logits_of: Dict[str, Dict[str, np.ndarray]] = {}
    valid_of: Dict[str, np.ndarray] = {}
    for model_name in meta["config"]["models"]:
        plan = plans[model_name]
        ident = {"config_hash": meta["config_hash"], "model": model_name}
        units = {ci: load_units(unit_dir(run_dir, model_name, ci), n_clips, {**ident, "job": f"c{ci:03d}"},
                                n_classes=targets.shape[1])
                 for ci in range(len(conditions))}
        for ci, u in units.items():
            if not np.array_equal(u["clip_ids"], clip_ids):
                raise ResultsError(f"{run_dir}: units of {model_name}/{conditions[ci]['id']} hold other clips than the dataset order")
        companions = {(job.parent, job.companion.role): load_units(job.unit_dir(run_dir, model_name), job.n_clips,
                                                                  {**ident, "job": job.key})
                      for job in plan.companion_jobs}
        clean = units[0]["logits"].astype(np.float64)
        bad_input = units[0]["bad_input"].astype(bool)
        use_clean = ~bad_input & finite_rows(clean)
        evidence = trust_evidence(plan, units, companions, targets, use_clean, clean)
        verdicts = trust.assess(evidence)
        meta["trust"][model_name] = verdicts
        by_id = {c["id"]: units[ci] for ci, c in enumerate(conditions)}
        extras = {cid: {"snr_db": u["snr_db"], "linf": u["linf"], "l2": u["l2"], "min_eps": u.get("pc_min_eps"),
                        "measured": {k[3:]: v for k, v in u.items() if k.startswith("pc_") and k != "pc_min_eps"}}
                  for cid, u in by_id.items()}
        model = models.get(model_name)
        embs = {cid: u["embedding"] for cid, u in by_id.items() if "embedding" in u}
        m_rows, c_frames, k_frames, arr = model_tables(
            run_id, model_name, conditions, {cid: u["logits"] for cid, u in by_id.items()}, targets, clip_ids, bad_input,
            extras, {cid: v["suspect"] for cid, v in verdicts.items()}, n_boot=n_boot, seed=seed, names=names,
            embeddings_by_cond=embs if model is not None else None, head_fn=head_function(model) if model is not None else None,
            clean_energy=units[0].get("clean_energy"),  # units stored by an older audiobench lack it
        )
        metric_rows += m_rows
        logits_of[model_name] = {cid: u["logits"] for cid, u in by_id.items()}
        valid_of[model_name] = ~bad_input
        clip_frames += c_frames
        class_frames += k_frames
        arrays.update(arr)
    spectra = footprint_tables(run_dir, meta, dataset, plans, n_clips)
    if meta["summaries"]:
        models = list(meta["config"]["models"])
        ref_name = meta["config"].get("reference_model") or (models[0] if len(models) > 1 else None)
        meta["reference_model"] = ref_name
        for model_name in models:
            reference = logits_of.get(ref_name) if ref_name is not None else None
            # bad input is a property of the clip: both models leave out the same clips
            valid = valid_of[model_name] & (valid_of[ref_name] if ref_name is not None else True)
            metric_rows += suite_rows(run_id, model_name, conditions, logits_of[model_name], targets, valid,
                                      suite=meta["config"].get("suite"), n_boot=n_boot, seed=seed, reference=reference)
    write_tables(run_dir, metric_rows, clip_frames, class_frames, arrays, spectrum=spectra)


def footprint_tables(run_dir: Path, meta: Dict[str, Any], dataset, plans: Dict[str, ModelPlan], n_clips: int):
    """perturbation_spectrum.csv's rows: each attack's footprint per model, from the per-unit sums
    its units hold (None when no unit holds one)."""
    import pandas as pd

    from audiobench.perturb.footprint import footprint_cells, summarise_footprint

    cells = footprint_cells(int(dataset.num_samples), int(dataset.sample_rate))
    frames = []
    for model_name in meta["config"]["models"]:
        ident = {"config_hash": meta["config_hash"], "model": model_name}
        for ci, cond in enumerate(plans[model_name].conditions):
            if not cond.is_attack or cond.domain != "waveform":
                continue
            u = load_units(unit_dir(run_dir, model_name, ci), n_clips, {**ident, "job": f"c{ci:03d}"})
            if "fp_delta_energy" not in u:
                continue
            t = u["fp_totals"]
            per = {"delta_energy": u["fp_delta_energy"], "clean_energy": u["fp_clean_energy"],
                   "delta_energy_total": t[:, 0], "delta_energy_padding": t[:, 1], "delta_energy_silence": t[:, 2],
                   "padding_samples": t[:, 3]}
            df = summarise_footprint(per, cells.band_edges_hz, cells.segment_edges_s, n_clips=n_clips)
            df.insert(0, "condition", cond.condition_id)
            df.insert(0, "model", model_name)
            df.insert(0, "run_id", meta["run_id"])
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else None

