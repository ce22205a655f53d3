"""Hostile inputs of the results side that must end in success or leave a run exactly as it was
(issue 19); the refusals are cases of tests/hostile_cases_results.py.

* a stale lock holding a junk pid (2^40, ``[1]``, ``"abc"``) is taken over; a live one is not;
* a recompute of a complete run that fails (disk full on a table, SIGKILL) keeps ``run.json``
  ``complete: true`` and every earlier file byte-for-byte;
* ``--save-audio`` on a 400-character clip id writes a bounded file name;
* a 2 KB sweep file asking for 10^8 cells is refused within seconds at bounded memory.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from audiobench.cli import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = ["--limit", "4", "--batch-size", "4", "--bootstrap", "20", "--no-trust-checks", "--quiet", "--random-weights"]


def _shard(path: Path, clip_ids=None) -> Path:
    from audiobench.data.shards import write_shard
    from audiobench.data.toy import generate_toy_clips

    ids, wav, tgt = generate_toy_clips(4, seed=5, clip_seconds=0.5)
    write_shard(path, clip_ids or ids, wav, tgt, 16000)
    return path


def _args(shard: Path, out: Path, *extra) -> list:
    return ["run", "--model", "toy-cnn", "--data", str(shard), "--out", str(out), "--run-id", "r", *FAST, *extra]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening")
    shard = _shard(base / "s.h5")
    res = CliRunner().invoke(cli, _args(shard, base / "results"), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return shard, base / "results" / "r"


@pytest.fixture()
def run_copy(complete_run, tmp_path):
    import shutil

    shard, run = complete_run
    dst = tmp_path / "results" / "r"
    shutil.copytree(run, dst)
    return shard, dst


# -- locks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [json.dumps({"pid": 2**40, "host": platform.node()}), "[1]", "abc"],
                         ids=["pid-2^40", "list", "not-json"])
def test_a_lock_holding_a_junk_pid_is_taken_over(tmp_path, content):
    from audiobench.results.folder import run_lock

    (tmp_path / "lock").write_text(content)
    with run_lock(tmp_path):
        owner = json.loads((tmp_path / "lock").read_text())
        assert owner == {"pid": os.getpid(), "host": platform.node()}
    assert not (tmp_path / "lock").exists()


def test_a_lock_of_a_live_process_is_not_taken_over(tmp_path):
    from audiobench.errors import ResultsError
    from audiobench.results.folder import run_lock

    (tmp_path / "lock").write_text(json.dumps({"pid": os.getppid(), "host": platform.node()}))
    with pytest.raises(ResultsError, match=f"pid {os.getppid()}"):
        with run_lock(tmp_path):
            pass
    assert (tmp_path / "lock").exists()


def test_resume_takes_over_a_lock_holding_junk(run_copy):
    shard, run = run_copy
    (run / "lock").write_text("abc")
    res = CliRunner().invoke(cli, _args(shard, run.parent, "--resume"))
    assert res.exit_code == 0, res.output
    assert not (run / "lock").exists()
    assert json.loads((run / "run.json").read_text())["complete"] is True


# -- a failed recompute of a complete run loses nothing ----------------------------------------------
def test_disk_full_during_a_recompute_keeps_the_complete_run(run_copy, monkeypatch):
    import audiobench.fileio as fileio

    shard, run = run_copy
    before = _snapshot(run)
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if Path(dst).name == "per_class.csv":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(fileio.os, "replace", replace)
    res = CliRunner().invoke(cli, _args(shard, run.parent))  # the same command: recompute the tables
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("run r is already complete")]
    assert len(lines) == 1 and "per_class.csv" in lines[0] and "no space left on device" in lines[0], res.stderr
    after = _snapshot(run)
    assert json.loads(after["run.json"])["complete"] is True
    assert after == before  # tables rewritten before the failure hold the same bytes; nothing else moved


@pytest.mark.slow
def test_sigkill_during_a_recompute_keeps_the_complete_run(run_copy):
    shard, run = run_copy
    before = _snapshot(run)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "audiobench", *_args(shard, run.parent)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "lock").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the recompute holds the run's lock: kill it in the middle
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # killed in the middle, not finished
    after = _snapshot(run)
    after.pop("lock", None)  # the killed process's lock stays behind (taken over by the next run)
    assert json.loads(after["run.json"])["complete"] is True
    assert after == before
    res = CliRunner().invoke(cli, _args(shard, run.parent, "--resume"))
    assert res.exit_code == 0, res.output
    assert _snapshot(run).keys() == before.keys()


# -- names -----------------------------------------------------------------------------------------
def test_save_audio_with_a_400_character_clip_id_writes_a_bounded_name(tmp_path):
    ids = ["Y" + "a" * 399, "Yb.wav", "Yc.wav", "Yd.wav"]
    shard = _shard(tmp_path / "long.h5", clip_ids=ids)
    res = CliRunner().invoke(cli, _args(shard, tmp_path / "out", "--save-audio", "1", "--noise", "gaussian", "--snr", "20"))
    assert res.exit_code == 0, res.output
    wavs = list((tmp_path / "out" / "r" / "audio").rglob("*.wav"))
    assert len(wavs) == 2 and all(len(w.name.encode()) <= 255 for w in wavs)
    assert all(w.name.startswith("Yaaaa") and "~" in w.name for w in wavs)


# -- a sweep file that would expand to 10^8 cells ------------------------------------------------------
_PEAK = """import resource, sys
from audiobench.cli import main
try:
    main(sys.argv[1:])
finally:
    # this process's own peak (VmHWM is reset by exec; ru_maxrss keeps the test runner's peak)
    try:
        kb = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stderr.write("\\nPEAK_RSS_KB %d\\n" % kb)
"""


def test_a_sweep_grid_bomb_is_refused_within_seconds_at_bounded_memory(tmp_path):
    import hostile_cases  # noqa: F401  (first: it appends the results cases)
    from hostile_cases_results import _sweep_bomb_text

    text = _sweep_bomb_text()
    assert len(text.encode()) < 2600  # about 2 KB
    (tmp_path / "s.yaml").write_text(text)
    (tmp_path / "s.h5").touch()
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", _PEAK, "sweep", "s.yaml", "--dry-run"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    elapsed = time.monotonic() - t0
    assert p.returncode == 1 and "more than 10,000 conditions" in p.stderr, p.stderr
    peak_mb = int(p.stderr.rsplit("PEAK_RSS_KB", 1)[1]) / 1024
    assert elapsed < 60 and peak_mb < 1500, (elapsed, peak_mb)  # the process itself (torch imported) is ~500 MB
