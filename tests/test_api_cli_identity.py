"""One engine under the CLI and the Python API (issue 12): the same inputs give the same tables.

* ``audiobench run`` and ``audiobench.evaluate`` with the same options and an explicit run id
  write byte-identical metrics.csv, per_clip.csv and per_class.csv;
* a model defined in a user's module gives identical metrics through ``--model module:factory``
  and through ``audiobench.evaluate(model_object, ...)``.
"""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest
from click.testing import CliRunner

import audiobench
from audiobench.cli import cli

TABLES = ("metrics.csv", "per_clip.csv", "per_class.csv")
# 4 clips of 0.25 s (the tiny shard of conftest.py), few resamples, no trust passes: a few seconds
SMALL = dict(limit=4, bootstrap=20, trust_checks=False, device="cpu", seed=3)
SMALL_CLI = ["--limit", "4", "--bootstrap", "20", "--no-trust-checks", "--device", "cpu", "--seed", "3", "--quiet"]

USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    class UserTagger(nn.Module):
        """A user's waveform CNN; weights from its own seeded generator."""

        sample_rate = 16000

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 8, 400, stride=160)
            self.classifier = nn.Linear(8, 527)
            g = torch.Generator().manual_seed(11)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)

        def forward(self, waveform):
            return self.classifier(torch.relu(self.conv(waveform[:, None])).mean(dim=-1))


    def make():
        return UserTagger()
''')


def _cli(*args: str):
    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return res


@pytest.mark.slow
def test_run_and_evaluate_write_byte_identical_tables(tmp_path, tiny_shard):
    run_id = "same-inputs"
    _cli("run", "--model", "toy-cnn", "--noise", "gaussian,pgd", "--snr", "20", "--eps", "0.002", "--steps", "2",
         "--data", str(tiny_shard.path), "--out", str(tmp_path / "cli"), "--run-id", run_id, *SMALL_CLI)
    res = audiobench.evaluate("toy-cnn", ["gaussian:snr_db=20", "pgd:eps=0.002;steps=2"],
                              data=str(tiny_shard.path), out=tmp_path / "api", run_id=run_id, **SMALL)
    assert res.run_dir == tmp_path / "api" / run_id
    for table in TABLES:
        cli_bytes = (tmp_path / "cli" / run_id / table).read_bytes()
        api_bytes = (res.run_dir / table).read_bytes()
        assert cli_bytes == api_bytes, f"{table} differs between audiobench run and audiobench.evaluate"
    conditions = set(res.metrics["condition"])
    assert conditions == {"none", "gaussian:snr_db=20", "pgd/linf:eps=0.002"}


@pytest.mark.slow
def test_user_module_model_same_metrics_by_factory_string_and_by_object(tmp_path, monkeypatch, tiny_shard):
    (tmp_path / "user_tagger_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import user_tagger_mod

    conditions = ["gaussian:snr_db=10", "pgd:eps=0.002;steps=1"]
    data = str(tiny_shard.path)
    by_name = audiobench.evaluate("user_tagger_mod:make", conditions, data=data, out="by-name", run_id="r", **SMALL)
    by_object = audiobench.evaluate(user_tagger_mod.make(), conditions, data=data, out="by-object", run_id="r", **SMALL)
    # the CLI spelling of the first is the same engine call
    _cli("run", "--model", "user_tagger_mod:make", "--noise", "gaussian,pgd", "--snr", "10", "--eps", "0.002",
         "--steps", "1", "--data", data, "--out", "by-cli", "--run-id", "r", *SMALL_CLI)

    def values(metrics: pd.DataFrame) -> pd.DataFrame:
        # the model column holds each source's name ("user_tagger_mod:make" vs "UserTagger")
        return metrics.drop(columns=["model"]).reset_index(drop=True)

    assert set(by_name.metrics["model"]) == {"user_tagger_mod:make"}
    assert set(by_object.metrics["model"]) == {"UserTagger"}
    pd.testing.assert_frame_equal(values(by_name.metrics), values(by_object.metrics), check_exact=True)
    assert (tmp_path / "by-cli" / "r" / "metrics.csv").read_bytes() == (by_name.run_dir / "metrics.csv").read_bytes()
    pd.testing.assert_frame_equal(values(by_name.per_clip), values(by_object.per_clip), check_exact=True)
    # the attack moved every clip, so the identity is not that of two untouched copies
    pgd = by_name.per_clip.query("condition == 'pgd/linf:eps=0.002'")
    assert len(pgd) == 4 and (pgd["linf"] > 0).all() and (pgd["kl"] > 0).all()
