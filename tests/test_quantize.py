"""Quantized variants NAME@VARIANT (audiobench/models/quantize.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audiobench.errors import ConfigError
from audiobench.models import MODELS, load_model
from audiobench.models.base import AudioTagger, ModelSpec
from audiobench.models.quantize import VARIANTS, apply_variant, fake_quantize_per_channel, parse_variant
from audiobench.perturb.attacks import bce_per_clip, pgd
from audiobench.rng import ClipRNG


@pytest.fixture(scope="module")
def toy_data():
    from audiobench.data import open_dataset

    ds = open_dataset(None)
    batch = ds.read(0, len(ds))
    return ds, batch


@pytest.fixture(scope="module")
def toy_cnn(toy_data):
    return load_model("toy-cnn", sample_rate=toy_data[0].sample_rate)


@pytest.fixture(scope="module")
def toy_variants(toy_cnn):
    """Every variant of toy-cnn, built once (tests only read them)."""
    return {v: apply_variant(toy_cnn, v) for v in VARIANTS}


def _mAP(model, batch) -> float:
    from audiobench.metrics.tagging import tagging_metrics

    with torch.no_grad():
        scores = torch.cat([torch.sigmoid(model(batch.waveform[i:i + 32])) for i in range(0, len(batch), 32)])
    return tagging_metrics(scores.numpy(), batch.targets.numpy())["mAP"]


# -- names ----------------------------------------------------------------------------------------
def test_parse_variant():
    assert parse_variant("toy-cnn@int8") == ("toy-cnn", "int8")
    assert parse_variant("toy-cnn") == ("toy-cnn", None)
    assert parse_variant("hf:org/name@w4") == ("hf:org/name", "w4")
    with pytest.raises(ConfigError) as exc:
        parse_variant("toy-cnn@int3")
    msg = str(exc.value)
    assert "\n" not in msg and "int3" in msg and all(v in msg for v in VARIANTS)
    with pytest.raises(ConfigError, match="no model name"):
        parse_variant("@int8")


def test_registry_and_load_model_resolve_variants(toy_cnn):
    entry = MODELS.get("toy-cnn@w4")
    assert entry.spec.name == "toy-cnn@w4" and entry.spec.reference_mAP is None
    with pytest.raises(ConfigError):
        MODELS.get("toy-cnn@nope")
    model = load_model("toy-cnn@w4", sample_rate=16000)
    assert model.spec.name == "toy-cnn@w4"
    assert model.checkpoint_sha256 == toy_cnn.checkpoint_sha256 is not None
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


# -- accuracy and provenance ------------------------------------------------------------------------
@pytest.mark.slow
def test_every_variant_keeps_clean_mAP_on_the_toy_set(toy_cnn, toy_variants, toy_data):
    _, batch = toy_data
    ref = _mAP(toy_cnn, batch)
    assert ref > 0.9
    for variant in VARIANTS:
        got = _mAP(toy_variants[variant], batch)
        assert abs(got - ref) <= 0.05, (variant, got, ref)


def test_provenance_and_base_untouched(toy_cnn, toy_variants):
    before = {k: v.clone() for k, v in toy_cnn.state_dict().items()}
    apply_variant(toy_cnn, "int8")
    for variant in VARIANTS:
        q = toy_variants[variant]
        info = q.variant_info
        assert q.spec.name == f"toy-cnn@{variant}" and q.spec.family == toy_cnn.spec.family
        assert info["variant"] == variant and info["base_model"] == "toy-cnn"
        assert isinstance(info["recipe"], str) and info["recipe"] and info["gradient"]
        assert info["layers"].get("Conv2d") == 4 and info["layers"].get("Linear") == 2
        assert 0 < info["weight_bytes"] < info["base_weight_bytes"]
        assert q.checkpoint_sha256 == toy_cnn.checkpoint_sha256
    # 4 B/weight -> 1 B (int8) / 0.5 B (w4) / 2 B: the byte counts are ordered accordingly
    sizes = {v: toy_variants[v].variant_info["weight_bytes"] for v in ("fp16", "int8", "w4")}
    assert sizes["w4"] < sizes["int8"] < sizes["fp16"]
    after = toy_cnn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ConfigError, match="already a variant"):
        apply_variant(toy_variants["w4"], "int8")
    with pytest.raises(ConfigError, match="unknown variant"):
        apply_variant(toy_cnn, "int4")


def test_w4_weights_take_at_most_16_values_per_output_channel():
    model = load_model("toy-transformer@w4", sample_rate=16000)  # convs, linears, attention projections
    checked = 0
    for mod in model.modules():
        for name in ("weight", "in_proj_weight"):
            w = getattr(mod, name, None)
            if not isinstance(w, torch.Tensor) or w.dim() < 2 or not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention)):
                continue
            for row in w.detach().flatten(1):
                assert torch.unique(row).numel() <= 16
            checked += 1
    assert checked >= 10
    w = torch.randn(6, 3, 3, 3)
    fq = fake_quantize_per_channel(w)
    assert all(torch.unique(r).numel() <= 16 for r in fq.flatten(1))
    assert torch.equal(fake_quantize_per_channel(_on_grid(6, 27).view(6, 3, 3, 3)), _on_grid(6, 27).view(6, 3, 3, 3))
    assert torch.equal(fake_quantize_per_channel(torch.zeros(2, 4)), torch.zeros(2, 4))


def _on_grid(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Weights on the 4-bit grid, exactly: codes 0..15 (both ends in every row) minus zero point 8,
    times 2^-4, so the recomputed range, scale and zero point are exact."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows, cols), generator=g).float()
    codes[:, 0], codes[:, 1] = 0, 15
    return (codes - 8) * 2.0 ** -4


# -- white-box gradients ----------------------------------------------------------------------------
class _LinearTagger(AudioTagger):
    """An unregistered wrapper: identity front end, one Linear (T samples -> C logits)."""

    def __init__(self, linear: nn.Linear):
        spec = ModelSpec(name="test-linear", family="cnn", description="test", sample_rate=linear.in_features,
                         n_classes=linear.out_features)
        super().__init__(spec)
        self.net = linear

    def features(self, waveform):
        return waveform

    def forward_features(self, features):
        return self.net(features)


def test_int8_ste_gradient_equals_float_gradient_where_nothing_is_rounded():
    """Weights on the int8 grid (scale 2^-7) and inputs on the activation grid (scale 2^-5): the
    int8 forward is exact, and the straight-through gradient equals the float gradient on every
    input coordinate whose weights are not rounded. Column T-1 holds each channel's max |w|, which
    PyTorch's observer (scale = max|w| / 127.5) must round; its input is 0, so the forward is
    unaffected, but its gradient is that of the rounded weight."""
    g = torch.Generator().manual_seed(0)
    T, C = 16, 5
    linear = nn.Linear(T, C, bias=False)
    codes = torch.randint(-127, 128, (C, T), generator=g).float()
    codes[:, -1] = 127.5
    with torch.no_grad():
        linear.weight.copy_(codes * 2.0 ** -7)
    model = _LinearTagger(linear).eval().requires_grad_(False)
    q = apply_variant(model, "int8")
    assert q.variant_info["layers"] == {"Linear": 1}
    k = torch.randint(0, 128, (3, T), generator=g).float()
    k[:, 0], k[:, 1], k[:, -1] = 0, 127, 64  # min, max, and 0 on the rounded column
    x = (k - 64) * 2.0 ** -5
    targets = torch.zeros(3, C)
    targets[:, 1] = 1

    def grad(m):
        xg = x.clone().requires_grad_(True)
        logits = m(xg)
        (gx,) = torch.autograd.grad(bce_per_clip(logits, targets).sum(), xg)
        return logits.detach(), gx

    lq, gq = grad(q)
    lf, gf = grad(model)
    assert torch.equal(lq, lf)
    assert torch.equal(gq[:, :-1], gf[:, :-1])
    assert not torch.equal(gq[:, -1], gf[:, -1])


def test_w4_gradient_equals_float_gradient_on_grid_weights():
    """Weights already on the 4-bit grid: w4 changes nothing, so its logits and input gradients
    are the float model's, bit for bit (the w4 variant needs no estimator)."""
    T, C = 16, 5
    linear = nn.Linear(T, C)
    with torch.no_grad():
        linear.weight.copy_(_on_grid(C, T))
    model = _LinearTagger(linear).eval().requires_grad_(False)
    q = apply_variant(model, "w4")
    assert torch.equal(q.base.net.weight, linear.weight)
    x = torch.randn(3, T, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(3, C)
    grads = []
    for m in (model, q):
        xg = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(bce_per_clip(m(xg), y).sum(), xg)
        grads.append(gx)
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


def test_int8_clip_result_does_not_depend_on_batch_mates(toy_variants, toy_data):
    q = toy_variants["int8"]
    x = toy_data[1].waveform[:3, :16000]
    with torch.no_grad():
        together = q(x)
        alone = torch.cat([q(x[i:i + 1]) for i in range(3)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_passes_the_engine_probe(toy_variants, toy_data, variant):
    """The engine probes each model before a run; fp16/bf16 kernels round differently alone and in a
    batch (~1e-3 relative), so the probe's tolerance follows the network's precision."""
    from audiobench.models.contract import PROBE_RELATIVE_TOLERANCE, probe_model, probe_relative_tolerance

    ds = toy_data[0]
    probe_model(toy_variants[variant], sample_rate=ds.sample_rate, n_classes=len(ds.vocab), needs_grad=True)
    expected = {"fp16": 16 * torch.finfo(torch.float16).eps, "bf16": 16 * torch.finfo(torch.bfloat16).eps}
    assert probe_relative_tolerance(toy_variants[variant]) == expected.get(variant, PROBE_RELATIVE_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["int8", "w4"])
def test_pgd_through_a_quantized_model_raises_the_loss(toy_variants, toy_data, variant):
    q = toy_variants[variant]
    batch = toy_data[1]
    x, y = batch.waveform[:2, :16000], batch.targets[:2]
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(bce_per_clip(q(xg), y).sum(), xg)
    assert torch.isfinite(gx).all() and (gx.flatten(1).abs().sum(1) > 0).all()
    rng = ClipRNG.for_clips(0, batch.clip_ids[:2], "pgd")
    adv = pgd(q, x, y, eps=0.002, steps=3, rng=rng)
    with torch.no_grad():
        clean, attacked = bce_per_clip(q(x), y), bce_per_clip(q(adv), y)
    assert (adv - x).abs().max() <= 0.002 + 1e-7
    assert (attacked > clean).all()


def test_fp16_backward_is_loss_scaled_and_finite(toy_cnn, toy_variants, toy_data):
    q = toy_variants["fp16"]
    assert next(q.base.net.parameters()).dtype == torch.float16
    assert next(q.base.frontend.parameters(), torch.zeros(1)).dtype == torch.float32
    x = toy_data[1].waveform[:2, :16000].clone().requires_grad_(True)
    logits = q(x)
    assert logits.dtype == torch.float32
    (gx,) = torch.autograd.grad(bce_per_clip(logits, toy_data[1].targets[:2]).sum(), x)
    xf = x.detach().clone().requires_grad_(True)
    (gf,) = torch.autograd.grad(bce_per_clip(toy_cnn(xf), toy_data[1].targets[:2]).sum(), xf)
    assert gx.dtype == torch.float32 and torch.isfinite(gx).all()
    cos = torch.nn.functional.cosine_similarity(gx.flatten(), gf.flatten(), dim=0)
    assert cos > 0.95  # the unscaled fp16 gradient: the float one up to half-precision rounding


def test_docs_page_names_every_variant():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "quantization-and-sharpness.md").read_text()
    table = page.split("### `@int8`", 1)[0]
    import re

    assert set(re.findall(r"^\| `@([a-z0-9]+)` \|", table, flags=re.M)) == set(VARIANTS)
