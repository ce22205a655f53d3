"""Figures of a corruption suite (AudioSet-C) from ``metrics.csv`` rows.

Input: a pandas DataFrame of metrics.csv rows (columns ``run_id, model, condition, perturbation,
param, level, metric, value, ci_low, ci_high, n_clips, n_classes, suspect``); a corruption row has
``perturbation`` = the corruption's name, ``param`` = ``"severity"`` and ``level`` = the severity;
the clean row has ``perturbation`` = ``"none"``. Rows of other conditions are ignored. Several
runs of the same (model, condition) are averaged for display (the tables keep them apart).

* :func:`corruption_heatmap`: model x corruption, the severity-averaged mAP (``value="map"``) or
  its relative drop from clean, 1 - mean_s mAP / clean mAP (``value="drop"``);
* :func:`severity_curves`: one panel per corruption, mAP over severity 1..5 per model, the clean
  mAP at severity 0, with the CIs as error bars.

Both return matplotlib :class:`~matplotlib.figure.Figure` objects drawn on the Agg canvas (no
pyplot, no global state); the caller saves or embeds them.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

CLEAN = "none"
SEVERITY = "severity"


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def corruption_rows(df, metric: str = "mAP"):
    """The ``metric`` rows of corruption conditions: columns model, corruption, severity, value,
    ci_low, ci_high (duplicates over runs averaged), sorted."""
    rows = df[(df["metric"] == metric) & (df["param"] == SEVERITY)]
    out = (rows.assign(corruption=rows["perturbation"], severity=rows["level"].astype(float).round().astype(int))
           .groupby(["model", "corruption", "severity"], as_index=False)[["value", "ci_low", "ci_high"]].mean())
    return out.sort_values(["model", "corruption", "severity"]).reset_index(drop=True)


def clean_values(df, metric: str = "mAP"):
    """model -> clean ``metric`` (averaged over runs)."""
    rows = df[(df["metric"] == metric) & (df["perturbation"] == CLEAN)]
    return rows.groupby("model")["value"].mean().to_dict()


def _order(values: Sequence[str], preferred: Optional[Sequence[str]]) -> List[str]:
    present = list(dict.fromkeys(values))
    if preferred is None:
        return sorted(present)
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def corruption_heatmap(df, *, value: str = "map", metric: str = "mAP", corruptions: Optional[Sequence[str]] = None,
                       models: Optional[Sequence[str]] = None):
    """Model x corruption heatmap of the severity-averaged ``metric`` (``value="map"``) or of its
    relative drop from clean (``value="drop"``: 1 - mean_s m / m_clean; 0 = unaffected).

    ``corruptions`` / ``models``: display order (default: sorted). Raises ValueError when ``df``
    holds no corruption rows of ``metric``.
    """
    if value not in ("map", "drop"):
        raise ValueError(f"value must be 'map' or 'drop', got {value!r}")
    rows = corruption_rows(df, metric)
    if rows.empty:
        raise ValueError(f"no corruption rows of {metric} (param 'severity') in the table")
    avg = rows.groupby(["model", "corruption"])["value"].mean()
    clean = clean_values(df, metric)
    mods = _order(rows["model"], models)
    cors = _order(rows["corruption"], corruptions)
    grid = np.full((len(mods), len(cors)), np.nan)
    for i, m in enumerate(mods):
        for j, c in enumerate(cors):
            if (m, c) in avg.index:
                v = float(avg[(m, c)])
                if value == "drop":
                    base = clean.get(m, math.nan)
                    v = 1.0 - v / base if base and math.isfinite(base) else math.nan
                grid[i, j] = v
    fig = _figure(max(4.0, 0.75 * len(cors) + 2.5), max(2.2, 0.5 * len(mods) + 1.6))
    ax = fig.add_subplot()
    cmap = "viridis" if value == "map" else "magma_r"
    finite = grid[np.isfinite(grid)]
    vmin, vmax = (0.0, 1.0) if value == "map" else (min(0.0, float(finite.min()) if finite.size else 0.0),
                                                    max(0.05, float(finite.max()) if finite.size else 1.0))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cors)), cors, rotation=45, ha="right")
    ax.set_yticks(range(len(mods)), mods)
    for i in range(len(mods)):
        for j in range(len(cors)):
            if np.isfinite(grid[i, j]):
                frac = (grid[i, j] - vmin) / (vmax - vmin) if vmax > vmin else 0.5
                light = frac < 0.5 if value == "map" else frac > 0.5
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8, color="white" if light else "black")
    label = f"{metric}, mean over severities" if value == "map" else f"relative {metric} drop, 1 - mean_s / clean"
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(f"Corruption robustness: {label}")
    return fig


def severity_curves(df, *, metric: str = "mAP", corruptions: Optional[Sequence[str]] = None,
                    models: Optional[Sequence[str]] = None, columns: int = 4):
    """One panel per corruption: ``metric`` over severity per model (error bars: the CIs), the
    clean value drawn at severity 0. Raises ValueError without corruption rows."""
    rows = corruption_rows(df, metric)
    if rows.empty:
        raise ValueError(f"no corruption rows of {metric} (param 'severity') in the table")
    from matplotlib import colormaps

    clean = clean_values(df, metric)
    mods = _order(rows["model"], models)
    cors = _order(rows["corruption"], corruptions)
    ncol = max(1, min(columns, len(cors)))
    nrow = int(math.ceil(len(cors) / ncol))
    fig = _figure(3.0 * ncol, 2.5 * nrow + 0.6)
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
    colours = colormaps["tab10"]
    for k, c in enumerate(cors):
        ax = axes[k // ncol][k % ncol]
        for i, m in enumerate(mods):
            sub = rows[(rows["model"] == m) & (rows["corruption"] == c)]
            if sub.empty:
                continue
            x = sub["severity"].to_numpy(dtype=float)
            y = sub["value"].to_numpy(dtype=float)
            lo, hi = sub["ci_low"].to_numpy(dtype=float), sub["ci_high"].to_numpy(dtype=float)
            if m in clean and math.isfinite(clean[m]):
                x, y = np.r_[0.0, x], np.r_[clean[m], y]
                lo, hi = np.r_[np.nan, lo], np.r_[np.nan, hi]
            err = np.vstack([np.where(np.isfinite(lo), y - lo, 0.0), np.where(np.isfinite(hi), hi - y, 0.0)])
            ax.errorbar(x, y, yerr=np.clip(err, 0.0, None), marker="o", ms=3, capsize=2, color=colours(i % 10),
                        label=m if k == 0 else None)
        ax.set_title(c, fontsize=10)
        ax.set_xticks(range(0, 6), ["clean", "1", "2", "3", "4", "5"], fontsize=8)
        ax.grid(alpha=0.3)
        if k % ncol == 0:
            ax.set_ylabel(metric)
    for k in range(len(cors), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    if mods:
        fig.legend(loc="outside lower center", ncol=min(len(mods), 4), fontsize=8)
    fig.suptitle(f"{metric} over severity", fontsize=11)
    return fig
