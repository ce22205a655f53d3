"""PSLA psla-effnet / resnet-attention: upstream checkpoint layout, front end, reference forward.

No PSLA checkpoint is reachable in CI, so fidelity is tested with random weights through the
upstream layout: ``_upstream_keys`` lists the keys and shapes of upstream's
``nn.DataParallel(model).state_dict()`` from our own reading of YuanGongND/psla
(``EffNetAttention(b=2, head_num=4)`` on efficientnet_pytorch, ``ResNetAttention`` on torchvision's
resnet50), and ``_ref_effnet`` / ``_ref_resnet`` are functional forwards over that raw state dict
following upstream's code step by step (EfficientNet's static "same" padding computed for its
260x260 image size, MBConv blocks, swish, squeeze-excitation; torchvision's Bottleneck; the
attention heads of HigherModels.py). ``_ref_frontend`` is the dataloader's per-clip
``torchaudio.compliance.kaldi.fbank`` path.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchaudio

from audiobench.errors import WeightsError
from audiobench.models import MODELS
from audiobench.models.checkpoints import read_checkpoint

NAMES = ("psla-effnet", "resnet-attention")
N_CLASSES = 527

# EfficientNet-B2 after upstream's round_filters (width 1.1) / round_repeats (depth 1.2) of the
# b0 block strings: (repeats, kernel, stride, expand_ratio, in, out); se_ratio 0.25 everywhere
_B2_STAGES = ((2, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48), (4, 3, 2, 6, 48, 88),
              (4, 5, 1, 6, 88, 120), (5, 5, 2, 6, 120, 208), (2, 3, 1, 6, 208, 352))
_B2_STEM, _B2_HEAD, _B2_IMAGE = 32, 1408, 260
_RESNET_LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride)


def _b2_blocks():
    """(kernel, stride, expand, in, out) for each of the 23 MBConv blocks, in order."""
    for r, k, s, e, cin, cout in _B2_STAGES:
        for j in range(r):
            yield k, (s if j == 0 else 1), e, (cin if j == 0 else cout), cout


def _bn_keys(keys, prefix, c):
    for s in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{prefix}.{s}"] = (c,)
    keys[f"{prefix}.num_batches_tracked"] = ()


def _upstream_keys(name):
    keys = {}
    if name == "psla-effnet":
        keys["effnet._conv_stem.weight"] = (_B2_STEM, 1, 3, 3)
        _bn_keys(keys, "effnet._bn0", _B2_STEM)
        for i, (k, _s, e, cin, cout) in enumerate(_b2_blocks()):
            p, mid, sq = f"effnet._blocks.{i}", cin * e, max(1, int(cin * 0.25))
            if e != 1:
                keys[f"{p}._expand_conv.weight"] = (mid, cin, 1, 1)
                _bn_keys(keys, f"{p}._bn0", mid)
            keys[f"{p}._depthwise_conv.weight"] = (mid, 1, k, k)
            _bn_keys(keys, f"{p}._bn1", mid)
            keys[f"{p}._se_reduce.weight"], keys[f"{p}._se_reduce.bias"] = (sq, mid, 1, 1), (sq,)
            keys[f"{p}._se_expand.weight"], keys[f"{p}._se_expand.bias"] = (mid, sq, 1, 1), (mid,)
            keys[f"{p}._project_conv.weight"] = (cout, mid, 1, 1)
            _bn_keys(keys, f"{p}._bn2", cout)
        keys["effnet._conv_head.weight"] = (_B2_HEAD, 352, 1, 1)
        _bn_keys(keys, "effnet._bn1", _B2_HEAD)
        for h in range(4):
            for part in ("att", "cla"):
                keys[f"attention.{part}.{h}.weight"] = (N_CLASSES, _B2_HEAD, 1, 1)
                keys[f"attention.{part}.{h}.bias"] = (N_CLASSES,)
        keys["attention.head_weight"] = (4,)
    else:
        keys["model.conv1.weight"] = (64, 1, 7, 7)
        _bn_keys(keys, "model.bn1", 64)
        cin = 64
        for li, (planes, blocks, _stride) in enumerate(_RESNET_LAYERS, start=1):
            for b in range(blocks):
                p = f"model.layer{li}.{b}"
                keys[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                for j, c in ((1, planes), (2, planes), (3, planes * 4)):
                    _bn_keys(keys, f"{p}.bn{j}", c)
                if b == 0:
                    keys[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                    _bn_keys(keys, f"{p}.downsample.1", planes * 4)
                cin = planes * 4
        for part in ("att", "cla"):
            keys[f"attention.{part}.weight"] = (N_CLASSES, 2048, 1, 1)
            keys[f"attention.{part}.bias"] = (N_CLASSES,)
    return keys


def _random_state(name, seed):
    """Random weights in the upstream layout with BatchNorm statistics calibrated on random input
    (train-mode pass, cumulative averages): with made-up statistics the activations of a 50-layer
    net die out or blow up, and a saturated output would make the comparison vacuous."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _make(name).net
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
            if isinstance(mod, torch.nn.Conv2d) and mod.bias is not None:
                torch.nn.init.normal_(mod.bias, 0.0, 0.1)
        net.train()
        with torch.no_grad():
            net(torch.randn(2, 256, 128))  # statistics only: a short input is enough
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    if name == "psla-effnet":
        sd["attention.head_weight"] = torch.tensor([0.3, 0.2, 0.25, 0.25])
    assert {k: tuple(v.shape) for k, v in sd.items()} == _upstream_keys(name)
    return sd


def _make(name, sample_rate=None):
    entry = MODELS.get(name)
    return entry.factory(entry.spec, sample_rate=sample_rate).eval()


# -- reference forwards over the raw upstream state dict ----------------------------------------
def _bn(sd, p, x, eps):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, eps)


def _same_pad(image, k, s):
    """efficientnet_pytorch Conv2dStaticSamePadding for a square ``image``: (left, right, top, bottom)."""
    out = math.ceil(image / s)
    pad = max((out - 1) * s + k - image, 0)
    return (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), out


def _att_head(att_w, att_b, cla_w, cla_b, x):
    att = torch.sigmoid(F.conv2d(x, att_w, att_b))[:, :, :, 0]
    cla = torch.sigmoid(F.conv2d(x, cla_w, cla_b))[:, :, :, 0]
    att = torch.clamp(att, 1e-7, 1.0 - 1e-7)
    norm_att = att / torch.sum(att, dim=2)[:, :, None]
    return torch.sum(norm_att * cla, dim=2)


def _ref_effnet(sd, x):
    """Upstream EffNetAttention.forward (eval) on (batch, 1056, 128): pooled probability."""
    swish = lambda t: t * torch.sigmoid(t)  # noqa: E731
    x = x.unsqueeze(1).transpose(2, 3)
    pad, image = _same_pad(_B2_IMAGE, 3, 2)
    x = swish(_bn(sd, "effnet._bn0", F.conv2d(F.pad(x, pad), sd["effnet._conv_stem.weight"], stride=2), 1e-3))
    for i, (k, s, e, cin, cout) in enumerate(_b2_blocks()):
        p, inputs = f"effnet._blocks.{i}", x
        if e != 1:
            x = swish(_bn(sd, p + "._bn0", F.conv2d(x, sd[p + "._expand_conv.weight"]), 1e-3))
        pad, image = _same_pad(image, k, s)
        w = sd[p + "._depthwise_conv.weight"]
        x = swish(_bn(sd, p + "._bn1", F.conv2d(F.pad(x, pad), w, stride=s, groups=w.shape[0]), 1e-3))
        sq = F.adaptive_avg_pool2d(x, 1)
        sq = swish(F.conv2d(sq, sd[p + "._se_reduce.weight"], sd[p + "._se_reduce.bias"]))
        sq = F.conv2d(sq, sd[p + "._se_expand.weight"], sd[p + "._se_expand.bias"])
        x = torch.sigmoid(sq) * x
        x = _bn(sd, p + "._bn2", F.conv2d(x, sd[p + "._project_conv.weight"]), 1e-3)
        if s == 1 and cin == cout:
            x = x + inputs
    x = swish(_bn(sd, "effnet._bn1", F.conv2d(x, sd["effnet._conv_head.weight"]), 1e-3))
    x = F.avg_pool2d(x, (4, 1)).transpose(2, 3)
    heads = [_att_head(sd[f"attention.att.{h}.weight"], sd[f"attention.att.{h}.bias"],
                       sd[f"attention.cla.{h}.weight"], sd[f"attention.cla.{h}.bias"], x)
             * sd["attention.head_weight"][h] for h in range(4)]
    return torch.stack(heads, dim=0).sum(dim=0)


def _ref_resnet(sd, x):
    """Upstream ResNetAttention.forward (eval): torchvision resnet50 trunk, reshape, pool, attention."""
    b = x.shape[0]
    x = x.unsqueeze(1).transpose(2, 3)
    x = F.relu(_bn(sd, "model.bn1", F.conv2d(x, sd["model.conv1.weight"], stride=2, padding=3), 1e-5))
    x = F.max_pool2d(x, 3, 2, 1)
    for li, (_planes, blocks, stride) in enumerate(_RESNET_LAYERS, start=1):
        for j in range(blocks):
            p, s = f"model.layer{li}.{j}", (stride if j == 0 else 1)
            out = F.relu(_bn(sd, p + ".bn1", F.conv2d(x, sd[p + ".conv1.weight"]), 1e-5))
            out = F.relu(_bn(sd, p + ".bn2", F.conv2d(out, sd[p + ".conv2.weight"], stride=s, padding=1), 1e-5))
            out = _bn(sd, p + ".bn3", F.conv2d(out, sd[p + ".conv3.weight"]), 1e-5)
            if j == 0:
                x = _bn(sd, p + ".downsample.1", F.conv2d(x, sd[p + ".downsample.0.weight"], stride=s), 1e-5)
            x = F.relu(out + x)
    x = torch.flatten(x, 1).reshape([b, 2048, 4, 33])  # torchvision's flatten (fc = Identity), upstream reshape
    x = F.avg_pool2d(x, (4, 1)).transpose(2, 3)
    return _att_head(sd["attention.att.weight"], sd["attention.att.bias"], sd["attention.cla.weight"],
                     sd["attention.cla.bias"], x)


def _ref_frontend(wave_1xn):
    """Upstream AudiosetDataset._wav2fbank + normalisation (eval), for one clip (1, samples)."""
    w = wave_1xn - wave_1xn.mean()
    fbank = torchaudio.compliance.kaldi.fbank(w, htk_compat=True, sample_frequency=16000, use_energy=False,
                                              window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    p = 1056 - fbank.shape[0]
    fbank = torch.nn.ZeroPad2d((0, 0, 0, p))(fbank) if p > 0 else fbank[0:1056, :]
    return (fbank - (-4.6476)) / 4.5699


def _clip(seconds, sr=16000, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    tone = 0.3 * torch.sin(2 * math.pi * 440.0 * t) * torch.sin(2 * math.pi * 1.5 * t)
    return (tone + 0.05 * torch.randn(batch, t.numel(), generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def loaded():
    """Each model with an upstream-layout random state dict saved as upstream does and read back."""
    return {}


def _loaded(loaded, name, tmp_path_factory):
    if name not in loaded:
        sd = {"module." + k: v for k, v in _random_state(name, seed=3).items()}
        path = tmp_path_factory.mktemp("psla") / "best_audio_model.pth"
        torch.save(sd, path)
        m = _make(name)
        m.load_checkpoint(read_checkpoint(path), what=str(path))
        loaded[name] = (m, {k[len("module."):]: v for k, v in sd.items()})
    return loaded[name]


# -- tests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,n_keys,n_params", [("psla-effnet", 523, 13_640_766),
                                                  ("resnet-attention", 322, 25_661_406)])
def test_state_dict_is_upstream_layout(name, n_keys, n_params):
    net = _make(name).net
    sd = net.state_dict()
    expected = _upstream_keys(name)
    assert set(sd) == set(expected) and len(sd) == n_keys
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    # psla README: "EfficientNet B2 model with 4-headed attention with 13.6M parameters"
    assert sum(p.numel() for p in net.parameters()) == n_params
    # the wrapper adds no persistent state (front-end buffers are derived)
    assert list(_make(name).state_dict()) == ["net." + k for k in sd]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_network_matches_upstream_reference_forward(loaded, tmp_path_factory, name):
    m, sd = _loaded(loaded, name, tmp_path_factory)
    # upstream's ResNetAttention hard-codes the 1056-frame map (reshape to 4 x 33); EffNetAttention
    # takes any length, so a shorter input keeps the test fast
    frames = 1056 if name == "resnet-attention" else 320
    feats = torch.randn(2, frames, 128, generator=torch.Generator().manual_seed(5))
    ref_fn = _ref_effnet if name == "psla-effnet" else _ref_resnet
    with torch.no_grad():
        p_ref = ref_fn(sd, feats)
        z = m.forward_features(feats)
    assert p_ref.shape == (2, N_CLASSES)
    # not saturated and input-dependent, so the comparison is a real check
    assert p_ref.min() > 1e-4 and p_ref.max() < 1 - 1e-4 and (p_ref[0] - p_ref[1]).abs().max() > 1e-3
    torch.testing.assert_close(torch.sigmoid(z), p_ref, rtol=1e-4, atol=1e-5)


def test_checkpoint_prefixes_and_unused_imagenet_classifier(loaded, tmp_path_factory):
    m, sd = _loaded(loaded, "psla-effnet", tmp_path_factory)
    got = m.net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    # unprefixed files load too; effnet._fc.* (in some PSLA files) is dropped as upstream's ensemble.py does
    extra = dict(sd, **{"effnet._fc.weight": torch.zeros(1000, 1408), "effnet._fc.bias": torch.zeros(1000)})
    _make("psla-effnet").load_checkpoint({"module." + k: v for k, v in extra.items()})
    _make("psla-effnet").load_checkpoint(sd)


@pytest.mark.parametrize("name", NAMES)
def test_strict_loading_names_the_bad_key(name):
    m = _make(name)
    good = {"module." + k: v.clone() for k, v in m.net.state_dict().items()}
    first = next(iter(good))[len("module."):]
    missing = dict(good)
    del missing["module." + first]
    with pytest.raises(WeightsError, match=f"missing key '{first}'"):
        m.load_checkpoint(missing)
    extra = dict(good, **{"module.attention.extra": torch.zeros(2)})
    with pytest.raises(WeightsError, match="unexpected key 'attention.extra'"):
        m.load_checkpoint(extra)
    head = "attention.att.0.weight" if name == "psla-effnet" else "attention.att.weight"
    shaped = dict(good, **{"module." + head: torch.zeros(200, 2048 if name == "resnet-attention" else 1408, 1, 1)})
    with pytest.raises(WeightsError, match=f"'{head}' has shape"):
        m.load_checkpoint(shaped)


def test_front_end_matches_upstream_dataloader():
    m = _make("psla-effnet")
    batch = torch.cat([_clip(3.0, seed=7), _clip(3.0, seed=8) * 0.1 + 0.02], 0)  # the second with a DC offset
    long_clip = _clip(11.0, seed=9)
    with torch.no_grad():
        ours, ours_long = m.features(batch), m.features(long_clip)
    assert ours.shape == (2, 1056, 128) and ours_long.shape == (1, 1056, 128)
    for wave, got in [(batch[0:1], ours[0]), (batch[1:2], ours[1]), (long_clip, ours_long[0])]:
        torch.testing.assert_close(got, _ref_frontend(wave), rtol=0, atol=2e-4)
    # zero padding happens before normalisation: padded frames hold (0 + 4.6476) / 4.5699
    torch.testing.assert_close(ours[0, -1], torch.full((128,), 4.6476 / 4.5699), rtol=0, atol=1e-6)


def test_logits_are_logit_of_pooled_probability_and_embedding_splits(loaded, tmp_path_factory):
    m, _ = _loaded(loaded, "psla-effnet", tmp_path_factory)
    feats = torch.randn(1, 320, 128, generator=torch.Generator().manual_seed(10))  # any length: 10 time steps
    with torch.no_grad():
        z = m.forward_features(feats)
        emb = m.embed_features(feats)
        p = m.net.attention(emb.view(1, 1408, 10, 1))  # upstream's head on the (batch, C, T, 1) sequence
    torch.testing.assert_close(torch.sigmoid(z), p.clamp(1e-7, 1 - 1e-7), rtol=1e-5, atol=1e-6)
    assert emb.shape == (1, 1408 * 10)
    torch.testing.assert_close(m.head(emb), z, rtol=0, atol=1e-5)


def test_other_rates_get_a_resampler():
    m = _make("resnet-attention", sample_rate=32000)
    assert m.sample_rate == 32000 and m.resampler.resample is not None
    assert _make("resnet-attention").resampler.resample is None


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_complete(name):
    spec = MODELS.get(name).spec
    assert spec.sample_rate == 16000 and spec.family == "cnn" and not spec.has_embedding
    fe = spec.frontend
    assert (fe["num_mel_bins"], fe["frame_shift_ms"], fe["target_frames"], fe["window_type"]) == (128, 10.0, 1056,
                                                                                                  "hanning")
    assert spec.normalisation == {"mean": -4.6476, "std": 4.5699}
    assert "BSD-3-Clause" in spec.weights.licence and spec.weights.sha256 is None
    assert "github.com/YuanGongND/psla" in spec.reference
    if name == "psla-effnet":
        assert spec.weights.url == "https://www.dropbox.com/s/d1z27wj30ew5qrs/as_mdl_0.pth?dl=1"
        assert spec.reference_mAP == 0.440 and "sha256 not pinned" in spec.weights.source
    else:
        assert spec.weights.url is None and spec.reference_mAP is None
