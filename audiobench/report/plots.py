"""Figures for the HTML report, drawn with matplotlib's Agg canvas (no pyplot, no global state).

Each function returns :class:`Plot` records holding finished PNG bytes, so the HTML writer can
both embed them (base64) and save them beside the report.

Every text drawn comes from result folders (model, condition, class and data names), so it goes
through :func:`_tx`, which escapes ``$`` (matplotlib would parse ``$...$`` as mathtext, and an
unknown macro there raises while drawing). Before a figure is saved, :func:`_finish` rotates and
then thins tick labels that overlap, and records in ``Plot.layout`` any text still overlapping a
neighbour or reaching outside the figure (tests require it empty).
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from dataclasses import dataclass

import numpy as np

from audiobench.report.collect import CLEAN
from audiobench.report.tables import Condition, Entry, ReportView, condition_label, fmt_value

TOP_CLASSES = 20  # per-class ΔAP: this many most and least robust classes


@dataclass(frozen=True)
class Plot:
    section: str  # "curves", "histograms", "min_eps", "delta_ap"
    name: str  # file stem, unique within a report
    title: str
    caption: str
    png: bytes
    layout: tuple = ()  # layout problems left after decluttering (overlapping or clipped text)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "plot"


def _tx(text) -> str:
    """Text for matplotlib: ``$`` escaped so that no part is parsed as mathtext."""
    return str(text).replace("$", r"\$")


def _wrap(text: str, width_in: float, fontsize: float, max_lines: int = 3) -> str:
    """Wrap (and, past ``max_lines``, shorten) ``text`` to fit ``width_in`` inches at ``fontsize``."""
    chars = max(8, int(width_in * 72 / (0.62 * fontsize)))
    lines = textwrap.wrap(str(text), chars, break_long_words=True, break_on_hyphens=False) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(1, chars - 1)] + "…"
    return _tx("\n".join(lines))


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _new_figure(w: float, h: float, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


# -- layout: no overlapping tick labels, nothing outside the figure ---------------------------------
def _drawn_ticklabels(ax, axis: str) -> list:
    """The tick labels of ``axis`` that the last draw showed: visible, non-empty, and at a tick
    inside the view limits (matplotlib keeps labels for ticks beyond them, undrawn)."""
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    span = (hi - lo) * 1e-9
    out = []
    for t in labels:
        pos = t.get_position()[0 if axis == "x" else 1]
        if t.get_visible() and t.get_text() and lo - span <= pos <= hi + span:
            out.append(t)
    return out


def _overlapping(texts, renderer, axis: str) -> bool:
    boxes = sorted((t.get_window_extent(renderer) for t in texts), key=lambda b: b.x0 if axis == "x" else b.y0)
    for a, b in zip(boxes, boxes[1:]):
        if (axis == "x" and b.x0 < a.x1 - 0.5) or (axis == "y" and b.y0 < a.y1 - 0.5):
            return True
    return False


def _declutter(fig) -> bool:
    """After a draw: rotate crowded x tick labels to vertical, then hide every other one (y:
    shrink the font, then thin) until no two labels of an axis overlap. True if it changed any."""
    renderer = fig.canvas.get_renderer()
    changed = False
    for ax in fig.axes:
        xs = _drawn_ticklabels(ax, "x")
        if len(xs) > 1 and _overlapping(xs, renderer, "x"):
            changed = True
            for t in xs:
                t.set_rotation(90)
            ax.tick_params(axis="x", labelrotation=90)
            step = 2
            while _overlapping(_drawn_ticklabels(ax, "x"), renderer, "x") and step <= len(xs):
                for i, t in enumerate(xs):
                    t.set_visible(i % step == 0)
                step += 1
        ys = _drawn_ticklabels(ax, "y")
        if len(ys) > 1 and _overlapping(ys, renderer, "y"):
            changed = True
            size = ys[0].get_fontsize()
            while size > 5 and _overlapping(ys, renderer, "y"):
                size -= 1
                for t in ys:
                    t.set_fontsize(size)
                ax.tick_params(axis="y", labelsize=size)
            step = 2
            while _overlapping(_drawn_ticklabels(ax, "y"), renderer, "y") and step <= len(ys):
                for i, t in enumerate(ys):
                    t.set_visible(i % step == 0)
                step += 1
    return changed


def layout_problems(fig) -> list[str]:
    """Text of a drawn figure that overlaps a neighbouring tick label or leaves the figure."""
    renderer = fig.canvas.get_renderer()
    out = []
    page = fig.bbox
    texts = []
    if getattr(fig, "_suptitle", None) is not None and fig._suptitle.get_text():
        texts.append(("suptitle", fig._suptitle))
    for k, ax in enumerate(fig.axes):
        for axis in ("x", "y"):
            ticks = _drawn_ticklabels(ax, axis)
            if len(ticks) > 1 and _overlapping(ticks, renderer, axis):
                out.append(f"axes {k}: overlapping {axis} tick labels")
            texts += [(f"axes {k} {axis} tick {t.get_text()!r}", t) for t in ticks]
        for name, t in (("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)):
            if t.get_visible() and t.get_text():
                texts.append((f"axes {k} {name}", t))
        leg = ax.get_legend()
        if leg is not None:
            texts += [(f"axes {k} legend {t.get_text()!r}", t) for t in leg.get_texts()]
    for name, t in texts:
        b = t.get_window_extent(renderer)
        if b.x0 < page.x0 - 1 or b.y0 < page.y0 - 1 or b.x1 > page.x1 + 1 or b.y1 > page.y1 + 1:
            out.append(f"{name} reaches outside the figure")
    return out


def _save(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _finish(fig) -> tuple[bytes, tuple]:
    """(PNG bytes, layout problems) of a finished figure: drawn once, and again only when its tick
    labels had to be decluttered."""
    png = _save(fig)
    if _declutter(fig):
        png = _save(fig)
    return png, tuple(layout_problems(fig))


def _plot(section: str, name: str, title: str, caption: str, fig) -> Plot:
    png, problems = _finish(fig)
    return Plot(section, name, title, caption, png, problems)


# -- robustness curves ---------------------------------------------------------------------------
def sweep_groups(view: ReportView) -> list[tuple[str, str, list[Condition]]]:
    """(perturbation, param, conditions) for every parameter with a numeric level, in report order
    (mildest first)."""
    groups: dict[tuple[str, str], list[Condition]] = {}
    for c in view.conditions:
        # transfer conditions have their own section (a source x target matrix per attack)
        if c.clean or c.min_eps or not _finite(c.level) or c.perturbation == "transfer":
            continue
        groups.setdefault((c.perturbation, c.param), []).append(c)
    return [(p, q, cs) for (p, q), cs in groups.items()]


def single_level_conditions(view: ReportView) -> list[Condition]:
    """Conditions that make no curve: the only level of their parameter, or no numeric level."""
    out = [cs[0] for _, _, cs in sweep_groups(view) if len(cs) == 1]
    out += [c for c in view.conditions if not (c.clean or c.min_eps or _finite(c.level) or c.perturbation == "transfer")]
    order = {c.id: i for i, c in enumerate(view.conditions)}
    return sorted(out, key=lambda c: order[c.id])


def _clean_position(levels: np.ndarray, mild_high: bool, log: bool) -> float:
    """Where the clean point goes: one typical level step beyond the mildest level (0 for a
    linear axis of positive levels that would step below 0, e.g. eps)."""
    lv = np.sort(levels)
    if log:
        lg = np.log10(lv)
        step = (lg[-1] - lg[0]) / (len(lv) - 1)
        return float(10 ** (lg[-1] + step if mild_high else lg[0] - step))
    step = (lv[-1] - lv[0]) / (len(lv) - 1)
    if mild_high:
        return float(lv[-1] + step)
    pos = float(lv[0] - step)
    return 0.0 if (lv > 0).all() and pos < 0 else pos


def robustness_curves(view: ReportView, metric: str = "mAP") -> list[Plot]:
    """One figure per swept parameter with at least two levels (single levels: single_level_plot)."""
    out = []
    for pert, param, conds in sweep_groups(view):
        fig = curve_figure(view, pert, param, conds, metric)
        if fig is not None:
            out.append(_plot("curves", f"curve-{_slug(pert)}-{_slug(param)}", f"{pert}: {metric} vs {param}",
                             f"One line per model, shaded band = 95% bootstrap CI; the square at the 'clean' tick "
                             f"is the clean {metric} (with its CI), joined to the mildest level by a dotted line.",
                             fig))
    return out


def curve_figure(view: ReportView, pert: str, param: str, conds: list[Condition], metric: str = "mAP"):
    """The robustness curve of one swept parameter (None with fewer than two levels or no value):
    each model's line over the levels, and its clean value as a point on its own "clean" tick
    beyond the mildest level."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator

    if len(conds) < 2:
        return None
    colors = _colors(len(view.entries))
    levels = np.array([c.level for c in conds], dtype=float)
    log = bool((levels > 0).all() and levels.max() / levels.min() >= 10)
    mild_high = conds[0].level > conds[-1].level  # the view orders mild to strong (high SNR first)
    x_clean = _clean_position(levels, mild_high, log)
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    handles, labels = [], []
    any_suspect = drawn = False
    for color, e in zip(colors, view.entries):
        pts = []
        for c in conds:
            cell = view.cell(e, c.id, metric)
            if cell is not None and _finite(cell.value):
                pts.append((c.level, cell.value, cell.ci_low, cell.ci_high, view.suspect_reasons(e, c.id) is not None))
        if not pts:
            continue
        drawn = True
        pts.sort()
        x = np.array([p[0] for p in pts], dtype=float)
        y = np.array([p[1] for p in pts], dtype=float)
        lo = np.array([p[2] for p in pts], dtype=float)
        hi = np.array([p[3] for p in pts], dtype=float)
        (line,) = ax.plot(x, y, marker="o", color=color)
        handles.append(line)
        labels.append(_tx(e.label))
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.18, linewidth=0)
        sus = np.array([p[4] for p in pts])
        if sus.any():
            any_suspect = True
            ax.scatter(x[sus], y[sus], s=120, facecolors="none", edgecolors="red", linewidths=2, zorder=5)
        clean = view.cell(e, CLEAN, metric)
        if clean is not None and _finite(clean.value):
            mild, y_mild = (x[-1], y[-1]) if mild_high else (x[0], y[0])
            ax.plot([x_clean, mild], [clean.value, y_mild], color=color, linestyle=":", linewidth=1.2)
            ax.plot([x_clean], [clean.value], marker="s", markersize=7, color=color, linestyle="none",
                    gid="clean-point")
            if _finite(clean.ci_low) and _finite(clean.ci_high):
                err = [[clean.value - clean.ci_low], [clean.ci_high - clean.value]]
                ax.errorbar([x_clean], [clean.value], yerr=err, color=color, capsize=3, linewidth=1)
    if not drawn:
        return None
    if log:
        ax.set_xscale("log")
    ticks = [x_clean] + sorted(set(levels.tolist()))
    ax.set_xticks(ticks, ["clean"] + [f"{v:g}" for v in ticks[1:]])
    ax.xaxis.set_minor_locator(NullLocator())
    if mild_high:
        ax.invert_xaxis()  # left to right = stronger perturbation
    ax.set_xlabel(_tx(param))
    ax.set_ylabel(_tx(metric))
    ax.set_ylim(bottom=0)
    ax.set_title(_wrap(f"{pert}: {metric} vs {param}", 5.8, 11), fontsize=11)
    handles.append(Line2D([], [], color="gray", marker="s", linestyle=":"))
    labels.append("clean (its own tick)")
    if any_suspect:
        handles.append(Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor="red", linestyle="none",
                              markersize=10))
        labels.append("suspect")
    ax.legend(handles, labels, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def single_level_plot(view: ReportView, metric: str = "mAP") -> list[Plot]:
    """One bar chart for the conditions that make no curve, beside the clean value."""
    fig = single_level_figure(view, metric)
    if fig is None:
        return []
    return [_plot("curves", "single-level", f"{metric} under conditions with a single level",
                  "One bar per model and condition (value above the bar, whisker = 95% bootstrap CI), beside the "
                  "clean value; these conditions have no level sweep to draw a curve from.", fig)]


def single_level_figure(view: ReportView, metric: str = "mAP"):
    """Bars (value labelled, CI whiskers) of the clean condition and every single-level condition."""
    conds = single_level_conditions(view)
    entries = [e for e in view.entries if any(view.cell(e, c.id, metric) is not None for c in conds)]
    if not conds or not entries:
        return None
    cats = [None] + conds  # None = clean
    fig = _new_figure(max(5.0, 0.9 * len(cats) * max(1, len(entries)) ** 0.5 + 2.5), 4.6)
    ax = fig.add_subplot()
    width = 0.8 / len(entries)
    handles = []
    for k, (color, e) in enumerate(zip(_colors(len(entries)), entries)):
        xs, ys, err = [], [], [[], []]
        for i, c in enumerate(cats):
            cell = view.cell(e, CLEAN if c is None else c.id, metric)
            if cell is None or not _finite(cell.value):
                continue
            xs.append(i - 0.4 + width * (k + 0.5))
            ys.append(float(cell.value))
            ok = _finite(cell.ci_low) and _finite(cell.ci_high)
            err[0].append(float(cell.value - cell.ci_low) if ok else 0.0)
            err[1].append(float(cell.ci_high - cell.value) if ok else 0.0)
        bars = ax.bar(xs, ys, width=width * 0.92, color=color, yerr=err, capsize=3)
        handles.append(bars)
        for x, y in zip(xs, ys):
            ax.text(x, y, fmt_value(metric, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(cats)), ["clean"] + [_tx(_short(condition_label(c), 40)) for c in conds], fontsize=8)
    ax.set_ylabel(_tx(metric))
    ax.set_ylim(bottom=0)
    ax.set_title(_wrap(f"{metric} under conditions with a single level", 6.0, 11), fontsize=11)
    ax.legend(handles, [_tx(e.label) for e in entries], fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


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
        width = 3.2 * ncols
        titles = [_wrap(c.id, 2.8, 9, max_lines=2) for c, _ in panels]
        title_lines = max(t.count("\n") + 1 for t in titles)
        sup = _wrap(f"{e.label}: score histograms (all clips × classes), clean vs perturbed", width - 0.4, 10, 2)
        sup_lines = sup.count("\n") + 1
        # Fixed margins, not constrained layout: laying out many log axes is slow (seconds).
        row_h = 2.3 + 0.16 * title_lines
        height = row_h * nrows + 0.35 + 0.2 * sup_lines
        fig = _new_figure(width, height, layout=None)
        fig.subplots_adjust(left=0.6 / width, right=1 - 0.1 / width, bottom=0.5 / height,
                            top=1 - (0.25 + 0.2 * sup_lines + 0.16 * title_lines) / height,
                            wspace=0.35, hspace=(0.75 + 0.16 * title_lines) / 2.0)
        for k, (c, h) in enumerate(panels):
            ax = fig.add_subplot(nrows, ncols, k + 1)
            edges = np.linspace(0.0, 1.0, h.shape[1] + 1)
            ax.stairs(np.maximum(h[0], 0.5), edges, fill=True, color="0.75", label="clean")
            ax.stairs(np.maximum(h[1], 0.5), edges, color="C3", linewidth=1.6, label="perturbed")
            ax.set_yscale("log")
            ax.yaxis.set_minor_locator(NullLocator())
            ax.set_title(titles[k], fontsize=9)
            ax.set_xlabel("score", fontsize=8)
            ax.tick_params(labelsize=7)
            if k == 0:
                ax.legend(fontsize=7)
        fig.suptitle(sup, fontsize=10)
        out.append(_plot("histograms", f"hist-{_slug(e.run.run_id)}-{_slug(e.model)}", f"{e.label}: score histograms",
                         "20 bins of sigmoid scores on [0, 1]; grey = clean, red = perturbed (log counts).", fig))
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
            found = v[np.isfinite(v) & (v > 0)]  # the eps found; -1 (0 before) = missed clean
            unreachable = int(np.isinf(v).sum())
            if len(found) or unreachable:
                label = _short(e.label, 28) if len(conds) == 1 else f"{_short(e.label, 28)}\n{_short(c.id, 28)}"
                series.append((f"{label}\n{len(found)} found, {unreachable} ∞", found))
    if not series:
        return []
    fig = _new_figure(max(4.5, 1.7 * len(series) + 2), 4.4)
    ax = fig.add_subplot()
    drawn = [v if len(v) else np.array([np.nan]) for _, v in series]
    ax.boxplot(drawn, showfliers=False)
    ax.set_xticks(range(1, len(series) + 1), [_tx(lab) for lab, _ in series], fontsize=8)
    jitter = np.random.default_rng(0)  # fixed local RNG: the picture is reproducible
    for i, (_, v) in enumerate(series, start=1):
        ax.scatter(i + jitter.uniform(-0.15, 0.15, len(v)), v, s=10, alpha=0.6, color="C0")
    if all(len(v) for _, v in series):
        ax.set_yscale("log")
    ax.set_ylabel("min eps (linf, waveform units)")
    ax.set_title(_wrap("Smallest eps that removes every true label from the top 5, per attacked clip", 5.5, 11),
                 fontsize=11)
    ax.grid(alpha=0.3, axis="y")
    return [_plot("min_eps", "min-eps", "min-eps distribution per model",
                  "Box = quartiles, whiskers = 1.5 IQR, dots = clips; over the clips whose eps was found (∞ = not "
                  "broken at eps_max, counted under each box; clips missed clean are left out).", fig)]


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
    under its strongest condition; None when the run has no ΔAP rows for it. The two panels never
    share a class: with fewer than 2·top classes, the lower half is "least" and the rest "most"."""
    pcl = e.run.per_class
    rows = pcl[(pcl["model"] == e.model) & (pcl["metric"] == "delta_AP")]
    cond = strongest_condition(view, e, set(rows["condition"].unique()))
    if cond is None:
        return None
    r = rows[rows["condition"] == cond]
    r = r[np.isfinite(r["value"].to_numpy(dtype=float))].sort_values(["value", "class_index"])
    if r.empty:
        return None
    n_least = min(top, (len(r) + 1) // 2)
    n_most = min(top, len(r) - n_least)
    return cond, r.head(n_least), r.tail(n_most).iloc[::-1]


def delta_ap(view: ReportView, top: int = TOP_CLASSES) -> list[Plot]:
    out = []
    for e in view.entries:
        found = delta_ap_extremes(view, e, top)
        if found is None:
            continue
        cond, least, most = found
        panels = [(part, title, color) for part, title, color in
                  ((least, f"{len(least)} least robust classes", "C3"),
                   (most, f"{len(most)} most robust classes", "C2")) if len(part)]
        n = max(len(p) for p, _, _ in panels)
        fig = _new_figure(11.0, 0.24 * n + 1.9)
        for k, (part, title, color) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), k + 1)
            names = [_tx(_short(s, 32)) for s in part["class_name"]]
            ax.barh(range(len(part)), part["value"].to_numpy(dtype=float), color=color)
            ax.set_yticks(range(len(part)), names, fontsize=7)
            ax.invert_yaxis()
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_xlabel("ΔAP (perturbed − clean)")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3, axis="x")
        fig.suptitle(_wrap(f"{e.label}: per-class ΔAP under {cond} (its strongest condition)", 10.5, 10, 2),
                     fontsize=10)
        out.append(_plot("delta_ap", f"delta-ap-{_slug(e.run.run_id)}-{_slug(e.model)}",
                         f"{e.label}: per-class ΔAP under {cond}",
                         "Classes without positives are left out; no class appears in both panels.", fig))
    return out


def all_plots(view: ReportView) -> list[Plot]:
    plots = (robustness_curves(view) + single_level_plot(view) + score_histograms(view) + min_eps_distribution(view)
             + delta_ap(view))
    seen: dict[str, int] = {}
    unique = []
    for p in plots:  # file names must not collide (e.g. model names that slug alike)
        n = seen.get(p.name, 0)
        seen[p.name] = n + 1
        unique.append(p if n == 0 else Plot(p.section, f"{p.name}-{n + 1}", p.title, p.caption, p.png, p.layout))
    return unique
