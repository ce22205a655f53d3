#!/usr/bin/env python
"""Generate the tables of docs/bad-input.md from the hostile-case table of the test suite.

The rows are the cases of tests/hostile_cases.py (with the tests/hostile_cases_*.py modules it
imports) that tests/test_hostile_inputs.py runs, and the ACCEPTED rows (bad input that still ends
in a finished run, with each module's ACCEPTED_ROWS), so the page cannot promise a refusal the test
suite does not check. By default each case is also *run* (in a temporary folder, through click's
CliRunner, under a minute on a laptop) and the actual one-line message is shown, with what varies
from one run to the next replaced: the temporary folder (``…``), the earlier run's id
(``<run_id>``), a lock holder's pid and host. tests/test_docs.py regenerates the block and fails
when the page differs.

    python scripts/gen_bad_input_table.py                 # rewrite the block in docs/bad-input.md
    python scripts/gen_bad_input_table.py --out -         # the block, to stdout
    python scripts/gen_bad_input_table.py --out - --no-messages   # without running the cases
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from hostile_cases import ACCEPTED, CASES, Workspace, build_workspace  # noqa: E402

PAGE = REPO_ROOT / "docs" / "bad-input.md"
BLOCK = "bad-input"

AREAS = {
    "data": "shards", "pack": "`data pack`", "manifest": "manifests", "weights": "checkpoints & weights",
    "options": "options", "output": "output folder", "results": "result folders",
}
NON_ROOT_NOTE = "(checked as a non-root user)"


def accepted_rows() -> list:
    """ACCEPTED of tests/hostile_cases.py, then each tests/hostile_cases_*.py module's ACCEPTED_ROWS."""
    rows = list(ACCEPTED)
    for path in sorted((REPO_ROOT / "tests").glob("hostile_cases_*.py")):
        rows += list(getattr(importlib.import_module(path.stem), "ACCEPTED_ROWS", []))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _invoke(argv, cwd: Path, env: dict):
    from click.testing import CliRunner

    from audiobench.cli import cli

    old_cwd, saved = Path.cwd(), {k: os.environ.get(k) for k in env}
    os.chdir(cwd)
    os.environ.update(env)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return CliRunner().invoke(cli, list(argv))
    finally:
        os.chdir(old_cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def collect_messages() -> dict:
    """case id -> the one stderr line audiobench printed (what varies between runs replaced).

    Cases that need a non-root user are not run (their check depends on who runs the generator);
    their row says where they are checked."""
    messages = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        template = tmp / "template"
        template.mkdir()
        build_workspace(template, lambda argv: _invoke(argv, template, {"AUDIOBENCH_HOME": str(template / "home")}))
        earlier_run_id = Workspace(template).earlier_run.name
        for case in CASES:
            if case.needs_non_root:
                continue
            root = tmp / case.id
            shutil.copytree(template, root, symlinks=True)
            ws = Workspace(root)
            inv = case.build(ws)
            res = _invoke(inv.argv, root, {"AUDIOBENCH_HOME": str(ws.home), **inv.env})
            if inv.after is not None:
                inv.after(ws)
            lines = [ln for ln in (res.stderr or "").splitlines() if ln.strip()]
            line = lines[-1] if lines else ""
            for prefix in sorted({str(root.resolve()), str(root)}, key=len, reverse=True):
                line = line.replace(prefix + os.sep, "…/").replace(prefix, "…")
            line = line.replace(earlier_run_id, "<run_id>")
            line = re.sub(r"\(pid \d+ on [^)]*\)", "(pid <pid> on <host>)", line)
            messages[case.id] = line.removeprefix("Error: ")
    return messages


def render(messages: dict | None) -> str:
    """The generated block's body: the refusals table, then the accepted-input table."""
    out = [f"{len(CASES)} cases; regenerate with `python scripts/gen_bad_input_table.py`.", ""]
    if messages:
        out += ["| Area | Bad input | What audiobench does | Message (example) |", "|---|---|---|---|"]
    else:
        out += ["| Area | Bad input | What audiobench does |", "|---|---|---|"]
    for c in CASES:
        row = [AREAS.get(c.area, c.area), _cell(c.bad_input), _cell(c.response)]
        if messages:
            msg = messages.get(c.id)
            row.append(f"`{_cell(msg)}`" if msg else NON_ROOT_NOTE)
        out.append("| " + " | ".join(row) + " |")
    out += ["", "Bad input that still ends in a finished run:", ""]
    out += ["| Input | What audiobench does |", "|---|---|"]
    out += [f"| {_cell(a)} | {_cell(b)} |" for a, b in accepted_rows()]
    return "\n".join(out)


def block(body: str) -> str:
    return f"<!-- BEGIN generated: {BLOCK} -->\n{body}\n<!-- END generated: {BLOCK} -->"


def rewrite(text: str, body: str) -> str:
    """``text`` (the page) with its generated block replaced by ``body``."""
    pattern = re.compile(rf"<!-- BEGIN generated: {BLOCK} -->.*?<!-- END generated: {BLOCK} -->", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{PAGE.relative_to(REPO_ROOT)}: no generated block {BLOCK!r}")
    return pattern.sub(lambda _m: block(body), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None,
                    help="'-': print the generated block to stdout instead of rewriting it in docs/bad-input.md.")
    ap.add_argument("--no-messages", action="store_true", help="Do not run the cases; omit the message column.")
    args = ap.parse_args(argv)
    if args.out not in (None, "-"):
        ap.error("--out takes only '-' (stdout); the page is docs/bad-input.md")
    body = render(None if args.no_messages else collect_messages())
    if args.out == "-":
        sys.stdout.write(block(body) + "\n")
    else:
        PAGE.write_text(rewrite(PAGE.read_text(encoding="utf-8"), body), encoding="utf-8")
        print(f"wrote {PAGE.relative_to(REPO_ROOT)} ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
