"""pgd, fgsm, apgd, universal, feature-domain, min-eps, grid: constraints, strength, determinism."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from audiobench.errors import ConfigError, UnknownNameError
from audiobench.perturb import PERTURBATIONS
from audiobench.perturb.attacks import APGD, FGSM, PGD, apgd, apgd_checkpoints, bce_per_clip, fgsm, pgd
from audiobench.perturb.base import AttackTrace
from audiobench.perturb.feature import FeatureGaussian, FeaturePGD
from audiobench.perturb.grid import expand_grid, parse_levels
from audiobench.metrics.definitions import MIN_EPS_MISSED_CLEAN
from audiobench.perturb.min_eps import MinEps, labels_in_topk
from audiobench.perturb.universal import Universal
from perturb_helpers import one_thread, LinearTagger, TinyConvTagger, rng_for, targets_for, waves

N = 1600  # 0.2 s at 8 kHz


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model():
    return TinyConvTagger()


def _check_ball(x, y, eps, norm):
    d = (y.double() - x.double())
    if norm == "linf":
        assert float(d.abs().max()) <= eps + 1e-7
    else:
        assert float(d.flatten(1).norm(dim=1).max()) <= eps * (1 + 1e-5)
    assert float(y.abs().max()) <= 1.0


ATTACKS = [
    lambda eps, norm: PGD(eps=eps, norm=norm, steps=5),
    lambda eps, norm: PGD(eps=eps, norm=norm, steps=3, restarts=2, step_size=eps),
    lambda eps, norm: FGSM(eps=eps, norm=norm),
    lambda eps, norm: APGD(eps=eps, norm=norm, steps=6),
]


@pytest.mark.parametrize("make", ATTACKS, ids=["pgd", "pgd-restarts", "fgsm", "apgd"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.01), ("linf", 0.3), ("l2", 0.5), ("l2", 5.0)])
def test_eps_ball_and_range_exact(model, make, norm, eps):
    x = waves(4, N, amp=0.98)  # near full scale: the [-1, 1] clamp is active
    x0 = x.clone()
    t = targets_for(4, 6)
    y = make(eps, norm)(x, model=model, targets=t, rng=rng_for(range(4)))
    assert torch.equal(x, x0)  # never in place
    assert y.dtype == x.dtype and y.shape == x.shape
    _check_ball(x, y, eps, norm)
    assert not torch.equal(x, y)


@pytest.mark.parametrize("kind", ["pgd", "fgsm", "apgd"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_is_clean(model, kind, norm):
    x = waves(3, N)
    y = PERTURBATIONS.get(kind)(eps=0.0, norm=norm)(x, model=model, targets=targets_for(3, 6), rng=rng_for(range(3)))
    assert torch.equal(x, y)


@pytest.mark.parametrize("make", ATTACKS, ids=["pgd", "pgd-restarts", "fgsm", "apgd"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_seed_and_batch_size_independent_exact(make, norm):
    # a model whose per-clip arithmetic does not depend on the batch: the attacks' own arithmetic
    # must then give bit-identical results for batch 8, batch 1 and any order
    m = LinearTagger(waves(1, N, seed=11)[0] * 0.1, 0.05)
    eps = 0.02 if norm == "linf" else 0.5
    p = make(eps, norm)
    x, t = waves(8, N, seed=3), targets_for(8, 1, seed=3)
    a = p(x, model=m, targets=t, rng=rng_for(range(8)))
    assert torch.equal(a, p(x, model=m, targets=t, rng=rng_for(range(8))))
    singles = torch.cat([p(x[i : i + 1], model=m, targets=t[i : i + 1], rng=rng_for([i])) for i in range(8)])
    assert torch.equal(a, singles)
    rev = p(x.flip(0), model=m, targets=t.flip(0), rng=rng_for(list(range(8))[::-1]))
    assert torch.equal(rev.flip(0), a)


@pytest.mark.parametrize("kind", ["pgd", "apgd"])
def test_batch_size_independent_conv_model(model, kind):
    # a conv model's kernels may round differently per batch size: equal up to that rounding
    p = PERTURBATIONS.get(kind)(eps=0.02, steps=4)
    x, t = waves(8, N, seed=3), targets_for(8, 6, seed=3)
    a = p(x, model=model, targets=t, rng=rng_for(range(8)))
    singles = torch.cat([p(x[i : i + 1], model=model, targets=t[i : i + 1], rng=rng_for([i])) for i in range(8)])
    assert torch.allclose(a, singles, atol=1e-6, rtol=0)
    assert not torch.equal(a, p(x, model=model, targets=t, rng=rng_for(range(8), seed=99)))  # the seed matters


def test_gradients_only_wrt_input(model):
    x, t = waves(2, N), targets_for(2, 6)
    for prm in model.parameters():
        assert prm.grad is None
    PGD(eps=0.01, steps=2)(x, model=model, targets=t, rng=rng_for(range(2)))
    APGD(eps=0.01, steps=3)(x, model=model, targets=t, rng=rng_for(range(2)))
    assert all(prm.grad is None for prm in model.parameters())
    with torch.no_grad():  # the engine may call under no_grad: attacks still get their gradient
        y = PGD(eps=0.01, steps=2)(x, model=model, targets=t, rng=rng_for(range(2)))
    assert not torch.equal(x, y)


def _flip_setup(norm):
    """A linear one-class model and a clip labelled positive whose logit a known in-ball
    perturbation (-eps·sign(w) for linf, -eps·w/||w|| for l2) drives from +m to -m."""
    g = torch.Generator().manual_seed(0)
    n = 400
    w = torch.randn(n, generator=g) * 0.1
    x = (torch.rand(1, n, generator=g) - 0.5) * 0.5  # |x| <= 0.25: clamping never interferes
    eps = 0.02 if norm == "linf" else 0.2
    drop = eps * float(w.abs().sum() if norm == "linf" else w.norm())
    b = drop / 2 - float((x[0] * w).sum())  # clean logit = +drop/2
    known = -eps * (torch.sign(w) if norm == "linf" else w / w.norm())
    return LinearTagger(w, b), x, torch.ones(1, 1, dtype=torch.bool), eps, known


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["pgd", "apgd"])
def test_guaranteed_success(kind, norm):
    m, x, t, eps, known = _flip_setup(norm)
    with torch.no_grad():
        assert float(m(x)) > 0 and float(m(x + known)) < 0  # the known perturbation flips it
    p = PERTURBATIONS.get(kind)(eps=eps, norm=norm, steps=10)
    y = p(x, model=m, targets=t, rng=rng_for([0]))
    _check_ball(x, y, eps, norm)
    with torch.no_grad():
        assert float(m(y)) < 0


def test_strength_order_apgd_pgd_fgsm(model):
    x, t = waves(8, N, seed=5, amp=0.3), targets_for(8, 6, seed=5)
    eps = 0.05
    with torch.no_grad():
        loss = lambda y: float(bce_per_clip(model(y), t).mean())  # noqa: E731
        clean = loss(x)
        l_f = loss(fgsm(model, x, t, eps=eps))
        l_p = loss(pgd(model, x, t, eps=eps, steps=20, rng=rng_for(range(8))))
        l_a = loss(apgd(model, x, t, eps=eps, steps=20, rng=rng_for(range(8))))
    assert clean < l_f <= l_p <= l_a, (clean, l_f, l_p, l_a)


def test_trace_records_losses_and_bad_gradients(model):
    x, t = waves(4, N), targets_for(4, 6)
    tr = AttackTrace()
    PGD(eps=0.02, steps=5)(x, model=model, targets=t, rng=rng_for(range(4)), trace=tr)
    assert len(tr.loss_per_step) == 6 and tr.n_per_step == [4] * 6 and tr.n_clips == 4
    assert tr.loss_per_step[-1] > tr.loss_per_step[0]
    assert tr.bad_grad_clips == 0 and tr.per_clip["bad_grad_steps"] == [0.0] * 4
    # a dead model: zero input gradient everywhere is counted
    dead = LinearTagger(torch.zeros(N), 0.0)
    tr2 = AttackTrace()
    PGD(eps=0.02, steps=3)(x, model=dead, targets=torch.ones(4, 1, dtype=torch.bool), rng=rng_for(range(4)), trace=tr2)
    assert tr2.bad_grad_clips == 4 and tr2.per_clip["bad_grad_steps"] == [3.0] * 4
    # merge over two half batches gives the same means as the whole batch (same per-clip streams)
    ta, tb = AttackTrace(), AttackTrace()
    PGD(eps=0.02, steps=5)(x[:2], model=model, targets=t[:2], rng=rng_for([0, 1]), trace=ta)
    PGD(eps=0.02, steps=5)(x[2:], model=model, targets=t[2:], rng=rng_for([2, 3]), trace=tb)
    assert ta.merge(tb).loss_per_step == pytest.approx(tr.loss_per_step, rel=1e-6)


def test_nan_gradient_counted_not_propagated():
    class NaNModel(LinearTagger):
        def forward_features(self, f):
            return super().forward_features(f) * torch.sqrt(f[:, :1] - 10.0)  # NaN everywhere

    m = NaNModel(torch.ones(N) * 0.01, 0.0)
    x = waves(2, N)
    tr = AttackTrace()
    y = PGD(eps=0.01, steps=2)(x, model=m, targets=torch.ones(2, 1, dtype=torch.bool), rng=rng_for([0, 1]), trace=tr)
    assert torch.isfinite(y).all() and tr.bad_grad_clips == 2


def test_apgd_checkpoints():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize(
    "kind,kw",
    [("pgd", dict(eps=-0.1)), ("pgd", dict(eps=float("nan"))), ("pgd", dict(norm="l3")), ("pgd", dict(steps=0)),
     ("pgd", dict(step_size=0)), ("apgd", dict(restarts=0)), ("fgsm", dict(eps="big")), ("universal", dict(eps=-1)),
     ("min-eps", dict(probes=11)), ("min-eps", dict(eps_max=0)), ("feature-pgd", dict(norm="l1"))],
)
def test_attack_invalid(kind, kw):
    with pytest.raises(ConfigError):
        PERTURBATIONS.get(kind)(**kw)


def test_training_mode_warns(model):
    m = TinyConvTagger()
    m.train()
    with pytest.warns(UserWarning, match="training mode"):
        PGD(eps=0.01, steps=1)(waves(1, N), model=m, targets=targets_for(1, 6), rng=rng_for([0]))


# --------------------------------------------------------------------------- universal
def test_universal_fit_stays_in_ball_and_raises_loss(model):
    x, t = waves(8, N, seed=9, amp=0.3), targets_for(8, 6, seed=9)
    batches = lambda: [(x[:4], t[:4]), (x[4:], t[4:])]  # noqa: E731
    seen = []
    for norm, eps in [("linf", 0.05), ("l2", 1.0)]:
        u = Universal(eps=eps, norm=norm, epochs=3)
        assert u.requires_fit and u.condition_id == f"universal/{norm}:eps={eps:g}"
        with pytest.raises(ConfigError, match="fit"):
            u(x)
        tr = AttackTrace()
        u.fit(model, batches, device="cpu", rng_seed=1, grad_hook=lambda g: seen.append(1) or g, trace=tr)
        d = u.delta
        assert d.shape == (N,)
        if norm == "linf":
            assert float(d.abs().max()) <= eps + 1e-7
        else:
            assert float(d.norm()) <= eps * (1 + 1e-5)
        y = u(x)
        _check_ball(x, y, eps, norm)
        assert torch.equal(y[0] - x[0], y[0] - x[0])
        with torch.no_grad():
            assert float(bce_per_clip(model(y), t).mean()) > float(bce_per_clip(model(x), t).mean())
        assert len(tr.loss_per_step) == 3
    assert len(seen) == 12  # the hook saw every batch gradient
    u2 = Universal(eps=0.05, epochs=3)
    u2.fit(model, batches, device="cpu", rng_seed=1)
    u3 = Universal(eps=0.05, epochs=3)
    u3.fit(model, batches, device="cpu", rng_seed=1)
    assert torch.equal(u2.delta, u3.delta)
    with pytest.raises(ConfigError, match="samples"):
        u2(waves(1, N + 1))
    u4 = Universal(eps=0.05)
    u4.load_state(u2.state_dict())  # resume path of the engine
    assert torch.equal(u4(x), u2(x))


# --------------------------------------------------------------------------- feature domain
def test_feature_domain_within_budget(model):
    x, t = waves(3, N), targets_for(3, 6)
    f = model.features(x).detach()
    f0 = f.clone()
    fp = FeaturePGD(eps=0.2, norm="linf", steps=4)
    assert fp.domain == "feature" and not fp.comparable_across_models and fp.uses_model
    g = fp.perturb_features(f, model=model, targets=t, rng=rng_for(range(3)))
    assert torch.equal(f, f0) and not torch.equal(f, g)
    assert float((g - f).abs().max()) <= 0.2 + 1e-6
    with torch.no_grad():
        assert float(bce_per_clip(model.forward_features(g), t).mean()) > float(bce_per_clip(model.forward_features(f), t).mean())
    g2 = FeaturePGD(eps=1.0, norm="l2", steps=4).perturb_features(f, model=model, targets=t, rng=rng_for(range(3)))
    assert float((g2 - f).flatten(1).norm(dim=1).max()) <= 1.0 * (1 + 1e-5)
    fg = FeatureGaussian(sigma=0.1)
    h = fg.perturb_features(f, rng=rng_for(range(3)))
    assert abs(float((h - f).std()) - 0.1) < 0.02 and not fg.comparable_across_models
    with pytest.raises(TypeError, match="features"):
        fp(x, model=model, targets=t, rng=rng_for(range(3)))


# --------------------------------------------------------------------------- min-eps
def test_min_eps_bisection():
    # linear model, 3 classes: class 0 is the label; breaking it = pushing it out of the top-1
    g = torch.Generator().manual_seed(2)
    n = 200
    x = (torch.rand(4, n, generator=g) - 0.5) * 0.4

    class Lin3(LinearTagger):
        def forward_features(self, f):
            z = (f * self.w).sum(dim=-1, keepdim=True)
            return torch.cat([z + self.b, torch.zeros_like(z), torch.zeros_like(z) - 5], dim=1)

    w = torch.randn(n, generator=g) * 0.1
    margins = torch.tensor([0.05, 0.2, 0.4, 2.0])  # clean logit of class 0 above class 1
    b = 0.0
    x = x - ((x * w).sum(1, keepdim=True) - margins[:, None]) * w / w.pow(2).sum()  # set <w,x> = margin
    m = Lin3(w, b)
    assert float(x.abs().max()) < 1 and float(2.0 / w.abs().sum()) > 0.05
    t = torch.zeros(4, 3, dtype=torch.bool)
    t[:, 0] = True
    tr = AttackTrace()
    p = MinEps(eps_max=0.05, probes=10, steps=10, top_k=1)
    y = p(x, model=m, targets=t, rng=rng_for(range(4)), trace=tr)
    found = torch.tensor(tr.per_clip["min_eps"])
    assert len(tr.per_clip["bad_grad_steps"]) == 4 and tr.n_clips == 4 and len(tr.loss_per_step) == 11
    exact = margins / w.abs().sum()  # linf eps that exactly cancels the margin
    assert math.isinf(float(found[3]))  # margin 2 is out of reach within eps_max
    assert torch.all(found[:3] >= exact[:3] * 0.999) and torch.all(found[:3] <= exact[:3] + 0.05 / 2**9 + 1e-6)
    with torch.no_grad():
        assert not labels_in_topk(m(y[:3]), t[:3], 1).any()
    assert float((y - x).abs().max()) <= 0.05 + 1e-7
    # already broken / no label
    t2 = t.clone()
    t2[0] = False
    t2[1] = torch.tensor([False, True, False])
    tr2 = AttackTrace()
    p(x[:2], model=m, targets=t2[:2], rng=rng_for(range(2)), trace=tr2)
    # no label: NaN; a label already out of the top-k clean: recorded apart from every eps (-1)
    assert math.isnan(tr2.per_clip["min_eps"][0]) and tr2.per_clip["min_eps"][1] == MIN_EPS_MISSED_CLEAN
    assert tr2.per_clip["bad_grad_steps"] == [0.0, 0.0] and tr2.n_clips == 0


# --------------------------------------------------------------------------- grid
def test_expand_grid():
    ps = expand_grid("pgd", eps=[0.001, 0.002], norm="linf", steps=10)
    assert [p.condition_id for p in ps] == ["pgd/linf:eps=0.001", "pgd/linf:eps=0.002"]
    assert all(p.steps == 10 and p.param == "eps" for p in ps) and [p.level for p in ps] == [0.001, 0.002]
    ps = expand_grid("gaussian", snr="30,20,inf")
    assert [p.level for p in ps] == [30.0, 20.0, math.inf] and ps[0].condition_id == "gaussian:snr_db=30"
    ps = expand_grid("gaussian", sigma=[0.1])
    assert ps[0].param == "sigma"
    ps = expand_grid("occlusion", pattern="alternate", period_s=[1, 0.5])
    assert [p.condition_id for p in ps] == ["occlusion/alternate:period_s=1", "occlusion/alternate:period_s=0.5"]
    ps = expand_grid("occlusion", pattern="first,middle", span=[1, 2])
    assert len({p.condition_id for p in ps}) == 4
    ps = expand_grid("occlusion", pattern="band", band="0-500,500-2000")
    assert [p.band_hz for p in ps] == [(0.0, 500.0), (500.0, 2000.0)]
    assert expand_grid("none")[0].condition_id == "none"
    assert len(expand_grid("pgd", eps="0.001,0.001")) == 1
    assert expand_grid("gaussian", snr_db=10, eps=None)[0].snr_db == 10
    assert len(expand_grid("gaussian", snr_db=10, eps=0.1, strict=False)) == 1
    d = expand_grid("apgd", eps=0.002)[0].to_dict()
    assert d["perturbation"] == "apgd" and d["eps"] == 0.002 and d["steps"] == 100 and d["condition_id"] == "apgd/linf:eps=0.002"
    with pytest.raises(UnknownNameError, match="Did you mean .pgd."):
        expand_grid("pdg", eps=1)
    with pytest.raises(ConfigError, match="no option"):
        expand_grid("gaussian", snr_db=10, eps=0.1)
    with pytest.raises(ConfigError):
        expand_grid("pgd", eps="0.1,-0.2")
    with pytest.raises(ConfigError):
        expand_grid("pgd", eps=0.1, steps="2.5")


@pytest.mark.parametrize("bad", ["", "1,,2", "abc", "nan", "1;2", None, [], ["x"]])
def test_parse_levels_junk(bad):
    with pytest.raises(ConfigError):
        parse_levels(bad)


def test_parse_levels():
    assert parse_levels("0.001,0.002,inf") == [0.001, 0.002, math.inf]
    assert parse_levels(" 30 , -5") == [30.0, -5.0]
    assert parse_levels([1, "2"]) == [1.0, 2.0]
