"""The short table `audiobench run` prints when it finishes (the full views are `audiobench report`)."""

from __future__ import annotations

import math
from pathlib import Path

SUMMARY_METRICS = ("mAP", "top5_hit_rate", "kl_mean", "top1_flip_rate")


def summary_rows(run_dir: Path):
    from audiobench.results.schema import METRICS_COLUMNS, METRICS_CSV, read_table

    m = read_table(Path(run_dir) / METRICS_CSV, METRICS_COLUMNS)
    rows = []
    for (model, cond), g in m.groupby(["model", "condition"], sort=False):
        vals = {r.metric: r for r in g.itertuples()}
        rows.append((model, cond, vals))
    return rows


def _fmt(v: float, digits: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def print_run_summary(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"audiobench run {Path(run_dir).name}")
    for col in ("model", "condition", "mAP [95% CI]", "ΔmAP", "top-5 hit", "KL", "top-1 flip", "trust"):
        table.add_column(col, justify="left" if col in ("model", "condition", "trust") else "right")
    clean_map = {}
    for model, cond, vals in summary_rows(run_dir):
        if cond == "none":
            clean_map[model] = vals["mAP"].value
    for model, cond, vals in summary_rows(run_dir):
        mp = vals["mAP"]
        ci = f" [{_fmt(mp.ci_low, 3)}, {_fmt(mp.ci_high, 3)}]" if not math.isnan(mp.ci_low) else ""
        delta = mp.value - clean_map.get(model, math.nan)
        table.add_row(
            model, cond, f"{_fmt(mp.value)}{ci}", "" if cond == "none" else f"{delta:+.4f}",
            _fmt(vals["top5_hit_rate"].value, 3), _fmt(vals["kl_mean"].value, 3), _fmt(vals["top1_flip_rate"].value, 3),
            "SUSPECT" if bool(mp.suspect) else "ok",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and pipes: don't wrap the table at 80 columns
    console.print(table)
