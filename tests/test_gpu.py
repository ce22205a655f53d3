"""GPU checks (marker ``gpu``): skipped without CUDA, never required in CI; run on the device
machine by benchmarks/run_device_checks.sh (``python -m pytest -q -m gpu tests/test_gpu.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    from audiobench.data.shards import write_shard
    from audiobench.data.toy import generate_toy_clips

    ids, wav, tgt = generate_toy_clips(8, seed=5, clip_seconds=2.0)
    path = tmp_path_factory.mktemp("gpu") / "toy.h5"
    write_shard(path, ids, wav, tgt, 16000)
    return path


def _run(shard, out, device, *extra):
    from click.testing import CliRunner

    from audiobench.cli import cli

    res = CliRunner().invoke(cli, ["run", "--model", "toy-cnn", "--data", str(shard), "--out", str(out), "--run-id", "r",
                                   "--device", device, "--noise", "gaussian,pgd", "--snr", "10", "--eps", "0.002",
                                   "--steps", "3", "--bootstrap", "0", "--quiet", *extra], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return np.load(out / "r" / "scores.npz")


def test_cuda_run_matches_cpu_run(shard, tmp_path):
    """Same noise on every device (drawn on the CPU per clip); logits agree to float tolerance."""
    cpu, gpu = _run(shard, tmp_path / "cpu", "cpu"), _run(shard, tmp_path / "gpu", "cuda")
    for key in ("logits__toy-cnn__none", "logits__toy-cnn__gaussian:snr_db=10"):
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-3, atol=1e-3)


def test_bf16_attack_runs_and_stays_in_the_ball(shard, tmp_path):
    import pandas as pd

    _run(shard, tmp_path, "cuda", "--precision", "bf16")
    pc = pd.read_csv(tmp_path / "r" / "per_clip.csv")
    assert (pc[pc.condition == "pgd/linf:eps=0.002"]["linf"] <= 0.002 + 1e-6).all()


def test_loader_pins_and_copies_to_cuda(shard):
    from audiobench.data import open_dataset

    ds = open_dataset(str(shard))
    batches = list(ds.batches(4, device="cuda"))
    assert batches and all(b.waveform.is_cuda for b in batches)
    ref = ds.read(0, 4).waveform
    torch.testing.assert_close(batches[0].waveform.cpu(), ref)


def test_stft_power_backward_on_cuda_matches_autograd():
    """The hand-written STFT backward on CUDA (cuFFT): same forward as autograd's path, gradient
    within float rounding of it and of the CPU's."""
    from audiobench.models.frontends import stft_power

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 32000, generator=g) * 2 - 1) * 0.3
    window = torch.hann_window(800, periodic=False)
    grads, outs = {}, {}
    for device in ("cpu", "cuda"):
        for fused in (False, True):
            xg = x.to(device).requires_grad_(True)
            p = stft_power(xg, 1024, 320, window.to(device), 800, preemphasis=0.97, fused_backward=fused)
            up = torch.randn(p.shape, generator=torch.Generator().manual_seed(1)).to(device)
            grads[device, fused] = torch.autograd.grad(p, xg, up)[0].cpu()
            outs[device, fused] = p.detach().cpu()
    assert torch.equal(outs["cuda", False], outs["cuda", True])
    scale = grads["cpu", False].abs().max()
    for key in (("cuda", False), ("cuda", True), ("cpu", True)):
        assert (grads[key] - grads["cpu", False]).abs().max() <= 1e-4 * scale, key
