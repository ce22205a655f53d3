"""``audiobench report``: tables and an HTML page from one or many result folders."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click


@click.command("report", context_settings={"show_default": True})
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "html"]), default="table",
              help="table: rich table of mAP and its drop from clean; md: markdown tables for papers; "
                   "csv: the tidy metrics rows of all runs; html: one self-contained page with plots.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (atomically) instead of stdout. For html the default is report.html; "
                   "plots are also saved as PNG in <stem>_files/ beside it.")
@click.option("--allow-mixed", is_flag=True, default=False,
              help="Put runs on different data (manifest, clip list or vocabulary) side by side.")
@click.option("--include-incomplete", is_flag=True, default=False,
              help="Also show runs whose run.json says complete: false.")
@click.option("--width", type=click.IntRange(60, 400), default=None,
              help="Width of the rich table (default: the terminal's, at least 120 when not a terminal).")
def report(paths, fmt, out, allow_mixed, include_incomplete, width):
    """Report result folders (PATHS: results folders holding run folders, or run folders;
    default results/): clean and perturbed numbers side by side with CIs and suspect flags."""
    from audiobench.report import collect_runs, render, write_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            runs = collect_runs(paths or ("results",), include_incomplete=include_incomplete,
                                allow_mixed=allow_mixed)
        finally:  # warnings first, also when collecting fails (e.g. every run was incomplete)
            for w in caught:
                click.echo(f"warning: {w.message}", err=True)

    if fmt == "html":
        out = out or Path("report.html")
        files = write_report(runs, "html", out)
        assets = files[0].parent / f"{files[0].stem}_files"
        click.echo(f"wrote {files[0]} ({len(files) - 1} plots also saved as PNG in {assets})")
        return
    if out is not None:
        write_report(runs, fmt, out)
        click.echo(f"wrote {out}", err=True)
        return
    if fmt == "table" and sys.stdout.isatty():
        from rich.console import Console

        from audiobench.report.sections import rich_tables
        from audiobench.report.tables import ReportView, table_renderables

        console = Console(width=width)
        view = ReportView(runs)
        for r in [*table_renderables(view), *rich_tables(view)]:
            console.print(r)
        return
    click.echo(render(runs, fmt, width=width or 120), nl=False)
