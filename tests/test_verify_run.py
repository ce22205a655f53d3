"""verify-run: the data re-hash, the per-clip budgets, the latent metrics, model files and units.

One small run (toy-cnn from a checkpoint, 8 half-second clips of a manifest's shard, clean,
Gaussian noise, linf PGD and min-eps) is made once; each test edits a copy of it and checks the
verdict: 0 verified, 1 failed (a mismatch), 3 unverified (something cannot be checked here).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from audiobench.cli import cli

PGD = "pgd/linf:eps=0.002"


def _cli(args, cwd=None):
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


def _stderr_lines(res):
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(folder, run args): a data root with a manifest and its shard, a checkpoint and a run."""
    import torch

    from audiobench.data import Manifest
    from audiobench.data.manifest import ShardEntry
    from audiobench.data.shards import clip_list_hash, sha256_file, write_shard
    from audiobench.data.toy import generate_toy_clips
    from audiobench.data.vocab import default_vocabulary
    from audiobench.models import load_model

    base = tmp_path_factory.mktemp("verify")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    ids, wav, tgt = generate_toy_clips(8, seed=3, clip_seconds=0.5)
    tgt = np.asarray(tgt).copy()
    tgt[::2, np.flatnonzero(tgt.any(axis=0))[:2]] = True  # classes with several positives: latent metrics defined
    shard = write_shard(root / "sub" / "s.h5", ids, wav, tgt, 16000)
    voc = default_vocabulary()
    Manifest(name="m", sample_rate=16000, clip_seconds=0.5, num_samples=8000, n_clips=8, clip_list_hash=clip_list_hash(ids),
             vocab_hash=voc.hash, vocabulary=voc.to_manifest(used=np.flatnonzero(np.asarray(tgt).any(axis=0))),
             shards=[ShardEntry("sub/s.h5", 8, sha256_file(shard))]).save(root / "m.json")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = load_model("toy-cnn", weights="random")
    torch.save(model.net.state_dict(), base / "toy.pt")
    args = ["run", "--model", "toy-cnn", "--checkpoint", base / "toy.pt", "--data", root / "m.json", "--run-id", "r",
            "--noise", "gaussian,pgd,min-eps", "--snr", "20", "--eps", "0.002", "--eps-max", "0.01", "--steps", "2",
            "--no-trust-checks", "--bootstrap", "20", "--batch-size", "8", "--quiet"]
    res = _cli([*args, "--out", base / "results"])
    assert res.exit_code == 0, res.output
    return base, args


@pytest.fixture()
def run(made, tmp_path):
    """A copy of the run folder (data and checkpoint stay where the run recorded them)."""
    base, _ = made
    dst = tmp_path / "results" / "r"
    shutil.copytree(base / "results" / "r", dst)
    return dst


def _edit_csv(path, condition, column, value, row=0, metric=None):
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    sel = df.index[(df["condition"] == condition) & ((df["metric"] == metric) if metric else True)]
    df.loc[sel[row], column] = value
    df.to_csv(path, index=False)


def _edit_scores(run, edit):
    with np.load(run / "scores.npz") as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(run / "scores.npz", **arrays)


def test_a_fresh_run_verifies_from_any_folder(run, tmp_path):
    res = _cli(["verify-run", run])
    assert res.exit_code == 0, res.output
    out = res.stdout
    for needle in ("sha256 of", "per-clip geometry of toy-cnn: consistent, 2 budgeted", "convexity, density",
                   "head maps the stored embeddings", "recorded file(s) re-hashed", "units of toy-cnn"):
        assert needle in out, (needle, out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = _cli(["verify-run", run.resolve()], cwd=elsewhere)  # the data by its recorded absolute path
    assert res.exit_code == 0, res.output


def test_changed_samples_of_the_packed_shard_fail(run, made, tmp_path):
    base, _ = made
    root = tmp_path / "root"
    shutil.copytree(base / "root", root)
    with h5py.File(root / "sub" / "s.h5", "r+") as f:
        w = f["waveform"]
        part = w[2, :1000]
        w[2, :1000] = (part + 0.01 if w.dtype.kind == "f" else part // 2 + 7).astype(w.dtype)  # 1,000 samples changed
    res = _cli(["verify-run", run, "--data-root", root])  # found relative to the data root first
    assert res.exit_code == 1, res.output
    (line,) = _stderr_lines(res)
    assert "verification failed" in line and "s.h5 sha256" in line


def test_moved_data_is_found_relative_to_the_data_root(run, made, tmp_path):
    base, _ = made
    moved = tmp_path / "moved"
    shutil.copytree(base / "root", moved)
    meta = json.loads((run / "run.json").read_text())
    for sh in meta["data"]["shards"]:  # as if the run had been made on another machine
        sh["abs_path"] = "/nonexistent" + sh["abs_path"]
    meta["data"]["data_root"] = "/nonexistent/root"
    meta["data"]["manifest"] = "/nonexistent/root/m.json"
    (run / "run.json").write_text(json.dumps(meta))
    res = _cli(["verify-run", run])
    assert res.exit_code == 3, res.output  # not here: unverified, not failed
    (line,) = _stderr_lines(res)
    assert "unverified" in line and "cannot be found" in line and "sub/s.h5" in line
    res = _cli(["verify-run", run, "--data-root", moved])
    assert res.exit_code == 0, res.output
    res = _cli(["verify-run", run, "--skip-data"])
    assert res.exit_code == 0 and "data not re-hashed (--skip-data)" in res.stdout


@pytest.mark.parametrize("column,value,also_scores,expect", [
    ("linf", 0.5, False, "linf: stored 0.5"),
    ("linf", 0.5, True, "linf exceeds the condition's linf budget 0.002"),
    ("l2", 7.0, False, "l2: stored 7.0"),
    ("l2", 7.0, True, "l2 exceeds sqrt(8000)·linf"),
    ("snr_db", 80.0, True, "realised SNR disagrees"),
])
def test_edited_per_clip_budgets_fail(run, column, value, also_scores, expect):
    _edit_csv(run / "per_clip.csv", PGD, column, value, row=3)
    if also_scores:  # the geometry edited in scores.npz too: the budget and the SNR relation catch it
        j = ("snr_db", "linf", "l2").index(column)

        def edit(a):
            a[f"geometry__toy-cnn__{PGD}"][3, j] = value

        _edit_scores(run, edit)
    res = _cli(["verify-run", run, "--skip-data"])
    assert res.exit_code == 1, res.output
    assert expect in res.output, res.output
    assert len(_stderr_lines(res)) == 1


@pytest.mark.parametrize("metric", ["convexity", "density"])
def test_edited_latent_metrics_fail(run, metric):
    df = pd.read_csv(run / "per_class.csv", keep_default_na=False, na_values=[""])
    i = df.index[(df["metric"] == metric) & df["value"].notna()][0]
    df.loc[i, "value"] = float(df.loc[i, "value"]) * 0.5 + 0.25
    df.to_csv(run / "per_class.csv", index=False)
    res = _cli(["verify-run", run, "--skip-data"])
    assert res.exit_code == 1, res.output
    assert f"/{metric}/class" in _stderr_lines(res)[0]


def test_edited_embeddings_fail_through_the_head(run):
    def edit(a):
        a[f"embedding__toy-cnn__{PGD}"][1] += 1.0

    _edit_scores(run, edit)
    res = _cli(["verify-run", run, "--skip-data"])
    assert res.exit_code == 1
    assert "head maps the stored embeddings" in res.output


def test_convexity_without_the_model_is_unverified(run, made, tmp_path):
    base, _ = made
    ckpt = tmp_path / "gone.pt"
    shutil.copy(base / "toy.pt", ckpt)
    meta = json.loads((run / "run.json").read_text())
    meta["models"]["toy-cnn"]["provenance"]["checkpoint"] = str(ckpt)
    (run / "run.json").write_text(json.dumps(meta))
    assert _cli(["verify-run", run, "--skip-data"]).exit_code == 0
    ckpt.unlink()
    res = _cli(["verify-run", run, "--skip-data"])
    assert res.exit_code == 3, res.output
    assert "checkpoint" in _stderr_lines(res)[0] and "cannot be found" in _stderr_lines(res)[0]
    assert "convexity of toy-cnn not re-checked" in res.stdout
    res = _cli(["verify-run", run, "--skip-data", "--skip-models"])
    assert res.exit_code == 0, res.output
    assert "convexity of toy-cnn not re-checked (--skip-models)" in res.stdout


def test_a_checkpoint_naming_the_root_folder_is_not_walked(run):
    meta = json.loads((run / "run.json").read_text())
    meta["models"]["toy-cnn"]["provenance"]["checkpoint"] = "/"
    (run / "run.json").write_text(json.dumps(meta))
    t0 = time.perf_counter()
    res = _cli(["verify-run", run, "--skip-data"])
    assert time.perf_counter() - t0 < 20
    assert res.exit_code == 1 and "Traceback" not in res.output
    (line,) = _stderr_lines(res)
    assert "checkpoint / is a file-system root" in line and "not hashed" in line


def test_a_per_clip_table_lacking_a_column_is_one_line(run):
    df = pd.read_csv(run / "per_clip.csv")
    df.drop(columns=["true_rank_change"]).to_csv(run / "per_clip.csv", index=False)
    res = _cli(["verify-run", run, "--skip-data"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert _stderr_lines(res) == [f"Error: {run / 'per_clip.csv'}: missing column(s) true_rank_change"]


def test_an_edited_condition_budget_breaks_the_config_hash(run):
    meta = json.loads((run / "run.json").read_text())
    for c in (meta["conditions"][2]["params"], meta["config"]["conditions"][2]):
        c["eps"] = 0.5  # the budget widened after the fact
    (run / "run.json").write_text(json.dumps(meta))
    res = _cli(["verify-run", run, "--skip-data"])
    assert res.exit_code == 1 and "config hashes to" in _stderr_lines(res)[0]


@pytest.mark.slow
def test_a_unit_copied_from_another_seed_fails_verify_and_resume(run, made, tmp_path):
    base, args = made
    other = tmp_path / "other"
    res = _cli([*args, "--seed", "7", "--out", other])
    assert res.exit_code == 0, res.output
    unit = next((other / "r" / "units" / "toy-cnn" / "c001").glob("*.npz"))
    shutil.copy(unit, run / "units" / "toy-cnn" / "c001" / unit.name)
    res = _cli(["verify-run", run, "--skip-data"])
    assert res.exit_code == 1, res.output
    assert "belongs to another run" in _stderr_lines(res)[0]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    res = _cli([*args, "--out", run.parent, "--resume"])
    assert res.exit_code == 1 and "belongs to another run" in _stderr_lines(res)[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# -- the checks themselves, on arrays ----------------------------------------------------------------
def _cond(perturbation, **params):
    return {"id": "x", "perturbation": perturbation, "param": "eps", "level": params.get("eps"),
            "params": {"perturbation": perturbation, "domain": "waveform", **params}}


def test_geometry_checks_bound_every_norm_and_the_snr():
    from audiobench.results.verify import _geometry_problems

    ids = np.array(["a", "b"])
    energy = np.array([100.0, 50.0])
    l2 = np.array([0.04, 0.05])
    snr = 10 * np.log10(energy / l2**2)
    ok = np.stack([snr, [0.001, 0.002], l2, [np.nan, np.nan]], axis=1)
    l2_attack = _cond("pgd", eps=0.05, norm="l2")
    assert _geometry_problems("m/x", l2_attack, ok, ids, energy, 8000) == []
    over = ok.copy()
    over[1, 2] = 0.06
    over[1, 0] = 10 * np.log10(50.0 / 0.06**2)
    (p,) = _geometry_problems("m/x", l2_attack, over, ids, energy, 8000)
    assert "m/x/b" in p and "l2 exceeds the condition's l2 budget 0.05" in p
    assert _geometry_problems("m/x", _cond("pgd", eps=0.0015, norm="linf"), ok, ids, energy, 8000)[0].startswith("m/x/b: linf")
    clean = {"id": "none", "perturbation": "none", "param": "", "level": None, "params": {}}
    assert "clean condition changed" in _geometry_problems("m/none", clean, ok, ids, None, 8000)[0]
    me = _cond("min-eps", eps_max=0.01)
    good = np.stack([snr, [0.001, 0.002], l2, [np.inf, -1.0]], axis=1)
    assert _geometry_problems("m/x", me, good, ids, energy, 8000) == []
    good[0, 3] = 0.02
    assert "min_eps 0.02 is not in" in _geometry_problems("m/x", me, good, ids, energy, 8000)[0]


def test_min_eps_conditions_where_every_clip_is_unbroken_still_get_rows():
    from audiobench.results.tables import model_tables

    rng = np.random.default_rng(0)
    n, c = 6, 5
    targets = rng.random((n, c)) < 0.4
    targets[:, 0] = [True, False] * 3
    conds = [{"id": "none", "perturbation": "none", "param": "", "level": None},
             {"id": "min-eps:eps_max=0.01", "perturbation": "min-eps", "param": "eps_max", "level": 0.01}]
    logits = {k["id"]: rng.normal(size=(n, c)).astype(np.float32) for k in conds}
    geo = {"snr_db": np.full(n, np.inf), "linf": np.zeros(n), "l2": np.zeros(n)}
    extras = {"none": {**geo, "min_eps": None}, "min-eps:eps_max=0.01": {**geo, "min_eps": np.full(n, np.inf)}}
    rows, frames, _, arrays = model_tables("r", "m", conds, logits, targets, np.array([f"c{i}" for i in range(n)]),
                                           np.zeros(n, bool), extras, {}, n_boot=0, seed=0, names=list("abcde"))
    names = {r["metric"] for r in rows if r["condition"] == "min-eps:eps_max=0.01"}
    assert {m for m in names if m.startswith("min_eps")}, names
    assert np.isinf(frames[1]["min_eps"]).all()
    assert np.isinf(arrays["geometry__m__min-eps:eps_max=0.01"][:, 3]).all()


def test_changed_plugin_source_files_are_reported(tmp_path):
    from audiobench.results.verify import Verification, _check_model_files
    from audiobench.models.weights import file_sha256

    src = tmp_path / "plugin.py"
    src.write_text("x = 1\n")
    record = {"provenance": {"kind": "plugin", "name": "p", "source_files": [{"path": str(src), "sha256": file_sha256(src)}]}}
    v = Verification(tmp_path)
    _check_model_files("p", record, [tmp_path], v)
    assert v.problems == [] and v.checks == ["model p: 1 recorded file(s) re-hashed"]
    src.write_text("x = 2  # edited\n")
    v = Verification(tmp_path)
    _check_model_files("p", record, [tmp_path], v)
    assert len(v.problems) == 1 and "plugin.py changed" in v.problems[0]
    src.unlink()
    v = Verification(tmp_path)
    _check_model_files("p", record, [tmp_path], v)
    assert v.problems == [] and "cannot be found" in v.unchecked[0]


def test_only_registered_plugin_and_hf_models_are_rebuilt():
    from audiobench.results.verify import _not_reloadable

    assert _not_reloadable("toy-cnn") == "" and _not_reloadable("toy-cnn@fp16") == ""
    assert _not_reloadable("hf:some/folder") == ""
    for source in ("os:system", "subprocess:run", "builtins:exec"):  # a received run.json choosing what to call
        assert "does not import a module:factory" in _not_reloadable(source)


def test_recorded_model_folders_are_hashed_only_when_bounded(tmp_path, monkeypatch):
    import audiobench.results.verify as V

    folder = tmp_path / "hf"
    (folder / "sub").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "sub/x.txt"):
        (folder / name).write_text("{}")
    assert V._bounded(folder, folder_ok=True, limit=1 << 20) is None
    assert "not a regular file" in V._bounded(folder, folder_ok=False, limit=1 << 20)
    assert "more than 5 bytes" in V._bounded(folder, folder_ok=True, limit=5)
    monkeypatch.setattr(V, "MAX_FOLDER_FILES", 3)
    assert "more than 3 entries" in V._bounded(folder, folder_ok=True, limit=1 << 20)
    monkeypatch.setattr(V, "MAX_FOLDER_FILES", 10_000)
    os.symlink(tmp_path, folder / "loop")  # a linked folder (here: a loop) is never followed
    assert "linked folder" in V._bounded(folder, folder_ok=True, limit=1 << 20)
    (folder / "loop").unlink()
    os.mkfifo(folder / "pipe")  # reading it would block forever
    assert "pipe, which is not a regular file" in V._bounded(folder, folder_ok=True, limit=1 << 20)
    assert "file-system root" in V._bounded(Path("/"), folder_ok=True, limit=1 << 20)
