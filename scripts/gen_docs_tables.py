#!/usr/bin/env python
"""Rewrite the generated tables of docs/models.md and docs/perturbations.md from the registries.

The pages' prose is hand-written; the blocks between ``<!-- BEGIN generated: NAME -->`` and
``<!-- END generated: NAME -->`` come from the code, and tests/test_docs.py fails when they
differ. Run ``python scripts/gen_docs_tables.py`` after adding or changing a model or a
perturbation (``--check`` only reports which blocks are out of date, exit status 1).

* ``models`` (docs/models.md): every registered model (``audiobench.models.MODELS``) with its
  family, native rate, parameter count, reference mAP, default weights and licence. Parameters
  are counted by building each model with random weights (no file is read, nothing is
  downloaded): the learnt parameters, i.e. those that require a gradient when the module is
  built. Fixed signal-processing kernels that upstream stores as parameters (the STFT and mel
  matrices of the PANNs front end, 1.08 M values) are not counted, as upstream's papers do not.
* ``perturbations`` (docs/perturbations.md): every registered perturbation
  (``audiobench.perturb.PERTURBATIONS``) with its swept field, whether it is a gradient attack
  with trust companions (``is_attack``), whether it uses the model, and the first sentence of its
  docstring, as ``audiobench list perturbations`` prints it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS_PAGE = ROOT / "docs" / "models.md"
PERTURBATIONS_PAGE = ROOT / "docs" / "perturbations.md"


def _cell(text: str) -> str:
    """Markdown table cell: one line, pipes escaped, Sphinx roles and double backticks simplified."""
    text = " ".join(str(text).split())
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    text = text.replace("``", "`")
    return text.replace("|", "\\|")


def learnt_parameter_count(name: str) -> int:
    """Parameters that require a gradient in registered model ``name`` built with random weights."""
    import torch

    from audiobench.models import MODELS

    entry = MODELS.get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = entry.factory(entry.spec, sample_rate=None)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def format_millions(n: int) -> str:
    """Millions, to 0.1 M from 10 M up, 0.01 M from 1 M, else 0.001 M: 98959 -> '0.099 M',
    4837135 -> '4.84 M', 39966000 -> '40.0 M'."""
    m = n / 1e6
    digits = 1 if m >= 10 else 2 if m >= 1 else 3
    return f"{m:.{digits}f} M"


def format_map(value) -> str:
    """A reference mAP as upstream reports it, at least three decimals: 0.38 -> '0.380', 0.4593."""
    if value is None:
        return "–"
    return f"{value:.3f}" if round(value, 3) == value else f"{value:g}"


def models_table(counts: Dict[str, int] | None = None) -> str:
    """The models table. ``counts``: name -> parameter count (computed when not given)."""
    from audiobench.models import MODELS

    rows = ["| name | family | rate | parameters | reference mAP | default weights | licence |",
            "|---|---|---|---|---|---|---|"]
    for name, entry in MODELS.items():
        spec = entry.spec
        n = counts[name] if counts is not None else learnt_parameter_count(name)
        ref = format_map(spec.reference_mAP)
        if spec.weights is None:
            source, licence = "none", "–"
        else:
            source = f"{spec.weights.source} (`{spec.weights.file_name}`)" if spec.weights.source else f"`{spec.weights.file_name}`"
            if spec.weights.sha256:
                source += ", sha256 pinned"
            licence = spec.weights.licence
        rate = f"{spec.sample_rate / 1000:g} kHz"
        rows.append(f"| `{name}` | {_cell(spec.family)} | {rate} | {format_millions(n)} | {ref} | {_cell(source)} | "
                    f"{_cell(licence)} |")
    return "\n".join(rows)


def perturbations_table() -> str:
    """The perturbations table: name, swept field, attack?, uses the model?, first docstring sentence."""
    from audiobench.cli import _first_sentence
    from audiobench.perturb import PERTURBATIONS

    rows = ["| name | swept field | gradient attack (trust checks) | uses the model | what it is |",
            "|---|---|---|---|---|"]
    for name, cls in PERTURBATIONS.items():
        field = f"`{cls.level_field}`" if cls.level_field else "–"
        if isinstance(cls.is_attack, property):
            # decided per instance from its parts (chain: an attack on top of another perturbation)
            attack, uses = "when its attack is", "when a part does"
        else:
            attack = "yes" if cls.is_attack else ""
            uses = "yes" if cls.uses_model else ""
        rows.append(f"| `{name}` | {field} | {attack} | {uses} | {_cell(_first_sentence(cls.__doc__))} |")
    return "\n".join(rows)


PAGES: Dict[str, tuple] = {
    "models": (MODELS_PAGE, models_table),
    "perturbations": (PERTURBATIONS_PAGE, perturbations_table),
}


def block(name: str, body: str) -> str:
    return f"<!-- BEGIN generated: {name} -->\n{body}\n<!-- END generated: {name} -->"


def _pattern(name: str) -> "re.Pattern[str]":
    return re.compile(rf"<!-- BEGIN generated: {name} -->.*?<!-- END generated: {name} -->", re.S)


def page_block(text: str, name: str) -> str:
    """The generated block ``name`` as it stands in a page's text."""
    m = _pattern(name).search(text)
    if not m:
        raise SystemExit(f"no generated block {name!r} in the page")
    return m.group(0)


def rewrite(text: str, name: str, body: str) -> str:
    page_block(text, name)  # refuse a page without the markers
    return _pattern(name).sub(lambda _m: block(name, body), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="Do not write; exit 1 when a page is out of date.")
    args = ap.parse_args(argv)
    stale = []
    for name, (page, make) in PAGES.items():
        text = page.read_text(encoding="utf-8")
        new = rewrite(text, name, make())
        if new != text:
            stale.append(page.relative_to(ROOT).as_posix())
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check:
        for p in stale:
            print(f"{p}: generated block out of date (run python scripts/gen_docs_tables.py)")
        return 1 if stale else 0
    print("updated: " + (", ".join(stale) if stale else "nothing (pages up to date)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
