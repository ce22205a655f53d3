"""Perturbation registry: name → perturbation dataclass (see :mod:`audiobench.perturb.base`)."""

from __future__ import annotations

from audiobench.perturb.base import AttackTrace, Perturbation
from audiobench.registry import Registry

PERTURBATIONS: Registry[type] = Registry("perturbation")


def register_perturbation(cls):
    """Class decorator: registers a Perturbation subclass under ``cls.name``."""
    PERTURBATIONS.register(cls.name, cls)
    return cls


import importlib as _importlib

for _mod in ("none", "noise", "occlusion", "attacks", "feature", "universal", "min_eps", "chain", "corruptions", "transfer",
             "gain"):
    _importlib.import_module(f"audiobench.perturb.{_mod}")
