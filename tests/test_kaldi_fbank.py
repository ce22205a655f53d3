"""Batched Kaldi fbank (audiobench.models.kaldi) against torchaudio's per-clip reference.

Tolerance: 1e-4 absolute on the log-mel values (the fidelity contract of issue #3); measured
agreement is ~1e-6 (float rounding only).
"""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio.compliance.kaldi as ta_kaldi

from audiobench.models.kaldi import KaldiFbank, kaldi_fbank

TOL = 1e-4
# AST's arguments (YuanGongND/ast src/dataloader.py; transformers ASTFeatureExtractor)
AST_KW = dict(
    htk_compat=True,
    sample_frequency=16000,
    use_energy=False,
    window_type="hanning",
    num_mel_bins=128,
    dither=0.0,
    frame_shift=10,
)


def _clips(n_samples: int = 8000) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    t = torch.arange(n_samples, dtype=torch.float64) / 16000.0
    noise = 0.1 * torch.randn(n_samples, generator=g, dtype=torch.float64)
    sine = 0.5 * torch.sin(2 * math.pi * 440.0 * t)
    chirp = 0.3 * torch.sin(2 * math.pi * (100.0 + 3000.0 * t) * t) + 0.01
    quiet = 1e-4 * torch.randn(n_samples, generator=g, dtype=torch.float64)
    quiet[: n_samples // 2] = 0.0  # digital silence in the first half: epsilon floor
    return torch.stack([noise, sine, chirp, quiet]).float()


def _reference(x: torch.Tensor, **kw) -> torch.Tensor:
    return torch.stack([ta_kaldi.fbank(x[i : i + 1], **kw) for i in range(x.shape[0])])


def test_matches_torchaudio_per_clip_ast_options():
    x = _clips()
    ours = kaldi_fbank(x, **AST_KW)
    ref = _reference(x, **AST_KW)
    assert ours.shape == ref.shape == (4, 1 + (8000 - 400) // 160, 128)
    assert (ours - ref).abs().max().item() < TOL
    # the silent half sits exactly at log(eps) in both
    assert torch.equal(ours[3, :10], ref[3, :10])


def test_module_matches_function_and_keeps_state_dict_empty():
    x = _clips(4000)
    fb = KaldiFbank()
    assert fb.state_dict() == {}  # non-persistent buffers: no checkpoint keys
    assert {n for n, _ in fb.named_buffers()} == {"window", "mel_banks"}
    assert torch.equal(fb(x), kaldi_fbank(x, **AST_KW))
    assert fb.num_frames(4000) == fb(x).shape[1]


@pytest.mark.parametrize(
    "opts",
    [
        dict(use_energy=True),
        dict(use_energy=True, htk_compat=False, raw_energy=False),
        dict(snip_edges=False),
        dict(window_type="povey", subtract_mean=True),
        dict(window_type="hamming", use_power=False),
        dict(window_type="blackman", use_log_fbank=False),
        dict(frame_length=20.0, round_to_power_of_two=False, num_mel_bins=64, low_freq=50.0, high_freq=-400.0),
        dict(preemphasis_coefficient=0.0, remove_dc_offset=False, vtln_warp=1.1, num_mel_bins=40),
    ],
)
def test_matches_torchaudio_other_options(opts):
    x = _clips(3000)
    kw = dict(AST_KW, **opts)
    ours = kaldi_fbank(x, **kw)
    ref = _reference(x, **kw)
    assert ours.shape == ref.shape
    scale = 1.0 if kw.get("use_log_fbank", True) else ref.abs().max().item()  # linear output: relative
    assert (ours - ref).abs().max().item() < TOL * scale


def test_batch_leading_dims_and_consistency():
    x = _clips(4000)
    full = kaldi_fbank(x)
    assert torch.equal(kaldi_fbank(x.reshape(2, 2, -1)).reshape(full.shape), full)
    for i in range(x.shape[0]):
        assert (kaldi_fbank(x[i : i + 1])[0] - full[i]).abs().max().item() < 1e-5


def test_gradient_flows_to_waveform():
    x = _clips(2000).requires_grad_(True)
    y = KaldiFbank()(x)
    y.sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    # every clip, including the half-silent one, receives gradient
    assert (x.grad.abs().sum(dim=1) > 0).all()


def test_no_input_mutation_and_float64():
    x = _clips(2000).double()
    before = x.clone()
    ours = KaldiFbank()(x)
    assert torch.equal(x, before)
    assert ours.dtype == torch.float64
    ref = _reference(x, **AST_KW)
    assert (ours - ref).abs().max().item() < TOL


def test_dither_needs_generator_and_is_reproducible():
    x = _clips(2000)
    with pytest.raises(ValueError, match="Generator"):
        kaldi_fbank(x, dither=1.0)
    a = kaldi_fbank(x, dither=1e-3, generator=torch.Generator().manual_seed(3))
    b = kaldi_fbank(x, dither=1e-3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, kaldi_fbank(x))


def test_too_short_and_bad_options_raise():
    with pytest.raises(ValueError, match="shorter than one"):
        kaldi_fbank(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="window_type"):
        kaldi_fbank(torch.zeros(1, 1000), window_type="kaiser")
    assert kaldi_fbank(torch.zeros(3, 1000), min_duration=1.0).shape == (3, 0, 128)


def test_compiles_without_graph_breaks():
    import torch._dynamo as dynamo

    explanation = dynamo.explain(KaldiFbank())(_clips(2000))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
