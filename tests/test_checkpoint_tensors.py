"""Checkpoint tensors that load_state_dict would cast or choke on (issue 19): what is refused, what is
warned about, what passes. The refusals through the CLI are cases of tests/hostile_cases_archs.py."""

from __future__ import annotations

import warnings

import pytest
import torch

from audiobench.errors import WeightsError
from audiobench.models import load_model
from audiobench.models.checkpoints import check_dense_tensors, read_checkpoint, strict_load


@pytest.fixture()
def toy():
    return load_model("toy-cnn", weights="random")


def _sd(model, **replace):
    sd = {k: v.clone() for k, v in model.net.state_dict().items()}
    sd.update(replace)
    return sd


def test_float64_is_cast_with_one_warning_and_the_values_kept(toy, tmp_path):
    sd = _sd(toy)
    sd64 = {k: (v.double() + 1e-12 if v.is_floating_point() else v) for k, v in sd.items()}
    path = tmp_path / "f64.pt"
    torch.save(sd64, path)
    with pytest.warns(UserWarning, match=r"f64\.pt: \d+ tensor\(s\) stored as float64 \(first '.+'\) cast to the "
                                         r"model's float32") as rec:
        model = load_model("toy-cnn", checkpoint=path)
    assert len([w for w in rec if "float64" in str(w.message)]) == 1  # one warning per file, not per tensor
    got = model.net.state_dict()
    assert all(got[k].dtype == sd[k].dtype for k in sd)
    torch.testing.assert_close(got["classifier.weight"], sd["classifier.weight"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_cast_up_silently(toy, dtype):
    sd = _sd(toy, **{"classifier.weight": toy.net.classifier.weight.detach().to(dtype)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strict_load(toy.net, sd, "half.pt")
    assert toy.net.classifier.weight.dtype == torch.float32


@pytest.mark.parametrize("value,message", [
    (torch.zeros(527, 64, dtype=torch.complex64), "has dtype complex64, model expects float32 (the imaginary part"),
    (torch.zeros(527, 64, dtype=torch.int32), "has dtype int32, model expects float32"),
    (torch.zeros(527, 64, dtype=torch.bool), "has dtype bool, model expects float32"),
    (torch.quantize_per_tensor(torch.zeros(527, 64), 0.1, 0, torch.qint8), "is a quantized qint8 tensor"),
])
def test_non_float_tensor_for_a_float_parameter_is_refused(toy, value, message):
    before = toy.net.classifier.weight.detach().clone()
    with pytest.raises(WeightsError, match=r"x\.pt: key 'classifier\.weight' " + message.replace("(", r"\(")):
        strict_load(toy.net, _sd(toy, **{"classifier.weight": value}), "x.pt")
    assert torch.equal(toy.net.classifier.weight, before)  # nothing half-loaded


def test_float_tensor_for_an_integer_buffer_is_refused(toy):
    sd = _sd(toy, **{"blocks.0.1.num_batches_tracked": torch.tensor(3.5)})
    with pytest.raises(WeightsError, match="'blocks.0.1.num_batches_tracked' has dtype float32, model expects int64"):
        strict_load(toy.net, sd, "x.pt")
    strict_load(toy.net, _sd(toy, **{"blocks.0.1.num_batches_tracked": torch.tensor(3, dtype=torch.int32)}), "x.pt")


def test_sparse_and_meta_tensors_are_named_wherever_they_are_nested(tmp_path):
    nested = {"model": {"a": torch.zeros(2)}, "extra": [torch.zeros(1), {"b": torch.zeros(3, 3).to_sparse()}]}
    with pytest.raises(WeightsError, match=r"^f: refused: tensor 'extra/1/b' is a sparse_coo tensor"):
        check_dense_tensors(nested, "f")
    path = tmp_path / "meta.pt"
    torch.save({"model": {"w": torch.empty(4, device="meta")}}, path)
    with pytest.raises(WeightsError, match=r"meta\.pt: refused: tensor 'model/w' is a meta tensor"):
        read_checkpoint(path)
    check_dense_tensors({"model": {"a": torch.zeros(2)}, "iteration": 3}, "f")  # dense: nothing to say
