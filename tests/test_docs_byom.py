"""docs/bring-your-own-model.md: its commands run, in order, in an empty folder.

Blocks: ```console lines starting with ``$ `` are commands; ```python file=NAME / ```csv file=NAME
blocks are written to NAME first. Other blocks (```sh needs the hub; ```ini / ```python without a
file are excerpts) are not run; the excerpts are checked against examples/plugin instead.

The plugin section runs in subprocesses (the plugin is found through PYTHONPATH, as after a real
install); ``pip install ./examples/plugin`` is rewritten to install offline with ``--no-deps
--no-build-isolation --no-index --target TMP``, and TMP joins PYTHONPATH. The other sections run
in this process (no interpreter start-up per command), ``audiobench ...`` through CliRunner.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bring-your-own-model.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```\s*$", re.M | re.S)


def doc_blocks():
    return [(lang, info.strip(), body) for lang, info, body in BLOCK.findall(DOC.read_text())]


def sections():
    """The doc cut at its '## ' headings: {heading: text}."""
    parts = re.split(r"^## ", DOC.read_text(), flags=re.M)
    return {p.split("\n", 1)[0].strip(): p for p in parts[1:]}


def _commands(text: str, cwd: Path):
    """Write the section's files (in order) and yield its commands."""
    for lang, info, body in BLOCK.findall(text):
        info = info.strip()
        if info.startswith("file="):
            (cwd / info[len("file="):]).write_text(body)
        elif lang == "console":
            for line in body.splitlines():
                if line.startswith("$ "):
                    yield line[2:]


def run_section(text: str, cwd: Path, env: dict) -> list:
    """Run a section's commands in subprocesses; returns [(command, stdout)]."""
    outputs = []
    for command in _commands(text, cwd):
        args = shlex.split(command)
        if args[:2] == ["pip", "install"]:
            target = cwd / "site-packages"
            args = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "--target", str(target)] + args[2:]
            env["PYTHONPATH"] = os.pathsep.join([str(target), env["PYTHONPATH"]])
        elif args[0] == "audiobench":
            args = [sys.executable, "-m", "audiobench"] + args[1:]
        elif args[0] == "python":
            args = [sys.executable] + args[1:]
        proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        outputs.append((command, proc.stdout))
    return outputs


def run_section_here(text: str, cwd: Path, monkeypatch) -> list:
    """Run a section's commands in this process (no interpreter start-up per command: the suite
    stays fast): ``python FILE`` / ``python -c CODE`` as __main__, ``audiobench ...`` through
    click's CliRunner. Returns [(command, stdout)]."""
    import contextlib
    import io
    import runpy

    from click.testing import CliRunner

    from audiobench.cli import cli

    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(cwd))  # what `python FILE` puts first on sys.path
    monkeypatch.setenv("AUDIOBENCH_OFFLINE", "1")
    outputs = []
    for command in _commands(text, cwd):
        args = shlex.split(command)
        if args[0] == "audiobench":
            res = CliRunner().invoke(cli, args[1:])
            assert res.exit_code == 0, f"{command}\n{res.output[-3000:]}"
            outputs.append((command, res.output))
            continue
        assert args[0] == "python", command
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            if args[1] == "-c":
                exec(compile(args[2], "<doc>", "exec"), {"__name__": "__main__"})
            else:
                runpy.run_path(str(cwd / args[1]), run_name="__main__")
        outputs.append((command, buf.getvalue()))
    return outputs


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(ROOT / "examples" / "plugin", tmp_path / "examples" / "plugin")  # as in a clone
    env = dict(os.environ, PYTHONPATH=str(ROOT), AUDIOBENCH_OFFLINE="1")
    return tmp_path, env


def metrics(cwd: Path) -> pd.DataFrame:
    runs = sorted((cwd / "results").glob("*/metrics.csv"))
    assert runs, "no run folder with metrics.csv"
    return pd.concat([pd.read_csv(p) for p in runs])


def test_the_doc_has_the_three_ways_and_only_known_block_kinds():
    heads = sections()
    assert any(h.startswith("1. A module and a factory") for h in heads)
    assert any(h.startswith("2. A plugin package") for h in heads)
    assert any(h.startswith("3. A Hugging Face audio classifier") for h in heads)
    for lang, info, _ in doc_blocks():
        assert lang in ("console", "python", "csv", "ini", "sh"), lang
        assert info == "" or info.startswith("file="), info


def test_the_plugin_excerpts_are_the_example_plugins_code():
    setup_cfg = (ROOT / "examples" / "plugin" / "setup.cfg").read_text()
    source = (ROOT / "examples" / "plugin" / "audiobench_example_plugin" / "melcnn.py").read_text()
    ini = [body for lang, _, body in doc_blocks() if lang == "ini"]
    assert ini and all(body.strip() in setup_cfg for body in ini)
    excerpt = next(body for lang, info, body in doc_blocks() if lang == "python" and not info)
    for call in re.findall(r'(\w+)="([^"]+)"', excerpt):  # every field value the excerpt shows
        assert f'{call[0]}="{call[1]}"' in source, call
    assert "registry.register_model(" in excerpt and "registry.register_model(" in source


@pytest.mark.slow
def test_module_factory_section_runs(workdir, monkeypatch):
    cwd, _ = workdir
    text = next(t for h, t in sections().items() if h.startswith("1. A module"))
    try:
        run_section_here(text, cwd, monkeypatch)
    finally:
        sys.modules.pop("mymodel", None)
    m = metrics(cwd)
    assert set(m.model) == {"mymodel:make"} and "pgd/linf:eps=0.002" in set(m.condition)
    assert int(m.n_clips.max()) == 8


@pytest.mark.slow
def test_plugin_section_installs_offline_lists_and_benchmarks_by_name(workdir):
    cwd, env = workdir
    text = next(t for h, t in sections().items() if h.startswith("2. A plugin"))
    outputs = dict(run_section(text, cwd, env))
    listing = outputs["audiobench list models"].splitlines()
    row = [ln for ln in listing if ln.startswith("example-melcnn\t")]
    assert row and row[0].startswith("example-melcnn\tcnn\t16000 Hz\tmAP -")
    assert row[0].endswith("[audiobench-example-plugin 0.1.0]")
    assert any(ln.startswith("toy-cnn\t") and ln.endswith("[audiobench]") for ln in listing)
    m = metrics(cwd)
    assert set(m.model) == {"example-melcnn"} and "pgd/linf:eps=0.002" in set(m.condition)
    assert int(m.n_clips.max()) == 8


@pytest.mark.slow
def test_hugging_face_and_label_sections_run(workdir, monkeypatch):
    cwd, _ = workdir
    heads = sections()
    run_section_here(next(t for h, t in heads.items() if h.startswith("3. A Hugging Face")), cwd, monkeypatch)
    m = metrics(cwd)
    assert set(m.model) == {"hf:tiny-ast"} and "pgd/linf:eps=0.002" in set(m.condition)
    outputs = run_section_here(next(t for h, t in heads.items() if h.startswith("Labels")), cwd, monkeypatch)
    assert outputs[-1][1].split() == ["2", "label", "map"]


def test_the_doc_names_what_the_code_supports():
    from audiobench.models.hf import SUPPORTED_EXTRACTORS
    from audiobench.models.labels import LABEL_MAP_HEADER
    from audiobench.models.plugins import ENTRY_POINT_GROUP, FACTORY_KEYWORDS

    text = DOC.read_text()
    assert all(f"`{name}`" in text for name in SUPPORTED_EXTRACTORS)
    assert f"`{','.join(LABEL_MAP_HEADER)}`" in text and f"`{ENTRY_POINT_GROUP}`" in text
    assert "factory(" + ", ".join(f"{k}=..." for k in FACTORY_KEYWORDS) + ")" in text
