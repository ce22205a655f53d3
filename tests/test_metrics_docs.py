"""docs/metrics.md stays true: its tables are the registry's, its numbers the code's."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
TEXT = " ".join(PAGE.split())  # prose with line breaks folded


def _generator():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_metrics_doc
    finally:
        sys.path.pop(0)
    return gen_metrics_doc


def test_generated_tables_match_the_registry():
    gen = _generator()
    assert gen.rewrite(PAGE) == PAGE, "docs/metrics.md is out of date: run python scripts/gen_metrics_doc.py"


def test_every_metric_and_statistic_is_on_the_page_with_its_units():
    from audiobench.metrics import METRICS, STATISTICS

    for name, m in METRICS.items():
        row = next(ln for ln in PAGE.splitlines() if f'<a id="{name}"></a>`{name}`' in ln)
        assert m.units.replace("|", "\\|") in row and m.kind in row, name
    for name in STATISTICS:
        assert f'<a id="stat-{name}"></a>`{name}`' in PAGE, name


def test_numbers_in_the_prose_are_the_codes():
    from audiobench.metrics import calibration, shift
    from audiobench.metrics.condition import condition_metrics
    from audiobench.metrics.definitions import MIN_EPS_MISSED_CLEAN
    from audiobench.report import tables

    assert shift.EPS == 1e-7 and "clipped to [1e-7, 1 − 1e-7]" in TEXT
    assert f"{calibration.BINS} equal-width bins" in TEXT
    assert f"union of the clean and perturbed top {shift.TOP_UNION} classes" in TEXT
    assert f"more than {tables.MEDIAN_DISAGREES:.0%} of the larger" in TEXT
    assert MIN_EPS_MISSED_CLEAN == -1.0 and "`−1` when the clip has a true label but none in the top k" in TEXT
    assert f"named `{tables.AUDIOSET_EVAL}`" in TEXT
    level = inspect.signature(condition_metrics).parameters["level"].default
    lo = 100 * (1 - level) / 2
    assert f"({lo:g}th and {100 - lo:g}th percentiles)" in TEXT


def test_bootstrap_default_is_the_run_commands():
    from audiobench.cli import cli

    run = cli.commands["run"] if hasattr(cli, "commands") else cli.get_command(None, "run")
    default = next(p.default for p in run.params if p.name == "bootstrap")
    assert f"`--bootstrap {default}` resamples by default" in TEXT


def test_every_change_names_what_to_read_instead():
    from audiobench.metrics import METRICS
    from audiobench.metrics.definitions import CHANGED_NAMES

    for old, (what, instead) in CHANGED_NAMES.items():
        assert what and instead, old
        for name in re.findall(r"[a-z0-9_]+_[a-z0-9_]+", instead):
            if not name.endswith("_normalised"):
                assert name in METRICS or name == "js_normalised", (old, name)
