"""AST (audiobench.models.ast): fidelity to transformers, checkpoint layouts, gradients, batching.

Fidelity: audiobench's ``ast`` (batched Kaldi fbank + padding + normalisation + transformers' AST)
against transformers' own ``ASTFeatureExtractor`` + ``ASTForAudioClassification`` on a real clip,
with the same random weights in the real AST-base shape, saved as a Hugging Face folder and loaded
through ``load_model(..., checkpoint=folder)``. Logits agree within 1e-4 relative to the largest
reference logit (an element-wise relative test is meaningless for logits near zero).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from audiobench.errors import WeightsError
from audiobench.models import MODELS, load_model
from audiobench.models.ast import AST_BASE_10_10, AST_SPEC, ASTTagger

CLIP = "clips/Y--BfvyPmVMo.wav"  # AudioSet eval --BfvyPmVMo, 16 kHz float32, 10 s
SMALL = dict(AST_BASE_10_10, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
P = "audio_spectrogram_transformer."


def _hf_model(arch):
    from transformers import ASTConfig, ASTForAudioClassification

    return ASTForAudioClassification(ASTConfig(**arch, num_labels=527)).eval()


def _randomise_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (cls/dist/pos tokens too: zeros would hide a token mix-up)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(0.02 * r)
    return model


# module names of one transformer block: original AST (timm) ← transformers (current, legacy)
_BLOCK_INV = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "output.dense": "mlp.fc2",
}
_QKV = {
    "attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2,
    "attention.attention.query": 0, "attention.attention.key": 1, "attention.attention.value": 2,
}
_TOP_INV = {
    P + "embeddings.cls_token": "v.cls_token",
    P + "embeddings.distillation_token": "v.dist_token",
    P + "embeddings.position_embeddings": "v.pos_embed",
    P + "embeddings.patch_embeddings.projection.weight": "v.patch_embed.proj.weight",
    P + "embeddings.patch_embeddings.projection.bias": "v.patch_embed.proj.bias",
    P + "layernorm.weight": "v.norm.weight",
    P + "layernorm.bias": "v.norm.bias",
    "classifier.layernorm.weight": "mlp_head.0.weight",
    "classifier.layernorm.bias": "mlp_head.0.bias",
    "classifier.dense.weight": "mlp_head.1.weight",
    "classifier.dense.bias": "mlp_head.1.bias",
}


def _to_original_layout(sd, prefix="module."):
    """Inverse of transformers' conversion script: HF AST state_dict → YuanGongND/ast ``.pth`` dict."""
    out, qkv = {}, {}
    for key, value in sd.items():
        if key in _TOP_INV:
            out[prefix + _TOP_INV[key]] = value.clone()
            continue
        m = re.match(r"^audio_spectrogram_transformer\.(?:layers|encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$", key)
        assert m, key
        layer, module, param = m.groups()
        if module in _QKV:
            qkv.setdefault((layer, param), [None] * 3)[_QKV[module]] = value
        else:
            out[f"{prefix}v.blocks.{layer}.{_BLOCK_INV[module]}.{param}"] = value.clone()
    for (layer, param), parts in qkv.items():
        out[f"{prefix}v.blocks.{layer}.attn.qkv.{param}"] = torch.cat(parts, dim=0)
    # timm DeiT's ImageNet heads are saved in AST .pth files too (unused)
    d = sd["classifier.dense.weight"].shape[1]
    out[prefix + "v.head.weight"] = torch.zeros(1000, d)
    out[prefix + "v.head.bias"] = torch.zeros(1000)
    out[prefix + "v.head_dist.weight"] = torch.zeros(1000, d)
    out[prefix + "v.head_dist.bias"] = torch.zeros(1000)
    return out


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).abs().max() / ref.abs().max()).item()


# --- real AST-base shape: fidelity against transformers on a real clip --------------------------


@pytest.fixture(scope="module")
def clip(shared_dir):
    import soundfile as sf

    wav, sr = sf.read(str(shared_dir / CLIP), dtype="float32")
    assert sr == 16000 and wav.ndim == 1
    return wav


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Random AST-base in transformers, saved as a HF folder, loaded by audiobench from the folder."""
    hf = _randomise_(_hf_model(AST_BASE_10_10), seed=0)
    folder = tmp_path_factory.mktemp("ast_hf")
    hf.save_pretrained(str(folder))
    ours = load_model("ast", checkpoint=folder)
    return hf, ours, folder


@pytest.fixture(scope="module")
def ours_alone(real, clip):
    _, ours, _ = real
    with torch.no_grad():
        return ours(torch.from_numpy(clip)[None])


def test_fidelity_vs_transformers_real_clip(real, clip, ours_alone):
    from transformers import ASTFeatureExtractor

    hf, ours, _ = real
    fe = ASTFeatureExtractor()  # defaults are AST's: 16 kHz, 128 bins, 1024 frames, AudioSet mean/std
    inputs = fe(clip, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**inputs).logits
        feats = ours.features(torch.from_numpy(clip)[None])
    assert feats.shape == inputs["input_values"].shape == (1, 1024, 128)
    # front end: fbank within 1e-4 → normalised features within 1e-4 / (2 * 4.57)
    assert (feats - inputs["input_values"]).abs().max().item() < 1e-4
    assert ours_alone.shape == ref.shape == (1, 527)
    assert _rel(ours_alone, ref) < 1e-4
    assert ref.abs().max().item() > 0.1  # the random head gives non-trivial logits


@pytest.mark.slow
def test_batch_consistency_real_shape(real, clip, ours_alone):
    _, ours, _ = real
    x = torch.from_numpy(clip)
    batch = torch.stack([x, 0.5 * torch.flip(x, dims=[0])])
    with torch.no_grad():
        both = ours(batch)
    assert (both[0] - ours_alone[0]).abs().max().item() < 1e-5
    assert (both[1] - both[0]).abs().max().item() > 1e-3  # the second clip is really different


def test_original_pth_round_trip_real_shape(real, tmp_path):
    hf, _, _ = real
    path = tmp_path / "audioset_10_10_0.4593.pth"
    torch.save(_to_original_layout(hf.state_dict()), str(path))
    loaded = load_model("ast", checkpoint=path)
    want = hf.state_dict()
    got = loaded.net.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_default_spec_and_registration():
    spec = MODELS.get("ast").spec
    assert spec is AST_SPEC
    assert (spec.family, spec.sample_rate, spec.n_classes, spec.has_embedding) == ("transformer", 16000, 527, True)
    assert spec.normalisation == {"mean": -4.2677393, "std": 4.5689974}
    assert spec.frontend["num_mel_bins"] == 128 and spec.frontend["target_frames"] == 1024
    assert spec.weights.file_name.endswith(".safetensors")
    assert re.fullmatch(r"[0-9a-f]{64}", spec.weights.sha256)
    assert spec.weights.url.startswith("https://huggingface.co/MIT/ast-finetuned-audioset-10-10-0.4593/resolve/")


# --- small AST (same code paths, fast) ----------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    hf = _randomise_(_hf_model(SMALL), seed=1)
    ours = ASTTagger(AST_SPEC, arch=SMALL).eval()
    return hf, ours


def _waveform(n=16000, batch=2, seed=5):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, n, generator=g)


def test_current_layout_state_dict_and_embedding(small):
    hf, ours = small
    ours.load_checkpoint(hf.state_dict())  # transformers' in-memory (current) layout
    x = _waveform()
    with torch.no_grad():
        feats = ours.features(x)
        logits = ours(x)
        ref = hf(input_values=feats).logits
        emb = ours.embed(x)
    assert torch.allclose(logits, ref, atol=1e-6, rtol=0)
    assert emb.shape == (2, 64)
    assert torch.allclose(ours.head(emb), logits, atol=1e-6, rtol=0)


def test_original_layout_logits_small(small):
    hf, _ = small
    ours = ASTTagger(AST_SPEC, arch=SMALL).eval()
    ours.load_checkpoint(_to_original_layout(hf.state_dict(), prefix=""))  # no DataParallel prefix
    x = _waveform(seed=6)
    with torch.no_grad():
        assert torch.allclose(ours(x), hf(input_values=ours.features(x)).logits, atol=1e-6, rtol=0)


def test_hf_folder_legacy_layout_small(small, tmp_path):
    hf, _ = small
    hf.save_pretrained(str(tmp_path))  # writes transformers' legacy key layout (encoder.layer.N...)
    ours = ASTTagger(AST_SPEC, arch=SMALL).eval()
    ours.load_checkpoint(tmp_path)
    for k, v in hf.state_dict().items():
        assert torch.equal(ours.net.state_dict()[k], v), k


def test_batch_consistency_small(small):
    hf, _ = small
    ours = ASTTagger(AST_SPEC, arch=SMALL).eval()
    ours.load_checkpoint(hf.state_dict())
    x = _waveform(n=16000 * 3, batch=3, seed=7)
    with torch.no_grad():
        batch = ours(x)
        for i in range(3):
            assert (ours(x[i : i + 1])[0] - batch[i]).abs().max().item() < 1e-5


def test_layout_conversion_both_directions(small, tmp_path):
    """current ↔ legacy key layouts (transformers 5.x modules ↔ 4.x modules / hub files)."""
    from safetensors.torch import load_file

    from audiobench.models.ast import to_net_layout

    hf, _ = small
    current = hf.state_dict()
    hf.save_pretrained(str(tmp_path))
    legacy = load_file(str(tmp_path / "model.safetensors"))
    assert any(".encoder.layer.0.attention.attention.query." in k for k in legacy)
    # legacy → current, and current → legacy (what a transformers 4.x module would need)
    to_current = to_net_layout(legacy, current.keys())
    assert to_current.keys() == current.keys()
    assert all(torch.equal(to_current[k], current[k]) for k in current)
    to_legacy = to_net_layout(current, legacy.keys())
    assert to_legacy.keys() == legacy.keys()
    assert all(torch.equal(to_legacy[k], legacy[k]) for k in legacy)
    # the original layout converts to either target
    original = _to_original_layout(current)
    assert to_net_layout(original, legacy.keys()).keys() == legacy.keys()


def test_compiles_without_graph_breaks(small):
    import torch._dynamo as dynamo

    _, ours = small
    explanation = dynamo.explain(ours)(_waveform(n=8000, batch=1))
    assert explanation.graph_break_count == 0


def test_gradient_reaches_waveform_through_resampler(small):
    hf, _ = small
    ours = ASTTagger(AST_SPEC, sample_rate=32000, arch=SMALL).eval()
    ours.load_checkpoint(hf.state_dict())
    x = _waveform(n=32000, batch=2).requires_grad_(True)
    ours(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs().sum(dim=1) > 0).all()


def test_short_and_long_inputs(small):
    _, ours = small
    with torch.no_grad():
        assert ours.features(_waveform(n=100)).shape == (2, 1024, 128)  # < one frame: padded
        long = ours.features(_waveform(n=16000 * 11, batch=1))
    assert long.shape == (1, 1024, 128)  # 1098 frames truncated


def test_strict_errors(small, tmp_path):
    hf, _ = small
    ours = ASTTagger(AST_SPEC, arch=SMALL)
    sd = dict(hf.state_dict())
    with pytest.raises(WeightsError, match="classifier.dense.bias"):
        ours.load_checkpoint({k: v for k, v in sd.items() if k != "classifier.dense.bias"})
    bad = dict(sd, **{"classifier.dense.weight": torch.zeros(10, 64)})
    with pytest.raises(WeightsError, match=r"classifier\.dense\.weight.*\(10, 64\)"):
        ours.load_checkpoint(bad)
    with pytest.raises(WeightsError, match="unexpected key 'extra.weight'"):
        ours.load_checkpoint(dict(sd, **{"extra.weight": torch.zeros(1)}))
    # a HF folder whose config disagrees with the architecture is refused by field
    hf.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["time_stride"] = 12
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="time_stride is 12"):
        ours.load_checkpoint(tmp_path)
    cfg["time_stride"] = 10
    cfg["id2label"] = {str(i): str(i) for i in range(35)}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="35 labels"):
        ours.load_checkpoint(tmp_path)
    cfg["id2label"] = {str(i): str(i) for i in range(527)}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no weights file"):
        ours.load_checkpoint(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(WeightsError, match="no config.json"):
        ours.load_checkpoint(tmp_path)


def test_no_frontend_tensors_in_state_dict(small):
    _, ours = small
    assert all(k.startswith("net.") for k in ours.state_dict())
    resampling = ASTTagger(AST_SPEC, sample_rate=44100, arch=SMALL)
    assert resampling.state_dict().keys() == ours.state_dict().keys()


@pytest.mark.slow
def test_gradient_real_shape():
    model = MODELS.get("ast").factory(AST_SPEC).eval()
    x = _waveform(n=16000, batch=1).requires_grad_(True)
    model(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
