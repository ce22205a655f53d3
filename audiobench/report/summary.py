"""The short table `audiobench run` prints when it finishes (the full views are `audiobench report`)."""

from __future__ import annotations

import math
from pathlib import Path

# The columns of the table `audiobench run` prints (the README shows it; tests/test_docs.py checks it).
SUMMARY_COLUMNS = ("model", "condition", "mAP [95% CI]", "ΔmAP", "top-5 hit", "JS (bits)", "true-label rank Δ", "trust")


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


def _get(vals, name):
    r = vals.get(name)
    return math.nan if r is None else r.value


def print_run_summary(run_dir: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rows = summary_rows(run_dir)
    table = Table(title=f"audiobench run {Path(run_dir).name}")
    for col in SUMMARY_COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "condition", "trust") else "right")
    clean_map = {model: vals["mAP"].value for model, cond, vals in rows if cond == "none" and "mAP" in vals}
    suite = []
    for model, cond, vals in rows:
        if "mAP" not in vals:  # a summary over conditions (the corruption suite)
            suite.append((model, cond, vals))
            continue
        mp = vals["mAP"]
        ci = f" [{_fmt(mp.ci_low, 3)}, {_fmt(mp.ci_high, 3)}]" if not math.isnan(mp.ci_low) else ""
        delta = mp.value - clean_map.get(model, math.nan)
        table.add_row(
            escape(model), escape(cond), f"{_fmt(mp.value)}{ci}", "" if cond == "none" else f"{delta:+.4f}",
            _fmt(_get(vals, "top5_hit_rate"), 3), _fmt(_get(vals, "js_mean"), 4), _fmt(_get(vals, "true_rank_change_mean"), 1),
            "SUSPECT" if bool(mp.suspect) else "ok",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and pipes: don't wrap the table at 80 columns
    console.print(table)
    summaries = [(m, c, v) for m, c, v in suite if "mean_corruption_map" in v]
    if summaries:
        st = Table(title="corruption suite")
        for col in ("model", "suite", "mean corruption mAP [95% CI]", "relative robustness", "mCE"):
            st.add_column(col, justify="left" if col in ("model", "suite") else "right")
        for model, cond, vals in summaries:
            r = vals["mean_corruption_map"]
            ci = f" [{_fmt(r.ci_low, 3)}, {_fmt(r.ci_high, 3)}]" if not math.isnan(r.ci_low) else ""
            st.add_row(escape(model), escape(cond), f"{_fmt(r.value)}{ci}", _fmt(_get(vals, "relative_robustness"), 3),
                       _fmt(_get(vals, "mce"), 3))
        console.print(st)
