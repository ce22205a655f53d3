"""Sharpness in the report: a table per model and plots of sharpness against robustness.

Inputs are the tidy tables as written to run folders: a sharpness table (``sharpness.csv`` rows,
:data:`audiobench.analysis.sharpness.COLUMNS`) and, optionally, robustness metrics
(``metrics.csv`` rows: run_id, model, condition, perturbation, param, level, metric, value, ...).

Robustness of a model, from its metrics (each run's perturbed values against the same run's clean
value; where several runs hold the same model and condition, the latest run id wins — run ids
start with their UTC start time):

* ``drop <metric> <condition>`` for every PGD condition (perturbation ``pgd``): clean − attacked,
  so larger = less robust;
* ``drop <metric> corruptions`` = the mean of clean − corrupted over every condition whose
  perturbation is one of :data:`CORRUPTIONS` (all their levels), with the number of conditions
  averaged in ``n corruption conditions``.

Sharpness columns: ``loss``, ``average_sharpness@rho=R`` and ``worst_sharpness@rho=R`` for each rho
(or only ``rho`` when given), ``hessian_max_eig``. Models are matched by name (``toy-cnn@int8`` is
its own model).
"""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from audiobench.report.plots import Plot, _colors, _new_figure, _plot

CORRUPTIONS = ("pink-noise", "brown-noise", "background", "reverb", "lowpass", "highpass", "clipping", "bitcrush",
               "mp3", "resample", "pitch-shift", "speed")
PGD = "pgd"
CLEAN = "none"
CORRUPTION_COLUMN = "corruptions"
_RHO_MEASURES = ("average_sharpness", "worst_sharpness")


def _latest(frame, keys):
    """Rows of the most recent run_id per ``keys``."""
    if frame.empty:
        return frame
    frame = frame.sort_values("run_id", kind="stable")
    return frame.drop_duplicates(list(keys), keep="last")


def robustness_summary(metrics, metric: str = "mAP"):
    """One row per (model, robustness): columns model, robustness (a PGD condition id or
    ``corruptions``), clean, perturbed, drop (clean − perturbed), n_conditions."""
    import pandas as pd

    cols = ["model", "robustness", "clean", "perturbed", "drop", "n_conditions"]
    if metrics is None or len(metrics) == 0:
        return pd.DataFrame(columns=cols)
    m = metrics[metrics["metric"] == metric]
    clean = m[m["perturbation"] == CLEAN][["run_id", "model", "value"]].rename(columns={"value": "clean"})
    pert = m[m["perturbation"] != CLEAN].merge(clean, on=["run_id", "model"], how="inner")
    pert = _latest(pert, ["model", "condition"])
    pert = pert.assign(drop=pert["clean"] - pert["value"])
    rows = []
    for r in pert[pert["perturbation"] == PGD].itertuples(index=False):
        rows.append({"model": r.model, "robustness": r.condition, "clean": r.clean, "perturbed": r.value,
                     "drop": r.drop, "n_conditions": 1})
    corr = pert[pert["perturbation"].isin(CORRUPTIONS)]
    for model, g in corr.groupby("model", sort=True):
        rows.append({"model": model, "robustness": CORRUPTION_COLUMN, "clean": float(g["clean"].mean()),
                     "perturbed": float(g["value"].mean()), "drop": float(g["drop"].mean()),
                     "n_conditions": int(len(g))})
    return pd.DataFrame(rows, columns=cols)


def _rho_label(measure: str, rho: float) -> str:
    return f"{measure}@rho={rho:g}"


def sharpness_columns(sharpness, rho: Optional[float] = None):
    """The sharpness table pivoted to one row per model (latest run per model and measure)."""
    import pandas as pd

    s = _latest(sharpness, ["model", "measure", "rho"])
    out = {}
    for r in s.itertuples(index=False):
        if r.measure in _RHO_MEASURES:
            if rho is not None and not math.isclose(float(r.rho), float(rho)):
                continue
            col = _rho_label(r.measure, float(r.rho))
        else:
            col = r.measure
        out.setdefault(r.model, {})[col] = r.value
    frame = pd.DataFrame.from_dict(out, orient="index")
    frame.index.name = "model"
    order = [c for c in ("loss",) if c in frame] + sorted(c for c in frame if "@rho=" in c) + \
        [c for c in frame if c not in ("loss",) and "@rho=" not in c]
    return frame[order].reset_index() if len(frame) else pd.DataFrame(columns=["model"])


def sharpness_table(sharpness, metrics=None, *, rho: Optional[float] = None, metric: str = "mAP"):
    """One row per model of ``sharpness``: its sharpness columns and, where ``metrics`` has the
    model, ``clean <metric>``, ``drop <metric> <condition>`` per PGD condition and
    ``drop <metric> corruptions`` with ``n corruption conditions`` (see the module docstring)."""
    table = sharpness_columns(sharpness, rho)
    rob = robustness_summary(metrics, metric)
    if rob.empty:
        return table
    clean = rob.groupby("model")["clean"].first()  # any row: the latest run's clean value
    table[f"clean {metric}"] = table["model"].map(clean)
    for name, g in rob.groupby("robustness", sort=True):
        table[f"drop {metric} {name}"] = table["model"].map(g.set_index("model")["drop"])
        if name == CORRUPTION_COLUMN:
            table["n corruption conditions"] = table["model"].map(g.set_index("model")["n_conditions"])
    return table


def _largest_common_rho(sharpness, measure: str) -> Optional[float]:
    s = sharpness[sharpness["measure"] == measure]
    if s.empty:
        return None
    common = None
    for _, g in s.groupby("model"):
        rhos = {float(r) for r in g["rho"] if r > 0}
        common = rhos if common is None else common & rhos
    return max(common) if common else None


def _scale(ax, values) -> None:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) and (v > 0).all() and v.max() / v.min() >= 100:
        ax.set_xscale("log")


def sharpness_vs_robustness(sharpness, metrics, *, rho: Optional[float] = None, metric: str = "mAP") -> List[Plot]:
    """Scatter plots, one panel per (robustness, sharpness measure): x = sharpness, y = drop of
    ``metric`` (clean − perturbed), one labelled point per model. Average- and worst-case
    sharpness at ``rho`` (default: the largest rho every model has). [] when no model has both."""
    rob = robustness_summary(metrics, metric)
    if rob.empty or sharpness is None or len(sharpness) == 0:
        return []
    measures = []
    for m in _RHO_MEASURES:
        r = rho if rho is not None else _largest_common_rho(sharpness, m)
        if r is not None:
            measures.append((m, r))
    if (sharpness["measure"] == "hessian_max_eig").any():
        measures.append(("hessian_max_eig", None))
    table = sharpness_columns(sharpness)
    kinds = list(dict.fromkeys(rob["robustness"]))
    models = sorted(set(table["model"]) & set(rob["model"]))
    if not measures or not kinds or not models:
        return []
    fig = _new_figure(3.6 * len(measures), 3.2 * len(kinds))
    axes = fig.subplots(len(kinds), len(measures), squeeze=False)
    colors = dict(zip(models, _colors(len(models))))
    for i, kind in enumerate(kinds):
        drops = rob[rob["robustness"] == kind].set_index("model")["drop"]
        for j, (measure, r) in enumerate(measures):
            ax = axes[i][j]
            col = measure if r is None else _rho_label(measure, r)
            xs = []
            by_model = table.set_index("model")
            for model in models:
                if col not in by_model or model not in drops.index:
                    continue
                x = float(by_model.loc[model, col])
                y = float(drops.loc[model])
                if not (np.isfinite(x) and np.isfinite(y)):
                    continue
                xs.append(x)
                ax.scatter([x], [y], color=colors[model], s=36, zorder=3)
                ax.annotate(model, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            _scale(ax, xs)
            ax.set_xlabel(col if r is None else f"{measure} (rho={r:g})", fontsize=8)
            ax.set_ylabel(f"{metric} drop: {kind}", fontsize=8)
            ax.grid(alpha=0.3)
    title = f"Sharpness against robustness ({metric} drop = clean - perturbed)"
    fig.suptitle(title, fontsize=9)
    caption = ("One point per model. x: loss sharpness in weight space (nats; Hessian: nats/weight^2); "
               f"y: clean {metric} minus {metric} under the PGD condition or the mean over the corruption suite.")
    return [_plot("sharpness", "sharpness-vs-robustness", title, caption, fig)]


def sharpness_curves(sharpness) -> List[Plot]:
    """Average- and worst-case sharpness against rho, one line per model (average: the 95 %
    t-interval over noise draws as a band). [] when the table has no rho measures."""
    if sharpness is None or len(sharpness) == 0:
        return []
    s = _latest(sharpness, ["model", "measure", "rho"])
    present = [m for m in _RHO_MEASURES if (s["measure"] == m).any()]
    if not present:
        return []
    fig = _new_figure(4.2 * len(present), 3.4)
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    models = sorted(s["model"].unique())
    colors = dict(zip(models, _colors(len(models))))
    for ax, measure in zip(axes, present):
        for model in models:
            g = s[(s["model"] == model) & (s["measure"] == measure)].sort_values("rho")
            if g.empty:
                continue
            x, y = g["rho"].to_numpy(float), g["value"].to_numpy(float)
            ax.plot(x, y, marker="o", color=colors[model], label=model)
            lo, hi = g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.fill_between(x[ok], lo[ok], hi[ok], color=colors[model], alpha=0.18, linewidth=0)
        ax.set_xlabel("rho (relative weight change)")
        ax.set_ylabel(f"{measure} (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    title = "Loss sharpness in weight space against rho"
    caption = ("Loss increase when every weight moves by a fraction rho of its magnitude: Gaussian (average, band = "
               "95% t-interval over draws) or by signed ascent (worst case, a lower bound on the maximum).")
    return [_plot("sharpness", "sharpness-curves", title, caption, fig)]
