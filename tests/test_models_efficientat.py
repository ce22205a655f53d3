"""EfficientAT mn models: upstream layout, fidelity to upstream's code, real-clip behaviour,
gradients, batch consistency.

Fidelity reference ("our straightforward reading of upstream", independent of the module under
test): the front end is upstream's ``AugmentMelSTFT.forward`` in eval mode line by line
(``conv1d`` pre-emphasis with kernel [-0.97, 1]; ``torch.stft`` n_fft 1024 / hop 320 / win 800,
symmetric Hann, center; power = sum of squared real and imaginary parts; Kaldi mel banks 0-15000 Hz
padded with a zero Nyquist column; ``log(x + 1e-5)``; ``(x + 4.5) / 5``), and the network is a
functional forward over the raw state_dict following upstream's ``_mobilenet_v3_conf`` table,
``InvertedResidual`` and the "mlp" head (``F.conv2d``/``F.batch_norm(eps=1e-3)``/SE/``F.linear``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audiobench.models import MODELS
from audiobench.models.loading import load_model

MN04_FILE = "weights/efficientat_mn04_as_mAP_432.pt"
HAMMER = 419
SPEECH = 0


# ----------------------------------------------------------------------------- reference reading
def _ref_make_div(v, d=8):
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


# upstream models/mn/model.py::_mobilenet_v3_conf (input, kernel, expanded, out, use_se, act, stride)
_REF_TABLE = [
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
]


def _ref_frontend(wave32k: torch.Tensor) -> torch.Tensor:
    from torchaudio.compliance.kaldi import get_mel_banks

    x = F.conv1d(wave32k.unsqueeze(1), torch.as_tensor([[[-0.97, 1.0]]])).squeeze(1)
    x = torch.stft(x, 1024, hop_length=320, win_length=800, center=True, normalized=False,
                   window=torch.hann_window(800, periodic=False), return_complex=True)
    x = torch.view_as_real(x).pow(2).sum(-1)
    mel_basis, _ = get_mel_banks(128, 1024, 32000, 0.0, 15000.0, vtln_low=100.0, vtln_high=-500.0,
                                 vtln_warp_factor=1.0)
    mel_basis = F.pad(mel_basis, (0, 1), mode="constant", value=0)
    melspec = (torch.matmul(mel_basis, x) + 0.00001).log()
    return ((melspec + 4.5) / 5.0).unsqueeze(1)


def _ref_network(sd, width, x):
    def cna(prefix, x, stride=1, groups=1, act=None):
        w = sd[prefix + ".0.weight"]
        x = F.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2, groups=groups)
        x = F.batch_norm(x, sd[prefix + ".1.running_mean"], sd[prefix + ".1.running_var"],
                         sd[prefix + ".1.weight"], sd[prefix + ".1.bias"], False, 0.0, 0.001)
        return act(x) if act is not None else x

    x = cna("features.0", x, stride=2, act=F.hardswish)
    for i, (cin, k, cexp, cout, use_se, a, s) in enumerate(_REF_TABLE, start=1):
        cin, cexp, cout = (_ref_make_div(c * width) for c in (cin, cexp, cout))
        act = F.hardswish if a == "HS" else F.relu
        p, j, y = f"features.{i}.block", 0, x
        if cexp != cin:
            y = cna(f"{p}.{j}", y, act=act)
            j += 1
        y = cna(f"{p}.{j}", y, stride=s, groups=cexp, act=act)
        j += 1
        if use_se:
            q = f"{p}.{j}.conc_se_layers.0"
            sc = torch.mean(y, [2, 3], keepdim=True)
            sc = F.linear(sc.squeeze(2).squeeze(2), sd[q + ".fc1.weight"], sd[q + ".fc1.bias"])
            sc = F.linear(F.relu(sc), sd[q + ".fc2.weight"], sd[q + ".fc2.bias"])
            y = torch.sigmoid(sc).view(sc.shape[0], sc.shape[1], 1, 1) * y
            j += 1
        y = cna(f"{p}.{j}", y)
        x = y + x if (s == 1 and cin == cout) else y
    x = cna(f"features.{len(_REF_TABLE) + 1}", x, act=F.hardswish)
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    x = F.hardswish(F.linear(x, sd["classifier.2.weight"], sd["classifier.2.bias"]))
    return F.linear(x, sd["classifier.5.weight"], sd["classifier.5.bias"])


# ----------------------------------------------------------------------------- helpers
def _decode(path: Path, target_sr: int = 32000) -> torch.Tensor:
    """Mono float32 at target_sr: soundfile (wav/flac/mp3), channel mean, torchaudio resample."""
    import soundfile as sf
    import torchaudio

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    return torchaudio.functional.resample(wave, sr, target_sr) if sr != target_sr else wave


@pytest.fixture(scope="module")
def mn04_state(shared_dir):
    return torch.load(shared_dir / MN04_FILE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def mn04(shared_dir):
    return load_model("efficientat-mn04", checkpoint=shared_dir / MN04_FILE)


# ----------------------------------------------------------------------------- tests
def test_specs_registered():
    names = [n for n in MODELS.names() if re.fullmatch(r"efficientat-mn\d\d", n)]
    assert names == [f"efficientat-mn{w}" for w in ("01", "02", "04", "05", "10", "20", "30", "40")]
    # the other EfficientAT entries: DyMNs and mn40's extended-training checkpoint (tests/test_models_dymn.py)
    assert set(MODELS.names()) - set(names) >= {"efficientat-dymn04", "efficientat-dymn10", "efficientat-dymn20",
                                                "efficientat-mn40-as-ext"}
    for n in names:
        spec = MODELS.get(n).spec
        assert spec.family == "cnn" and spec.sample_rate == 32000 and spec.n_classes == 527
        assert spec.has_embedding and spec.frontend["head"] == "mlp"
        asset = spec.weights.url.rsplit("/", 1)[1]
        assert spec.weights.url.startswith("https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/")
        assert asset == f"{n.split('-')[1]}_as_mAP_{round(spec.reference_mAP * 1000)}.pt"
        assert spec.weights.file_name == f"efficientat_{asset}"
    assert MODELS.get("efficientat-mn04").spec.weights.sha256.startswith("899a8c62")


@pytest.mark.parametrize("name,params", [("efficientat-mn04", 983_599), ("efficientat-mn05", 1_431_239),
                                         ("efficientat-mn10", 4_876_831)])
def test_parameter_counts_match_upstream(name, params):
    # upstream README: mn04 0.983 M, mn05 1.43 M, mn10 4.88 M parameters
    model = load_model(name, weights="random")
    assert sum(p.numel() for p in model.parameters()) == params
    # the wrapper adds no persistent state: front-end buffers are derived, not saved
    assert list(model.state_dict()) == ["net." + k for k in model.net.state_dict()]


def test_loads_upstream_state_dict_unchanged(mn04, mn04_state):
    assert len(mn04_state) == 312
    own = mn04.net.state_dict()
    assert list(own) == list(mn04_state)
    assert all(torch.equal(own[k], v) for k, v in mn04_state.items())
    assert mn04.checkpoint_sha256 == MODELS.get("efficientat-mn04").spec.weights.sha256


def test_fidelity_to_upstream_reading(shared_dir, mn04, mn04_state):
    wave = _decode(shared_dir / "clips" / "Y--BfvyPmVMo.wav")[None]
    with torch.no_grad():
        ref_feat = _ref_frontend(wave)
        feat = mn04.features(wave)
        ref = _ref_network(mn04_state, 0.4, ref_feat)
        ours = mn04(wave)
    assert feat.shape == ref_feat.shape == (1, 1, 128, 1000)
    assert (feat - ref_feat).abs().max() <= 1e-4 * ref_feat.abs().max()
    assert ours.shape == (1, 527)
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-4, rel


def test_hammer_clip_with_internal_resampler(shared_dir, mn04_state):
    import soundfile as sf

    data, sr = sf.read(str(shared_dir / "clips" / "Y--BfvyPmVMo.wav"), dtype="float32")
    assert sr == 16000
    model = load_model("efficientat-mn04", checkpoint=shared_dir / MN04_FILE, sample_rate=16000)
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.from_numpy(data)[None]))[0]
    top = probs.topk(2).indices.tolist()
    assert HAMMER in top
    # ../shared/README.md: with torchaudio's default resampler Hammer is first, 0.458 vs Speech 0.363
    assert top == [HAMMER, SPEECH]
    assert abs(probs[HAMMER].item() - 0.458) < 0.002 and abs(probs[SPEECH].item() - 0.363) < 0.002


def test_real_clips_top5(shared_dir, mn04):
    name_to_index = {}
    with open(shared_dir / "audioset" / "class_labels_indices.csv", newline="") as f:
        for row in csv.DictReader(f):
            name_to_index[row["display_name"]] = int(row["index"])
    with open(shared_dir / "clips" / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20
    hits, misses = 0, []
    for row in rows:
        expected = {name_to_index[n] for n in row["labels"].split(";")}
        with torch.no_grad():
            logits = mn04(_decode(shared_dir / "clips" / row["file"])[None])[0]
        top5 = set(logits.topk(5).indices.tolist())
        if expected & top5:
            hits += 1
        else:
            misses.append(row["file"])
    assert hits >= 18, f"expected label in top 5 for only {hits}/20 clips; missed {misses}"


def test_gradient_reaches_waveform():
    model = load_model("efficientat-mn04", weights="random", sample_rate=16000)
    wave = (0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    model(wave)[:, :5].sum().backward()
    g = wave.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0


def test_gradient_real_weights(mn04):
    wave = (0.1 * torch.randn(1, 32000, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    torch.nn.functional.binary_cross_entropy_with_logits(mn04(wave), torch.zeros(1, 527)).backward()
    assert torch.isfinite(wave.grad).all() and wave.grad.abs().max() > 0


def test_batch_consistency(mn04):
    g = torch.Generator().manual_seed(2)
    batch = 0.2 * torch.randn(4, 32000, generator=g)
    with torch.no_grad():
        together = mn04(batch)
        alone = torch.cat([mn04(batch[i:i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5, rtol=0)
    assert not torch.equal(together[0], together[1])


def test_eval_is_deterministic_and_input_untouched(mn04):
    wave = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(3))
    before = wave.clone()
    with torch.no_grad():
        a, b = mn04(wave), mn04(wave)
    assert torch.equal(a, b) and torch.equal(wave, before)


def test_embedding_and_head(mn04):
    wave = 0.1 * torch.randn(2, 32000, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        emb = mn04.embed(wave)
        logits = mn04.head(emb)
        direct = mn04(wave)
    assert emb.shape == (2, 512)
    assert torch.allclose(logits, direct, atol=1e-6)


def test_bad_input_shape():
    model = load_model("efficientat-mn04", weights="random")
    with pytest.raises(ValueError, match="batch, samples"):
        model(torch.zeros(32000))
