"""Figures for the HTML report, drawn with matplotlib's Agg canvas (no pyplot, no global state).

Each function returns :class:`Plot` records holding finished PNG bytes, so the HTML writer can
both embed them (base64) and save them beside the report.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import numpy as np

from audiobench.report.collect import CLEAN
from audiobench.report.tables import Condition, Entry, ReportView

TOP_CLASSES = 20  # per-class ΔAP: this many most and least robust classes


@dataclass(frozen=True)
class Plot:
    section: str  # "curves", "histograms", "min_eps", "delta_ap"
    name: str  # file stem, unique within a report
    title: str
    caption: str
    png: bytes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "plot"


def _new_figure(w: float, h: float, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


# -- robustness curves ---------------------------------------------------------------------------
def sweep_groups(view: ReportView) -> list[tuple[str, str, list[Condition]]]:
    """(perturbation, param, conditions) for every swept parameter, in report order."""
    groups: dict[tuple[str, str], list[Condition]] = {}
    for c in view.conditions:
        if c.clean or c.min_eps or not _finite(c.level):
            continue
        groups.setdefault((c.perturbation, c.param), []).append(c)
    return [(p, q, cs) for (p, q), cs in groups.items()]


def robustness_curves(view: ReportView, metric: str = "mAP") -> list[Plot]:
    out = []
    colors = _colors(len(view.entries))
    for pert, param, conds in sweep_groups(view):
        fig = _new_figure(6.4, 4.0)
        ax = fig.add_subplot()
        drawn = False
        any_suspect = False
        for color, e in zip(colors, view.entries):
            pts = []
            for c in conds:
                cell = view.cell(e, c.id, metric)
                if cell is not None and _finite(cell.value):
                    pts.append((c.level, cell.value, cell.ci_low, cell.ci_high,
                                view.suspect_reasons(e, c.id) is not None))
            if not pts:
                continue
            drawn = True
            pts.sort()
            x = np.array([p[0] for p in pts], dtype=float)
            y = np.array([p[1] for p in pts], dtype=float)
            lo = np.array([p[2] for p in pts], dtype=float)
            hi = np.array([p[3] for p in pts], dtype=float)
            ax.plot(x, y, marker="o", color=color, label=e.label)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.18, linewidth=0)
            sus = np.array([p[4] for p in pts])
            if sus.any():
                any_suspect = True
                ax.scatter(x[sus], y[sus], s=120, facecolors="none", edgecolors="red", linewidths=2, zorder=5)
            clean = view.cell(e, CLEAN, metric)
            if clean is not None and _finite(clean.value):
                ax.axhline(clean.value, color=color, linestyle="--", linewidth=1, alpha=0.8)
        if not drawn:
            continue
        levels = np.array([c.level for c in conds], dtype=float)
        if (levels > 0).all() and levels.max() / levels.min() >= 10:
            ax.set_xscale("log")
        if "snr" in param.lower():
            ax.invert_xaxis()  # left to right = more noise
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{pert}: {metric} vs {param}")
        from matplotlib.lines import Line2D

        handles, labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="gray", linestyle="--"))
        labels.append("clean (reference)")
        if any_suspect:
            handles.append(Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor="red",
                                  linestyle="none", markersize=10))
            labels.append("suspect")
        ax.legend(handles, labels, fontsize=8)
        ax.grid(alpha=0.3)
        out.append(Plot("curves", f"curve-{_slug(pert)}-{_slug(param)}", f"{pert}: {metric} vs {param}",
                        f"One line per model, shaded band = 95% bootstrap CI, dashed = clean {metric}.",
                        _png(fig)))
    return out


# -- score histograms ----------------------------------------------------------------------------
def score_histograms(view: ReportView) -> list[Plot]:
    from matplotlib.ticker import NullLocator

    out = []
    for e in view.entries:
        panels = []
        for c in view.conditions:
            if c.clean or not view.has(e, c.id):
                continue
            h = e.run.histogram(e.model, c.id)
            if h is not None:
                panels.append((c, h))
        if not panels:
            continue
        ncols = min(4, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        # Fixed margins, not constrained layout: laying out many log axes is slow (seconds).
        height = 2.5 * nrows + 0.4
        fig = _new_figure(3.2 * ncols, height, layout=None)
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.55 / height + 0.02, top=1 - 0.7 / height,
                            wspace=0.3, hspace=0.55)
        for k, (c, h) in enumerate(panels):
            ax = fig.add_subplot(nrows, ncols, k + 1)
            edges = np.linspace(0.0, 1.0, h.shape[1] + 1)
            ax.stairs(np.maximum(h[0], 0.5), edges, fill=True, color="0.75", label="clean")
            ax.stairs(np.maximum(h[1], 0.5), edges, color="C3", linewidth=1.6, label="perturbed")
            ax.set_yscale("log")
            ax.yaxis.set_minor_locator(NullLocator())
            ax.set_title(c.id, fontsize=9)
            ax.set_xlabel("score", fontsize=8)
            ax.tick_params(labelsize=7)
            if k == 0:
                ax.legend(fontsize=7)
        fig.suptitle(f"{e.label}: score histograms (all clips × classes), clean vs perturbed", fontsize=10)
        out.append(Plot("histograms", f"hist-{_slug(e.run.run_id)}-{_slug(e.model)}",
                        f"{e.label}: score histograms",
                        "20 bins of sigmoid scores on [0, 1]; grey = clean, red = perturbed (log counts).",
                        _png(fig)))
    return out


# -- min-eps distribution ------------------------------------------------------------------------
def min_eps_distribution(view: ReportView) -> list[Plot]:
    conds = view.min_eps_conditions()
    if not conds:
        return []
    ids = {c.id for c in conds}
    series = []
    for e in view.entries:
        if not any(view.has(e, cid) for cid in ids):
            continue
        pc = e.run.per_clip
        sel = pc[(pc["model"] == e.model) & pc["condition"].isin(ids)]
        for c in conds:
            v = sel.loc[sel["condition"] == c.id, "min_eps"].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if len(v):
                label = e.label if len(conds) == 1 else f"{e.label}\n{c.id}"
                series.append((label, v))
    if not series:
        return []
    fig = _new_figure(max(4.5, 1.6 * len(series) + 2), 4.0)
    ax = fig.add_subplot()
    ax.boxplot([v for _, v in series], showfliers=False)
    ax.set_xticks(range(1, len(series) + 1), [lab for lab, _ in series], fontsize=8)
    jitter = np.random.default_rng(0)  # fixed local RNG: the picture is reproducible
    for i, (_, v) in enumerate(series, start=1):
        ax.scatter(i + jitter.uniform(-0.15, 0.15, len(v)), v, s=10, alpha=0.6, color="C0")
    if all((v > 0).all() for _, v in series):
        ax.set_yscale("log")
    ax.set_ylabel("min eps (linf, waveform units)")
    ax.set_title("Smallest eps that removes every true label from the top 5, per clip")
    ax.grid(alpha=0.3, axis="y")
    return [Plot("min_eps", "min-eps", "min-eps distribution per model",
                 "Box = quartiles, whiskers = 1.5 IQR, dots = clips.", _png(fig))]


# -- per-class ΔAP -------------------------------------------------------------------------------
def strongest_condition(view: ReportView, e: Entry, with_delta: set[str]) -> str | None:
    """The condition with the lowest mAP among those with ΔAP rows (sweeps before min-eps)."""
    cands = [c for c in view.conditions if c.id in with_delta and not c.clean]
    if not cands:
        return None
    swept = [c for c in cands if not c.min_eps] or cands

    def key(c: Condition):
        cell = view.cell(e, c.id, "mAP")
        return cell.value if cell is not None and _finite(cell.value) else math.inf

    return min(swept, key=key).id


def delta_ap_extremes(view: ReportView, e: Entry, top: int = TOP_CLASSES):
    """(condition, least robust rows, most robust rows) of per_class.csv delta_AP for one model,
    under its strongest condition; None when the run has no ΔAP rows for it."""
    pcl = e.run.per_class
    rows = pcl[(pcl["model"] == e.model) & (pcl["metric"] == "delta_AP")]
    cond = strongest_condition(view, e, set(rows["condition"].unique()))
    if cond is None:
        return None
    r = rows[rows["condition"] == cond]
    r = r[np.isfinite(r["value"].to_numpy(dtype=float))].sort_values(["value", "class_index"])
    if r.empty:
        return None
    return cond, r.head(top), r.tail(top).iloc[::-1]


def delta_ap(view: ReportView, top: int = TOP_CLASSES) -> list[Plot]:
    out = []
    for e in view.entries:
        found = delta_ap_extremes(view, e, top)
        if found is None:
            continue
        cond, least, most = found
        n = max(len(least), len(most))
        height = 0.24 * n + 1.4
        fig = _new_figure(11.0, height, layout=None)  # fixed margins: constrained layout is slow here
        fig.subplots_adjust(left=0.16, right=0.98, wspace=0.5, bottom=0.6 / height, top=1 - 0.55 / height)
        for k, (part, title, color) in enumerate(((least, f"{len(least)} least robust classes", "C3"),
                                                  (most, f"{len(most)} most robust classes", "C2"))):
            ax = fig.add_subplot(1, 2, k + 1)
            names = [str(s)[:32] for s in part["class_name"]]
            ax.barh(range(len(part)), part["value"].to_numpy(dtype=float), color=color)
            ax.set_yticks(range(len(part)), names, fontsize=7)
            ax.invert_yaxis()
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_xlabel("ΔAP (perturbed − clean)")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3, axis="x")
        fig.suptitle(f"{e.label}: per-class ΔAP under {cond} (its strongest condition)", fontsize=10)
        out.append(Plot("delta_ap", f"delta-ap-{_slug(e.run.run_id)}-{_slug(e.model)}",
                        f"{e.label}: per-class ΔAP under {cond}",
                        "Classes without positives are left out.", _png(fig)))
    return out


def all_plots(view: ReportView) -> list[Plot]:
    plots = robustness_curves(view) + score_histograms(view) + min_eps_distribution(view) + delta_ap(view)
    seen: dict[str, int] = {}
    unique = []
    for p in plots:  # file names must not collide (e.g. model names that slug alike)
        n = seen.get(p.name, 0)
        seen[p.name] = n + 1
        unique.append(p if n == 0 else Plot(p.section, f"{p.name}-{n + 1}", p.title, p.caption, p.png))
    return unique
