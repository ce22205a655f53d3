"""benchmarks/run_device_checks.sh fits one device call: its step limits add up to what its header
says and stay under the 600 s a command may run; every script it calls exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_device_checks.sh"
TEXT = SCRIPT.read_text()


def test_step_limits_add_up_to_the_stated_sum_and_fit_one_call():
    limits = [int(x) for x in re.findall(r"^step \S+\s+(\d+) ", TEXT, re.M)]
    limits += [int(x) for x in re.findall(r"^timeout --kill-after=\d+ (\d+) ", TEXT, re.M)]
    stated = int(re.search(r"at most (\d+) s of step\s*\n?#?\s*limits", TEXT).group(1))
    assert len(limits) >= 11 and sum(limits) == stated and stated <= 570


def test_every_benchmark_it_calls_exists():
    root = SCRIPT.parents[1]
    for rel in set(re.findall(r"(benchmarks/\w+\.py|tests/\w+\.py)", TEXT)):
        assert (root / rel).is_file(), rel


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
