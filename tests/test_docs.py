"""The README names every registered model and perturbation, and its test command is .ci/run's."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _table_names(heading: str) -> set:
    section = README.split(heading, 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9-]+)`", section, flags=re.M))


def test_readme_lists_every_model():
    from audiobench.models import MODELS

    assert set(MODELS.names()) <= _table_names("## Models")


def test_readme_lists_every_perturbation():
    from audiobench.perturb import PERTURBATIONS

    names = _table_names("## Perturbations and attacks")
    names |= {n for row in re.findall(r"^\| `([a-z0-9-]+)`, `([a-z0-9-]+)`", README, flags=re.M) for n in row}
    # the natural corruptions are listed on their own page (docs/corruptions.md, checked by
    # tests/test_corruptions.py against the code)
    corruptions = (ROOT / "docs" / "corruptions.md").read_text().split("## Severity table", 1)[1].split("\n## ", 1)[0]
    names |= set(re.findall(r"^\| `([a-z0-9-]+)`", corruptions, flags=re.M))
    assert set(PERTURBATIONS.names()) <= names


def test_ci_runs_the_readme_test_command_verbatim():
    lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "set "))]
    assert lines[-1] in README
