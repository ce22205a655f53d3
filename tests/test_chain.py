"""Chained conditions: a perturbation applied on top of another ("PGD on perturbed", --on / base:)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from audiobench.errors import ConfigError
from audiobench.perturb.chain import Chain, parse_on
from audiobench.rng import ClipRNG


class _Linear(torch.nn.Module):
    """A tiny differentiable tagger stand-in: logits = W · |x| features (enough for gradients)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(527, 8, generator=g), requires_grad=False)

    def forward(self, x):
        feats = x.abs().reshape(x.shape[0], 8, -1).mean(-1)
        return feats @ self.w.T


def test_parse_on_accepts_cli_spellings_and_rejects_junk():
    assert parse_on("gaussian:snr=20") == {"perturbation": "gaussian", "snr_db": 20}
    assert parse_on("occlusion:pattern=alternate;period=0.5") == {"perturbation": "occlusion", "pattern": "alternate", "period_s": 0.5}
    with pytest.raises(ConfigError):
        parse_on("gaussian:snr_db")
    with pytest.raises(Exception, match="(?i)did you mean"):
        parse_on("gausian:snr_db=3")
    with pytest.raises(ConfigError):
        Chain(base={"perturbation": "gaussian", "snr_db": 20}, attack={"perturbation": "universal", "eps": 0.01})


def test_chain_attacks_the_perturbed_audio_within_eps():
    base = {"perturbation": "occlusion", "pattern": "alternate", "period_s": 0.125, "sample_rate": 1600}
    chain = Chain(base=base, attack={"perturbation": "pgd", "eps": 0.01, "steps": 3})
    assert chain.condition_id == "pgd/linf:eps=0.01@occlusion/alternate:period_s=0.125"
    assert chain.param == "eps" and chain.level == 0.01 and chain.uses_model
    x = (torch.rand(3, 1600, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.5
    t = torch.zeros(3, 527, dtype=torch.bool)
    t[:, 3] = True
    model = _Linear().eval()
    rng = ClipRNG([1, 2, 3])
    out = chain(x, model=model, targets=t, rng=rng)
    occluded = chain.base_perturbation(x, rng=ClipRNG([1, 2, 3]))
    assert (occluded == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    assert (out - occluded).abs().max() <= 0.01 + 1e-7
    assert (out - occluded).abs().max() > 0.005  # the attack moved the audio
    assert torch.equal(x, (torch.rand(3, 1600, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.5)  # input untouched


def test_run_on_adds_base_and_chained_conditions(tmp_path):
    from audiobench.perturb.spec import build_conditions

    conds = build_conditions(["pgd"], {"eps": "0.001,0.002", "steps": 2, "on": "gaussian:snr_db=20"})
    assert [c.condition_id for c in conds] == [
        "none", "gaussian:snr_db=20", "pgd/linf:eps=0.001@gaussian:snr_db=20", "pgd/linf:eps=0.002@gaussian:snr_db=20"]


def test_sweep_base_key(tmp_path):
    from audiobench.sweep import load_sweep

    p = tmp_path / "s.yaml"
    p.write_text("name: t\nmodels: [toy-cnn]\nperturbations:\n  - kind: fgsm\n    base: {kind: gaussian, snr_db: 10}\n    eps: [0.001]\n")
    (run,) = load_sweep(p).runs
    assert [c.condition_id for c in run.conditions] == ["none", "gaussian:snr_db=10", "fgsm/linf:eps=0.001@gaussian:snr_db=10"]
