"""Tables from collected runs: a rich table for the terminal, markdown for papers, tidy CSV.

All formats read the same :class:`ReportView`, which pivots the tidy ``metrics.csv`` rows of
several runs only for display: one *entry* per (run, model) and the union of their conditions in
a stable order (clean first, then each perturbation from mild to strong).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Sequence

from audiobench.metrics import METRICS, STATISTICS
from audiobench.report.collect import CLEAN, RunResult

SUSPECT = "⚠"
# tagging quality; the last three exist only for single-label data
QUALITY_METRICS = ("mAP", "mAUC", "d_prime", "accuracy", "top5_accuracy", "macro_f1")
# the per-clip shift statistics, label-focused first (each table shows the mean over clips, and the
# median beside it when the two disagree: see median_note)
SHIFT_STATISTICS = (
    "true_rank_change", "true_dp", "true_dlogit", "top1_retention", "top5_retention", "true_label_drop",
    "false_alarm_new", "max_false_dp", "max_score_change", "kl", "js", "top10_spearman", "top10_kendall",
    "top5_jaccard", "top1_flip", "js_normalised",
)
SHIFT_METRICS = tuple(STATISTICS[s].summary_names["mean"] for s in SHIFT_STATISTICS)
CALIBRATION_METRICS = ("ece", "brier_mean")
WITH_DROP = {"mAP", "accuracy", "macro_f1", "ece", "brier_mean"}  # cells also show the change from clean
MIN_EPS_METRICS = ("min_eps_median", "min_eps_q25", "min_eps_q75", "min_eps_attacked_clips",
                   "min_eps_unreachable_clips", "min_eps_missed_clean_clips")
_MEAN_TO_STAT = {st.summary_names["mean"]: st for st in STATISTICS.values()}
# the data set whose mAP is comparable to published AudioSet numbers (its manifest name)
AUDIOSET_EVAL = "audioset-eval"
# a median is shown beside a mean that differs from it by more than this fraction of the larger
MEDIAN_DISAGREES = 0.25


def metric_title(metric: str) -> str:
    """Short heading of a metric: the registry's title (the name itself when unregistered)."""
    if metric in _MEAN_TO_STAT and not _MEAN_TO_STAT[metric].indicator:
        return f"{_MEAN_TO_STAT[metric].title} (mean over clips)"
    return METRICS.get(metric).title if metric in METRICS else metric


METRIC_TITLES = {name: metric_title(name) for name in METRICS.names()}
_THREE_DECIMALS = {"mAP", "mAUC", "d_prime", "top1_hit_rate", "top5_hit_rate", "accuracy", "top5_accuracy",
                   "macro_f1"} | {n for n, st in _MEAN_TO_STAT.items() if st.units in ("0/1", "fraction")}
_COUNTS = {n for n, m in METRICS.items() if m.units == "clips"}


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
    n_classes: float = float("nan")


def _isnan(x) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


class ReportView:
    """Lookup tables over the metrics rows of several runs."""

    def __init__(self, runs: Sequence[RunResult]):
        self.runs = list(runs)
        # sharpness runs collected beside them (report/collect.py: RunSet), shown in their section
        self.sharpness = list(getattr(runs, "sharpness", []))
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
                self._cells[key] = Cell(row.value, row.ci_low, row.ci_high, row.n_clips, bool(row.suspect),
                                        getattr(row, "n_classes", float("nan")))
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

    def counts(self, entry: Entry) -> tuple[float, float]:
        """(clips, classes with a positive) of an entry: those of its clean mAP row (the most clips
        any condition uses; a condition with non-finite outputs uses fewer and says so)."""
        for cond in [CLEAN] + [c.id for c in self.conditions]:
            cell = self.cell(entry, cond, "mAP")
            if cell is not None:
                return cell.n_clips, cell.n_classes
        return float("nan"), float("nan")


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
    if metric in _COUNTS:
        return f"{v:.0f}"
    return f"{v:.3g}" if metric.startswith("min_eps") else f"{v:.4g}"


def _count(v) -> str:
    return "?" if _isnan(v) else f"{float(v):.0f}"


def column_label(view: ReportView, entry: Entry) -> str:
    """An entry's column header: its label with its clip and class counts."""
    n, k = view.counts(entry)
    return f"{entry.label} ({_count(n)} clips, {_count(k)} classes)"


def median_note(view: ReportView, entry: Entry, condition: str, metric: str) -> str:
    """" · median X [lo, hi]" when ``metric`` is the mean of a per-clip statistic whose median
    differs from it by more than MEDIAN_DISAGREES of the larger of the two; else ""."""
    st = _MEAN_TO_STAT.get(metric)
    if st is None or st.indicator:
        return ""
    mean, med = view.cell(entry, condition, metric), view.cell(entry, condition, st.summary_names["median"])
    if mean is None or med is None or _isnan(mean.value) or _isnan(med.value):
        return ""
    a, b = float(mean.value), float(med.value)
    scale = max(abs(a), abs(b))
    if scale == 0 or abs(a - b) <= MEDIAN_DISAGREES * scale:
        return ""
    ci = fmt_ci(metric, med)
    return f" · median {fmt_value(metric, b)}" + (f" {ci}" if ci else "")


def comparable_to_audioset_eval(run: RunResult) -> bool:
    """True for a run over the whole AudioSet evaluation set (manifest ``audioset-eval``, no
    --limit): only then is its mAP comparable to published AudioSet eval numbers."""
    d = run.data
    used = d.get("used_clip_list_hash")
    return d.get("name") == AUDIOSET_EVAL and (used is None or used == d.get("clip_list_hash"))


def map_note(view: ReportView) -> str | None:
    """What the mAP of these runs is over, when it is not AudioSet eval mAP; None when every run
    covers the whole AudioSet eval set."""
    parts = []
    for e in view.entries:
        if comparable_to_audioset_eval(e.run):
            continue
        n, k = view.counts(e)
        d = e.run.data
        where = d.get("name") or "?"
        if d.get("name") == AUDIOSET_EVAL:
            where += " (a subset)"
        parts.append((f"{_count(k)} classes present in {_count(n)} clips of {where}", e.label))
    if not parts:
        return None
    texts = sorted({p for p, _ in parts})
    if len(texts) == 1:
        return f"mAP over {texts[0]}; not comparable to AudioSet eval mAP"
    per = "; ".join(f"{label}: {p}" for p, label in parts)
    return f"mAP over the classes present ({per}); not comparable to AudioSet eval mAP"


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
    """Rows = conditions, columns = entries (headed with their clip and class counts); each cell
    (text, suspect). Rows with no value skipped. A cell over fewer clips than its column's header
    (clips with non-finite outputs left out) says "n=<clips>"; the mean of a per-clip statistic
    gets its median beside it when the two disagree (:func:`median_note`)."""
    header = ["condition"] + [column_label(view, e) for e in view.entries]
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
            text += median_note(view, e, c.id, metric)
            n_col = view.counts(e)[0]
            if not _isnan(cell.n_clips) and not _isnan(n_col) and float(cell.n_clips) != float(n_col):
                text += f" n={_count(cell.n_clips)}"
            suspect = view.suspect_reasons(e, c.id) is not None
            cells.append((text, suspect))
        if any_value:
            rows.append([(condition_label(c), False)] + cells)
    return header, rows


MIN_EPS_HEADER = ["model", "condition", "median", "IQR [q25, q75]", "attacked clips", "unreachable (∞)",
                  "missed clean", "clips", "classes"]


def min_eps_rows(view: ReportView) -> list[list[str]]:
    """One row per (entry, min-eps condition), columns as MIN_EPS_HEADER: the quantiles are over
    the attacked clips (∞ = not broken at eps_max); clips already missed clean are counted apart."""
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
            counts = []
            for name in ("min_eps_attacked_clips", "min_eps_unreachable_clips", "min_eps_missed_clean_clips"):
                cell = view.cell(e, c.id, name)
                counts.append("" if cell is None else fmt_value(name, cell.value))
            clips = "" if _isnan(med.n_clips) else f"{med.n_clips:.0f}"
            classes = "" if _isnan(med.n_classes) else f"{med.n_classes:.0f}"
            rows.append([e.label, c.id, fmt_value("min_eps_median", med.value), iqr, *counts, clips, classes])
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
    note = map_note(view)
    t = Table(title="mAP by model and condition (95% bootstrap CI over clips; change from clean)",
              title_justify="left", caption=f"* {note}." if note else None, caption_justify="left")
    present = view.metrics_present()
    extra = [m for m in ("accuracy", "macro_f1") if m in present]  # single-label data
    columns = [("model", "left"), ("condition", "left"), ("mAP*" if note else "mAP", "right"), ("95% CI", "right"),
               ("Δ", "right"), ("Δ%", "right")] + [(metric_title(m), "right") for m in extra] + [
               ("clips", "right"), ("classes", "right"), ("flag", "left")]
    for name, justify in columns:
        t.add_column(Text(name), justify=justify, no_wrap=name in ("condition", "95% CI"))
    for i, e in enumerate(view.entries):
        conds = [c for c in view.conditions if view.has(e, c.id)]
        for j, c in enumerate(conds):
            cell = view.cell(e, c.id, "mAP")
            a, r = fmt_drop(view.drop(e, c.id))
            flag = f"{SUSPECT} suspect" if view.suspect_reasons(e, c.id) is not None else ""
            style = "bold" if c.clean else ("red" if flag else None)
            clips = "" if cell is None or _isnan(cell.n_clips) else f"{cell.n_clips:.0f}"
            classes = "" if cell is None or _isnan(cell.n_classes) else f"{cell.n_classes:.0f}"
            # single-label metrics: value only here (the md and html tables give their intervals)
            more = [fmt_value(m, mc.value) if (mc := view.cell(e, c.id, m)) is not None else "" for m in extra]
            cells = (e.label if j == 0 else "", condition_label(c), fmt_value("mAP", cell.value if cell else None),
                     fmt_ci("mAP", cell), a, r, *more, clips, classes, flag)
            # Text(), not str: model labels like "toy-cnn [run-a]" must not be read as rich markup.
            last = j == len(conds) - 1 and i < len(view.entries) - 1
            t.add_row(*(Text(x) for x in cells), style=style, end_section=last)
    out.append(t)
    me = min_eps_rows(view)
    if me:
        t2 = Table(title="min-eps: smallest linf eps that removes every true label from the top 5 "
                         "(quantiles over the attacked clips)", title_justify="left")
        for name in MIN_EPS_HEADER:
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


def render_table(runs: Sequence[RunResult], *, width: int = 120, extra: Sequence = ()) -> str:
    """The rich tables as text; ``extra``: more renderables printed after them (the analysis
    sections' tables)."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False)
    for r in [*table_renderables(ReportView(runs)), *extra]:
        console.print(r)
    return buf.getvalue()


# -- markdown ------------------------------------------------------------------------------------
def md_text(s) -> str:
    """Any text (a model, condition or data name, a reason from run.json) as inert markdown: no raw
    HTML (``<``, ``>``, ``&`` become entities), no link (``](``), no table break (``|``, newlines),
    no code span (backticks)."""
    s = str(s).replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = s.replace("|", "\\|").replace("`", "\\`").replace("](", "]\\(")
    return " ".join(s.splitlines())


def md_code(s) -> str:
    """``s`` as one inline code span (literal text: HTML is not interpreted inside), fenced by more
    backticks than the longest run of backticks it contains."""
    s = " ".join(str(s).splitlines())
    longest = max((len(run) for run in re.findall("`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(md_text(h) for h in header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_matrix(view: ReportView, metric: str, heading: str) -> list[str]:
    header, rows = matrix(view, metric, with_drop=metric in WITH_DROP)
    if not rows:
        return []
    text_rows = [[t + (f" {SUSPECT}" if s else "") for t, s in row] for row in rows]
    return [f"{heading} {md_text(metric_title(metric))}", "", _md_table(header, text_rows), ""]


def render_md(runs: Sequence[RunResult]) -> str:
    view = ReportView(runs)
    parts = ["# audiobench report", ""]
    parts += [f"- {md_text(run_summary(r))}" for r in view.runs]
    parts += ["", "Cells: value [95% bootstrap CI over clips]; for mAP, accuracy, macro F1 and calibration also "
              "(change from clean, relative). Column headers give each model's clips and classes with a positive "
              "clip; `n=` marks a cell over fewer clips (non-finite outputs left out). "
              f"{SUSPECT} = attack result flagged suspect by the trust checks (reasons below).", ""]
    present = view.metrics_present()
    note = map_note(view)
    for metric in QUALITY_METRICS:
        if metric in present:
            block = _md_matrix(view, metric, "##")
            if block and metric == "mAP" and note:
                block[0] += f" ({md_text(note)})"
            parts += block
    if has_not_comparable(view):
        parts += [NOT_COMPARABLE_NOTE, ""]
    me = min_eps_rows(view)
    if me:
        parts += ["## min-eps (smallest linf eps removing every true label from the top 5)", "",
                  "Quantiles over the attacked clips (∞ = not broken at eps_max); clips with no true label in "
                  "the top 5 already clean are counted as missed clean and left out.", "",
                  _md_table(MIN_EPS_HEADER, me), ""]
    shift = [m for m in SHIFT_METRICS if m in present]
    if shift:
        parts += ["## Output-distribution shift (clean vs perturbed)", "",
                  "Means over clips of per-clip statistics (docs/metrics.md); `· median` follows a mean that "
                  f"differs from the median by more than {MEDIAN_DISAGREES:.0%}.", ""]
        for metric in shift:
            parts += _md_matrix(view, metric, "###")
    calib = [m for m in CALIBRATION_METRICS if m in present]
    if calib:
        parts += ["## Calibration", ""]
        for metric in calib:
            parts += _md_matrix(view, metric, "###")
    sus = view.suspects()
    if sus:
        parts += ["## Suspect attack results", ""]
        parts += [f"- {SUSPECT} {md_text(e.label)} / {md_code(cid)}: {md_text('; '.join(reasons))}"
                  for e, cid, reasons in sus]
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
