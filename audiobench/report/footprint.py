"""Report figures for where attacks live: footprint heatmaps and the band-sweep curve.

Both take plain tables (pandas DataFrames, as read from a run's CSV files) and return a
matplotlib :class:`~matplotlib.figure.Figure` on an Agg canvas (no pyplot, no global state):

* :func:`plot_footprints`: rows of :func:`audiobench.perturb.footprint.summarise_footprint` with
  ``model`` and ``condition`` columns added (``perturbation_spectrum.csv``) → one heatmap per
  (condition, model), models side by side, delta's energy relative to the clean audio's per mel
  band and time segment;
* :func:`band_sweep_rows` + :func:`plot_band_sweep`: metrics rows of band-limited attacks
  (conditions carrying ``attack_band_hz``) → the metric under attack per band, per model.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

FOOTPRINT_COLUMNS = ("model", "condition", "band", "band_low_hz", "band_high_hz", "segment", "segment_start_s",
                     "segment_end_s", "relative_db", "padding_share")
BAND_COLUMNS = ("model", "condition", "band_low_hz", "band_high_hz", "value")


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _text(s) -> str:
    """A name shown as plain text (no matplotlib mathtext: '$' would start a formula)."""
    return str(s).replace("$", r"\$")


def _require(df, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}")


def _hz_label(f: float) -> str:
    return f"{f / 1000:.3g}k" if f >= 1000 else f"{f:.3g}"


def plot_footprints(df, *, vmin: Optional[float] = None, vmax: Optional[float] = None):
    """Heatmaps of ``relative_db`` (delta energy / clean energy per cell, dB): one row of panels per
    condition, one column per model, on a shared colour scale (``vmin``/``vmax``: default the
    finite range of the data, at most 80 dB wide, ending at its maximum). Cells where the clean
    audio has no energy at all (padding) but delta has are drawn at the top of the scale, cells
    where delta is exactly zero (outside a time window) at the bottom; each panel's title gives
    the share of delta's energy on padded samples."""
    _require(df, FOOTPRINT_COLUMNS, "plot_footprints")
    if len(df) == 0:
        raise ValueError("plot_footprints: no rows")
    conditions = list(dict.fromkeys(df["condition"]))
    models = list(dict.fromkeys(df["model"]))
    finite = df["relative_db"].to_numpy(dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 0.0)
    lo = float(vmin) if vmin is not None else (max(float(finite.min()), hi - 80.0) if finite.size else hi - 1.0)
    if not lo < hi:
        lo = hi - 1.0
    fig = _figure(3.6 * len(models) + 1.2, 2.8 * len(conditions) + 0.4)
    axes = fig.subplots(len(conditions), len(models), squeeze=False, sharex=True, sharey=True)
    mesh = None
    for i, cond in enumerate(conditions):
        for j, model in enumerate(models):
            ax = axes[i][j]
            part = df[(df["condition"] == cond) & (df["model"] == model)]
            if len(part) == 0:
                ax.set_axis_off()
                ax.set_title(_text(f"{model}\n{cond}\n(not run)"), fontsize=8)
                continue
            n_b = int(part["band"].max()) + 1
            n_s = int(part["segment"].max()) + 1
            grid = np.full((n_b, n_s), np.nan)
            vals = part["relative_db"].to_numpy(dtype=np.float64)
            vals = np.where(np.isposinf(vals), hi, np.where(np.isneginf(vals), lo, vals))  # delta alone / no delta
            grid[part["band"].to_numpy(int), part["segment"].to_numpy(int)] = vals
            seg_edges = np.r_[np.sort(part.groupby("segment")["segment_start_s"].first().to_numpy()),
                              float(part["segment_end_s"].max())]
            mesh = ax.pcolormesh(seg_edges, np.arange(n_b + 1), grid, cmap="magma", vmin=lo, vmax=hi, shading="flat")
            share = float(part["padding_share"].iloc[0])
            share_text = f"{share:.0%} of delta on padding" if math.isfinite(share) else "no delta"
            ax.set_title(_text(f"{model}\n{cond}\n{share_text}"), fontsize=8)
            if j == 0:
                edges = part.groupby("band")["band_low_hz"].first().to_numpy()
                ticks = np.linspace(0, n_b - 1, min(n_b, 6)).round().astype(int)
                ax.set_yticks(ticks + 0.5, [_hz_label(edges[t]) for t in ticks])
                ax.set_ylabel("mel band (Hz)")
            if i == len(conditions) - 1:
                ax.set_xlabel("time (s)")
    if mesh is not None:
        bar = fig.colorbar(mesh, ax=axes, shrink=0.8)
        bar.set_label("delta energy / clean energy (dB)")
    return fig


def band_sweep_rows(metrics, conditions: Iterable[Mapping], metric: str = "mAP"):
    """The metrics rows (``model``, ``condition``, ``metric``, ``value`` [, ``ci_low``, ``ci_high``])
    of band-limited attacks, with the band added: ``band_low_hz``, ``band_high_hz`` and ``eps``.

    ``conditions``: the run's condition records (``run.json`` → ``conditions``: dicts with
    ``id`` and ``params``); a condition is band-limited when ``params["attack_band_hz"]`` is set.
    """
    import pandas as pd

    _require(metrics, ("model", "condition", "metric", "value"), "band_sweep_rows")
    bands = {}
    for c in conditions:
        params = c.get("params") or {}
        band = params.get("attack_band_hz")
        if band is not None:
            bands[c["id"]] = (float(band[0]), float(band[1]), float(params.get("eps", math.nan)))
    rows = metrics[(metrics["metric"] == metric) & metrics["condition"].isin(list(bands))].copy()
    rows["band_low_hz"] = [bands[c][0] for c in rows["condition"]]
    rows["band_high_hz"] = [bands[c][1] for c in rows["condition"]]
    rows["eps"] = [bands[c][2] for c in rows["condition"]]
    return rows.sort_values(["model", "band_low_hz"]).reset_index(drop=True) if len(rows) else pd.DataFrame(
        columns=list(metrics.columns) + ["band_low_hz", "band_high_hz", "eps"])


def plot_band_sweep(rows, *, metric: str = "mAP", references: Optional[Mapping[str, Mapping[str, float]]] = None):
    """The metric under a band-limited attack against the band (log frequency axis), one line per
    model: each point sits at the band's geometric centre with a horizontal bar spanning the band
    (and a vertical confidence bar when ``ci_low``/``ci_high`` are given). ``references``:
    optional ``{model: {"clean": v, "full band": v}}`` drawn as horizontal lines in the model's
    colour. ``rows``: :func:`band_sweep_rows`."""
    from matplotlib import colormaps

    _require(rows, BAND_COLUMNS, "plot_band_sweep")
    if len(rows) == 0:
        raise ValueError("plot_band_sweep: no band-limited rows")
    fig = _figure(6.6, 4.0)
    ax = fig.add_subplot()
    cmap = colormaps["tab10"]
    styles = {"clean": ":", "full band": "--"}
    for i, (model, part) in enumerate(rows.groupby("model", sort=False)):
        color = cmap(i % 10)
        part = part.sort_values("band_low_hz")
        lo = part["band_low_hz"].to_numpy(np.float64)
        hi = part["band_high_hz"].to_numpy(np.float64)
        centre = np.sqrt(np.maximum(lo, hi / 2.0) * hi)  # geometric centre (a band from 0 Hz: of [hi/2, hi])
        v = part["value"].to_numpy(np.float64)
        yerr = None
        if {"ci_low", "ci_high"} <= set(part.columns):
            yerr = np.vstack([v - part["ci_low"].to_numpy(np.float64), part["ci_high"].to_numpy(np.float64) - v])
            yerr = np.where(np.isfinite(yerr), np.maximum(yerr, 0.0), 0.0)
        left = np.maximum(lo, hi / 2.0)  # a band from 0 Hz is drawn from hi/2 (a log axis has no 0)
        xerr = np.vstack([centre - left, hi - centre])
        ax.errorbar(centre, v, xerr=xerr, yerr=yerr, color=color, marker="o", capsize=2, label=_text(model))
        for name, val in (references or {}).get(model, {}).items():
            if val is not None and math.isfinite(float(val)):
                ax.axhline(float(val), color=color, linestyle=styles.get(name, "-."), linewidth=1,
                           label=_text(f"{model}: {name}"))
    ax.set_xscale("log")
    ax.set_xlabel("attack band (Hz)")
    eps = sorted({float(e) for e in rows["eps"]}) if "eps" in rows.columns else []
    ax.set_ylabel(_text(metric))
    ax.set_title(_text(f"{metric} under a band-limited attack" + (f" (eps {', '.join(f'{e:g}' for e in eps)})" if eps else "")))
    ax.legend(fontsize=7)
    return fig
