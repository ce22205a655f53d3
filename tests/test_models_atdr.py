"""AudioTagging-Done-Right crnn / cnn-transformer: upstream layout, front end, contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchaudio

from audiobench.errors import WeightsError
from audiobench.models import MODELS
from audiobench.models.checkpoints import read_checkpoint

NAMES = ("crnn", "cnn-transformer")
CHANNELS = (32, 32, 64, 64, 128, 128, 256, 256, 512, 512)


def _make(name, sample_rate=None):
    entry = MODELS.get(name)
    return entry.factory(entry.spec, sample_rate=sample_rate).eval()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    out = {n: _make(n) for n in NAMES}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in out.values():
            for mod in m.net.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=g))
                    mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=g))
    return out


def _clip(seconds, sr=16000, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    tone = 0.3 * torch.sin(2 * math.pi * 440.0 * t) * torch.sin(2 * math.pi * 1.5 * t)
    return (tone + 0.05 * torch.randn(batch, t.numel(), generator=g)).clamp(-1, 1)


def _upstream_keys(name):
    """Key → shape of ``torch.save(nn.DataParallel(model).state_dict())`` for upstream TALNet /
    TransformerEncoder (embedding 1024, 10 conv / 5 pool, 64 mel, pooling 'att', addpos)."""
    keys = {}
    cin = 1
    for i, c in enumerate(CHANNELS):
        for prefix in (f"conv.{i}", f"conv{i + 1}"):  # ModuleList entry and its alias
            keys[f"{prefix}.conv.weight"] = (c, cin, 3, 3)
            keys[f"{prefix}.conv.bias"] = (c,)
            for s in ("weight", "bias", "running_mean", "running_var"):
                keys[f"{prefix}.bn.{s}"] = (c,)
            keys[f"{prefix}.bn.num_batches_tracked"] = ()
        cin = c
    if name == "crnn":
        for sfx in ("", "_reverse"):
            keys[f"gru.weight_ih_l0{sfx}"] = (1536, 1024)
            keys[f"gru.weight_hh_l0{sfx}"] = (1536, 512)
            keys[f"gru.bias_ih_l0{sfx}"] = (1536,)
            keys[f"gru.bias_hh_l0{sfx}"] = (1536,)
    else:
        keys["positional_encoding.pe"] = (1, 400, 64)
        for lin in ("w_qs", "w_ks", "w_vs", "fc"):
            keys[f"enc_layer.slf_attn.{lin}.weight"] = (1024, 1024)
            keys[f"enc_layer.slf_attn.{lin}.bias"] = (1024,)
        for lin in ("w_1", "w_2"):
            keys[f"enc_layer.pos_ffn.{lin}.weight"] = (1024, 1024)
            keys[f"enc_layer.pos_ffn.{lin}.bias"] = (1024,)
        for ln in ("slf_attn", "pos_ffn"):
            keys[f"enc_layer.{ln}.layer_norm.weight"] = (1024,)
            keys[f"enc_layer.{ln}.layer_norm.bias"] = (1024,)
    keys.update({"fc_prob.weight": (527, 1024), "fc_prob.bias": (527,), "fc_att.weight": (527, 1024),
                 "fc_att.bias": (527,)})
    return {f"module.{k}": v for k, v in keys.items()}


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_upstream_layout(models, name):
    sd = models[name].net.state_dict()
    expected = {k[len("module."):]: v for k, v in _upstream_keys(name).items()}
    assert set(sd) == set(expected)
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k


@pytest.mark.parametrize("name", NAMES)
def test_upstream_dataparallel_checkpoint_round_trips(name, tmp_path):
    g = torch.Generator().manual_seed(3)
    sd = {}
    for k, shape in _upstream_keys(name).items():
        alias = None
        if k.startswith("module.conv") and not k.startswith("module.conv."):
            i = int(k.split(".")[1][len("conv"):]) - 1
            alias = "module.conv.%d.%s" % (i, k.split(".", 2)[2])
        if alias is not None and alias in sd:
            sd[k] = sd[alias]  # the two aliases hold the same tensor upstream
        elif k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(5)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(shape, generator=g)
        else:
            sd[k] = 0.05 * torch.randn(shape, generator=g)
    path = tmp_path / "best_audio_model.pth"
    torch.save(sd, path)
    m = _make(name)
    m.load_checkpoint(read_checkpoint(path), what=str(path))
    got = m.net.state_dict()
    for k, v in sd.items():
        assert torch.equal(got[k[len("module."):]], v), k
    with torch.no_grad():
        z = m(_clip(2.0, seed=2, batch=2))
    assert z.shape == (2, 527) and torch.isfinite(z).all()
    # also accepted without the DataParallel prefix
    _make(name).load_checkpoint({k[len("module."):]: v for k, v in sd.items()})


@pytest.mark.parametrize("name", NAMES)
def test_strict_loading_names_the_bad_key(models, name):
    m = models[name]
    good = {"module." + k: v.clone() for k, v in m.net.state_dict().items()}

    missing = dict(good)
    del missing["module.conv7.bn.running_var"]
    with pytest.raises(WeightsError, match=r"missing key 'conv7.bn.running_var'"):
        m.load_checkpoint(missing)

    extra = dict(good)
    extra["module.fc_extra.weight"] = torch.zeros(2)
    with pytest.raises(WeightsError, match=r"unexpected key 'fc_extra.weight'"):
        m.load_checkpoint(extra)

    shaped = dict(good)
    shaped["module.fc_att.weight"] = torch.zeros(527, 512)
    with pytest.raises(WeightsError, match=r"'fc_att.weight' has shape"):
        m.load_checkpoint(shaped)


def test_front_end_matches_upstream_recipe(models):
    """Our batched front end == upstream's per-clip dataloader code (64-mel branch) + normalisation."""
    m = models["crnn"]
    batch = torch.cat([_clip(3.0, seed=7), _clip(12.0, seed=8)[:, :48000]], 0)
    long_clip = _clip(12.0, seed=9)
    spec = m.spec
    ours = m.features(batch)
    ours_long = m.features(long_clip)
    for wave, got in [(batch[0:1], ours[0]), (batch[1:2], ours[1]), (long_clip, ours_long[0])]:
        w = wave - wave.mean()
        melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=16000, n_fft=4096, win_length=1024, hop_length=400, center=True, pad_mode="constant",
            power=2, norm="slaney", n_mels=64, mel_scale="slaney")
        s = melspec(w).squeeze()
        fbank = torchaudio.transforms.AmplitudeToDB(s)(s).transpose(0, 1)  # upstream passes s as stype
        p = 400 - fbank.shape[0]
        fbank = torch.nn.ZeroPad2d((0, 0, 0, p))(fbank) if p > 0 else fbank[:400]
        fbank = (fbank - spec.normalisation["mean"]) / (spec.normalisation["std"] * 2)
        torch.testing.assert_close(got, fbank, rtol=1e-5, atol=1e-4)
    assert ours.shape == (2, 400, 64)


def test_attention_matches_upstream_head_layout(models):
    """The batched attention equals upstream's (n_head*batch, len, d) formulation."""
    layer = models["cnn-transformer"].net.enc_layer.slf_attn
    x = torch.randn(2, 7, 1024, generator=torch.Generator().manual_seed(4))
    h, dk = 8, 128
    b, n, _ = x.shape
    q = layer.w_qs(x).view(b, n, h, dk).permute(2, 0, 1, 3).reshape(-1, n, dk)
    k = layer.w_ks(x).view(b, n, h, dk).permute(2, 0, 1, 3).reshape(-1, n, dk)
    v = layer.w_vs(x).view(b, n, h, dk).permute(2, 0, 1, 3).reshape(-1, n, dk)
    attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / dk**0.5, dim=2)
    out = torch.bmm(attn, v).view(h, b, n, dk).permute(1, 2, 0, 3).reshape(b, n, -1)
    expected = layer.layer_norm(layer.fc(out) + x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_logits_are_logit_of_pooled_probability(models, name):
    m = models[name]
    wave = _clip(2.0, seed=10)
    with torch.no_grad():
        z = m(wave)
        frames = m.net.frames(m.features(wave))
        frame_prob = torch.sigmoid(m.net.fc_prob(frames)).clamp(1e-7, 1 - 1e-7)
        p = (frame_prob * F.softmax(m.net.fc_att(frames), dim=1)).sum(1)
        emb = m.embed(wave)
    assert z.shape == (1, 527) and torch.isfinite(z).all()
    torch.testing.assert_close(torch.sigmoid(z), p, rtol=1e-5, atol=1e-6)
    assert emb.shape == (1, 100 * 1024)
    torch.testing.assert_close(m.head(emb), z, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_waveform(models, name):
    m = models[name]
    wave = _clip(2.0, seed=11).requires_grad_(True)
    m(wave)[:, :20].sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_batch_consistency(models, name):
    m = models[name]
    batch = _clip(2.0, seed=12, batch=3)
    with torch.no_grad():
        together = m(batch)
        alone = m(batch[2:3])
    torch.testing.assert_close(alone[0], together[2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_other_rates_get_a_resampler(models, name):
    m16 = models[name]
    assert m16.sample_rate == 16000 and m16.resampler.resample is None  # native rate: none
    m32 = _make(name, sample_rate=32000)
    m32.load_state_dict(m16.state_dict())
    assert m32.resampler.resample is not None
    wave32 = _clip(2.0, sr=32000, seed=13)
    with torch.no_grad():
        z32 = m32(wave32)
        z16 = m16(m32.resampler(wave32))
    assert z32.shape == (1, 527) and torch.isfinite(z32).all()
    torch.testing.assert_close(z32, z16, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_complete(name):
    spec = MODELS.get(name).spec
    assert spec.sample_rate == 16000 and not spec.has_embedding  # frame-level only, see atdr.py
    assert spec.family == ("crnn" if name == "crnn" else "transformer")
    assert spec.frontend["n_mels"] == 64 and spec.frontend["n_frames"] == 400
    assert spec.normalisation == {"mean": -29.686901, "std": 40.898224, "std_multiplier": 2.0}
    assert spec.weights.file_name.endswith(".pth") and spec.weights.url is None
