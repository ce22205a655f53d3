"""Tables from collected runs: a rich table for the terminal, markdown for papers, tidy CSV.

All formats read the same :class:`ReportView`, which pivots the tidy ``metrics.csv`` rows of
several runs only for display: one *entry* per (run, model) and the union of their conditions in
a stable order (clean first, then each perturbation from mild to strong).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

from audiobench.report.collect import CLEAN, RunResult

SUSPECT = "⚠"
QUALITY_METRICS = ("mAP", "mAUC", "d_prime")
SHIFT_METRICS = (
    "kl_mean", "js_mean", "entropy_delta_mean", "top1_flip_rate", "top5_jaccard_mean",
    "spearman_mean", "abs_dp_mean", "true_label_drop_rate",
)
MIN_EPS_METRICS = ("min_eps_median", "min_eps_q25", "min_eps_q75")
METRIC_TITLES = {
    "mAP": "mAP", "mAUC": "mAUC", "d_prime": "d′",
    "kl_mean": "mean Bernoulli KL(clean ‖ perturbed)", "js_mean": "mean JS divergence",
    "entropy_delta_mean": "mean change of per-class entropy", "top1_flip_rate": "top-1 flip rate",
    "top5_jaccard_mean": "mean top-5 Jaccard overlap", "spearman_mean": "mean Spearman rank correlation",
    "abs_dp_mean": "mean |Δp|", "true_label_drop_rate": "true-label drop rate",
}
_THREE_DECIMALS = {"mAP", "mAUC", "d_prime", "top1_hit_rate", "top5_hit_rate", "top1_flip_rate",
                   "top5_jaccard_mean", "spearman_mean", "true_label_drop_rate"}


@dataclass(frozen=True)
class Entry:
    """One model of one run: a column of the markdown tables, a line of the plots."""

    run: RunResult
    model: str
    label: str


@dataclass(frozen=True)
class Condition:
    id: str
    perturbation: str
    param: str
    level: float
    min_eps: bool
    comparable: bool = True  # False for feature-domain kinds: their levels are in each model's feature units

    @property
    def clean(self) -> bool:
        return self.id == CLEAN


@dataclass(frozen=True)
class Cell:
    value: float
    ci_low: float
    ci_high: float
    n_clips: float
    suspect: bool


def _isnan(x) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


class ReportView:
    """Lookup tables over the metrics rows of several runs."""

    def __init__(self, runs: Sequence[RunResult]):
        self.runs = list(runs)
        multi_run_models = _models_in_several_runs(self.runs)
        self.entries: list[Entry] = []
        for run in self.runs:
            for model in run.models:
                label = f"{model} [{run.run_id}]" if model in multi_run_models else model
                self.entries.append(Entry(run, model, label))
        self._cells: dict[tuple[str, str, str, str], Cell] = {}
        self._present: set[tuple[str, str, str]] = set()
        self._flagged: set[tuple[str, str, str]] = set()
        perturbation_order: dict[str, int] = {CLEAN: -1}
        conds: dict[str, dict] = {}
        min_eps_ids: set[str] = set()
        not_comparable: set[str] = set()
        for run in self.runs:
            for c in run.conditions:
                perturbation_order.setdefault(str(c.get("perturbation", "")), len(perturbation_order))
                if c.get("comparable_across_models") is False:
                    not_comparable.add(str(c["id"]))
            m = run.metrics
            for row in m.itertuples(index=False):
                key = (run.run_id, row.model, row.condition, row.metric)
                self._cells[key] = Cell(row.value, row.ci_low, row.ci_high, row.n_clips, bool(row.suspect))
                self._present.add((run.run_id, row.model, row.condition))
                if bool(row.suspect):
                    self._flagged.add((run.run_id, row.model, row.condition))
                conds.setdefault(row.condition, {"perturbation": row.perturbation, "param": row.param,
                                                 "level": row.level})
                if row.metric in MIN_EPS_METRICS or row.perturbation == "min-eps":
                    min_eps_ids.add(row.condition)
        for cid, c in conds.items():
            perturbation_order.setdefault(c["perturbation"], len(perturbation_order))

        def order(cid: str):
            c = conds[cid]
            level = c["level"] if not _isnan(c["level"]) else 0.0
            # Mild to strong: high SNR first, small eps / period first.
            signed = -level if "snr" in c["param"].lower() else level
            return (perturbation_order[c["perturbation"]], c["param"], signed, cid)

        self.conditions: list[Condition] = [
            Condition(cid, conds[cid]["perturbation"], conds[cid]["param"], float(conds[cid]["level"]),
                      cid in min_eps_ids, cid not in not_comparable)
            for cid in sorted(conds, key=order)
        ]

    # -- lookups -------------------------------------------------------------------------------
    def cell(self, entry: Entry, condition: str, metric: str) -> Cell | None:
        return self._cells.get((entry.run.run_id, entry.model, condition, metric))

    def has(self, entry: Entry, condition: str) -> bool:
        return (entry.run.run_id, entry.model, condition) in self._present

    def metrics_present(self) -> set[str]:
        return {k[3] for k in self._cells}

    def suspect_reasons(self, entry: Entry, condition: str) -> list[str] | None:
        """None when not suspect, else the reasons recorded by the run's trust checks."""
        trust = entry.run.trust(entry.model, condition)
        flagged_rows = (entry.run.run_id, entry.model, condition) in self._flagged
        if not (trust.get("suspect") or flagged_rows):
            return None
        reasons = [str(x) for x in trust.get("reasons") or []]
        return reasons or ["flagged suspect in metrics.csv (no reason recorded in run.json trust)"]

    def suspects(self) -> list[tuple[Entry, str, list[str]]]:
        out = []
        for e in self.entries:
            for c in self.conditions:
                reasons = self.suspect_reasons(e, c.id)
                if reasons is not None:
                    out.append((e, c.id, reasons))
        return out

    def drop(self, entry: Entry, condition: str, metric: str = "mAP") -> tuple[float, float] | None:
        """(absolute, relative) change from clean, or None when either side is missing."""
        if condition == CLEAN:
            return None
        here, clean = self.cell(entry, condition, metric), self.cell(entry, CLEAN, metric)
        if here is None or clean is None or _isnan(here.value) or _isnan(clean.value):
            return None
        d = here.value - clean.value
        rel = d / clean.value if clean.value else float("nan")
        return d, rel

    def min_eps_conditions(self) -> list[Condition]:
        return [c for c in self.conditions if c.min_eps]


def _models_in_several_runs(runs: Sequence[RunResult]) -> set[str]:
    count: dict[str, int] = {}
    for run in runs:
        for m in run.models:
            count[m] = count.get(m, 0) + 1
    return {m for m, n in count.items() if n > 1}


# -- number formatting ---------------------------------------------------------------------------
def fmt_value(metric: str, v) -> str:
    if _isnan(v):
        return "—"
    v = float(v)
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if metric in _THREE_DECIMALS:
        return f"{v:.3f}"
    if metric == "nonfinite_clips":
        return f"{v:.0f}"
    return f"{v:.3g}" if metric.startswith("min_eps") else f"{v:.4g}"


def fmt_ci(metric: str, cell: Cell | None) -> str:
    if cell is None or _isnan(cell.ci_low) or _isnan(cell.ci_high):
        return ""
    return f"[{fmt_value(metric, cell.ci_low)}, {fmt_value(metric, cell.ci_high)}]"


def fmt_drop(d: tuple[float, float] | None, metric: str = "mAP") -> tuple[str, str]:
    if d is None:
        return "", ""
    absolute, rel = d
    a = f"{absolute:+.3f}" if metric in _THREE_DECIMALS else f"{absolute:+.4g}"
    r = "" if _isnan(rel) else f"{100 * rel:+.1f}%"
    return a, r


NOT_COMPARABLE = "†"
NOT_COMPARABLE_NOTE = (f"{NOT_COMPARABLE} feature-domain condition: its level is in each model's own normalised "
                       "feature units, so it is not comparable across models.")


def condition_label(c: Condition) -> str:
    if c.clean:
        return f"{c.id} (clean)"
    return c.id if c.comparable else f"{c.id} {NOT_COMPARABLE}"


def has_not_comparable(view) -> bool:
    return any(not c.comparable for c in view.conditions)


def matrix(view: ReportView, metric: str, *, with_drop: bool) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Rows = conditions, columns = entries; each cell (text, suspect). Rows with no value skipped."""
    header = ["condition"] + [e.label for e in view.entries]
    rows = []
    for c in view.conditions:
        cells = []
        any_value = False
        for e in view.entries:
            cell = view.cell(e, c.id, metric)
            if cell is None:
                cells.append(("", False))
                continue
            any_value = any_value or not _isnan(cell.value)
            text = fmt_value(metric, cell.value)
            ci = fmt_ci(metric, cell)
            if ci:
                text += f" {ci}"
            if with_drop:
                a, r = fmt_drop(view.drop(e, c.id, metric), metric)
                if a:
                    text += f" ({a}{', ' + r if r else ''})"
            suspect = view.suspect_reasons(e, c.id) is not None
            cells.append((text, suspect))
        if any_value:
            rows.append([(condition_label(c), False)] + cells)
    return header, rows


def min_eps_rows(view: ReportView) -> list[list[str]]:
    """[entry, condition, median, IQR, clips] for every min-eps condition."""
    rows = []
    for c in view.min_eps_conditions():
        for e in view.entries:
            med = view.cell(e, c.id, "min_eps_median")
            if med is None:
                continue
            q25, q75 = view.cell(e, c.id, "min_eps_q25"), view.cell(e, c.id, "min_eps_q75")
            iqr = ""
            if q25 is not None and q75 is not None:
                iqr = f"[{fmt_value('min_eps_q25', q25.value)}, {fmt_value('min_eps_q75', q75.value)}]"
            clips = "" if _isnan(med.n_clips) else f"{med.n_clips:.0f}"
            rows.append([e.label, c.id, fmt_value("min_eps_median", med.value), iqr, clips])
    return rows


def run_summary(run: RunResult) -> str:
    d = run.data
    state = "complete" if run.complete else "INCOMPLETE"
    return (f"{run.run_id}: data {d.get('name', '?')} ({d.get('n_clips', '?')} clips), "
            f"models {', '.join(run.models)}, device {run.info.get('device', '?')}, "
            f"git {str(run.info.get('git_commit') or '?')[:10]}, {state}")


# -- rich table ----------------------------------------------------------------------------------
def table_renderables(view: ReportView) -> list:
    from rich.table import Table
    from rich.text import Text

    out: list = [Text("\n".join(run_summary(r) for r in view.runs), style="dim")]
    t = Table(title="mAP by model and condition (95% bootstrap CI over clips; change from clean)",
              title_justify="left")
    for name, justify in (("model", "left"), ("condition", "left"), ("mAP", "right"), ("95% CI", "right"),
                          ("Δ", "right"), ("Δ%", "right"), ("clips", "right"), ("", "left")):
        t.add_column(Text(name), justify=justify, no_wrap=name in ("condition", "95% CI"))
    for i, e in enumerate(view.entries):
        conds = [c for c in view.conditions if view.has(e, c.id)]
        for j, c in enumerate(conds):
            cell = view.cell(e, c.id, "mAP")
            a, r = fmt_drop(view.drop(e, c.id))
            flag = f"{SUSPECT} suspect" if view.suspect_reasons(e, c.id) is not None else ""
            style = "bold" if c.clean else ("red" if flag else None)
            clips = "" if cell is None or _isnan(cell.n_clips) else f"{cell.n_clips:.0f}"
            cells = (e.label if j == 0 else "", condition_label(c), fmt_value("mAP", cell.value if cell else None),
                     fmt_ci("mAP", cell), a, r, clips, flag)
            # Text(), not str: model labels like "toy-cnn [run-a]" must not be read as rich markup.
            last = j == len(conds) - 1 and i < len(view.entries) - 1
            t.add_row(*(Text(x) for x in cells), style=style, end_section=last)
    out.append(t)
    me = min_eps_rows(view)
    if me:
        t2 = Table(title="min-eps: smallest linf eps that removes every true label from the top 5",
                   title_justify="left")
        for name in ("model", "condition", "median", "IQR [q25, q75]", "clips"):
            t2.add_column(Text(name), justify="left" if name in ("model", "condition") else "right")
        for row in me:
            t2.add_row(*(Text(x) for x in row))
        out.append(t2)
    if has_not_comparable(view):
        out.append(Text(NOT_COMPARABLE_NOTE, style="dim"))
    sus = view.suspects()
    if sus:
        lines = [f"{SUSPECT} {e.label} / {cid}: {'; '.join(reasons)}" for e, cid, reasons in sus]
        out.append(Text("Suspect attack results (trust checks):\n" + "\n".join(lines), style="yellow"))
    return out


def render_table(runs: Sequence[RunResult], *, width: int = 120) -> str:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False)
    for r in table_renderables(ReportView(runs)):
        console.print(r)
    return buf.getvalue()


# -- markdown ------------------------------------------------------------------------------------
def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_md(runs: Sequence[RunResult]) -> str:
    view = ReportView(runs)
    parts = ["# audiobench report", ""]
    parts += [f"- {run_summary(r)}" for r in view.runs]
    parts += ["", "Cells: value [95% bootstrap CI over clips]; for mAP also (change from clean, relative). "
              f"{SUSPECT} = attack result flagged suspect by the trust checks (reasons below).", ""]
    present = view.metrics_present()
    for metric in QUALITY_METRICS + SHIFT_METRICS:
        if metric not in present:
            continue
        header, rows = matrix(view, metric, with_drop=(metric == "mAP"))
        if not rows:
            continue
        text_rows = [[t + (f" {SUSPECT}" if s else "") for t, s in row] for row in rows]
        parts += [f"## {METRIC_TITLES.get(metric, metric)}", "", _md_table(header, text_rows), ""]
    if has_not_comparable(view):
        parts += [NOT_COMPARABLE_NOTE, ""]
    me = min_eps_rows(view)
    if me:
        parts += ["## min-eps (smallest linf eps removing every true label from the top 5)", "",
                  _md_table(["model", "condition", "median", "IQR [q25, q75]", "clips"], me), ""]
    sus = view.suspects()
    if sus:
        parts += ["## Suspect attack results", ""]
        parts += [f"- {SUSPECT} {e.label} / `{cid}`: {'; '.join(reasons)}" for e, cid, reasons in sus]
        parts.append("")
    return "\n".join(parts)


# -- csv -----------------------------------------------------------------------------------------
def render_csv(runs: Sequence[RunResult]) -> str:
    """The tidy metrics rows of every run, concatenated (one header).

    When all files share a header the rows are copied byte for byte; otherwise the union of
    columns is written through pandas.
    """
    texts = [(r.path / "metrics.csv").read_text(encoding="utf-8") for r in runs]
    headers = [t.split("\n", 1)[0].rstrip("\r") for t in texts]
    if len(set(headers)) == 1:
        out = [headers[0] + "\n"]
        for t in texts:
            body = t.split("\n", 1)[1] if "\n" in t else ""
            if body and not body.endswith("\n"):
                body += "\n"
            out.append(body)
        return "".join(out)
    import pandas as pd

    return pd.concat([r.metrics for r in runs], ignore_index=True).to_csv(index=False)
