"""Data-parallel runs: sharding arithmetic, and 2-process gloo runs (torchrun) against 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from audiobench.cli import cli
from audiobench.engine.distributed import DistContext, env_world, shard_batches, split_batch, split_batches
from audiobench.errors import ConfigError


PACKAGE_DIR = Path(__file__).resolve().parents[1] / "audiobench"


def audiobench_frames(stderr: str) -> list:
    """Traceback frames in audiobench's own source files (``File ".../audiobench/x.py"``), not
    every line that happens to contain the word (a virtual environment under a folder named
    audiobench, site-packages of an installed copy)."""
    import re

    frames = []
    for ln in stderr.splitlines():
        m = re.match(r'\s*File "([^"]+)"', ln)
        if m:
            path = Path(m.group(1))
            try:
                path.resolve().relative_to(PACKAGE_DIR.resolve())
            except ValueError:
                continue
            frames.append(ln)
    return frames


def test_audiobench_frames_ignore_a_venv_path_that_contains_audiobench(tmp_path):
    venv = tmp_path / "audiobench-venv" / "lib" / "python3.11" / "site-packages" / "torch" / "distributed" / "run.py"
    ours = PACKAGE_DIR / "engine" / "schedule.py"
    stderr = f'  File "{venv}", line 1, in <module>\n  File "{ours}", line 2, in run\n'
    assert audiobench_frames(stderr) == [f'  File "{ours}", line 2, in run']


# -- sharding ----------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 60), max_size=6),
    batch_size=st.integers(1, 9),
    world=st.integers(1, 5),
)


def test_round_robin_shards_cover_every_batch_once(cuts, batch_size, world):
    pts = sorted(set(cuts + [0, 61]))
    ranges = [(a, b) for a, b in zip(pts, pts[1:]) if (a // 7) % 2 == 0]  # some gaps, like a resume
    batches = split_batches(ranges, batch_size)
    # the same batches as a single-process run: each range cut every batch_size
    assert all(b - a <= batch_size for a, b in batches)
    assert sum(b - a for a, b in batches) == sum(b - a for a, b in ranges)
    shards = [shard_batches(batches, r, world) for r in range(world)]
    dealt = sorted(x for s in shards for x in s)
    assert dealt == sorted(batches)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for a, b in batches:  # the fit split of one batch partitions it
        parts = [split_batch(a, b, r, world) for r in range(world)]
        assert parts[0][0] == a and parts[-1][1] == b
        assert all(p[1] == q[0] for p, q in zip(parts, parts[1:]))


def test_env_world_and_one_rank_context(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert env_world() == (1, 0, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK"):
        env_world()
    ctx = DistContext()
    assert ctx.gather({"a": 1}) == [{"a": 1}] and ctx.broadcast(3) == 3
    with pytest.raises(KeyError):  # one process: the original error, unchanged
        ctx.agree(KeyError("x"), "testing")


# -- 2 ranks vs 1 rank ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    from audiobench.data.shards import write_shard
    from audiobench.data.toy import generate_toy_clips

    ids, wav, tgt = generate_toy_clips(8, seed=11, clip_seconds=1.0)
    path = tmp_path_factory.mktemp("dist_data") / "toy1s.h5"
    write_shard(path, ids, wav, tgt, 16000)
    return path


# 7 clips in batches of 2: 4 batches (the last of 1 clip), so rank 0 computes one more batch than
# rank 1, and in the universal fit rank 1's half of the last batch is empty.
ARGS = ["run", "--model", "toy-cnn", "--random-weights", "--quiet", "--bootstrap", "20", "--limit", "7",
        "--batch-size", "2", "--noise", "gaussian,pgd,universal", "--snr", "10", "--eps", "0.01", "--steps", "2",
        "--epochs", "2"]


def _torchrun(args, out, run_id, env_extra=None, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "audiobench", *args, "--out", str(out), "--run-id", run_id]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(shard, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_ref")
    res = CliRunner().invoke(cli, [*ARGS, "--data", str(shard), "--out", str(out), "--run-id", "one"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out / "one"


def _tables(run_dir: Path):
    m = pd.read_csv(run_dir / "metrics.csv").drop(columns=["run_id"])
    pc = pd.read_csv(run_dir / "per_clip.csv").drop(columns=["run_id"])
    return m, pc


def test_two_gloo_ranks_equal_one_process(shard, reference, tmp_path):
    res = _torchrun([*ARGS, "--data", str(shard)], tmp_path, "two")
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = tmp_path / "two"
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["complete"] is True and meta["world_size"] == 2
    assert res.stdout.count("results:") == 1  # only rank 0 reports
    m1, pc1 = _tables(reference)
    m2, pc2 = _tables(run_dir)
    uni1, uni2 = m1.perturbation == "universal", m2.perturbation == "universal"
    assert uni1.any() and set(m1.perturbation) == {"none", "gaussian", "pgd", "universal"}
    # clean, gaussian and pgd: identical numbers, every per-clip row
    pd.testing.assert_frame_equal(m1[~uni1].reset_index(drop=True), m2[~uni2].reset_index(drop=True), check_exact=True)
    cu1, cu2 = pc1.condition.str.startswith("universal"), pc2.condition.str.startswith("universal")
    pd.testing.assert_frame_equal(pc1[~cu1].reset_index(drop=True), pc2[~cu2].reset_index(drop=True), check_exact=True)
    assert len(pc2) == 7 * 4
    # universal: the gradient is summed across ranks, equal up to float summation order
    pd.testing.assert_frame_equal(m1[uni1].reset_index(drop=True), m2[uni2].reset_index(drop=True),
                                  check_exact=False, rtol=1e-4, atol=1e-6)
    ud = "units/toy-cnn/c003/fitted_state.npz"
    with np.load(reference / ud) as a, np.load(run_dir / ud) as b:
        step = 0.01 / 10
        assert np.mean(np.abs(a["delta"] - b["delta"]) > 1e-6) < 0.01
        assert np.abs(a["delta"] - b["delta"]).max() <= 2 * 2 * step + 1e-7
    # the same units (names and contents) as the single-process run
    names1 = sorted(p.relative_to(reference).as_posix() for p in (reference / "units").rglob("*.npz"))
    names2 = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "units").rglob("*.npz"))
    assert names1 == names2
    with np.load(reference / "units/toy-cnn/c002/00000006-00000007.npz") as a, \
            np.load(run_dir / "units/toy-cnn/c002/00000006-00000007.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            if k.startswith("fp_"):
                # the attack's footprint is a float64 STFT energy sum whose BLAS summation order
                # follows the thread count (torchrun sets OMP_NUM_THREADS=1): equal to 1e-12
                np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=0)
            else:
                np.testing.assert_array_equal(a[k], b[k])


def test_rank_failure_is_one_clear_line_and_the_run_resumes(shard, reference, tmp_path):
    args = [*ARGS, "--data", str(shard)]
    res = _torchrun(args, tmp_path, "fail", {"AUDIOBENCH_FAIL_RANK": "1", "AUDIOBENCH_FAIL_AFTER": "1"})
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert "rank 1 failed" in errors[0] and "injected failure" in errors[0]
    # no traceback from audiobench (torchrun prints its own ChildFailedError summary after the line)
    assert not audiobench_frames(res.stderr)
    run_dir = tmp_path / "fail"
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["complete"] is False
    assert not (run_dir / "metrics.csv").exists()
    stored = sorted(p.name for p in (run_dir / "units/toy-cnn/c000").glob("*-*.npz"))
    # round 0 (both ranks) and rank 0's batch of round 1 were stored before the stop
    assert stored == ["00000000-00000002.npz", "00000002-00000004.npz", "00000004-00000006.npz"]
    # resume in one process from the stored units: the same tables as the uninterrupted run
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path), "--run-id", "fail", "--resume"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    m1, pc1 = _tables(reference)
    m2, pc2 = _tables(run_dir)
    pd.testing.assert_frame_equal(m1, m2, check_exact=True)
    pd.testing.assert_frame_equal(pc1, pc2, check_exact=True)
