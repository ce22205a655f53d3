"""What defines a run: :class:`RunConfig`, and the part of it that changes the numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from audiobench.errors import ConfigError
from audiobench.perturb.base import Perturbation

ON_BAD_CLIP = ("fail", "skip")
WEIGHT_CHOICES = ("default", "random")
MAX_SEED = (1 << 63) - 1


@dataclass
class RunConfig:
    """Everything that defines a run. ``result_config()`` is the part that changes numbers."""

    models: List[str]
    conditions: List[Perturbation]  # the clean condition first
    data: Optional[str] = None
    data_root: Optional[str] = None
    checkpoints: Dict[str, Optional[str]] = field(default_factory=dict)
    device: str = "auto"
    batch_size: int = 16
    limit: Optional[int] = None
    seed: int = 0
    out: Path = Path("results")
    run_id: Optional[str] = None
    resume: bool = False
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; losses stay fp32)
    bootstrap: int = 1000
    save_audio: int = 0
    weights: str = "default"  # "default" | "random" (benchmarks only)
    trust_checks: bool = True
    on_bad_clip: str = "fail"  # "fail" | "skip" for NaN/inf/out-of-range input samples
    label_map: Optional[str] = None  # CSV model_class,dataset_class (audiobench.models.labels)
    # models given as objects (the Python API): name in ``models`` -> nn.Module
    model_objects: Dict[str, Any] = field(default_factory=dict)
    # identity of each model object (state-dict sha256), part of the result config
    object_identity: Dict[str, str] = field(default_factory=dict)
    reference_model: Optional[str] = None  # normalises the corruption suite's mCE
    suite: Optional[str] = None  # the suite the conditions come from (names the summary rows)
    transfer_from: Optional[List[str]] = None  # transfer sources: model names, "A+B" = ensemble

    def validate(self) -> None:
        """One-line ConfigErrors for values no run can use (checked before any work)."""
        from audiobench.device import check_precision

        if not self.models:
            raise ConfigError("--model: no model given")
        if not self.conditions:
            raise ConfigError("no conditions (the clean condition is always first)")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must be an integer in 0..2^63-1, got {self.seed}")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ConfigError(f"--bootstrap must be >= 0, got {self.bootstrap}")
        if isinstance(self.save_audio, bool) or not isinstance(self.save_audio, int) or self.save_audio < 0:
            raise ConfigError(f"--save-audio must be >= 0 (clips per condition), got {self.save_audio}")
        if self.on_bad_clip not in ON_BAD_CLIP:
            raise ConfigError(f"--on-bad-clip must be fail or skip, got {self.on_bad_clip!r}")
        if self.weights not in WEIGHT_CHOICES:
            raise ConfigError(f"weights={self.weights!r} is not one of {', '.join(WEIGHT_CHOICES)}")
        check_precision(self.precision)
        if self.label_map is not None and not Path(self.label_map).is_file():
            raise ConfigError(f"--label-map {self.label_map}: file not found")

    def result_config(self) -> Dict[str, Any]:
        """The resolved config that determines the numbers (hashed; resume must match it)."""
        out = {
            "models": list(self.models),
            "conditions": [c.to_dict() for c in self.conditions],
            "data": self.data,
            "checkpoints": {m: self.checkpoints.get(m) for m in self.models},
            "limit": self.limit,
            "seed": self.seed,
            "precision": self.precision,
            "bootstrap": self.bootstrap,
            "weights": self.weights,
            "trust_checks": self.trust_checks,
            "on_bad_clip": self.on_bad_clip,
        }
        # keys that exist only when used, so the config hash of every other run stays as it was
        if self.label_map is not None:
            from audiobench.fileio import sha256_file

            out["label_map"] = {"path": str(self.label_map), "sha256": sha256_file(self.label_map)}
        if self.object_identity:
            out["model_objects"] = dict(self.object_identity)
        if self.reference_model is not None:
            out["reference_model"] = self.reference_model
        if self.suite is not None:
            out["suite"] = self.suite
        if self.transfer_from:
            out["transfer_from"] = list(self.transfer_from)
        return out
