"""Issue 15: what a new user hit, each as a regression test named after its symptom.

(The data-layer items are in tests/test_data_hardening.py, test_data_audioset_eval.py and
test_data_pack_predict.py; verify-run's in tests/test_verify_run.py; the dependency and docs
items in tests/test_docs.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from audiobench.cli import cli

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--limit", "4", "--batch-size", "4", "--bootstrap", "0", "--quiet"]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    from audiobench.data.shards import write_shard
    from audiobench.data.toy import generate_toy_clips

    ids, wav, tgt = generate_toy_clips(6, seed=5, clip_seconds=1.0)
    path = tmp_path_factory.mktemp("defects") / "toy1s.h5"
    write_shard(path, ids, wav, tgt, 16000)
    return path


def _run(args, cwd=None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        os.chdir(old)


def _run_folders(out: Path):
    return [p for p in Path(out).iterdir() if (p / "run.json").exists()] if Path(out).is_dir() else []


# -- 2. report on an unfinished run ----------------------------------------------------------------
def test_report_skips_a_run_that_failed_before_its_tables_instead_of_aborting(shard, tmp_path):
    out = tmp_path / "results"
    assert _run(["run", "--model", "toy-cnn", "--data", str(shard), "--out", str(out), "--run-id", "done", *FAST]).exit_code == 0
    # an unfinished run folder (run.json only, complete false), as a stopped run leaves it
    stopped = out / "stopped"
    stopped.mkdir()
    info = json.loads((out / "done" / "run.json").read_text())
    info.update(run_id="stopped", complete=False)
    (stopped / "run.json").write_text(json.dumps(info))
    for extra in ([], ["--include-incomplete"]):
        res = _run(["report", str(out), "--format", "md", *extra])
        assert res.exit_code == 0, res.output
        assert "skipping incomplete run stopped" in res.stderr
        assert "file is missing" not in res.output


# -- 3. a failed start leaves no folder -------------------------------------------------------------
@pytest.mark.parametrize("bad", [["--checkpoint", "/nonexistent/toy.pt"], ["--model", "efficientat-mn04"]])
def test_a_run_that_fails_before_its_first_result_leaves_no_run_folder(shard, tmp_path, bad, monkeypatch):
    monkeypatch.setenv("AUDIOBENCH_OFFLINE", "1")  # the mn04 weights are not reachable: a one-line error
    out = tmp_path / "results"
    args = ["run", "--model", "toy-cnn", "--data", str(shard), "--out", str(out), *FAST, *bad]
    res = _run(args)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert _run_folders(out) == []
    assert not out.exists() or not any(out.iterdir())  # not even an empty run folder


def test_a_failed_start_never_removes_a_folder_that_holds_results(shard, tmp_path):
    out = tmp_path / "results"
    assert _run(["run", "--model", "toy-cnn", "--data", str(shard), "--out", str(out), "--run-id", "r", *FAST]).exit_code == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    res = _run(["run", "--model", "toy-cnn", "--data", str(shard), "--out", str(out), "--run-id", "r", *FAST,
                "--checkpoint", "/nonexistent/toy.pt"])
    assert res.exit_code == 1
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# -- 4. the resume command printed after SIGTERM ----------------------------------------------------
def test_resume_command_after_sigterm_names_the_run_id_once(shard, tmp_path):
    from audiobench.commands.run import resume_command

    line = resume_command(["run", "--model", "toy-cnn", "--run-id", "X", "--limit", "4"], "X")
    assert line.count("--run-id") == 1 and line.endswith("--run-id X --resume")
    assert resume_command(["run", "--run-id=X", "--resume"], "X").count("--run-id") == 1
    # and for real: a SIGTERM mid-run prints it
    out = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "audiobench", "run", "--model", "toy-cnn", "--data", str(shard),
                             "--out", str(out), "--run-id", "sig", "--noise", "pgd", "--eps", "0.002", "--steps", "30",
                             "--batch-size", "1", "--bootstrap", "0", "--quiet"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list((out / "sig").rglob("*.npz")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    resume = err.strip().splitlines()[-1]
    assert "resume with:" in resume and resume.count("--run-id") == 1 and resume.endswith("--run-id sig --resume")


# -- 5. feature-pgd under the default trust checks --------------------------------------------------
def test_feature_pgd_runs_under_the_default_trust_checks_without_a_traceback(shard, tmp_path):
    res = _run(["run", "--model", "toy-cnn", "--data", str(shard), "--out", str(tmp_path), "--run-id", "f",
                "--noise", "feature-pgd", "--eps", "0.1", "--steps", "2", *FAST])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "f" / "run.json").read_text())
    verdict = info["trust"]["toy-cnn"]["feature-pgd/linf:eps=0.1"]
    assert "loss_per_step" in verdict
    # its 10x-eps companion ran as an ordinary job (units of its own)
    assert list((tmp_path / "f" / "units" / "toy-cnn" / "c001.tenfold").glob("*.npz"))


# -- 6. chained conditions share a trust key --------------------------------------------------------
def test_pgd_and_fgsm_on_the_same_base_are_judged_in_separate_trust_groups():
    from audiobench.perturb.spec import build_conditions

    conds = build_conditions(["pgd", "fgsm"], {"eps": "0.002", "on": "gaussian:snr_db=20"})
    chains = [c for c in conds if c.name == "chain"]
    assert len(chains) == 2
    assert chains[0].trust_group != chains[1].trust_group
    from audiobench.engine.plan import plan_model

    plan = plan_model(conds, 8, trust_checks=True)
    tenfold = [j for j in plan.companion_jobs if j.role == "tenfold"]
    assert len(tenfold) == 2  # one 10x-eps companion per attack kind, not one for both


# -- 7. the trust checks judge the loss the result uses ---------------------------------------------
def test_trust_checks_judge_the_best_so_far_loss_and_note_a_collapsing_trace():
    from audiobench.trust import AttackEvidence, assess

    # the last iterate collapses below its start, but the best point the result keeps rose
    loss = [0.03, 0.05, 0.42, 0.05, 0.02]
    best = [0.03, 0.05, 0.42, 0.42, 0.42]
    ev = AttackEvidence("pgd/linf:eps=0.002", ("pgd", "linf"), 0.002, 0.5, loss_sum_per_step=loss, n_per_step=[1] * 5,
                        best_loss_sum_per_step=best, n_clips=1)
    v = assess([ev])["pgd/linf:eps=0.002"]
    assert not v["suspect"], v  # the old check (last step vs first) called this attack failed
    assert any("collapsed" in n for n in v["notes"])
    flat = AttackEvidence("pgd/linf:eps=0.004", ("pgd", "linf"), 0.004, 0.5, loss_sum_per_step=[0.03, 0.03],
                          n_per_step=[1, 1], best_loss_sum_per_step=[0.03, 0.03], n_clips=1)
    assert assess([flat])["pgd/linf:eps=0.004"]["suspect"]


# -- 12. shipped references that do not exist -------------------------------------------------------
def test_sweep_help_names_only_shipped_configs():
    res = CliRunner().invoke(cli, ["sweep", "--help"])
    assert res.exit_code == 0
    named = {w for w in res.output.replace(",", " ").split() if w.startswith("configs/")}
    assert named and all((ROOT / n).exists() for n in named), named


def test_li2022_config_names_a_dataset_that_is_shipped():
    from audiobench.sweep import load_sweep

    sweep = load_sweep(ROOT / "configs" / "li2022.yaml")
    assert (ROOT / "data_manifests" / f"{sweep.settings['data']}.json").exists()


def test_sweep_dry_run_says_which_weights_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOBENCH_OFFLINE", "1")
    res = CliRunner().invoke(cli, ["sweep", str(ROOT / "configs" / "li2022.yaml"), "--dry-run", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    missing = [ln for ln in res.output.splitlines() if ln.startswith("missing weights")]
    assert any("cnn14" in ln for ln in missing) and any("model ast" in ln for ln in missing), res.output


# -- 13. train-toy writes relative to the current folder --------------------------------------------
def test_train_toy_writes_to_audiobench_home_by_default(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("AUDIOBENCH_HOME", str(home))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    res = _run(["train-toy", "--model", "toy-cnn", "--n-clips", "16", "--epochs", "1", "--batch-size", "16",
                "--crop-seconds", "1"], cwd=cwd)
    assert res.exit_code == 0, res.output
    assert (home / "weights" / "toy-cnn.pt").is_file()
    assert not (cwd / "audiobench").exists()  # nothing written relative to the current folder


# -- 16. small things ---------------------------------------------------------------------------------
def test_saved_audio_is_not_named_wav_wav(shard, tmp_path):
    res = _run(["run", "--model", "toy-cnn", "--data", str(shard), "--out", str(tmp_path), "--run-id", "a",
                "--noise", "gaussian", "--snr", "20", "--save-audio", "2", *FAST])
    assert res.exit_code == 0, res.output
    wavs = list((tmp_path / "a" / "audio").rglob("*.wav"))
    assert wavs and not any(p.name.endswith(".wav.wav") for p in wavs)


def test_default_pack_output_folder_is_git_ignored():
    assert "/data/" in (ROOT / ".gitignore").read_text().splitlines()


def test_predict_tells_how_to_get_class_names(tmp_path, shared_dir):
    # a dataset without the full vocabulary prints "class <i>"; the user is told about --vocab
    res = CliRunner().invoke(cli, ["predict", "--model", "toy-cnn", "--top-k", "40", str(shared_dir / "clips" / "fs_dog.wav")])
    assert res.exit_code == 0, res.output
    if "class " in res.stdout:
        assert "--vocab" in res.stderr


def test_progress_follows_the_gradient_steps_inside_a_batch():
    import torch

    from audiobench.engine.schedule import Runner
    from audiobench.models import load_model
    from audiobench.perturb import PERTURBATIONS
    from audiobench.rng import ClipRNG

    class FakeProgress:
        def __init__(self):
            self.descriptions = []

        def update(self, task, description=None, **kw):
            self.descriptions.append(description)

    class B:
        start, clip_ids = 0, ["a", "b"]

        def __len__(self):
            return 2

    progress = FakeProgress()
    model = load_model("toy-cnn")
    x = torch.rand(2, 16000) * 0.1
    t = torch.zeros(2, 527)
    t[:, 0] = 1
    with Runner._step_progress(progress, 0, "toy-cnn apgd", B()):
        PERTURBATIONS.get("apgd")(eps=0.002, steps=5)(x, model=model, targets=t, rng=ClipRNG.for_clips(0, ["a", "b"], "k"))
    steps = [d for d in progress.descriptions if d and "gradient step" in d]
    assert len(steps) == 5 and steps[-1].endswith("gradient step 5)")
    assert progress.descriptions[-1] == "toy-cnn apgd"  # restored after the batch


# -- the corruption suite from the CLI (issue 16) ------------------------------------------------------
@pytest.mark.slow
def test_suite_run_on_the_toy_set_writes_the_summary_rows(tmp_path):
    res = _run(["run", "--model", "toy-cnn", "--suite", "audioset-c", "--limit", "8", "--out", str(tmp_path),
                "--run-id", "s", "--bootstrap", "20", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "background: skipped" in res.stderr and "--noise-bank" in res.stderr
    import pandas as pd

    m = pd.read_csv(tmp_path / "s" / "metrics.csv")
    suite = m[m["condition"] == "audioset-c"].set_index("metric")
    assert {"mean_corruption_map", "relative_robustness"} <= set(suite.index)
    assert 0 < suite.loc["relative_robustness", "value"] <= 1.5
    assert m["condition"].str.endswith(":severity=5").sum() >= 10  # 11 corruptions x 5 severities run
    per = m[m["condition"].str.startswith("audioset-c/")]
    assert set(per["metric"]) >= {"corruption_map", "corruption_error"}
    res = _run(["report", str(tmp_path), "--format", "md"])
    assert res.exit_code == 0 and "Corruption suite" in res.output


def test_list_suites_names_the_suite_and_its_conditions():
    res = CliRunner().invoke(cli, ["list", "suites"])
    assert res.exit_code == 0
    assert res.output.startswith("audioset-c\t")
    assert "reverb:severity=5" in res.output and "mp3:severity=1" in res.output


def test_attack_limits_from_the_cli_reach_the_conditions():
    from audiobench.perturb.spec import build_conditions

    conds = build_conditions(["pgd"], {"eps": "0.002", "attack_band": "500,2000", "attack_span": "1,3",
                                       "attack_mask": "padding"})
    pgd = conds[1]
    assert pgd.attack_band_hz == (500.0, 2000.0) and pgd.attack_span_s == (1.0, 3.0) and pgd.attack_mask == "padding"
    sweep = build_conditions(["pgd"], {"eps": "0.002", "attack_band": "0-4000,4000-8000"})
    assert [c.attack_band_hz for c in sweep[1:]] == [(0.0, 4000.0), (4000.0, 8000.0)]


def test_an_attack_run_writes_its_footprint(shard, tmp_path):
    res = _run(["run", "--model", "toy-cnn", "--data", str(shard), "--out", str(tmp_path), "--run-id", "p",
                "--noise", "pgd", "--eps", "0.002", "--steps", "2", "--no-trust-checks", *FAST])
    assert res.exit_code == 0, res.output
    import pandas as pd

    spec = pd.read_csv(tmp_path / "p" / "perturbation_spectrum.csv")
    assert set(spec["condition"]) == {"pgd/linf:eps=0.002"}
    assert spec["band"].nunique() == 64 and spec["segment"].nunique() == 1  # 1 s clips
    assert np.isclose(spec["delta_share"].sum(), 1.0)
