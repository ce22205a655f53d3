"""The model contract, checked for EVERY registered model (random weights, short clips):
waveform (batch, samples) at model.sample_rate -> finite logits (batch, 527); a non-zero, finite
gradient reaches the waveform; a clip scored alone and inside a batch gives the same logits; the
embedding/head split (where declared) reproduces forward. Plus the shipped toy models' quality."""

from __future__ import annotations

import pytest
import torch

from audiobench.models import MODELS, load_model

ALL = MODELS.names()


@pytest.fixture(autouse=True)
def _seed():
    with torch.random.fork_rng(devices=[]):
        yield


def _clip(model, seconds=1.0, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = int(model.sample_rate * seconds)
    return (torch.rand(batch, n, generator=g) - 0.5) * 0.2


@pytest.mark.parametrize("name", ALL)
def test_contract_gradient_and_batch_consistency(name):
    model = load_model(name, weights="random")
    assert model.spec.n_classes == 527 and not model.training
    assert all(not p.requires_grad for p in model.parameters())  # frozen: input-only gradients
    x = _clip(model)
    x.requires_grad_(True)
    logits = model(x)
    assert logits.shape == (2, 527) and torch.isfinite(logits).all()
    (grad,) = torch.autograd.grad(logits.sigmoid().sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    with torch.no_grad():
        alone = model(x.detach()[1:2])
        torch.testing.assert_close(alone, logits.detach()[1:2], rtol=1e-5, atol=1e-5)
        if model.spec.has_embedding:
            torch.testing.assert_close(model.head(model.embed(x.detach())), logits.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["toy-cnn", "toy-transformer"])
def test_shipped_toy_models_reach_0_9_map_on_the_toy_set(name):
    import numpy as np

    from audiobench.data import open_dataset
    from audiobench.metrics.tagging import tagging_metrics

    model = load_model(name)  # the committed weights, offline
    assert model.checkpoint_path and model.checkpoint_path.endswith(f"{name}.pt")
    ds = open_dataset(None)
    with torch.no_grad():
        logits = np.concatenate([model(b.waveform).numpy() for b in ds.batches(16)])
    assert tagging_metrics(logits.astype(np.float64), ds.targets())["mAP"] >= 0.9
