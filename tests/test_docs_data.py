"""docs/data.md stays true: its limits table is the code's, and it names every limit."""

from __future__ import annotations

import re
from pathlib import Path

import audiobench.data.limits as limits
import audiobench.resample as resample

PAGE = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()


def _table():
    section = PAGE.split("## Limits", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([A-Z_]+)` \| ([0-9.]+) \|", section, flags=re.M)}


def test_limits_table_matches_the_code():
    table = _table()
    names = [n for n in limits.__all__ if n.isupper()] + ["TORCHAUDIO_KERNEL_LIMIT"]
    assert sorted(table) == sorted(names)
    for name, text in table.items():
        value = getattr(limits, name, None)
        value = getattr(resample, name) if value is None else value
        assert float(text) == float(value), name


def test_page_states_the_measured_common_rate_table_size():
    from audiobench.resample import torchaudio_kernel_size

    common = [16000, 22050, 32000, 44100, 48000, 8000, 11025, 12000, 24000, 88200, 96000]
    largest = max(torchaudio_kernel_size(a, b) for a in common for b in common if a != b)
    assert largest == 582400 and "at most 582400" in PAGE
    assert torchaudio_kernel_size(44101, 16000) // 10**6 == 706 and "706 M values" in PAGE
