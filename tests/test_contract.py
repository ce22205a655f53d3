"""The public model contract: the Protocol, the adapter, the capability check and the probe.

Every refusal is one line (a ModelContractError, which is a ConfigError) naming the model and the
failed check. Models here are tiny (a strided conv on 0.5-1 s of noise) so the file runs in seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audiobench.errors import ConfigError
from audiobench.models import base
from audiobench.models.adapter import ContractTagger, wrap_contract_model
from audiobench.models.contract import (
    EMBEDDING, FEATURES, AudioTagger, HasEmbedding, HasFeatures, HasLabels, ModelContractError, capabilities,
    check_capabilities, needs_gradient, probe_model,
)
from audiobench.models.frontends import WaveformResampler
from audiobench.models.resolve import resolve_model
from audiobench.perturb import PERTURBATIONS

SR = 8000


class Conv(nn.Module):
    """Strided conv → mean over time → linear: a minimal contract model."""

    sample_rate = SR

    def __init__(self, n_classes: int = 527):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 8, 32, stride=16)
        self.fc = nn.Linear(8, n_classes)

    def embed(self, w):
        return torch.tanh(self.conv(w[:, None])).mean(-1)

    def head(self, e):
        return self.fc(e)

    def forward(self, w):
        return self.head(self.embed(w))


class WithFeatures(Conv):
    """Conv with its front end split out (features = the conv activations)."""

    def features(self, w):
        return torch.tanh(self.conv(w[:, None]))

    def forward_features(self, f):
        return self.fc(f.mean(-1))

    def embed_features(self, f):
        return f.mean(-1)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


def wrap(module, name="mine:make", sample_rate=SR):
    m = wrap_contract_model(module, name=name, sample_rate=sample_rate)
    return m.eval().requires_grad_(False)


# --- the Protocol ---------------------------------------------------------------------------------
def test_protocols_are_runtime_checkable():
    assert isinstance(Conv(), AudioTagger) and isinstance(Conv(), HasEmbedding)
    assert not isinstance(Conv(), HasFeatures) and isinstance(WithFeatures(), HasFeatures)
    assert not isinstance(nn.Linear(2, 2), AudioTagger)  # no sample_rate
    labelled = Conv(3)
    labelled.labels = ["Speech", "Dog", "Cat"]
    assert isinstance(labelled, HasLabels) and not isinstance(Conv(), HasLabels)


# --- the adapter ----------------------------------------------------------------------------------
def test_adapter_gives_the_engine_interface_with_identity_features():
    user = Conv()
    m = wrap(user)
    assert isinstance(m, base.AudioTagger) and isinstance(m, ContractTagger)
    assert m.spec.name == "mine:make" and m.spec.n_classes == 527 and m.spec.sample_rate == SR
    assert m.spec.has_embedding and capabilities(m) == {EMBEDDING}
    x = torch.rand(2, 4000) - 0.5
    assert torch.equal(m.features(x), x)  # identity features at the model's own rate
    assert torch.allclose(m.forward_features(m.features(x)), user(x))
    assert torch.allclose(m.head(m.embed_features(m.features(x))), user(x))


def test_adapter_resamples_with_the_project_resampler():
    user = Conv()
    m = wrap(user, sample_rate=16000)
    assert m.sample_rate == 16000 and m.spec.sample_rate == SR
    x = torch.rand(2, 16000) - 0.5
    expected = user(WaveformResampler(16000, SR)(x))
    assert m.features(x).shape == (2, 8000)
    assert torch.allclose(m(x), expected, atol=1e-6)
    xg = x.clone().requires_grad_(True)  # the gradient flows through the resampler
    (g,) = torch.autograd.grad(m(xg).sum(), xg)
    assert g.abs().sum() > 0


def test_adapter_uses_the_models_own_features_when_it_has_them():
    user = WithFeatures()
    m = wrap(user)
    assert capabilities(m) == {FEATURES, EMBEDDING}
    x = torch.rand(2, 4000) - 0.5
    assert torch.equal(m.features(x), user.features(x))
    check_capabilities(m, [PERTURBATIONS.get("feature-pgd")(), PERTURBATIONS.get("pgd")()], latent_metrics=True)


def test_adapter_wraps_a_registered_style_model():
    toy = resolve_model("toy-cnn", weights="random")
    m = wrap(toy, name="my-toy", sample_rate=16000)
    assert capabilities(m) == {FEATURES, EMBEDDING} and m.spec.n_classes == 527
    x = torch.rand(1, 16000) - 0.5
    assert torch.allclose(m(x), toy(x))


@pytest.mark.parametrize("bad, expected", [
    (object(), "expected a torch.nn.Module"),
    (nn.Linear(2, 2), "sample_rate is None"),
])
def test_adapter_refuses_what_is_not_a_contract_model(bad, expected):
    with pytest.raises(ModelContractError) as e:
        wrap_contract_model(bad, name="mine:make")
    assert expected in one_line(e)


def test_adapter_refuses_half_a_front_end_and_bad_labels():
    half = Conv()
    half.features = lambda w: w
    with pytest.raises(ModelContractError) as e:
        wrap(half)
    assert "has features() but no forward_features()" in one_line(e)
    labelled = Conv(2)
    labelled.labels = ["Speech", 3]
    with pytest.raises(ModelContractError) as e:
        wrap(labelled)
    assert "labels must be" in one_line(e)


def test_labels_give_the_class_count_without_running_the_model():
    labelled = Conv(3)
    labelled.labels = ["Speech", "Dog", "Cat"]
    m = wrap(labelled)
    assert m.spec.n_classes == 3 and m.labels == ["Speech", "Dog", "Cat"]


# --- capabilities -------------------------------------------------------------------------------------
def test_feature_conditions_need_features():
    m = wrap(Conv())
    with pytest.raises(ModelContractError) as e:
        check_capabilities(m, [PERTURBATIONS.get("none")(), PERTURBATIONS.get("feature-pgd")()])
    assert one_line(e).startswith("feature-pgd needs model.features(); mine:make has none")
    check_capabilities(m, [PERTURBATIONS.get("gaussian")(snr_db=20), PERTURBATIONS.get("pgd")()], latent_metrics=True)


def test_latent_metrics_need_an_embedding():
    class NoEmbedding(nn.Module):
        sample_rate = SR

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 527)

        def forward(self, w):
            return self.fc(w.mean(-1, keepdim=True))

    m = wrap(NoEmbedding())
    assert not m.spec.has_embedding
    with pytest.raises(ModelContractError) as e:
        check_capabilities(m, [], latent_metrics=True)
    assert one_line(e) == "latent metrics need model.embed() and model.head(); mine:make has none"


def test_needs_gradient_follows_uses_model():
    assert needs_gradient([PERTURBATIONS.get("none")(), PERTURBATIONS.get("fgsm")()])
    assert not needs_gradient([PERTURBATIONS.get("none")(), PERTURBATIONS.get("gaussian")(snr_db=20)])


def test_registered_models_have_features():
    toy = resolve_model("toy-cnn", weights="random")
    assert capabilities(toy) == {FEATURES, EMBEDDING}
    check_capabilities(toy, [PERTURBATIONS.get("feature-pgd")()], latent_metrics=True)


# --- the probe --------------------------------------------------------------------------------------
def test_probe_passes_a_good_model_and_a_registered_one():
    summary = probe_model(wrap(Conv(), sample_rate=16000), sample_rate=16000, n_classes=527, needs_grad=True)
    assert summary["gradient_checked"] and summary["batch_independence_max_abs_diff"] < 1e-5
    probe_model(resolve_model("toy-cnn", sample_rate=16000), sample_rate=16000, n_classes=527, needs_grad=True)


class _Broken(Conv):
    """Conv whose forward misbehaves in one way, picked by ``how``."""

    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, w):
        y = super().forward(w)
        if self.how == "shape":
            return y[..., None]
        if self.how == "nan":
            return y * torch.nan
        if self.how == "batch":  # normalises across the batch
            return super().forward(w - w.mean(dim=0, keepdim=True))
        if self.how == "detach":
            return super().forward(w.detach())
        if self.how == "numpy":
            return torch.from_numpy(super().forward(w).detach().numpy())
        if self.how == "zero-grad":
            return y.detach() + 0.0 * w.sum()
        if self.how == "raises":
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\n(long details)")
        return y


@pytest.mark.parametrize("how, needs_grad, expected", [
    ("shape", False, ", 527, 1) for 1 clip(s), expected (1, C)"),
    ("nan", False, "returned NaN or inf logits"),
    ("batch", False, "depend on the other clips of its batch"),
    ("detach", True, "is not differentiable"),
    ("numpy", True, "is not differentiable"),
    ("raises", False, "failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
])
def test_probe_failures_are_one_line(how, needs_grad, expected):
    # a model without labels runs once when wrapped (to learn C), so some failures show there
    with pytest.raises(ModelContractError) as e:
        probe_model(wrap(_Broken(how)), sample_rate=SR, n_classes=527, needs_grad=needs_grad)
    msg = one_line(e)
    assert "mine:make" in msg and expected in msg


def test_probe_warns_on_a_zero_gradient_and_lets_the_trust_checks_judge():
    # gradient masking (a defence, a quantised front end) is benchmarked, not refused: the
    # attack trust checks flag it (tests/test_trust.py::test_gradient_masking_model_is_flagged)
    with pytest.warns(UserWarning, match="input gradient is zero on probe clip 0"):
        probe_model(wrap(_Broken("zero-grad")), sample_rate=SR, n_classes=527, needs_grad=True)


def test_probe_without_attacks_does_not_ask_for_a_gradient():
    probe_model(wrap(_Broken("detach")), sample_rate=SR, n_classes=527, needs_grad=False)


def test_probe_checks_class_count_rate_and_pipeline_consistency():
    m = wrap(Conv())
    with pytest.raises(ModelContractError) as e:
        probe_model(m, sample_rate=SR, n_classes=10, needs_grad=False)
    assert "outputs 527 classes but the dataset has 10" in one_line(e)
    with pytest.raises(ModelContractError) as e:
        probe_model(m, sample_rate=16000, n_classes=527, needs_grad=False)
    assert "takes 8000 Hz waveforms but the data is 16000 Hz" in one_line(e)

    class Inconsistent(WithFeatures):
        def forward_features(self, f):
            return super().forward_features(f) + 1.0

    with pytest.raises(ModelContractError) as e:
        probe_model(wrap(Inconsistent()), sample_rate=SR, n_classes=527, needs_grad=False)
    assert "forward_features(features(x)) differs from forward(x)" in one_line(e)


def test_contract_errors_are_config_errors():
    assert issubclass(ModelContractError, ConfigError)
