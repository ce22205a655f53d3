"""SECURITY.md stays true: every test and hostile case it cites exists, every statement cites one,
and the two code-wide promises it makes (weights_only loading, no remote code) hold."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = (REPO / "SECURITY.md").read_text(encoding="utf-8")
TESTS = REPO / "tests"


def _citations():
    """Every code span on a ``*Tests:*`` line of SECURITY.md."""
    out = []
    for line in PAGE.splitlines():
        if "*Tests:*" in line:
            out += re.findall(r"`([^`]+)`", line.split("*Tests:*", 1)[1])
    return out


def _test_names(path: Path) -> set:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")}


def test_every_cited_test_and_case_exists():
    import hostile_cases

    case_ids = {c.id for c in hostile_cases.CASES}
    cites = _citations()
    assert len(cites) >= 100, len(cites)
    missing = []
    for cite in cites:
        if cite.startswith("tests/"):
            file, _, name = cite.partition("::")
            path = REPO / file
            if not path.is_file() or (name and name not in _test_names(path)):
                missing.append(cite)
        elif cite.startswith("test_"):
            if not any(cite in _test_names(p) for p in TESTS.glob("test_*.py")):
                missing.append(cite)
        elif not fnmatch.filter(case_ids, cite):
            missing.append(cite)
    assert not missing, f"SECURITY.md cites tests or hostile cases that do not exist: {missing}"


def test_every_statement_cites_its_tests():
    """Each bullet of the sections that make promises ends with a *Tests:* line (the datafile
    bullet, which states what is NOT contained, is the exception)."""
    sections = re.split(r"^## ", PAGE, flags=re.M)
    uncited = []
    for sec in sections:
        title = sec.splitlines()[0] if sec else ""
        if title in ("Reporting a vulnerability", "Threat model", "Residual risks") or not title:
            continue
        for bullet in re.split(r"^\* ", sec, flags=re.M)[1:]:
            if "*Tests:*" not in bullet and "*not*" not in bullet:
                uncited.append(f"{title}: {bullet.split(chr(10))[0][:60]}")
    assert not uncited, uncited


def _code_files():
    return sorted((REPO / "audiobench").rglob("*.py"))


def test_every_torch_load_in_the_code_is_weights_only():
    offenders = []
    for path in _code_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders
    assert any("torch.load(" in p.read_text(encoding="utf-8") for p in _code_files())  # the check saw the loads


def test_no_remote_code_is_ever_trusted():
    offenders = []
    for path in _code_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                    offenders.append(f"{path.relative_to(REPO)}:{node.value.lineno}")
    assert not offenders, offenders


def test_the_checker_catches_a_missing_citation(monkeypatch):
    import sys

    mod = sys.modules[__name__]
    monkeypatch.setattr(mod, "PAGE", PAGE + "\n* A promise. *Tests:* `no-such-case`, `tests/test_nothing.py::test_x`.\n")
    try:
        test_every_cited_test_and_case_exists()
    except AssertionError as exc:
        assert "no-such-case" in str(exc) and "tests/test_nothing.py::test_x" in str(exc)
    else:
        raise AssertionError("a missing citation was not caught")


def test_the_numbers_on_the_page_are_the_code_s():
    from audiobench.commands.verify_run import EXIT_UNVERIFIED
    from audiobench.data.verify import MAX_VERIFY_BYTES
    from audiobench.engine.rundir import RUN_ID_MAX
    from audiobench.resample import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
    from audiobench.results.verify import MAX_FOLDER_FILES
    from audiobench.sweep import MAX_CELLS

    assert f"whole numbers of Hz in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}" in PAGE
    assert f"at most {RUN_ID_MAX} characters" in PAGE
    assert f"raises the {MAX_CELLS:,} limit" in PAGE
    assert f"at most\n  {MAX_VERIFY_BYTES >> 30} GiB each" in PAGE
    assert f"at most {MAX_FOLDER_FILES:,} regular files" in PAGE
    assert f"**{EXIT_UNVERIFIED} unverified**" in PAGE
