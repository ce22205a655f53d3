"""Attack trust checks: an attack that silently fails must be flagged, a working one must not."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from audiobench.cli import cli


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    from audiobench.data.shards import write_shard
    from audiobench.data.toy import generate_toy_clips

    ids, wav, tgt = generate_toy_clips(12, seed=11, clip_seconds=1.0)
    path = tmp_path_factory.mktemp("trust") / "toy.h5"
    write_shard(path, ids, wav, tgt, 16000)
    return path


def _run(shard, out):
    res = CliRunner().invoke(cli, ["run", "--model", "toy-cnn", "--data", str(shard), "--noise", "pgd", "--eps",
                                   "0.002,0.004", "--steps", "4", "--out", str(out), "--run-id", "r", "--quiet",
                                   "--bootstrap", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads((out / "r" / "run.json").read_text())["trust"]["toy-cnn"]


def test_working_attack_is_trusted(shard, tmp_path):
    trust = _run(shard, tmp_path)
    for cid, verdict in trust.items():
        assert not verdict["suspect"], (cid, verdict["reasons"])
        assert verdict["loss_per_step"][-1] > verdict["loss_per_step"][0]


def test_gradient_masking_model_is_flagged(shard, tmp_path, monkeypatch):
    from audiobench.models.toy import ToyTagger

    original = ToyTagger.features

    def quantised_features(self, waveform):
        # a "defence" that masks gradients: quantising the input makes every input gradient zero
        # (round has zero derivative), so PGD cannot move and the model *looks* robust
        return original(self, torch.round(waveform * 64) / 64)

    monkeypatch.setattr(ToyTagger, "features", quantised_features)
    trust = _run(shard, tmp_path)
    for cid, verdict in trust.items():
        assert verdict["suspect"], cid
        text = " ".join(verdict["reasons"])
        assert "gradient zero/NaN/inf" in text and "loss did not increase" in text
