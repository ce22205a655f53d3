"""The single-file HTML report: tables, plots embedded as base64 PNG, suspect flags, audio links.

Nothing is fetched from the network when the file is opened: styles are inline, images are
``data:`` URIs, and the only other links are relative paths to the PNG copies written beside the
report (``<stem>_files/``) and to the run folders' ``audio/`` WAV files.
"""

from __future__ import annotations

import base64
import os
import re
from html import escape
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

from audiobench import __version__
from audiobench.fileio import atomic_write_bytes, atomic_write_text
from audiobench.report.collect import CLEAN, RunResult
from audiobench.report.plots import Plot, all_plots
from audiobench.report.sections import SECTIONS, analysis_plots, html_tables
from audiobench.report.tables import (
    CALIBRATION_METRICS, MEDIAN_DISAGREES, MIN_EPS_HEADER, NOT_COMPARABLE_NOTE, QUALITY_METRICS, SHIFT_METRICS,
    SUSPECT, WITH_DROP, ReportView, has_not_comparable, map_note, matrix, metric_title, min_eps_rows,
)

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}
h1{margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td.l,th.l{text-align:left}
td.suspect{background:#fff1d6}td.w{white-space:normal}tr.clean td{font-weight:600}
.meta{color:#666;font-size:13px}.warn{color:#a35a00}
figure{margin:12px 0 24px}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}
nav a{margin-right:12px}details{margin:8px 0}summary{cursor:pointer;font-weight:600}
audio{height:28px;width:180px;vertical-align:middle}.scroll{overflow-x:auto;max-width:100%}
"""
_PLOT_SECTIONS = (
    ("curves", "Robustness curves", "mAP against the swept level of each perturbation parameter."),
    ("histograms", "Score histograms", "Distribution of all sigmoid scores, clean against perturbed."),
    ("min_eps", "min-eps distribution", "Per clip, the smallest linf eps at which no true label stays in the top 5."),
    ("delta_ap", "Per-class ΔAP", "The 20 least and 20 most robust classes of each model under its strongest "
                                  "condition (lowest mAP)."),
)


def assets_dir_for(out: Path) -> Path:
    """Folder beside the report where the PNG copies of its plots go: report.html -> report_files/."""
    return out.parent / f"{out.stem}_files"


def _rel_url(target: Path, base_dir: Path) -> str:
    try:
        rel = os.path.relpath(Path(target).resolve(), Path(base_dir).resolve())
    except ValueError:  # another drive on Windows: fall back to an absolute file URI
        return Path(target).resolve().as_uri()
    return quote(Path(rel).as_posix())


def _html_matrix(view: ReportView, metric: str) -> str:
    header, rows = matrix(view, metric, with_drop=metric in WITH_DROP)
    if not rows:
        return ""
    out = ["<table><tr>" + "".join(f'<th class="l">{escape(h)}</th>' if i == 0 else f"<th>{escape(h)}</th>"
                                   for i, h in enumerate(header)) + "</tr>"]
    for row in rows:
        cls = ' class="clean"' if row[0][0].startswith(f"{CLEAN} ") else ""
        tds = []
        for i, (text, suspect) in enumerate(row):
            if i == 0:
                tds.append(f'<td class="l">{escape(text)}</td>')
            elif suspect:
                tds.append(f'<td class="suspect" title="flagged suspect">{escape(text)} {SUSPECT}</td>')
            else:
                tds.append(f"<td>{escape(text)}</td>")
        out.append(f"<tr{cls}>" + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _runs_table(runs: Sequence[RunResult]) -> str:
    head = ["run", "data", "clips", "classes", "models", "conditions", "device", "precision", "seed", "git",
            "time (UTC)", "complete"]
    out = ["<table><tr>" + "".join(f'<th class="l">{h}</th>' for h in head) + "</tr>"]
    for r in runs:
        d = r.data
        cells = [r.run_id, str(d.get("name", "")), str(d.get("n_clips", "")), str(d.get("vocab_size", "")),
                 ", ".join(r.models),
                 str(len(r.conditions)), str(r.info.get("device", "")), str(r.info.get("precision", "")),
                 str(r.info.get("seed", "")), str(r.info.get("git_commit") or "")[:10],
                 f"{r.info.get('start_time', '')} – {r.info.get('end_time', '')}",
                 "yes" if r.complete else "NO (incomplete)"]
        out.append("<tr>" + "".join(f'<td class="l w">{escape(c)}</td>' for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _suspect_section(view: ReportView) -> str:
    sus = view.suspects()
    if not sus:
        return "<p>No condition was flagged suspect by the attack trust checks.</p>"
    items = []
    for e, cid, reasons in sus:
        rs = "".join(f"<li>{escape(r)}</li>" for r in reasons)
        items.append(f'<li class="warn">{SUSPECT} <b>{escape(e.label)}</b> / <code>{escape(cid)}</code>'
                     f"<ul>{rs}</ul></li>")
    return ("<p>An attack that silently fails makes a model look robust: treat these numbers with care.</p>"
            "<ul>" + "".join(items) + "</ul>")


def _figure(p: Plot, assets_url: str) -> str:
    data = base64.b64encode(p.png).decode("ascii")
    return (f'<figure><img alt="{escape(p.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(p.title)}. {escape(p.caption)} "
            f'<a href="{assets_url}/{quote(p.name)}.png">PNG</a></figcaption></figure>')


def _audio_section(runs: Sequence[RunResult], base_dir: Path) -> str:
    parts = []
    for r in runs:
        files = r.audio_files()
        if not files:
            continue
        by_model: dict[str, dict[str, dict[str, Path]]] = {}
        for model, cond, wav in files:
            by_model.setdefault(model, {}).setdefault(cond, {})[wav.stem] = wav
        for model, conds in by_model.items():
            order = [CLEAN] + [c["id"] for c in r.conditions if c["id"] != CLEAN]
            cols = [c for c in order if c in conds] + sorted(c for c in conds if c not in order)
            clips = sorted({clip for c in cols for clip in conds[c]})
            rows = ["<tr><th class=\"l\">clip</th>" + "".join(f"<th>{escape(c)}</th>" for c in cols) + "</tr>"]
            for clip in clips:
                tds = []
                for c in cols:
                    wav = conds[c].get(clip)
                    if wav is None:
                        tds.append("<td></td>")
                    else:
                        url = _rel_url(wav, base_dir)
                        tds.append(f'<td><audio controls preload="none" src="{url}"></audio> '
                                   f'<a href="{url}">wav</a></td>')
                rows.append(f'<tr><td class="l">{escape(clip)}</td>' + "".join(tds) + "</tr>")
            parts.append(f"<h3>{escape(model)} <span class=\"meta\">({escape(r.run_id)})</span></h3>"
                         "<table>" + "".join(rows) + "</table>")
    if not parts:
        return ("<p>No audio saved with these runs (run with <code>--save-audio N</code> to listen to "
                "clean and perturbed clips).</p>")
    return "<p>float32 WAV files in the run folders, linked by relative path.</p>" + "\n".join(parts)


def build_html(runs: Sequence[RunResult], plots: Sequence[Plot], *, base_dir: Path, assets_url: str) -> str:
    view = ReportView(runs)
    body = [f"<h1>audiobench report</h1><p class=\"meta\">audiobench {escape(__version__)} · "
            f"{len(runs)} run(s) · {len(view.entries)} model column(s) · {len(view.conditions)} condition(s)</p>"]
    nav = [("runs", "Runs"), ("tables", "Tables"), ("suspect", "Suspect flags")]
    nav += [(s.replace("_", "-"), t) for s, t, _ in _PLOT_SECTIONS + SECTIONS if any(p.section == s for p in plots)]
    nav.append(("audio", "Audio"))
    body.append("<nav>" + "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in nav) + "</nav>")
    body.append('<h2 id="runs">Runs</h2>' + _runs_table(runs))
    body.append('<h2 id="tables">Tables</h2><p class="meta">Cells: value [95% bootstrap CI over clips]; mAP, '
                "accuracy, macro F1 and calibration also (change from clean, relative). Column headers give each "
                "model's clips and classes with a positive clip; “n=” marks a cell over fewer clips (non-finite "
                f"outputs left out). {SUSPECT} = flagged suspect by the attack trust checks.</p>")
    present = view.metrics_present()
    note = map_note(view)
    for metric in QUALITY_METRICS:
        if metric in present:
            t = _html_matrix(view, metric)
            if t:
                extra = f' <span class="meta">({escape(note)})</span>' if metric == "mAP" and note else ""
                body.append(f"<h3>{escape(metric_title(metric))}{extra}</h3>{t}")
    if has_not_comparable(view):
        body.append(f'<p class="meta">{escape(NOT_COMPARABLE_NOTE)}</p>')
    me = min_eps_rows(view)
    if me:
        head = "".join(f'<th class="l">{escape(h)}</th>' if i < 2 else f"<th>{escape(h)}</th>"
                       for i, h in enumerate(MIN_EPS_HEADER))
        rows = "".join("<tr>" + "".join(f'<td class="{"l" if i < 2 else ""}">{escape(x)}</td>'
                                        for i, x in enumerate(row)) + "</tr>" for row in me)
        body.append("<h3>min-eps (linf)</h3><p class=\"meta\">Quantiles over the attacked clips (∞ = not broken at "
                    "eps_max); clips with no true label in the top 5 already clean are counted as missed clean.</p>"
                    f"<table><tr>{head}</tr>" + rows + "</table>")
    shift = [(m, _html_matrix(view, m)) for m in SHIFT_METRICS if m in present]
    shift = [(m, t) for m, t in shift if t]
    if shift:
        body.append("<details><summary>Output-distribution shift (clean vs perturbed)</summary>"
                    f'<p class="meta">Means over clips of per-clip statistics; “· median” follows a mean that differs '
                    f"from the median by more than {MEDIAN_DISAGREES:.0%}.</p>"
                    + "".join(f"<h4>{escape(metric_title(m))}</h4>{t}" for m, t in shift) + "</details>")
    calib = [(m, _html_matrix(view, m)) for m in CALIBRATION_METRICS if m in present]
    calib = [(m, t) for m, t in calib if t]
    if calib:
        body.append("<h3>Calibration</h3>" + "".join(f"<h4>{escape(metric_title(m))}</h4>{t}" for m, t in calib))
    body.append(html_tables(view))
    body.append('<h2 id="suspect">Suspect flags</h2>' + _suspect_section(view))
    for section, title, blurb in _PLOT_SECTIONS + SECTIONS:
        figs = [p for p in plots if p.section == section]
        if figs:
            body.append(f'<h2 id="{section.replace("_", "-")}">{escape(title)}</h2><p class="meta">{escape(blurb)}</p>'
                        + "".join(_figure(p, assets_url) for p in figs))
    body.append('<h2 id="audio">Audio</h2>' + _audio_section(runs, base_dir))
    # Wide tables (many models, many audio columns) scroll inside the page instead of widening it.
    page = "\n".join(body).replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>audiobench report</title><style>{_STYLE}</style></head>\n<body>\n"
            + page + "\n</body></html>\n")


_OUR_PNG = re.compile(r"^(curve|single-level|hist|min-eps|delta-ap|corruption|footprint|band-sweep|transfer|sharpness)"
                      r"[-A-Za-z0-9._]*\.png$")


def render_html(runs: Sequence[RunResult], out: Path | str, *, plots: Sequence[Plot] | None = None
                ) -> tuple[Path, list[Path]]:
    """Write the report to ``out`` and each plot as PNG into ``<out stem>_files/``.

    Returns (html path, PNG paths). Both are written atomically; PNGs of an earlier report in
    that folder that this one no longer draws are removed. ``plots``: figures already drawn
    for these runs (by :func:`~audiobench.report.plots.all_plots`), else they are drawn here.
    """
    out = Path(out)
    if plots is None:
        view = ReportView(runs)
        plots = all_plots(view) + analysis_plots(view)
    plots = list(plots)
    assets = assets_dir_for(out)
    written = []
    for p in plots:
        written.append(atomic_write_bytes(assets / f"{p.name}.png", p.png))
    if assets.is_dir():
        keep = {w.name for w in written}
        for old in assets.iterdir():
            if old.is_file() and _OUR_PNG.match(old.name) and old.name not in keep:
                old.unlink()
    html = build_html(runs, plots, base_dir=out.parent, assets_url=quote(assets.name))
    atomic_write_text(out, html)
    return out, written
