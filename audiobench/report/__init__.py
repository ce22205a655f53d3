"""``audiobench report``: turn result folders into tables (rich / markdown / CSV) and an HTML page.

    runs = collect_runs(["results"])             # load + check run folders
    text = render(runs, "md")                    # "table", "md" or "csv" -> str
    render_html(runs, "report.html")             # one self-contained file + report_files/*.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from audiobench.report.collect import RunResult, collect_runs, load_run

FORMATS = ("table", "md", "csv", "html")

__all__ = ["FORMATS", "RunResult", "collect_runs", "load_run", "render", "render_html", "write_report"]


def render(runs: Sequence[RunResult], fmt: str, *, width: int = 120) -> str:
    """The report as text for the text formats ("table", "md", "csv")."""
    from audiobench.report import sections, tables

    if fmt == "table":
        return tables.render_table(runs, width=width, extra=sections.rich_tables(tables.ReportView(runs)))
    if fmt == "md":
        return tables.render_md(runs) + sections.render_md(tables.ReportView(runs))
    if fmt == "csv":
        return tables.render_csv(runs)
    raise ValueError(f"render() covers the text formats table, md, csv; got {fmt!r} (use render_html)")


def render_html(runs: Sequence[RunResult], out: Path | str, *, plots=None):
    """Write the HTML report (and its PNGs) to ``out``; ``plots`` reuses figures already drawn."""
    from audiobench.report.html import render_html as _render_html

    return _render_html(runs, out, plots=plots)


def write_report(runs: Sequence[RunResult], fmt: str, out: Path | str) -> list[Path]:
    """Write the report in ``fmt`` to ``out`` atomically; returns the files written."""
    from audiobench.fileio import atomic_write_text

    if fmt == "html":
        html, pngs = render_html(runs, out)
        return [html, *pngs]
    return [atomic_write_text(out, render(runs, fmt))]
