"""The report's analysis sections: the corruption suite, the attacks' footprints and band curve,
transfer matrices and sharpness, each from the tables of the runs shown.

Each ``*_plots(view)`` returns :class:`~audiobench.report.plots.Plot` objects (none when the runs
hold nothing of the kind); each ``*_table(view)`` returns (header, rows) for the text reports.
The figures themselves are drawn by the kind's own module (:mod:`audiobench.report.corruptions`,
:mod:`audiobench.report.footprint`, ...).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from audiobench.report.plots import Plot, _plot, _slug
from audiobench.report.tables import ReportView

#: (section id, title, blurb) of the HTML report's analysis sections, in page order
SECTIONS = (
    ("corruptions", "Corruption suite", "mAP under the natural corruptions, averaged over severities and per "
                                        "severity (clean drawn at severity 0)."),
    ("footprint", "Where the attacks live", "Energy of the attack's change per mel band and second, relative to the "
                                            "clean audio in the same cell (dB); the share on digital silence/padding."),
    ("transfer", "Transfer attacks", "mAP of each target model under adversarial clips crafted on each source model "
                                     "(white-box on the diagonal)."),
    ("sharpness", "Sharpness", "Loss sharpness in weight space against robustness."),
)


def _metrics(view: ReportView):
    import pandas as pd

    frames = []
    for e in view.entries:
        m = e.run.metrics
        frames.append(m[m["model"] == e.model].assign(model=e.label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# -- corruption suite ------------------------------------------------------------------------------
def corruption_plots(view: ReportView) -> List[Plot]:
    from audiobench.perturb.corruptions import CORRUPTION_NAMES
    from audiobench.report.corruptions import corruption_heatmap, severity_curves

    df = _metrics(view)
    if df.empty or not ((df["param"] == "severity") & df["perturbation"].isin(CORRUPTION_NAMES)).any():
        return []
    order = list(CORRUPTION_NAMES)
    models = [e.label for e in view.entries]
    return [
        _plot("corruptions", "corruption-heatmap-map", "Severity-averaged mAP per corruption",
              "Mean over the severities run of each corruption's mAP.",
              corruption_heatmap(df, value="map", corruptions=order, models=models)),
        _plot("corruptions", "corruption-heatmap-drop", "Relative mAP drop per corruption",
              "1 - (severity-averaged mAP) / clean mAP; 0 = unaffected.",
              corruption_heatmap(df, value="drop", corruptions=order, models=models)),
        _plot("corruptions", "corruption-severity-curves", "mAP over severity, per corruption",
              "Error bars: 95% bootstrap CIs over clips.", severity_curves(df, corruptions=order, models=models)),
    ]


SUITE_METRICS = ("mean_corruption_map", "relative_robustness", "mce", "relative_mce")


def suite_table(view: ReportView) -> Tuple[List[str], List[List[str]]]:
    """(header, rows) of the corruption suite's summary numbers, one row per (model, suite)."""
    header = ["model", "suite", "clips", "mean corruption mAP [95% CI]", "relative robustness", "mCE", "relative mCE",
              "reference"]
    rows = []
    for e in view.entries:
        m = e.run.metrics
        sub = m[(m["model"] == e.model) & (m["perturbation"] == "suite")]
        for suite, g in sub.groupby("condition", sort=False):
            vals = {r.metric: r for r in g.itertuples()}

            def cell(name, ci=False):
                r = vals.get(name)
                if r is None or not _finite(r.value):
                    return "-"
                text = f"{r.value:.4f}"
                if ci and _finite(r.ci_low):
                    text += f" [{r.ci_low:.3f}, {r.ci_high:.3f}]"
                return text

            n = next(iter(vals.values())).n_clips
            ref = e.run.info.get("reference_model") or "-"
            rows.append([e.label, str(suite), str(int(n)), cell("mean_corruption_map", True), cell("relative_robustness"),
                         cell("mce"), cell("relative_mce"), str(ref)])
    return header, rows


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def analysis_plots(view: ReportView) -> List[Plot]:
    """Every analysis section's plots, in page order."""
    plots: List[Plot] = []
    for fn in (corruption_plots, footprint_plots, transfer_plots, sharpness_plots):
        plots += fn(view)
    return plots


# -- the attacks' footprints ------------------------------------------------------------------------
def footprint_plots(view: ReportView) -> List[Plot]:
    """Footprint heatmaps (perturbation_spectrum.csv) and the band-limited attack curve."""
    import pandas as pd

    from audiobench.report.footprint import band_sweep_rows, plot_band_sweep, plot_footprints

    out: List[Plot] = []
    frames = []
    for run in view.runs:
        spec = run.perturbation_spectrum
        if spec is not None and len(spec):
            frames.append(spec)
    if frames:
        df = pd.concat(frames, ignore_index=True)
        for cond, g in df.groupby("condition", sort=False):
            out.append(_plot("footprint", f"footprint-{_slug(str(cond))}", f"Footprint of {cond}",
                             "Rows: mel bands (Hz); columns: 1 s segments; colour: 10·log10(δ energy / clean energy).",
                             plot_footprints(g)))
    rows = []
    for run in view.runs:
        try:
            r = band_sweep_rows(run.metrics, run.conditions)
        except ValueError:
            continue
        if r is not None and len(r):
            rows.append(r)
    if rows:
        df = pd.concat(rows, ignore_index=True)
        if df["band_low_hz"].nunique() > 1:  # a curve needs two bands or more
            out.append(_plot("footprint", "band-sweep", "mAP under band-limited attacks",
                             "PGD at fixed eps with delta kept inside each band (docs/attacks.md).", plot_band_sweep(df)))
    return out


def transfer_plots(view: ReportView) -> List[Plot]:
    from audiobench.report.transfer import plot_transfer_matrices, transfer_matrix_rows

    rows = transfer_matrix_rows(_metrics(view), [c for r in view.runs for c in r.conditions])
    if rows is None or rows.empty:
        return []
    return [_plot("transfer", f"transfer-{_slug(str(attack))}", f"Transfer matrix: {attack}",
                  "Rows: source model the clips were crafted on; columns: target model evaluated; cell: target mAP.",
                  fig) for attack, fig in plot_transfer_matrices(rows)]


def _sharpness_frame(view: ReportView):
    import pandas as pd

    frames = [df for _, _, df in view.sharpness if df is not None and len(df)]
    return pd.concat(frames, ignore_index=True) if frames else None


def sharpness_plots(view: ReportView) -> List[Plot]:
    """Sharpness against rho, and against robustness where the report holds robustness runs of
    the same models (the plots themselves: :mod:`audiobench.report.sharpness`)."""
    from audiobench.report.sharpness import sharpness_curves, sharpness_vs_robustness

    sharp = _sharpness_frame(view)
    if sharp is None:
        return []
    plots = list(sharpness_curves(sharp))
    metrics = _metrics(view) if view.entries else None
    if metrics is not None and len(metrics):
        plots += list(sharpness_vs_robustness(sharp, metrics))
    return plots


def sharpness_text_table(view: ReportView):
    """(header, rows) of the sharpness table (with each model's robustness where present)."""
    from audiobench.report.sharpness import sharpness_table

    sharp = _sharpness_frame(view)
    if sharp is None:
        return None
    metrics = _metrics(view) if view.entries else None
    table = sharpness_table(sharp, metrics if metrics is not None and len(metrics) else None)
    header = [str(c) for c in table.columns]
    rows = [[_cell(v) for v in r] for r in table.itertuples(index=False)]
    return header, rows


def _cell(v) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def sections_present(plots: Sequence[Plot]) -> List[tuple]:
    return [s for s in SECTIONS if any(p.section == s[0] for p in plots)]


# -- text reports ------------------------------------------------------------------------------------
def transfer_text_tables(view: ReportView) -> List[tuple]:
    from audiobench.report.transfer import transfer_matrix_rows, transfer_tables

    rows = transfer_matrix_rows(_metrics(view), [c for r in view.runs for c in r.conditions])
    return [] if rows is None or rows.empty else transfer_tables(rows)


def text_tables(view: ReportView) -> List[tuple]:
    """[(title, header, rows)] of the analysis sections for the text formats."""
    out = []
    header, rows = suite_table(view)
    if rows:
        out.append(("Corruption suite (mean over corruptions of the severity-averaged mAP; mCE relative to the "
                    "reference model)", header, rows))
    for attack, header, rows in transfer_text_tables(view):
        out.append((f"Transfer matrix, target mAP: {attack} (rows: crafted on; columns: scored)", header, rows))
    sharp = sharpness_text_table(view)
    if sharp is not None:
        out.append(("Sharpness (loss increase in weight space; docs/quantization-and-sharpness.md)", *sharp))
    return out


def render_md(view: ReportView) -> str:
    from audiobench.report.tables import _md_table, md_text

    parts = []
    for title, header, rows in text_tables(view):
        parts += [f"## {md_text(title)}", "", _md_table([md_text(h) for h in header],
                                                       [[md_text(x) for x in r] for r in rows]), ""]
    return "\n".join(parts) + ("\n" if parts else "")


def terminal_shape(header: Sequence[str], rows: Sequence[Sequence[str]]):
    """A wide and short table (the sharpness table: a column per measure) transposed for a
    terminal, one row per measure and a column per model, instead of truncated headers."""
    if len(header) > 8 and len(rows) < len(header) - 1:
        return [header[0]] + [r[0] for r in rows], [[h] + [r[i] for r in rows] for i, h in enumerate(header) if i > 0]
    return list(header), [list(r) for r in rows]


def rich_tables(view: ReportView) -> list:
    from rich.table import Table
    from rich.text import Text

    out = []
    for title, header, rows in text_tables(view):
        header, rows = terminal_shape(header, rows)
        t = Table(title=Text(title))
        for i, h in enumerate(header):
            t.add_column(Text(h), justify="left" if i < 2 else "right")
        for r in rows:
            t.add_row(*(Text(x) for x in r))
        out.append(t)
    return out


def html_tables(view: ReportView) -> str:
    from html import escape

    parts = []
    for title, header, rows in text_tables(view):
        head = "".join(f'<th class="l">{escape(h)}</th>' if i < 2 else f"<th>{escape(h)}</th>" for i, h in enumerate(header))
        body = "".join("<tr>" + "".join(f'<td class="{"l" if i < 2 else ""}">{escape(x)}</td>' for i, x in enumerate(r))
                       + "</tr>" for r in rows)
        parts.append(f"<h3>{escape(title)}</h3><table><tr>{head}</tr>{body}</table>")
    return "".join(parts)
