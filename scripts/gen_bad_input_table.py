#!/usr/bin/env python
"""Generate the README section "What audiobench does with bad input" from tests/hostile_cases.py.

The table is built from the same case list that tests/test_hostile_inputs.py runs, so the README
cannot promise a refusal the test suite does not check. By default each case is also *run* (in a
temporary folder, through click's CliRunner, about half a minute on a laptop) and the actual
one-line message is shown, with the temporary folder's path removed.

    python scripts/gen_bad_input_table.py                       # -> /work/notes/README_bad_input.md
    python scripts/gen_bad_input_table.py --out - --no-messages # the table only, to stdout
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from hostile_cases import ACCEPTED, CASES, Workspace, build_workspace  # noqa: E402

AREAS = {
    "data": "shards", "pack": "`data pack`", "manifest": "manifests", "weights": "checkpoints & weights",
    "options": "options", "output": "output folder", "results": "result folders",
}
DEFAULT_OUT = Path("/work/notes/README_bad_input.md")


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
    """case id -> the one stderr line audiobench printed (temporary paths removed)."""
    messages = {}
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        template = tmp / "template"
        template.mkdir()
        build_workspace(template, lambda argv: _invoke(argv, template, {"AUDIOBENCH_HOME": str(template / "home")}))
        for case in CASES:
            if case.needs_non_root and is_root:
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
            messages[case.id] = line.removeprefix("Error: ")
    return messages


def render(messages: dict | None) -> str:
    out = [
        "## What audiobench does with bad input",
        "",
        f"Every row is a case of `tests/hostile_cases.py`, run by `tests/test_hostile_inputs.py`: audiobench exits "
        "non-zero with exactly one line on stderr naming the file or value and the problem, prints no traceback, "
        "marks no result folder complete and leaves earlier results byte-for-byte unchanged. "
        f"({len(CASES)} cases; regenerate this section with `python scripts/gen_bad_input_table.py`.)",
        "",
    ]
    if messages:
        out += ["| Area | Bad input | What audiobench does | Message (example) |", "|---|---|---|---|"]
    else:
        out += ["| Area | Bad input | What audiobench does |", "|---|---|---|"]
    for c in CASES:
        row = [AREAS.get(c.area, c.area), _cell(c.bad_input), _cell(c.response)]
        if messages:
            msg = messages.get(c.id)
            row.append(f"`{_cell(msg)}`" if msg else "(checked as a non-root user)")
        out.append("| " + " | ".join(row) + " |")
    out += ["", "Bad input that still ends in a finished run:", ""]
    out += ["| Input | What audiobench does |", "|---|---|"]
    out += [f"| {_cell(a)} | {_cell(b)} |" for a, b in ACCEPTED]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown file to write ('-' for stdout).")
    ap.add_argument("--no-messages", action="store_true", help="Do not run the cases; omit the message column.")
    args = ap.parse_args(argv)
    text = render(None if args.no_messages else collect_messages())
    if args.out == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out} ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
