"""The hand-written STFT-power backward (audiobench.models.frontends.stft_power) against autograd
through torch.stft: same forward values, the same gradient up to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch

from audiobench.models import load_model
from audiobench.models.frontends import _StftPower, set_fused_backward, stft_power

# (n_fft, win_length, hop, preemphasis): mn04's geometry, a plain one, a window shorter than the
# frame with an odd offset and a last chunk of 1 sample, hop > window (frames do not overlap)
GEOMETRIES = [(1024, 800, 320, 0.97), (512, 512, 256, None), (512, 401, 100, None), (256, 128, 200, 0.5)]


def _signal(n, batch=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(batch, n, generator=g, dtype=torch.float64) * 2 - 1) * 0.3).to(dtype)


def _both(x, geometry, upstream=None):
    n_fft, win_length, hop, pre = geometry
    window = torch.hann_window(win_length, periodic=False, dtype=x.dtype)
    out, grads = [], []
    for fused in (False, True):
        xg = x.clone().requires_grad_(True)
        p = stft_power(xg, n_fft, hop, window, win_length, preemphasis=pre, fused_backward=fused)
        up = upstream if upstream is not None else torch.randn(p.shape, generator=torch.Generator().manual_seed(1),
                                                                dtype=x.dtype)
        (gx,) = torch.autograd.grad(p, xg, up)
        out.append(p.detach())
        grads.append(gx)
    return out, grads


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_forward_identical_and_gradient_matches_autograd(geometry):
    x = _signal(8000)
    (ref, fused), (g_ref, g_fused) = _both(x, geometry)
    assert torch.equal(ref, fused)
    assert ref.shape[1] == 1 + (x.shape[1] - (geometry[3] is not None)) // geometry[2]  # frames-major
    assert ref.shape[2] == geometry[0] // 2 + 1
    # float rounding only: the two float32 gradients agree to ~1e-6 of their scale, and both are
    # as close to the float64 gradient as each other
    scale = g_ref.abs().max()
    assert (g_ref - g_fused).abs().max() <= 1e-5 * scale
    _, (g64, _) = _both(x.double(), geometry)
    err_ref = (g_ref.double() - g64).abs().max()
    err_fused = (g_fused.double() - g64).abs().max()
    assert err_fused <= 2 * err_ref + 1e-7 * scale


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_gradcheck_float64(geometry):
    n_fft, win_length, hop, pre = geometry
    x = _signal(n_fft + 3 * hop + 7, batch=2, dtype=torch.float64).requires_grad_(True)
    window = torch.hann_window(win_length, periodic=False, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: _StftPower.apply(v, window, n_fft, hop, win_length, pre), (x,),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)


def test_zero_upstream_gradient_gives_zero():
    x = _signal(4000)
    _, (g_ref, g_fused) = _both(x, GEOMETRIES[0], upstream=torch.zeros(3, 13, 513))
    assert torch.count_nonzero(g_fused) == 0 and torch.count_nonzero(g_ref) == 0


def test_model_switch_and_gradients_agree():
    model = load_model("efficientat-mn04", weights="random").eval().requires_grad_(False)
    reference = copy.deepcopy(model)
    assert set_fused_backward(reference, False) == 1
    assert model.frontend.fused_backward is True  # the default
    x = _signal(32000, batch=2)
    grads = []
    for m in (reference, model):
        xg = x.clone().requires_grad_(True)
        feats = m.features(xg)
        up = torch.randn(feats.shape, generator=torch.Generator().manual_seed(2))
        grads.append(torch.autograd.grad(feats, xg, up)[0])
    with torch.no_grad():
        assert torch.equal(reference.features(x), model.features(x))
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[0].abs().max()
