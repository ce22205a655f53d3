"""End-to-end tests of the engine and `audiobench run` / `verify-run` on tiny data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from audiobench.cli import cli

TABLES = ("metrics.csv", "per_clip.csv", "per_class.csv")


@pytest.fixture(scope="module")
def toy_shard(tmp_path_factory):
    """16 toy clips of 1 s at 16 kHz (real toy classes, independent seed)."""
    from audiobench.data.shards import write_shard
    from audiobench.data.toy import generate_toy_clips

    ids, wav, tgt = generate_toy_clips(16, seed=7, clip_seconds=1.0)
    path = tmp_path_factory.mktemp("engine_data") / "toy1s.h5"
    write_shard(path, ids, wav, tgt, 16000)
    return path


def run_cli(args, **kw):
    runner = CliRunner()
    res = runner.invoke(cli, args, catch_exceptions=False, **kw)
    return res


BASE = ["run", "--model", "toy-cnn", "--random-weights", "--quiet", "--bootstrap", "20"]


def _run(shard, out, *extra, run_id="r"):
    res = run_cli([*BASE, "--data", str(shard), "--out", str(out), "--run-id", run_id, *extra])
    assert res.exit_code == 0, res.output
    return Path(out) / run_id


def test_run_writes_every_table_and_verifies(toy_shard, tmp_path):
    run_dir = _run(toy_shard, tmp_path, "--noise", "gaussian,pgd", "--snr", "20,10", "--eps", "0.002", "--steps", "3",
                   "--batch-size", "8")
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["complete"] is True
    for key in ("config", "config_hash", "versions", "git_commit", "device", "data", "models", "conditions", "timings",
                "trust", "start_time", "end_time", "seed"):
        assert key in meta, key
    assert meta["data"]["n_clips"] == 16 and meta["data"]["used_clip_list_hash"]
    ids = [c["id"] for c in meta["conditions"]]
    assert ids == ["none", "gaussian:snr_db=20", "gaussian:snr_db=10", "pgd/linf:eps=0.002"]
    m = pd.read_csv(run_dir / "metrics.csv")
    for col in ("run_id", "model", "perturbation", "param", "level", "metric", "value", "ci_low", "ci_high", "suspect"):
        assert col in m.columns
    assert set(m["perturbation"]) == {"none", "gaussian", "pgd"}
    assert {"mAP", "mAUC", "d_prime", "top1_hit_rate", "top5_hit_rate", "kl_mean", "true_label_drop_rate"} <= set(m["metric"])
    clean = m[(m.condition == "none") & (m.metric == "kl_mean")]["value"].item()
    assert clean == 0.0
    pc = pd.read_csv(run_dir / "per_clip.csv")
    assert len(pc) == 16 * 4
    g = pc[pc.condition == "gaussian:snr_db=10"]["snr_db"]
    assert np.allclose(g, 10.0, atol=0.1)
    p = pc[pc.condition == "pgd/linf:eps=0.002"]
    assert (p["linf"] <= 0.002 + 1e-6).all()
    pcl = pd.read_csv(run_dir / "per_class.csv")
    assert set(pcl["metric"]) == {"AP", "AUC", "delta_AP", "convexity", "density"}  # toy-cnn has an embedding
    conv = pcl[(pcl.metric == "convexity") & (pcl.condition == "none")]["value"].dropna()
    assert len(conv) > 0 and conv.between(0, 1).all()
    with np.load(run_dir / "scores.npz") as z:
        assert z["logits__toy-cnn__none"].shape == (16, 527)
        assert z["targets"].shape == (16, 527)
        assert list(z["clip_ids"]) == list(pc[pc.condition == "none"]["clip_id"])
    res = run_cli(["verify-run", str(run_dir)])
    assert res.exit_code == 0, res.output
    # tamper with one value: verify-run must refuse
    text = (run_dir / "metrics.csv").read_text().splitlines()
    i = next(k for k, line in enumerate(text) if ",mAP," in line and "gaussian" in line)
    parts = text[i].split(",")
    vi = 7  # value column
    parts[vi] = str(float(parts[vi]) + 0.01)
    text[i] = ",".join(parts)
    (run_dir / "metrics.csv").write_text("\n".join(text) + "\n")
    res = CliRunner().invoke(cli, ["verify-run", str(run_dir)])
    assert res.exit_code != 0
    assert "verification failed" in res.output


def test_results_do_not_depend_on_batch_size(toy_shard, tmp_path):
    a = _run(toy_shard, tmp_path / "a", "--noise", "gaussian", "--snr", "5", "--batch-size", "1")
    b = _run(toy_shard, tmp_path / "b", "--noise", "gaussian", "--snr", "5", "--batch-size", "7")
    for name in ("per_clip.csv",):
        da, db = pd.read_csv(a / name), pd.read_csv(b / name)
        pd.testing.assert_frame_equal(da, db, check_exact=False, rtol=1e-5)
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    pd.testing.assert_frame_equal(ma, mb, check_exact=False, rtol=1e-5)


def test_seed_changes_noise_and_eps0_is_clean(toy_shard, tmp_path):
    a = _run(toy_shard, tmp_path / "a", "--noise", "gaussian,pgd", "--snr", "5", "--eps", "0", "--steps", "2", "--seed", "1")
    b = _run(toy_shard, tmp_path / "b", "--noise", "gaussian", "--snr", "5", "--seed", "2")
    with np.load(a / "scores.npz") as za, np.load(b / "scores.npz") as zb:
        assert not np.array_equal(za["logits__toy-cnn__gaussian:snr_db=5"], zb["logits__toy-cnn__gaussian:snr_db=5"])
        np.testing.assert_array_equal(za["logits__toy-cnn__pgd/linf:eps=0"], za["logits__toy-cnn__none"])


def test_resume_refuses_a_different_config(toy_shard, tmp_path):
    _run(toy_shard, tmp_path, "--noise", "gaussian", "--snr", "5")
    res = CliRunner().invoke(cli, [*BASE, "--data", str(toy_shard), "--out", str(tmp_path), "--run-id", "r",
                                   "--noise", "gaussian", "--snr", "6"])
    assert res.exit_code != 0
    assert "refusing to resume" in res.output
    assert "Traceback" not in res.output


def test_unknown_names_and_bad_levels_are_one_line_errors(toy_shard, tmp_path):
    for args, needle in (
        (["--noise", "pgdd"], "did you mean"),
        (["--model", "toy-cnnn"], "did you mean"),
        (["--noise", "pgd", "--eps", "-0.1"], "eps"),
        (["--noise", "gaussian", "--snr", "nan"], "snr"),
        (["--noise", "pgd", "--snr", "10"], "does not apply"),
    ):
        res = CliRunner().invoke(cli, [*BASE, "--data", str(toy_shard), "--out", str(tmp_path), *args])
        assert res.exit_code != 0, args
        assert needle.lower() in res.output.lower(), (args, res.output)
        assert "Traceback" not in res.output


def _unit_count(run_dir: Path) -> int:
    return len(list((run_dir / "units").rglob("*-*.npz"))) if (run_dir / "units").exists() else 0


def test_sigkill_then_resume_gives_identical_tables(toy_shard, tmp_path):
    args = ["--data", str(toy_shard), "--noise", "gaussian,pgd", "--snr", "10", "--eps", "0.003", "--steps", "2",
            "--batch-size", "1", "--run-id", "same", "--no-trust-checks"]
    ref = _run(toy_shard, tmp_path / "ref", *args[2:-3], "--no-trust-checks", "--batch-size", "1", run_id="same")
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "audiobench", *BASE[:-2], "--bootstrap", "20", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = out / "same"
    deadline = time.time() + 240
    while _unit_count(run_dir) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < _unit_count(run_dir) < 48, "the run should have been killed mid-way"
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["complete"] is False
    res = run_cli([*BASE, *args, "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    for name in TABLES:
        assert (run_dir / name).read_bytes() == (ref / name).read_bytes(), name
    with np.load(run_dir / "scores.npz") as a, np.load(ref / "scores.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def test_save_audio_writes_listenable_perturbed_clips(toy_shard, tmp_path):
    import soundfile as sf

    run_dir = _run(toy_shard, tmp_path, "--noise", "gaussian", "--snr", "0", "--save-audio", "3", "--batch-size", "2",
                   "--limit", "5")
    clean = sorted((run_dir / "audio" / "toy-cnn" / "none").glob("*.wav"))
    noisy = sorted((run_dir / "audio" / "toy-cnn" / "gaussian_snr_db=0").glob("*.wav"))
    assert len(clean) == 3 and len(noisy) == 3
    a, sr = sf.read(clean[0], dtype="float32")
    b, _ = sf.read(noisy[0], dtype="float32")
    assert sr == 16000 and a.shape == b.shape == (16000,)
    snr = 10 * np.log10((a ** 2).sum() / ((b - a) ** 2).sum())
    assert abs(snr) < 0.5  # 0 dB target (clamping may move it slightly)


def test_main_job_offline_on_the_toy_set_prints_a_summary(tmp_path):
    """The README's main job (on 24 toy clips): offline, default data, shipped toy weights."""
    env = {**os.environ, "AUDIOBENCH_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "AUDIOBENCH_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "audiobench", "run", "--model", "toy-cnn", "--noise", "pgd", "--eps",
                           "0.002", "--limit", "24"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "pgd/linf:eps=0.002" in proc.stdout and "mAP" in proc.stdout and "results:" in proc.stdout
    (run_dir,) = list((tmp_path / "results").iterdir())
    m = pd.read_csv(run_dir / "metrics.csv").set_index(["condition", "metric"])["value"]
    assert m[("none", "mAP")] > 0.85  # the shipped toy-cnn on clean toy clips
    assert m[("pgd/linf:eps=0.002", "mAP")] < m[("none", "mAP")] - 0.4  # and PGD breaks it
    assert m[("pgd/linf:eps=0.002", "top5_hit_rate")] <= 0.5 * m[("none", "top5_hit_rate")]
