"""Transfer attacks (issue 17): crafted once on the source, scored on every target, white-box on
the diagonal bit for bit, ensembles, resume, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from audiobench.cli import cli

FAST = ["--limit", "4", "--batch-size", "2", "--bootstrap", "0", "--quiet", "--steps", "2"]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    from audiobench.data.shards import write_shard
    from audiobench.data.toy import generate_toy_clips

    ids, wav, tgt = generate_toy_clips(6, seed=9, clip_seconds=1.0)
    path = tmp_path_factory.mktemp("transfer") / "toy1s.h5"
    write_shard(path, ids, wav, tgt, 16000)
    return path


@pytest.fixture(scope="module")
def runs(shard, tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer_runs")
    base = ["run", "--data", str(shard), "--out", str(out), "--noise", "pgd", "--eps", "0.002", *FAST]
    wb = CliRunner().invoke(cli, base + ["--model", "toy-cnn", "--run-id", "whitebox"])
    assert wb.exit_code == 0, wb.output
    tr = CliRunner().invoke(cli, base + ["--model", "toy-cnn,toy-transformer", "--run-id", "transfer",
                                         "--transfer-from", "toy-cnn,toy-cnn+toy-transformer"])
    assert tr.exit_code == 0, tr.output
    return out


def test_transfer_rows_name_their_source(runs):
    m = pd.read_csv(runs / "transfer" / "metrics.csv")
    conds = set(m["condition"])
    assert {"transfer[toy-cnn]/pgd/linf:eps=0.002", "transfer[toy-cnn+toy-transformer]/pgd/linf:eps=0.002"} <= conds
    assert "pgd/linf:eps=0.002" not in conds  # the attack is transferred, not also run white-box on each target
    assert set(m.loc[m["condition"].str.startswith("transfer["), "perturbation"]) == {"transfer"}
    assert set(m["model"]) == {"toy-cnn", "toy-transformer"}


def test_transfer_diagonal_equals_the_white_box_result_bit_for_bit(runs):
    a = np.load(runs / "transfer" / "scores.npz")
    b = np.load(runs / "whitebox" / "scores.npz")
    diag = a["logits__toy-cnn__transfer[toy-cnn]/pgd/linf:eps=0.002"]
    white = b["logits__toy-cnn__pgd/linf:eps=0.002"]
    assert np.array_equal(diag, white)
    ta = pd.read_csv(runs / "transfer" / "metrics.csv")
    tb = pd.read_csv(runs / "whitebox" / "metrics.csv")
    x = ta[(ta["model"] == "toy-cnn") & (ta["condition"] == "transfer[toy-cnn]/pgd/linf:eps=0.002") & (ta["metric"] == "mAP")]
    y = tb[(tb["condition"] == "pgd/linf:eps=0.002") & (tb["metric"] == "mAP")]
    assert float(x["value"].iloc[0]) == float(y["value"].iloc[0])


def test_crafted_clips_are_cached_once_per_source_and_reused_on_resume(runs):
    src = runs / "transfer" / "units" / "_sources"
    assert sorted(p.name for p in src.iterdir()) == ["toy-cnn", "toy-cnn_toy-transformer"]
    units = sorted((src / "toy-cnn").rglob("*.npz"))
    assert units
    stamp = {p: p.stat().st_mtime_ns for p in units}
    res = CliRunner().invoke(cli, ["run", "--data", str(json.loads((runs / "transfer" / "run.json").read_text())["config"]["data"]),
                                   "--out", str(runs), "--noise", "pgd", "--eps", "0.002", *FAST, "--model",
                                   "toy-cnn,toy-transformer", "--run-id", "transfer", "--transfer-from",
                                   "toy-cnn,toy-cnn+toy-transformer"])
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in units} == stamp  # nothing recrafted


def test_transfer_matrix_in_the_report(runs):
    res = CliRunner().invoke(cli, ["report", str(runs / "transfer"), "--format", "md"])
    assert res.exit_code == 0, res.output
    assert "Transfer matrix" in res.output and "toy-cnn+toy-transformer" in res.output


def test_ensemble_source_averages_the_members_losses():
    import torch

    from audiobench.models import load_model
    from audiobench.perturb.attacks import bce_per_clip
    from audiobench.perturb.transfer import EnsembleSource

    a, b = load_model("toy-cnn"), load_model("toy-transformer")
    ens = EnsembleSource([a, b]).eval()
    x = torch.rand(2, 16000) * 0.1
    t = torch.zeros(2, 527)
    t[:, 3] = 1
    with torch.no_grad():
        joint = bce_per_clip(ens(x), ens.repeat_targets(t))
        mean = (bce_per_clip(a(x), t) + bce_per_clip(b(x), t)) / 2
    assert torch.allclose(joint, mean, atol=1e-6)


@pytest.mark.parametrize("args, words", [
    (["--transfer-from", "toy-cnn", "--noise", "gaussian", "--snr", "20"], "needs a waveform attack"),
    (["--transfer-from", "toy-cnnn", "--noise", "pgd", "--eps", "0.002"], "toy-cnnn"),
    (["--transfer-from", "toy-cnn+toy-cnn", "--noise", "pgd", "--eps", "0.002"], "appears twice"),
])
def test_bad_transfer_options_are_one_line(shard, tmp_path, args, words):
    fast = ["--limit", "4", "--batch-size", "2", "--bootstrap", "0", "--quiet"]
    res = CliRunner().invoke(cli, ["run", "--model", "toy-cnn", "--data", str(shard), "--out", str(tmp_path), *fast, *args])
    assert res.exit_code != 0 and words in res.output and "Traceback" not in res.output
    assert not any(tmp_path.iterdir())
