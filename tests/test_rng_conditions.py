"""The per-clip random stream depends on the condition (issue 20 part 2): unit and engine level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from audiobench.perturb import PERTURBATIONS
from audiobench.rng import ClipRNG

IDS = ["Yclip_a.wav", "Yclip_b.wav", "Yclip_c.wav"]


def test_clip_rng_streams_differ_across_conditions():
    g20 = PERTURBATIONS.get("gaussian")(snr_db=20.0).condition_key()
    g30 = PERTURBATIONS.get("gaussian")(snr_db=30.0).condition_key()
    a = ClipRNG.for_clips(0, IDS, g20).normal(1000)
    b = ClipRNG.for_clips(0, IDS, g30).normal(1000)
    again = ClipRNG.for_clips(0, IDS, g20).normal(1000)
    assert torch.equal(a, again)  # same (seed, clip, condition): the same stream
    for i in range(len(IDS)):
        assert abs(float(torch.corrcoef(torch.stack([a[i], b[i]]))[0, 1])) < 0.2  # independent draws
    # and across clips and run seeds
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, ClipRNG.for_clips(1, IDS, g20).normal(1000))
    # the trust checks' streams (condition key + suffix) are not the main condition's either
    pgd = PERTURBATIONS.get("pgd")(eps=0.002).condition_key()
    u = ClipRNG.for_clips(0, IDS, pgd).uniform(1000)
    v = ClipRNG.for_clips(0, IDS, pgd + "#trust").uniform(1000)
    assert not torch.equal(u, v)


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    """A real `audiobench run` with Gaussian noise at two SNRs; the perturbed audio is saved."""
    from audiobench.cli import cli
    from audiobench.data.shards import write_shard
    from audiobench.data.toy import generate_toy_clips

    root = tmp_path_factory.mktemp("rng_run")
    ids, wav, tgt = generate_toy_clips(4, seed=11, clip_seconds=0.5)
    # toy clips include silent ones (they get no noise at any SNR); these are not silent
    wav = (np.random.default_rng(11).uniform(-0.3, 0.3, wav.shape)).astype(np.float32)
    write_shard(root / "toy.h5", ids, wav, tgt, 16000)
    res = CliRunner().invoke(cli, ["run", "--model", "toy-cnn", "--random-weights", "--quiet", "--bootstrap", "10",
                                   "--no-trust-checks", "--data", str(root / "toy.h5"), "--out", str(root / "results"),
                                   "--run-id", "r", "--noise", "gaussian", "--snr", "20,10", "--save-audio", "4"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return root / "results" / "r"


@pytest.mark.slow
def test_noise_residuals_of_two_snr_conditions_are_not_proportional(noise_run):
    import soundfile as sf

    audio = noise_run / "audio" / "toy-cnn"
    clean = sorted((audio / "none").glob("*.wav"))
    assert len(clean) == 4
    for path in clean:
        x, _ = sf.read(path, dtype="float64")
        r20 = sf.read(audio / "gaussian_snr_db=20" / path.name, dtype="float64")[0] - x
        r10 = sf.read(audio / "gaussian_snr_db=10" / path.name, dtype="float64")[0] - x
        assert np.std(r20) > 0 and np.std(r10) > 0
        # one draw rescaled would give a correlation of ~1 (exactly proportional before the clamp)
        assert abs(np.corrcoef(r20, r10)[0, 1]) < 0.2, path.name
        assert np.std(r10) / np.std(r20) == pytest.approx(10 ** 0.5, rel=0.1)  # the SNRs themselves hold
