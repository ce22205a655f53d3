"""Faults: atomic result files, SIGINT/SIGTERM/SIGKILL during a run, CUDA out-of-memory, non-finite outputs.

Runs use toy-cnn with a fixed checkpoint written here (random but seeded weights), 1 s clips at
16 kHz and tiny batches, so every table is deterministic and each run takes seconds.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from audiobench import results as R
from audiobench.cli import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
N_CLIPS = 16


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(folder, shard, checkpoint): 16 clips of 1 s at 16 kHz; clip 2 starts with a DC block of 0.9."""
    from audiobench.data.shards import write_shard
    from audiobench.models import load_model

    d = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(11)
    wav = rng.uniform(-0.4, 0.4, size=(N_CLIPS, 16000)).astype(np.float32)
    wav[2, :400] = 0.9  # a marker that survives mild noise (used by the non-finite test)
    tgt = np.zeros((N_CLIPS, 527), dtype=bool)
    tgt[:, :3] = rng.random((N_CLIPS, 3)) < 0.5
    tgt[0, :3] = [True, False, True]
    tgt[1, :3] = [False, True, False]
    shard = write_shard(d / "s.h5", [f"Yf{i:03d}.wav" for i in range(N_CLIPS)], wav, tgt, 16000)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = load_model("toy-cnn", weights="random")
    ckpt = d / "toy.pt"
    torch.save(model.net.state_dict(), ckpt)
    return d, shard, ckpt


def _args(shard, ckpt, out, *extra, batch_size=4):
    return ["run", "--model", "toy-cnn", "--checkpoint", str(ckpt), "--data", str(shard), "--out", str(out),
            "--batch-size", str(batch_size), "--bootstrap", "20", "--no-trust-checks", "--quiet", *extra]


def _invoke(argv):
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    return res


def _only_run(out: Path) -> Path:
    runs = [p for p in Path(out).iterdir() if (p / "run.json").exists()]
    assert len(runs) == 1, runs
    return runs[0]


def _tables(run: Path) -> dict:
    """Every table of a run folder without its run id (which differs between runs)."""
    out = {}
    for name in ("metrics.csv", "per_clip.csv", "per_class.csv"):
        out[name] = pd.read_csv(run / name).drop(columns=["run_id"])
    with np.load(run / "scores.npz") as z:
        out["scores"] = {k: z[k] for k in z.files}
    return out


def _assert_same_tables(a: Path, b: Path, exact: bool = True) -> None:
    """Identical tables; ``exact=False`` allows float32 kernel rounding (batch size changes which
    CPU/GPU kernels run: logits differ by ~1e-8) but no other difference."""
    ta, tb = _tables(a), _tables(b)
    for name in ("metrics.csv", "per_clip.csv", "per_class.csv"):
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=exact, rtol=1e-5, atol=1e-6, obj=name)
    assert ta["scores"].keys() == tb["scores"].keys()
    for k in ta["scores"]:
        if exact or ta["scores"][k].dtype.kind not in "fc":
            np.testing.assert_array_equal(ta["scores"][k], tb["scores"][k], err_msg=k)
        else:
            np.testing.assert_allclose(ta["scores"][k], tb["scores"][k], rtol=1e-5, atol=1e-6, err_msg=k)


# --- atomic writes ------------------------------------------------------------------------------
WRITERS = {
    "bytes": lambda p: R.atomic_write_bytes(p, b"new"),
    "json": lambda p: R.atomic_write_json(p, {"new": True}),
    "npz": lambda p: R.atomic_write_npz(p, x=np.arange(3)),
    "csv": lambda p: R.atomic_write_csv(p, pd.DataFrame({"a": [1]})),
    "parquet": lambda p: R.atomic_write_parquet(p, pd.DataFrame({"a": [1]})),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_failed_rename_keeps_old_file_and_leaves_no_temp(kind, tmp_path, monkeypatch):
    target = tmp_path / f"table.{kind}"
    target.write_bytes(b"OLD CONTENT")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(R.os, "replace", boom)
    with pytest.raises(OSError):
        WRITERS[kind](target)
    assert target.read_bytes() == b"OLD CONTENT"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # temp file removed


def test_failed_write_of_new_file_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(R.os, "fsync", boom)
    with pytest.raises(OSError):
        R.atomic_write_json(tmp_path / "run.json", {"complete": True})
    assert list(tmp_path.iterdir()) == []


def test_failed_shard_and_manifest_writes_keep_old_files(tmp_path, monkeypatch):
    from audiobench.data import manifest as M
    from audiobench.data import shards as S

    old = S.write_shard(tmp_path / "a.h5", ["x"], np.zeros((1, 10), np.float32), np.zeros((1, 4), bool), 16000)
    old_bytes = old.read_bytes()
    man = tmp_path / "m.json"
    man.write_text("{}")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        S.write_shard(old, ["y"], np.ones((1, 10), np.float32), np.ones((1, 4), bool), 16000)
    m = M.Manifest(name="m", sample_rate=16000, clip_seconds=1.0, num_samples=16000, n_clips=1, clip_list_hash="0",
                   vocab_hash="0", vocabulary={}, shards=[M.ShardEntry("a.h5", 1)])
    with pytest.raises(OSError):
        m.save(man)
    assert old.read_bytes() == old_bytes and man.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "m.json"]


_WRITER_LOOP = """
import sys
from audiobench.results import atomic_write_bytes
a, b = (bytes([65]) * (1 << 22), bytes([66]) * (1 << 22))
print("ready", flush=True)
i = 0
while True:
    atomic_write_bytes(sys.argv[1], a if i % 2 else b)
    i += 1
"""


def test_sigkill_mid_write_never_leaves_a_torn_file(tmp_path):
    target = tmp_path / "scores.npz"
    target.write_bytes(b"A" * (1 << 22))
    allowed = {b"A" * (1 << 22), b"B" * (1 << 22)}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for delay in (0.0, 0.03, 0.07, 0.15, 0.3):
        p = subprocess.Popen([sys.executable, "-c", _WRITER_LOOP, str(target)], stdout=subprocess.PIPE, env=env)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        p.kill()
        p.wait(timeout=30)
        p.stdout.close()
        assert target.read_bytes() in allowed, f"torn file after SIGKILL at +{delay}s"
    # a killed writer may leave its hidden temp file, never a file under the final name
    leftovers = [q.name for q in tmp_path.iterdir() if q != target]
    assert all(n.startswith(".scores.npz.") and n.endswith(".tmp") for n in leftovers), leftovers


# --- signals during `audiobench run` ------------------------------------------------------------
def _spawn_run(argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "audiobench", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _units(out: Path) -> list:
    return sorted(out.rglob("units/*/*/*.npz"))


def _wait_for_units(proc, out: Path, n: int = 1, timeout: float = 120.0) -> None:
    t0 = time.time()
    while len(_units(out)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before it was interrupted: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("no unit written in time")
        time.sleep(0.005)


SLOW_GRID = ["--noise", "gaussian", "--snr", "20"]  # 2 conditions × 16 one-clip batches


@pytest.fixture(scope="module")
def reference_run(inputs, tmp_path_factory):
    """The uninterrupted run (batch size 1) the interrupted-and-resumed runs must equal exactly."""
    d, shard, ckpt = inputs
    out = tmp_path_factory.mktemp("reference")
    _invoke(_args(shard, ckpt, out, *SLOW_GRID, batch_size=1))
    return _only_run(out)


def _check_stored_units(out: Path) -> list:
    stored = _units(out)
    for u in stored:  # every stored unit is whole
        with np.load(u) as z:
            assert z["logits"].shape == (1, 527) and z["clip_ids"].shape == (1,)
    return stored


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_after_batch_and_resume_gives_identical_tables(sig, inputs, reference_run, tmp_path):
    d, shard, ckpt = inputs
    out = tmp_path / "interrupted results"  # a space: the printed command must be quoted
    proc = _spawn_run(_args(shard, ckpt, out, *SLOW_GRID, batch_size=1), tmp_path)
    _wait_for_units(proc, out)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"stopped by {sig.name}") and "resume with: audiobench run" in lines[0]
    run = _only_run(out)
    meta = json.loads((run / "run.json").read_text())
    assert meta["complete"] is False and not (run / "metrics.csv").exists() and not (run / "lock").exists()
    stored = _check_stored_units(out)
    assert 1 <= len(stored) < 2 * N_CLIPS  # stopped early, the finished batches kept

    # the printed command resumes the run, reusing the stored units
    cmd = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert cmd[0] == "audiobench" and "--resume" in cmd and meta["run_id"] in cmd
    mtimes = {u: u.stat().st_mtime_ns for u in stored}
    cwd = Path.cwd()
    os.chdir(tmp_path)  # the command's paths are as the user typed them
    try:
        _invoke(cmd[1:])
    finally:
        os.chdir(cwd)
    assert json.loads((run / "run.json").read_text())["complete"] is True
    assert all(u.stat().st_mtime_ns == t for u, t in mtimes.items()), "finished units were recomputed"
    _assert_same_tables(run, reference_run)


def test_concurrent_writer_refused_then_sigkill_and_resume_give_identical_tables(inputs, reference_run, tmp_path):
    d, shard, ckpt = inputs
    out = tmp_path / "killed"
    proc = _spawn_run(_args(shard, ckpt, out, *SLOW_GRID, batch_size=1), tmp_path)
    _wait_for_units(proc, out, n=3)
    proc.send_signal(signal.SIGSTOP)  # frozen mid-run: alive, holding the lock, deterministic
    try:
        # a second writer of the same run folder, while the first one is alive, is refused
        run = _only_run(out)
        second = CliRunner().invoke(cli, _args(shard, ckpt, out, *SLOW_GRID, "--run-id", run.name, "--resume",
                                               batch_size=1))
        assert second.exit_code == 1 and second.stderr.count("\n") == 1, second.stderr
        assert f"another audiobench process (pid {proc.pid}" in second.stderr
    finally:
        proc.kill()  # SIGKILL at an arbitrary point of the run
    proc.communicate(timeout=60)
    run = _only_run(out)
    assert json.loads((run / "run.json").read_text())["complete"] is False  # valid JSON: old or new state
    _check_stored_units(out)
    assert (run / "lock").exists()  # left by the killed process; its pid is dead, so it is taken over
    _invoke(_args(shard, ckpt, out, *SLOW_GRID, "--run-id", run.name, "--resume", batch_size=1))
    assert not (run / "lock").exists()
    _assert_same_tables(run, reference_run)


def test_results_do_not_depend_on_batch_size_beyond_float_rounding(inputs, reference_run, tmp_path):
    """Noise is drawn per clip, so batch size changes nothing but the kernels' float rounding."""
    d, shard, ckpt = inputs
    _invoke(_args(shard, ckpt, tmp_path / "b5", *SLOW_GRID, batch_size=5))
    _assert_same_tables(_only_run(tmp_path / "b5"), reference_run, exact=False)


# --- CUDA out-of-memory ---------------------------------------------------------------------------
def test_oom_splits_batch_retries_and_gives_identical_results(inputs, tmp_path, monkeypatch):
    from audiobench.models.toy import ToyTagger

    d, shard, ckpt = inputs
    grid = ["--noise", "gaussian", "--snr", "10", "--limit", "8"]
    _invoke(_args(shard, ckpt, tmp_path / "unsplit", *grid, batch_size=8))

    original = ToyTagger.features
    sizes = []

    def features(self, waveform):
        sizes.append(waveform.shape[0])
        if waveform.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, waveform)

    monkeypatch.setattr(ToyTagger, "features", features)
    with pytest.warns(UserWarning, match="out of memory at batch size 8; retrying as 4 \\+ 4") as rec:
        _invoke(_args(shard, ckpt, tmp_path / "split", *grid, batch_size=8))
    assert any("batch size 4; retrying as 2 + 2" in str(w.message) for w in rec)
    assert max(s for s in sizes if s <= 2) == 2 and 8 in sizes
    run = _only_run(tmp_path / "split")
    # one stored unit per requested batch, as without the split
    assert [u.name for u in sorted((run / "units" / "toy-cnn" / "c001").glob("*.npz"))] == ["00000000-00000008.npz"]
    unsplit = _only_run(tmp_path / "unsplit")
    _assert_same_tables(run, unsplit, exact=False)
    # the noise itself is drawn per clip: its realised SNR and norms are bit-identical
    a, b = pd.read_csv(run / "per_clip.csv"), pd.read_csv(unsplit / "per_clip.csv")
    pd.testing.assert_frame_equal(a[["clip_id", "snr_db", "linf", "l2"]], b[["clip_id", "snr_db", "linf", "l2"]],
                                  check_exact=True)


def test_oom_on_a_single_clip_is_not_swallowed(inputs, tmp_path, monkeypatch):
    from audiobench.models.toy import ToyTagger

    d, shard, ckpt = inputs

    def features(self, waveform):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(ToyTagger, "features", features)
    # the model probe (before any work) would report this fake OOM already; here the engine's own
    # splitting is under test
    monkeypatch.setattr("audiobench.models.contract.probe_model", lambda *a, **k: {})
    res = CliRunner().invoke(cli, _args(shard, ckpt, tmp_path / "o", "--limit", "2", batch_size=2))
    # split down to one clip, then one clear line (not a traceback, not a silent skip)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert "CUDA out of memory on a single clip" in res.output and "Traceback" not in res.output
    # it failed before storing any result: no half-made run folder is left behind
    assert not any((p / "run.json").exists() for p in (tmp_path / "o").iterdir())


# --- non-finite model outputs -------------------------------------------------------------------
def test_nonfinite_outputs_are_counted_and_flagged_never_averaged(inputs, tmp_path, monkeypatch):
    from audiobench.metrics.tagging import tagging_metrics
    from audiobench.models.toy import ToyTagger

    d, shard, ckpt = inputs
    original = ToyTagger.features

    def features(self, waveform):
        f = original(self, waveform)
        marked = waveform[:, :400].mean(dim=1) > 0.7  # clip 2 (its DC block survives 20 dB noise)
        marked = marked.view(-1, *([1] * (f.dim() - 1)))  # any feature layout (B, ...)
        return torch.where(marked, torch.full_like(f, float("nan")), f)

    monkeypatch.setattr(ToyTagger, "features", features)
    _invoke(_args(shard, ckpt, tmp_path / "o", "--noise", "gaussian", "--snr", "20", "--limit", "8", batch_size=4))
    run = _only_run(tmp_path / "o")
    m = pd.read_csv(run / "metrics.csv")
    for cond in ("none", "gaussian:snr_db=20"):
        rows = m[m.condition == cond].set_index("metric")
        assert rows.loc["nonfinite_clips", "value"] == 1
        assert (rows["n_clips"] == 7).all()
        assert np.isfinite(rows.loc[["mAP", "mAUC", "d_prime", "kl_mean"], "value"]).all()
    pc = pd.read_csv(run / "per_clip.csv")
    assert pc.loc[pc.nonfinite, "clip_id"].tolist() == ["Yf002.wav", "Yf002.wav"]
    # mAP is exactly the mAP of the 7 finite clips
    with np.load(run / "scores.npz") as z:
        logits, targets = z["logits__toy-cnn__none"].astype(np.float64), z["targets"]
    keep = np.isfinite(logits).all(axis=1)
    assert keep.tolist() == [i != 2 for i in range(8)]
    ref = tagging_metrics(1.0 / (1.0 + np.exp(-logits[keep])), targets[keep])["mAP"]
    assert m[(m.condition == "none") & (m.metric == "mAP")]["value"].item() == pytest.approx(ref, rel=1e-9)
