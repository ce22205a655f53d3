"""Rewrite the generated tables of docs/metrics.md from the metric registry.

The page's prose is hand-written; the three tables between ``<!-- BEGIN generated: NAME -->`` and
``<!-- END generated: NAME -->`` come from :mod:`audiobench.metrics.definitions`, and
tests/test_metrics_docs.py fails when they differ. Run ``python scripts/gen_metrics_doc.py``
after changing a metric.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audiobench.metrics.definitions import changes_table, markdown_table, statistics_table  # noqa: E402

PAGE = ROOT / "docs" / "metrics.md"
SECTIONS = {"statistics": statistics_table, "metrics": markdown_table, "changes": changes_table}


def block(name: str) -> str:
    return f"<!-- BEGIN generated: {name} -->\n{SECTIONS[name]()}\n<!-- END generated: {name} -->"


def rewrite(text: str) -> str:
    for name in SECTIONS:
        pattern = re.compile(rf"<!-- BEGIN generated: {name} -->.*?<!-- END generated: {name} -->", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{PAGE}: no generated block {name!r}")
        text = pattern.sub(lambda _m: block(name), text)
    return text


def main() -> int:
    PAGE.write_text(rewrite(PAGE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
