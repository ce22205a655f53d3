"""Feature-domain perturbations: noise and PGD on a model's normalised network input.

They exist to reproduce Li et al. 2022 ("Robustness of Neural Architectures for Audio Event
Detection", lijuncheng16/AudioSetDoneRight), which perturbed features. They are NOT comparable
across models: every model has its own front end and feature scale, so the same sigma or eps means
different things. The engine applies them as
``model.forward_features(p.perturb_features(model.features(waveform), ...))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.perturb.attacks import MAX_FEATURE_EPS, _Attack, _check_model, _validate_attack, attack_companions, pgd
from audiobench.perturb.base import Perturbation, check_finite


class _FeatureDomain(Perturbation):
    domain = "feature"
    comparable_across_models = False

    def __call__(self, waveform, *, model=None, targets=None, rng=None, trace=None):
        raise TypeError(
            f"{self.name} acts on features: use model.forward_features(p.perturb_features(model.features(x), ...))"
        )

    def perturb_features(self, features: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} does not implement perturb_features")


@register_perturbation
@dataclass
class FeatureGaussian(_FeatureDomain):
    """White Gaussian noise of std ``sigma`` (in the model's normalised feature units) added to
    the features (Li et al. 2022). NOT comparable across models (feature scales differ)."""

    name = "feature-gaussian"
    level_field = "sigma"

    sigma: float = 0.1

    def __post_init__(self):
        check_finite("feature-gaussian sigma", self.sigma, non_negative=True)
        self.sigma = float(self.sigma)
        if self.sigma > MAX_FEATURE_EPS:
            raise ConfigError(f"feature-gaussian sigma must be <= {MAX_FEATURE_EPS:g} (normalised feature units), got {self.sigma:g}")

    def perturb_features(self, features, *, model=None, targets=None, rng=None, trace=None):
        if self.sigma == 0:
            return features.clone()
        noise = rng.normal(*features.shape[1:], dtype=features.dtype).to(features.device)
        return features + self.sigma * noise


@register_perturbation
@dataclass
class FeaturePGD(_Attack, _FeatureDomain):
    """PGD on the normalised features (BCE over all classes, as :class:`~audiobench.perturb.attacks.PGD`)
    with ``eps`` (and ``step_size``) in feature units, at most 1e3, ``norm`` linf/l2 over the whole
    feature tensor of a clip, no range clamp; returns the per-clip best point. NOT comparable
    across models (feature scales differ); Li et al. 2022."""

    name = "feature-pgd"

    eps: float = 0.1
    norm: str = "linf"
    steps: int = 10
    step_size: Optional[float] = None
    random_start: bool = True
    restarts: int = 1

    def __post_init__(self):
        _validate_attack(self, max_linf=MAX_FEATURE_EPS, max_l2=MAX_FEATURE_EPS, units="normalised feature units")

    def companions(self):
        # FGSM and same-L2 Gaussian references are defined in waveform space; the 10x-eps check
        # and the loss/gradient checks apply to a feature-domain attack too
        return attack_companions(self, fgsm=False, same_l2=False)

    def perturb_features(self, features, *, model=None, targets=None, rng=None, trace=None):
        if self.eps == 0:
            return features.clone()
        _check_model(model)
        return pgd(model.forward_features, features, targets, eps=self.eps, norm=self.norm, steps=self.steps,
                   step_size=self.step_size, random_start=self.random_start, restarts=self.restarts, rng=rng,
                   trace=trace, bounds=None)
