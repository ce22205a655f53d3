"""EfficientAT DyMN (efficientat-dymn04/10/20) and mn40-as-ext: upstream layout, reference forward.

No DyMN release file is reachable in CI, so fidelity is tested with random weights in the upstream
layout. ``_upstream_keys`` lists the keys and shapes of upstream's ``DyMN.state_dict()`` from our
reading of ``models/dymn/dy_block.py`` / ``model.py``; ``_ref_dymn`` is a functional forward over
that raw state dict following ``DY_Block.forward`` step by step (ContextGen with adaptive pools,
DynamicConv as a per-clip kernel mix, DyReLUB via ``unsqueeze(-1)`` and a max over M, coordinate
attention). The parameter counts were obtained by instantiating upstream's
``get_model(width_mult=w)`` (1,961,239 / 10,548,479 / 39,966,143; the README table's rounded
1.97 / 10.57 / 40.02 M do not match the code).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from audiobench.errors import WeightsError
from audiobench.models import MODELS, load_model

DYMN = ("efficientat-dymn04", "efficientat-dymn10", "efficientat-dymn20")
WIDTH = {"efficientat-dymn04": 0.4, "efficientat-dymn10": 1.0, "efficientat-dymn20": 2.0}
# upstream _dymn_conf (input, kernel, expanded, out, activation, stride), all blocks dynamic
_TABLE = ((16, 3, 16, 16, "RE", 1), (16, 3, 64, 24, "RE", 2), (24, 3, 72, 24, "RE", 1), (24, 5, 72, 40, "RE", 2),
          (40, 5, 120, 40, "RE", 1), (40, 5, 120, 40, "RE", 1), (40, 3, 240, 80, "HS", 2), (80, 3, 200, 80, "HS", 1),
          (80, 3, 184, 80, "HS", 1), (80, 3, 184, 80, "HS", 1), (80, 3, 480, 112, "HS", 1),
          (112, 3, 672, 112, "HS", 1), (112, 5, 672, 160, "HS", 2), (160, 5, 960, 160, "HS", 1),
          (160, 5, 960, 160, "HS", 1))


def _div(v, d=8):
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def _blocks(w):
    for cin, k, cexp, cout, act, s in _TABLE:
        cin, cexp, cout = _div(cin * w), _div(cexp * w), _div(cout * w)
        h = min(max(_div(cexp // 4), _div(32 * w)), _div(128 * w))  # np.clip(..., min, max) upstream
        yield cin, k, cexp, cout, act, s, h


def _bn_keys(keys, p, c):
    for s in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{p}.{s}"] = (c,)
    keys[f"{p}.num_batches_tracked"] = ()


def _upstream_keys(w):
    keys = {}
    for i, (cin, k, cexp, cout, _act, _s, h) in enumerate(_blocks(w)):
        p = f"layers.{i}"
        if cexp != cin:
            keys[f"{p}.exp_conv.weight"] = (1, 1, 4, cexp * cin)
            keys[f"{p}.exp_conv.residuals.0.weight"], keys[f"{p}.exp_conv.residuals.0.bias"] = (4, h), (4,)
            _bn_keys(keys, f"{p}.exp_norm", cexp)
        keys[f"{p}.depth_conv.weight"] = (1, 1, 4, cexp * k * k)
        keys[f"{p}.depth_conv.residuals.0.weight"], keys[f"{p}.depth_conv.residuals.0.bias"] = (4, h), (4,)
        _bn_keys(keys, f"{p}.depth_norm", cexp)
        keys[f"{p}.depth_act.lambdas"], keys[f"{p}.depth_act.init_v"] = (4,), (4,)
        keys[f"{p}.depth_act.coef_net.0.weight"], keys[f"{p}.depth_act.coef_net.0.bias"] = (4 * cexp, h), (4 * cexp,)
        keys[f"{p}.proj_conv.weight"] = (1, 1, 4, cout * cexp)
        keys[f"{p}.proj_conv.residuals.0.weight"], keys[f"{p}.proj_conv.residuals.0.bias"] = (4, h), (4,)
        _bn_keys(keys, f"{p}.proj_norm", cout)
        keys[f"{p}.context_gen.joint_conv.weight"] = (h, cin, 1, 1)
        _bn_keys(keys, f"{p}.context_gen.joint_norm", h)
        for c in ("conv_f", "conv_t"):
            keys[f"{p}.context_gen.{c}.weight"], keys[f"{p}.context_gen.{c}.bias"] = (cexp, h, 1, 1), (cexp,)
    c0, last = _div(16 * w), _div(160 * w)
    keys["in_c.0.weight"] = (c0, 1, 3, 3)
    _bn_keys(keys, "in_c.1", c0)
    keys["out_c.0.weight"] = (6 * last, last, 1, 1)
    _bn_keys(keys, "out_c.1", 6 * last)
    lc = _div(1280 * w)
    keys["classifier.2.weight"], keys["classifier.2.bias"] = (lc, 6 * last), (lc,)
    keys["classifier.5.weight"], keys["classifier.5.bias"] = (527, lc), (527,)
    return keys


def _random_state(name, x, seed=0):
    """Random weights in the upstream layout, the dynamic parts' Linear layers at unit gain (so
    kernels and Dy-ReLU slopes really vary per clip), BatchNorm statistics calibrated on ``x``
    (train-mode pass, cumulative averages): with made-up statistics the activations die out or
    blow up and the comparison would be vacuous."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _make(name).net
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and mod.bias is not None:
                torch.nn.init.normal_(mod.bias, 0.0, 0.1)
            if isinstance(mod, torch.nn.Linear):
                torch.nn.init.normal_(mod.weight, 0.0, mod.in_features ** -0.5)
        net.train()
        with torch.no_grad():
            net(x)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in sd.items()} == _upstream_keys(WIDTH[name])
    return sd


def _bn(sd, p, x):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, 1e-3)


def _ref_dynamic_conv(sd, p, x, h_c, cin, cout, k, stride=1, padding=0, groups=1):
    """Upstream DynamicConv (temperature 1), written per clip: mix the K kernels, then convolve."""
    att = F.softmax(F.linear(h_c.view(x.shape[0], -1), sd[p + ".residuals.0.weight"], sd[p + ".residuals.0.bias"]), -1)
    kernels = sd[p + ".weight"].view(4, cout, cin // groups, k, k)
    out = [F.conv2d(x[i:i + 1], torch.einsum("k,koihw->oihw", att[i], kernels), stride=stride, padding=padding,
                    groups=groups) for i in range(x.shape[0])]
    return torch.cat(out)


def _ref_dymn(sd, w, x):
    x = F.hardswish(_bn(sd, "in_c.1", F.conv2d(x, sd["in_c.0.weight"], stride=2, padding=1)))
    for i, (cin, k, cexp, cout, act, s, _h) in enumerate(_blocks(w)):
        p, inp = f"layers.{i}", x
        # ContextGen
        cf = F.adaptive_avg_pool2d(x, (None, 1))
        ct = F.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)
        f, t = cf.size(2), ct.size(2)
        g = torch.cat([cf, ct], dim=2)
        g = F.hardswish(_bn(sd, p + ".context_gen.joint_norm", F.conv2d(g, sd[p + ".context_gen.joint_conv.weight"])))
        h_cf, h_ct = torch.split(g, [f, t], dim=2)
        h_ct = h_ct.permute(0, 1, 3, 2)
        h_c = torch.mean(g, dim=2, keepdim=True)
        if s > 1:
            h_cf = torch.nn.AvgPool2d((3, 1), (s, 1), (1, 0))(h_cf)
            h_ct = torch.nn.AvgPool2d((1, 3), (1, s), (0, 1))(h_ct)
        g_cf = F.conv2d(h_cf, sd[p + ".context_gen.conv_f.weight"], sd[p + ".context_gen.conv_f.bias"])
        g_ct = F.conv2d(h_ct, sd[p + ".context_gen.conv_t.weight"], sd[p + ".context_gen.conv_t.bias"])
        # expansion, depthwise + Dy-ReLU-B, coordinate attention, projection
        if cexp != cin:
            x = _bn(sd, p + ".exp_norm", _ref_dynamic_conv(sd, p + ".exp_conv", x, h_c, cin, cexp, 1))
            x = F.hardswish(x) if act == "HS" else F.relu(x)
        x = _bn(sd, p + ".depth_norm", _ref_dynamic_conv(sd, p + ".depth_conv", x, h_c, cexp, cexp, k, stride=s,
                                                          padding=(k - 1) // 2, groups=cexp))
        theta = 2 * torch.sigmoid(F.linear(h_c.view(x.shape[0], -1), sd[p + ".depth_act.coef_net.0.weight"],
                                           sd[p + ".depth_act.coef_net.0.bias"])) - 1
        coefs = theta.view(-1, cexp, 1, 1, 4) * sd[p + ".depth_act.lambdas"] + sd[p + ".depth_act.init_v"]
        x = torch.max(x.unsqueeze(-1) * coefs[..., :2] + coefs[..., 2:], dim=-1)[0]
        x = x * g_cf.sigmoid() * g_ct.sigmoid()
        x = _bn(sd, p + ".proj_norm", _ref_dynamic_conv(sd, p + ".proj_conv", x, h_c, cexp, cout, 1))
        if s == 1 and cin == cout:
            x = x + inp
    x = F.hardswish(_bn(sd, "out_c.1", F.conv2d(x, sd["out_c.0.weight"])))
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    x = F.hardswish(F.linear(x, sd["classifier.2.weight"], sd["classifier.2.bias"]))
    return F.linear(x, sd["classifier.5.weight"], sd["classifier.5.bias"])


def _make(name, sample_rate=None):
    entry = MODELS.get(name)
    return entry.factory(entry.spec, sample_rate=sample_rate).eval()


# -- tests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [("efficientat-dymn04", 1_961_239), ("efficientat-dymn10", 10_548_479),
                                         ("efficientat-dymn20", 39_966_143)])
def test_state_dict_is_upstream_layout(name, params):
    net = _make(name).net
    sd = net.state_dict()
    expected = _upstream_keys(WIDTH[name])
    assert set(sd) == set(expected) and len(sd) == 578
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert list(sd)[0] == "layers.0.depth_conv.weight"  # upstream registers `layers` before `in_c`
    assert sum(p.numel() for p in net.parameters()) == params
    torch.testing.assert_close(sd["layers.3.depth_act.lambdas"], torch.tensor([1.0, 1.0, 0.5, 0.5]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientat-dymn04", "efficientat-dymn10"])
def test_network_matches_upstream_reference_forward(name, tmp_path):
    w = WIDTH[name]
    x = torch.randn(2, 1, 128, 64, generator=torch.Generator().manual_seed(2))
    sd = _random_state(name, x, seed=1)
    path = tmp_path / f"{name}.pt"
    torch.save(sd, path)
    model = load_model(name, checkpoint=path)  # strict load from disk, as a release file would be
    with torch.no_grad():
        ref = _ref_dymn(sd, w, x)
        ours = model.forward_features(x)
        emb = model.embed_features(x)
    assert (ref[0] - ref[1]).abs().max() > 1e-3 * ref.abs().max()  # input-dependent: a real comparison
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    torch.testing.assert_close(model.head(emb), ours, rtol=0, atol=1e-5)


def test_wrapper_is_the_efficientat_front_end_plus_dymn():
    m = _make("efficientat-dymn04", sample_rate=16000)
    wave = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats = m.features(wave)
        mn04 = _make("efficientat-mn04", sample_rate=16000)
        torch.testing.assert_close(feats, mn04.features(wave), rtol=0, atol=0)  # the same front end
        torch.testing.assert_close(m(wave), m.net(feats), rtol=0, atol=0)
    assert feats.shape == (2, 1, 128, 50)


def test_strict_loading_names_the_bad_key():
    m = _make("efficientat-dymn04")
    good = {k: v.clone() for k, v in m.net.state_dict().items()}
    bad = dict(good)
    del bad["layers.7.depth_act.lambdas"]
    with pytest.raises(WeightsError, match="missing key 'layers.7.depth_act.lambdas'"):
        m.load_checkpoint(bad)
    bad = dict(good, **{"layers.2.exp_conv.weight": torch.zeros(1, 1, 4, 10)})
    with pytest.raises(WeightsError, match="'layers.2.exp_conv.weight' has shape"):
        m.load_checkpoint(bad)


@pytest.mark.parametrize("name", DYMN)
def test_dymn_specs(name):
    spec = MODELS.get(name).spec
    short = name.split("-", 1)[1]
    assert spec.family == "cnn" and spec.sample_rate == 32000 and spec.has_embedding
    assert spec.frontend["width_mult"] == WIDTH[name] and spec.frontend["network"] == "dymn"
    assert spec.weights.url.startswith("https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/")
    asset = spec.weights.url.rsplit("/", 1)[1]
    assert asset == {"dymn04": "dymn04_as.pt", "dymn10": "dymn10_as.pt", "dymn20": "dymn20_as_mAP_493.pt"}[short]
    assert spec.weights.file_name == f"efficientat_{asset}" and spec.weights.sha256 is None
    assert "sha256 not pinned" in spec.weights.source and spec.weights.licence.startswith("MIT")
    assert spec.reference_mAP == {"dymn04": 0.450, "dymn10": 0.477, "dymn20": 0.493}[short]
    assert "arXiv:2310.15648" in spec.reference


def test_mn40_as_ext_is_mn40_with_the_extended_training_checkpoint():
    spec = MODELS.get("efficientat-mn40-as-ext").spec
    mn40 = MODELS.get("efficientat-mn40").spec
    assert spec.weights.url.endswith("/v0.0.1/mn40_as_ext_mAP_487.pt") and spec.reference_mAP == 0.487
    assert spec.weights.file_name == "efficientat_mn40_as_ext_mAP_487.pt" and spec.weights.sha256 is None
    assert spec.frontend == mn40.frontend and "300 epochs" in spec.description
