"""Shared test fixtures.

``shared_dir``: the real data in ``../shared`` (beside the repository root); tests that need it
skip with a reason when it is absent (a user's fresh clone), and run in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("AUDIOBENCH_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED_DIR / "README.md").exists():
        pytest.skip(f"real data not available: {SHARED_DIR} is absent (set AUDIOBENCH_SHARED)")
    return SHARED_DIR


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own AUDIOBENCH_HOME unless it sets one: no test touches ~/.cache."""
    if "AUDIOBENCH_HOME" not in os.environ or os.environ.get("AUDIOBENCH_TEST_SHARED_HOME") is None:
        monkeypatch.setenv("AUDIOBENCH_HOME", str(tmp_path_factory.getbasetemp() / "audiobench_home"))
