"""The README is a front door and the docs pages stay true.

* README: at most 16 KB, the quick start is exactly two one-line commands (the second is what
  ``.ci/run`` runs, verbatim), and it links every ``docs/*.md`` page.
* Every relative link in the README and the docs pages points at a file that exists.
* The generated tables (models, perturbations, bad input) equal their generators' output.
* Every option that a command line in the README or a docs page gives to ``audiobench run``,
  ``sweep``, ``report``, ``predict``, ``verify-run``, ``data pack`` (and the other commands) is an
  option of that command's ``--help``.
* The Python API example of docs/python-api.md runs as it stands.

PENDING_* name what the docs already describe while the code for it is being merged from another
branch (issues 16-18); each entry makes a test fail as soon as the code has it, so the list is
emptied as the code lands and the docs are checked from then on.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_PATH = ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README_PATH, *DOCS]
README_LIMIT_BYTES = 16 * 1024

QUICK_START_RUN = "pip install -e . && audiobench run --model toy-cnn --noise pgd --eps 0.002"

# described in the docs, being merged from other branches (see the module docstring)
PENDING_OPTIONS: dict = {}
PENDING_COMMANDS: set = set()
PENDING_PAGES: set = set()

# commands whose options the docs' command lines are checked against ("list X": X must exist)
COMMANDS = ("run", "sweep", "report", "predict", "verify-run", "data pack", "data verify", "data info", "data toy",
            "train-toy", "sharpness")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- the README ------------------------------------------------------------------------------
def test_readme_is_at_most_16_kb():
    size = len(README_PATH.read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; move reference material to docs/"


def _quick_start_commands() -> list:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_quick_start_is_two_one_line_commands_the_second_run_by_ci_verbatim():
    blocks = _quick_start_commands()
    assert len(blocks) == 2 and all(b.count("\n") == 1 for b in blocks), blocks
    run_cmd, test_cmd = (b.strip() for b in blocks)
    assert run_cmd == QUICK_START_RUN
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith(("#", "set "))]
    assert ci[-1] == test_cmd, "the last command of .ci/run must be the README's test command"
    constraints = re.search(r"-c (\S+)", test_cmd)
    assert constraints and (ROOT / constraints.group(1)).is_file(), "the test command's constraints file must exist"


def test_ci_constraints_pin_exact_versions_and_setup_cfg_declares_ranges():
    test_cmd = _quick_start_commands()[1]
    pins = {}
    for line in (ROOT / re.search(r"-c (\S+)", test_cmd).group(1)).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints pin exact versions: {line!r}"
            pins[name.lower()] = version
    assert {"torch", "torchaudio"} <= set(pins)
    cfg = (ROOT / "setup.cfg").read_text()
    for dep in ("torch", "torchaudio"):
        m = re.search(rf"^\s+{dep}(\S*)\s*$", cfg, flags=re.M)
        assert m and "==" not in m.group(1) and ">=" in m.group(1), f"setup.cfg must declare a range for {dep}"
    # the mp3 corruption tests need soundfile >= 0.13: the test extra pulls it in
    test_extra = cfg.split("\ntest =", 1)[1].split("\n\n", 1)[0]
    assert "soundfile>=0.13" in test_extra


def test_readme_summary_table_has_the_columns_run_prints():
    from audiobench.report.summary import SUMMARY_COLUMNS

    header = next(ln for ln in README.splitlines() if ln.startswith("┃ model"))
    assert [c.strip() for c in header.strip("┃").split("┃")] == list(SUMMARY_COLUMNS)


def test_readme_links_every_docs_page():
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)", README))
    missing = sorted(p.relative_to(ROOT).as_posix() for p in DOCS if p.relative_to(ROOT).as_posix() not in linked)
    assert not missing, f"README.md does not link {missing}"


# --- links -------------------------------------------------------------------------------------
def _relative_links(page: Path) -> list:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def test_every_linked_page_exists():
    broken = []
    for page in PAGES:
        for target in _relative_links(page):
            path = (page.parent / target).resolve()
            rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
            if not path.exists() and rel not in PENDING_PAGES:
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links: " + "; ".join(broken)


def test_pending_pages_are_still_pending():
    landed = sorted(p for p in PENDING_PAGES if (ROOT / p).exists())
    assert not landed, f"{landed} now exist: remove them from PENDING_PAGES in tests/test_docs.py"


# --- generated tables ----------------------------------------------------------------------------
def test_perturbations_page_table_is_the_generators_output():
    gen = _load_script("gen_docs_tables")
    page = gen.PERTURBATIONS_PAGE.read_text(encoding="utf-8")
    assert gen.page_block(page, "perturbations") == gen.block("perturbations", gen.perturbations_table()), \
        "docs/perturbations.md is out of date: run python scripts/gen_docs_tables.py"


def test_models_page_names_every_registered_model():
    from audiobench.models import MODELS

    gen = _load_script("gen_docs_tables")
    table = gen.page_block(gen.MODELS_PAGE.read_text(encoding="utf-8"), "models")
    assert re.findall(r"^\| `([a-z0-9@.-]+)` \|", table, flags=re.M) == MODELS.names()


@pytest.mark.slow
def test_models_page_table_is_the_generators_output():
    # builds every registered model with random weights to count its parameters (~15 s)
    gen = _load_script("gen_docs_tables")
    page = gen.MODELS_PAGE.read_text(encoding="utf-8")
    assert gen.page_block(page, "models") == gen.block("models", gen.models_table()), \
        "docs/models.md is out of date: run python scripts/gen_docs_tables.py"


def test_parameter_counts_exclude_fixed_front_end_kernels():
    gen = _load_script("gen_docs_tables")
    # PANNs Cnn6: 4.8 M learnt parameters (the paper's count); the STFT/mel kernels are not learnt
    assert gen.format_millions(gen.learnt_parameter_count("cnn6")) == "4.84 M"
    assert gen.format_millions(98_959) == "0.099 M" and gen.format_millions(39_966_000) == "40.0 M"


@pytest.mark.slow
def test_bad_input_page_is_the_generators_output():
    # runs every hostile case once through CliRunner to show its message (~15-30 s)
    sys.path.insert(0, str(ROOT / "tests"))
    gen = _load_script("gen_bad_input_table")
    page = gen.PAGE.read_text(encoding="utf-8")
    m = re.search(r"<!-- BEGIN generated: bad-input -->.*?<!-- END generated: bad-input -->", page, flags=re.S)
    assert m, "docs/bad-input.md has no generated block"
    assert m.group(0) == gen.block(gen.render(gen.collect_messages())), \
        "docs/bad-input.md is out of date: run python scripts/gen_bad_input_table.py"


# --- options on the docs' command lines ----------------------------------------------------------
def _help_options(command: str):
    """The long options in ``audiobench <command> --help``, or None when there is no such command."""
    from click.testing import CliRunner

    from audiobench.cli import cli

    res = CliRunner().invoke(cli, [*command.split(), "--help"])
    if res.exit_code != 0:
        return None
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", res.output))


def _command_lines(page: Path):
    """(command, options, line) for every `audiobench <command> ...` in the page: in code blocks
    (backslash continuations joined) and in inline code."""
    lines, joined = [], ""
    for raw in page.read_text(encoding="utf-8").splitlines():
        joined += raw.rstrip("\\") + " " if raw.endswith("\\") else raw
        if not raw.endswith("\\"):
            lines.append(joined)
            joined = ""
    names = "|".join(re.escape(c) for c in sorted({*COMMANDS, "list"}, key=len, reverse=True))
    out = []
    for line in lines:
        for m in re.finditer(rf"(?<![\w/.-])audiobench ({names})(?![\w-])((?: [a-z][a-z-]*)?)", line):
            command = m.group(1)
            rest = line[m.end():]
            if command == "list":
                sub = m.group(2).strip()
                out.append((f"list {sub}" if sub else "list", set(), line))
                continue
            rest = (m.group(2) + rest)
            for stop in ("`", " #", " | ", "&&"):
                rest = rest.split(stop, 1)[0]
            out.append((command, set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest)), line))
    return out


def _doc_option_uses():
    """(command, option, where) for every option the docs give a command: command lines, the
    README's "More of `run`" paragraph and the option table of docs/perturbations.md."""
    uses = []
    for page in PAGES:
        for command, options, line in _command_lines(page):
            where = f"{page.relative_to(ROOT)}: {line.strip()[:90]}"
            uses.append((command, None, where))
            uses += [(command, o, where) for o in sorted(options)]
    more = README.split("More of `run`:", 1)[1].split("\n\n", 1)[0]
    uses += [("run", o, "README.md: More of `run`") for o in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", more)]
    table = (ROOT / "docs" / "perturbations.md").read_text().split("## Asking for conditions", 1)[1].split("\n## ", 1)[0]
    for row in re.findall(r"^\| (.*?) \|", table, flags=re.M):
        uses += [("run", o, "docs/perturbations.md option table") for o in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", row)]
    return uses


def test_options_on_docs_command_lines_exist_in_help():
    uses = _doc_option_uses()
    assert {c for c, _, _ in uses} >= {"run", "sweep", "report", "predict", "verify-run", "data pack"}
    helps = {}
    wrong = []
    for command, option, where in uses:
        if command not in helps:
            helps[command] = _help_options(command)
        known = helps[command]
        if known is None:
            if command not in PENDING_COMMANDS:
                wrong.append(f"no command 'audiobench {command}' ({where})")
        elif option is not None and option not in known and option not in PENDING_OPTIONS.get(command, set()):
            wrong.append(f"audiobench {command} has no option {option} ({where})")
    assert not wrong, "; ".join(sorted(set(wrong)))


def test_pending_options_and_commands_are_still_pending():
    landed = [f"audiobench {c} {o}" for c, opts in PENDING_OPTIONS.items() for o in sorted(opts)
              if o in (_help_options(c) or set())]
    landed += [f"audiobench {c}" for c in sorted(PENDING_COMMANDS) if _help_options(c) is not None]
    assert not landed, f"{landed} now exist: remove them from PENDING_OPTIONS / PENDING_COMMANDS in tests/test_docs.py"


def test_command_line_parser_sees_continuations_and_inline_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("```\naudiobench data pack --audio-dir a \\\n    --labels l.csv --out o.h5  # --not-this\n```\n"
                    "Use `audiobench sweep f.yaml --max-cells 5` or `audiobench list models`.\n")
    found = {(c, frozenset(o)) for c, o, _ in _command_lines(page)}
    assert found == {("data pack", frozenset({"--audio-dir", "--labels", "--out"})),
                     ("sweep", frozenset({"--max-cells"})), ("list models", frozenset())}


# --- facts stated on the pages -----------------------------------------------------------------
def test_scaling_page_cost_table_matches_cost():
    from audiobench.perturb import PERTURBATIONS

    get = PERTURBATIONS.get
    page = (ROOT / "docs" / "scaling.md").read_text()
    assert "| pgd, apgd, feature-pgd | restarts × (steps + 1) | restarts × steps |" in page
    assert get("pgd")(eps=0.002, steps=7, restarts=3).cost() == (24.0, 21.0)
    assert get("apgd")(eps=0.002, steps=5, restarts=2).cost() == (12.0, 10.0)
    assert get("feature-pgd")(eps=0.1, steps=4).cost() == (5.0, 4.0)
    assert "| fgsm | 2 | 1 |" in page and get("fgsm")(eps=0.002).cost() == (2.0, 1.0)
    assert "| min-eps (upper bound) | 1 + probes × (restarts × (steps + 1) + 1) | probes × restarts × steps |" in page
    assert get("min-eps")(probes=3, steps=4, restarts=2).cost() == (1 + 3 * (2 * 5 + 1), 3 * 2 * 4)
    assert "| universal | epochs (the fit) | epochs |" in page and get("universal")(epochs=3).cost() == (3.0, 3.0)
    for p in (get("gaussian")(snr_db=10), get("occlusion")(period_s=0.5), get("gain")(gain_db=-6),
              get("feature-gaussian")(sigma=0.1), get("none")()):
        assert p.cost() == (0.0, 0.0)


@pytest.mark.slow
def test_python_api_example_runs(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "python-api.md").read_text()
    code = page.split("## A complete example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/python-api.md", "exec"), {"__name__": "docs_example"})
    assert (tmp_path / "results" / "api-example" / "metrics.csv").is_file()
    assert (tmp_path / "results" / "api-example-mine" / "metrics.csv").is_file()
