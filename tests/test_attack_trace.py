"""Attacks return the best point (issue 20), and the trace records the best-so-far loss (issue 15 #7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiobench.perturb.attacks import APGD, PGD, apgd, bce_per_clip, pgd
from audiobench.perturb.base import COLLAPSE_FRACTION, AttackTrace, loss_trace_findings
from perturb_helpers import TinyConvTagger, one_thread, rng_for, targets_for, waves

N = 1600


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


class Recorder:
    """Wraps a model; keeps the per-clip loss of every forward pass (one per attack iterate)."""

    def __init__(self, model, targets):
        self.model, self.targets, self.losses = model, targets, []

    def __call__(self, x):
        out = self.model(x)
        self.losses.append(bce_per_clip(out.detach(), self.targets))
        return out


class Wiggly(torch.nn.Module):
    """logit_c = 4·sin(k·<w_c, x>): a loss with many maxima inside the ball, so a large sign step
    overshoots and the iterates oscillate."""

    def __init__(self, n_classes=6, k=100.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(n_classes, N, generator=g) / N
        self.k = k

    def forward(self, x):
        return 4.0 * torch.sin(self.k * x @ self.w.T)


def test_pgd_returns_the_per_clip_best_point_over_all_steps_and_restarts():
    model = Wiggly()
    x, t = waves(6, N, seed=3), targets_for(6, 6, seed=3)
    eps, steps = 0.05, 6
    rec = Recorder(model, t)
    tr = AttackTrace()
    # step size = eps on a wiggly loss: every sign step jumps across a maximum, the iterates oscillate
    y = pgd(rec, x, t, eps=eps, steps=steps, step_size=eps, restarts=2, rng=rng_for(range(6)), trace=tr)
    seen = torch.stack(rec.losses)  # (restarts * (steps + 1), clips): every iterate's loss
    assert seen.shape == (2 * (steps + 1), 6)
    with torch.no_grad():
        got = bce_per_clip(model(y), t)
    best = seen.max(dim=0).values
    torch.testing.assert_close(got, best, rtol=1e-5, atol=1e-7)
    per_restart = seen.reshape(2, steps + 1, 6)
    assert bool((got >= per_restart.max(dim=1).values.max(dim=0).values - 1e-6).all())
    # the oscillation is real: the last iterate of some clip is well below its best, so returning
    # the last iterate instead of the best point would fail the equality above
    last = per_restart[-1, -1]
    assert float((best - last).min()) > 0.01 and float((best - last).max()) > 0.1
    # a single restart with the same stream is the first restart: the result is at least as good
    single = pgd(model, x, t, eps=eps, steps=steps, step_size=eps, restarts=1, rng=rng_for(range(6)))
    with torch.no_grad():
        assert bool((got >= bce_per_clip(model(single), t) - 1e-6).all())
    # the trace's best-so-far ends at the returned point's mean loss
    assert tr.best_loss_per_step[-1] == pytest.approx(float(got.double().mean()), rel=1e-5)
    assert all(b1 >= b0 - 1e-12 for b0, b1 in zip(tr.best_loss_per_step, tr.best_loss_per_step[1:]))


def test_apgd_returns_the_best_point_too():
    model = TinyConvTagger()
    x, t = waves(4, N, seed=5), targets_for(4, 6, seed=5)
    rec = Recorder(model, t)
    y = apgd(rec, x, t, eps=0.05, steps=8, restarts=2, rng=rng_for(range(4)))
    with torch.no_grad():
        got = bce_per_clip(model(y), t)
    torch.testing.assert_close(got, torch.stack(rec.losses).max(dim=0).values, rtol=1e-5, atol=1e-7)


def test_best_so_far_trace_merges_exactly_across_batches():
    model = TinyConvTagger()
    x, t = waves(4, N), targets_for(4, 6)
    whole, a, b = AttackTrace(), AttackTrace(), AttackTrace()
    p = PGD(eps=0.05, steps=4, step_size=0.05, restarts=2)
    p(x, model=model, targets=t, rng=rng_for(range(4)), trace=whole)
    p(x[:1], model=model, targets=t[:1], rng=rng_for([0]), trace=a)
    p(x[1:], model=model, targets=t[1:], rng=rng_for([1, 2, 3]), trace=b)
    merged = a.merge(b)
    assert merged.best_loss_per_step == pytest.approx(whole.best_loss_per_step, rel=1e-6)
    assert merged.loss_per_step == pytest.approx(whole.loss_per_step, rel=1e-6)
    assert all(bb >= s - 1e-12 for bb, s in zip(whole.best_loss_per_step, whole.loss_per_step))
    # stored unit arrays round-trip, and old units (no best sums) fall back to a running maximum
    back = AttackTrace.from_arrays(whole.to_arrays())
    assert back.best_loss_per_step == pytest.approx(whole.best_loss_per_step)
    assert back.loss_per_step == pytest.approx(whole.loss_per_step) and back.n_clips == 4
    old = {k: v for k, v in whole.to_arrays().items() if k != "trace_best_loss_sum"}
    fallback = AttackTrace.from_arrays(old).best_loss_per_step
    assert fallback == pytest.approx(list(np.maximum.accumulate(whole.loss_per_step)))
    # APGD records the same
    ta = AttackTrace()
    APGD(eps=0.05, steps=5)(x, model=model, targets=t, rng=rng_for(range(4)), trace=ta)
    assert len(ta.best_loss_per_step) == 6 and ta.best_loss_per_step[-1] >= max(ta.loss_per_step) - 1e-12


def test_loss_trace_findings_judge_best_so_far_and_flag_collapse():
    assert COLLAPSE_FRACTION == 0.5
    # the trace of issue 15 #7 (mn04, eps 0.002): spike at step 7 then collapse
    spiky = [0.006, 0.012, 0.018, 0.022, 0.027, 0.033, 0.053, 0.423, 0.056, 0.100]
    best = list(np.maximum.accumulate(spiky) + 0.01)
    f = loss_trace_findings(spiky, best)
    assert len(f) == 1 and "collapsed" in f[0] and "0.423" in f[0] and "step 7" in f[0]
    # a healthy trace: nothing
    assert loss_trace_findings([0.1, 0.2, 0.3, 0.35], [0.1, 0.2, 0.3, 0.35]) == []
    # a last step that keeps more than half the peak's gain is not a collapse
    assert loss_trace_findings([0.0, 1.0, 0.6], [0.0, 1.0, 1.0]) == []
    assert len(loss_trace_findings([0.0, 1.0, 0.4], [0.0, 1.0, 1.0])) == 1
    # the best-so-far trace did not increase: flagged (the step trace alone would not say it)
    f = loss_trace_findings([0.5, 0.4, 0.3], [0.5, 0.5, 0.5])
    assert any("best-so-far loss did not increase" in s for s in f)
    # empty and NaN steps are ignored
    assert loss_trace_findings([], []) == [] and loss_trace_findings([float("nan"), 0.2], [float("nan"), 0.2]) == []
