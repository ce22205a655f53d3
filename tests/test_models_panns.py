"""PANNs CNN14 / CNN10 / CNN6: fidelity to panns_inference, upstream checkpoint layout, contract."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from audiobench.errors import WeightsError
from audiobench.models import MODELS
from audiobench.models.checkpoints import read_checkpoint

PANNS = ("cnn14", "cnn10", "cnn6")


def _make(name, sample_rate=None):
    entry = MODELS.get(name)
    return entry.factory(entry.spec, sample_rate=sample_rate).eval()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)  # the factories use torch's default init; seeded for reproducible tests
    out = {n: _make(n) for n in PANNS}
    gen = torch.Generator().manual_seed(1)
    for m in out.values():
        _randomise_bn(m.net, gen)
    return out


def _randomise_bn(net, gen):
    """Non-trivial BatchNorm statistics so a wrong BN wiring cannot go unnoticed."""
    with torch.no_grad():
        for name, mod in net.named_modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                if name == "bn0":  # dB-valued log-mel input
                    mod.running_mean.copy_(-60 + 40 * torch.rand(n, generator=gen))
                    mod.running_var.copy_(100 + 300 * torch.rand(n, generator=gen))
                else:
                    mod.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                    mod.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                mod.weight.copy_(0.5 + torch.rand(n, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(n, generator=gen))


def _clip(seconds, sr=32000, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    tone = 0.3 * torch.sin(2 * math.pi * 440.0 * t) * torch.sin(2 * math.pi * 1.5 * t)
    return (tone + 0.05 * torch.randn(batch, t.numel(), generator=g)).clamp(-1, 1)


# -- fidelity against the reference implementation ------------------------------------------


@pytest.fixture(scope="module")
def panns_inference_models(tmp_path_factory):
    """panns_inference.models, imported without letting its config module download labels.

    ``panns_inference.config`` wgets the AudioSet label CSV into ``$HOME/panns_data`` at import
    time; HOME points at a temporary folder holding a header-only CSV while importing.
    """
    import os

    home = tmp_path_factory.mktemp("panns_home")
    (home / "panns_data").mkdir()
    (home / "panns_data" / "class_labels_indices.csv").write_text("index,mid,display_name\n")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        mod = pytest.importorskip("panns_inference.models")
    finally:
        if old is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old
    return mod


@pytest.fixture(scope="module")
def reference_cnn14(panns_inference_models, tmp_path_factory):
    torch.manual_seed(1234)
    ref = panns_inference_models.Cnn14(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64,
                                       fmin=50, fmax=14000, classes_num=527).eval()
    _randomise_bn(ref, torch.Generator().manual_seed(5))
    with torch.no_grad():  # non-zero biases / non-xavier head so logits are spread
        ref.fc1.bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(6))
        ref.fc_audioset.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
    path = tmp_path_factory.mktemp("ckpt") / "Cnn14_random.pth"
    torch.save({"model": ref.state_dict()}, path)  # the official layout
    ours = _make("cnn14")
    ours.load_checkpoint(read_checkpoint(path), what=str(path))
    return ref, ours


def _reference_logits(ref, wave):
    seen = {}
    handle = ref.fc_audioset.register_forward_hook(lambda m, i, o: seen.__setitem__("z", o.detach()))
    try:
        with torch.no_grad():
            prob = ref(wave)["clipwise_output"]
    finally:
        handle.remove()
    return seen["z"], prob


def _assert_rel_close(ours, ref, rel=1e-4):
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= rel * scale, f"max abs diff {err:.3g} > {rel} x max|ref| {scale:.3g}"


def test_cnn14_matches_panns_inference_synthetic(reference_cnn14):
    ref, ours = reference_cnn14
    wave = _clip(3.0, seed=3)
    z_ref, prob = _reference_logits(ref, wave)
    with torch.no_grad():
        z = ours(wave)
    assert z.shape == (1, 527)
    _assert_rel_close(z, z_ref)
    # not a degenerate comparison: the logits depend on the input, not only on the bias
    assert (z - ref.fc_audioset.bias).abs().max() > 0.1
    # the wrapper's logits are the reference's probabilities before the sigmoid
    torch.testing.assert_close(torch.sigmoid(z), prob, rtol=0, atol=1e-5)


def test_cnn14_matches_panns_inference_real_clip(reference_cnn14, shared_dir):
    import soundfile as sf
    import torchaudio

    path = shared_dir / "clips" / "Y--BfvyPmVMo.wav"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(audio.mean(axis=1))[None]
    wave = torchaudio.functional.resample(wave, sr, 32000)
    ref, ours = reference_cnn14
    z_ref, _ = _reference_logits(ref, wave)
    with torch.no_grad():
        z = ours(wave)
        emb = ours.embed(wave)
    _assert_rel_close(z, z_ref)
    torch.testing.assert_close(ours.head(emb), z, rtol=0, atol=1e-5)
    assert emb.shape == (1, 2048)


# -- checkpoint layout ----------------------------------------------------------------------


def _upstream_keys(name):
    """Key → shape of upstream Cnn14 / Cnn10 / Cnn6 state_dicts, from audioset_tagging_cnn models.py."""
    keys = {
        "spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
        "spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
        "logmel_extractor.melW": (513, 64),
    }

    def bn(prefix, n):
        keys.update({f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
                     f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()})

    bn("bn0", 64)
    chans = {"cnn14": (64, 128, 256, 512, 1024, 2048), "cnn10": (64, 128, 256, 512), "cnn6": (64, 128, 256, 512)}[name]
    cin = 1
    for i, c in enumerate(chans, 1):
        if name == "cnn6":  # ConvBlock5x5: one 5x5 conv
            keys[f"conv_block{i}.conv1.weight"] = (c, cin, 5, 5)
            bn(f"conv_block{i}.bn1", c)
        else:  # ConvBlock: two 3x3 convs
            keys[f"conv_block{i}.conv1.weight"] = (c, cin, 3, 3)
            keys[f"conv_block{i}.conv2.weight"] = (c, c, 3, 3)
            bn(f"conv_block{i}.bn1", c)
            bn(f"conv_block{i}.bn2", c)
        cin = c
    keys.update({"fc1.weight": (cin, cin), "fc1.bias": (cin,), "fc_audioset.weight": (527, cin),
                 "fc_audioset.bias": (527,)})
    return keys


@pytest.mark.parametrize("name", PANNS)
def test_state_dict_is_upstream_layout(models, name):
    sd = models[name].net.state_dict()
    expected = _upstream_keys(name)
    assert set(sd) == set(expected)
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k


@pytest.mark.parametrize("name", ("cnn10", "cnn6"))
def test_upstream_layout_checkpoint_round_trips(name, tmp_path):
    g = torch.Generator().manual_seed(11)
    sd = {}
    for k, shape in _upstream_keys(name).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(shape, generator=g)
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05
    torch.save({"model": sd}, tmp_path / "ckpt.pth")
    m = _make(name)
    m.load_checkpoint(read_checkpoint(tmp_path / "ckpt.pth"))
    got = m.net.state_dict()
    for k, v in sd.items():
        assert torch.equal(got[k], v), k
    with torch.no_grad():
        z = m(_clip(2.0))
    assert z.shape == (1, 527) and torch.isfinite(z).all()


@pytest.mark.parametrize("name", PANNS)
def test_strict_loading_names_the_bad_key(models, name):
    m = _make(name) if name != "cnn14" else models[name]
    good = {k: v.clone() for k, v in models[name].net.state_dict().items()}

    missing = dict(good)
    del missing["fc1.bias"]
    with pytest.raises(WeightsError, match=r"missing key 'fc1.bias'"):
        m.load_checkpoint({"model": missing})

    extra = dict(good)
    extra["fc_extra.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError, match=r"unexpected key 'fc_extra.weight'"):
        m.load_checkpoint({"model": extra})

    shaped = dict(good)
    shaped["fc_audioset.weight"] = torch.zeros(10, shaped["fc_audioset.weight"].shape[1])
    with pytest.raises(WeightsError, match=r"'fc_audioset.weight' has shape"):
        m.load_checkpoint({"model": shaped})


# -- contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PANNS)
def test_gradient_reaches_waveform(models, name):
    m = models[name]
    wave = _clip(2.0, seed=4).requires_grad_(True)
    logits = m(wave)
    assert logits.shape == (1, 527)
    logits[:, :10].sum().backward()
    grad = wave.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # gradients never leak into the fixed front-end tensors
    assert m.net.logmel_extractor.melW.grad is None


@pytest.mark.parametrize("name", PANNS)
def test_batch_consistency(models, name):
    m = models[name]
    batch = _clip(2.0, seed=5, batch=3)
    with torch.no_grad():
        together = m(batch)
        alone = m(batch[1:2])
    scale = max(1.0, together.abs().max().item())
    torch.testing.assert_close(alone[0], together[1], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("name", PANNS)
def test_16k_input_gets_resampler(models, name):
    m32 = models[name]
    m16 = _make(name, sample_rate=16000)
    m16.load_state_dict(m32.state_dict())  # resampler kernel is non-persistent: same keys
    assert m16.sample_rate == 16000 and m16.resampler.resample is not None
    assert m32.resampler.resample is None
    wave16 = _clip(2.0, sr=16000, seed=6)
    with torch.no_grad():
        z16 = m16(wave16)
        z32 = m32(m16.resampler(wave16))
    assert z16.shape == (1, 527) and torch.isfinite(z16).all()
    torch.testing.assert_close(z16, z32, rtol=0, atol=1e-5 * max(1.0, z32.abs().max().item()))


@pytest.mark.parametrize("name", PANNS)
def test_spec_is_complete(name):
    spec = MODELS.get(name).spec
    assert spec.family == "cnn" and spec.sample_rate == 32000 and spec.has_embedding
    assert spec.frontend["hop_samples"] == 320 and spec.frontend["n_mels"] == 64
    assert spec.weights.url.startswith("https://zenodo.org/record/3987831/files/")
    assert spec.weights.file_name.endswith(".pth") and spec.reference_mAP > 0.3
    assert spec.weights.sha256 is None or len(spec.weights.sha256) == 64
