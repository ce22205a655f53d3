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


def _run_cli(args):
    from click.testing import CliRunner

    from audiobench.cli import cli

    res = CliRunner().invoke(cli, ["run", "--bootstrap", "0", "--quiet", "--no-trust-checks", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def test_corruptions_on_cuda_match_the_cpu(shard, tmp_path):
    """Corruptions run in float64 on the clip's device; CUDA and CPU agree to float tolerance
    (mp3 is coded on the CPU in either case and comes back to the device)."""
    names = "pink-noise,reverb,lowpass,highpass,clipping,bitcrush,resample,pitch-shift,speed,mp3"
    scores = {}
    for device in ("cpu", "cuda"):
        _run_cli(["--model", "toy-cnn", "--data", str(shard), "--out", str(tmp_path / device), "--run-id", "r",
                  "--device", device, "--noise", names, "--severity", "3"])
        scores[device] = np.load(tmp_path / device / "r" / "scores.npz")
    keys = [k for k in scores["cpu"].files if k.startswith("logits__")]
    assert len(keys) == 11  # clean + ten corruptions
    for key in keys:
        np.testing.assert_allclose(scores["cuda"][key], scores["cpu"][key], rtol=1e-3, atol=1e-3, err_msg=key)


def test_transfer_diagonal_on_cuda_equals_the_white_box_run(shard, tmp_path):
    common = ["--data", str(shard), "--device", "cuda", "--noise", "pgd", "--eps", "0.002", "--steps", "3"]
    _run_cli(["--model", "toy-cnn,toy-transformer", "--transfer-from", "toy-cnn", "--out", str(tmp_path / "t"),
              "--run-id", "r", *common])
    _run_cli(["--model", "toy-cnn", "--out", str(tmp_path / "w"), "--run-id", "r", *common])
    t, w = np.load(tmp_path / "t" / "r" / "scores.npz"), np.load(tmp_path / "w" / "r" / "scores.npz")
    np.testing.assert_array_equal(t["logits__toy-cnn__transfer[toy-cnn]/pgd/linf:eps=0.002"],
                                  w["logits__toy-cnn__pgd/linf:eps=0.002"])
    assert "logits__toy-transformer__transfer[toy-cnn]/pgd/linf:eps=0.002" in t.files


def test_quantized_variants_run_on_cuda_and_int8_is_refused_with_one_line(shard, tmp_path):
    import pandas as pd
    from click.testing import CliRunner

    from audiobench.cli import cli

    _run_cli(["--model", "toy-cnn,toy-cnn@fp16,toy-cnn@bf16,toy-cnn@w4", "--data", str(shard), "--device", "cuda",
              "--out", str(tmp_path), "--run-id", "r", "--noise", "pgd", "--eps", "0.002", "--steps", "3"])
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    clean = m[(m.condition == "none") & (m.metric == "mAP")].set_index("model")["value"]
    assert set(clean.index) == {"toy-cnn", "toy-cnn@fp16", "toy-cnn@bf16", "toy-cnn@w4"}
    assert (abs(clean - clean["toy-cnn"]) <= 0.1).all(), clean
    res = CliRunner().invoke(cli, ["run", "--model", "toy-cnn@int8", "--data", str(shard), "--device", "cuda",
                                   "--out", str(tmp_path), "--run-id", "i8", "--quiet"])
    assert res.exit_code != 0 and "--device cpu" in res.output and not (tmp_path / "i8").exists()
