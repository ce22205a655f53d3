"""Hostile inputs of the report's figures (appended to tests/hostile_cases.py's CASES).

Each case is refused with one line and leaves every earlier file untouched (the contract of
tests/test_hostile_inputs.py). Names that must be ACCEPTED and rendered inert instead (matplotlib
mathtext such as ``$\\undefinedmacro$``, raw ``<script>``) are ordinary tests in
tests/test_report.py (test_hostile_names_render_inert_in_every_format).
"""

from __future__ import annotations

from typing import List

from hostile_cases import Case, Invocation, Workspace


def _report_per_class_missing(ws: Workspace) -> Invocation:
    run = ws.edited_copy("edited")
    (run / "per_class.csv").unlink()
    return Invocation(["report", str(run.relative_to(ws.root)), "--format", "html", "--out", "site/report.html"],
                      ["per_class.csv", "file is missing"])


CASES: List[Case] = [
    Case("report-per-class-missing", "results", "`per_class.csv` deleted (HTML report needs it for the ΔAP figure)",
         "`report --format html` refuses, file named; no page or figure written", _report_per_class_missing),
]
