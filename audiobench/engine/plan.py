"""The work of one model: its conditions, then the trust companions they declare.

A *job* is one thing the scheduler runs over a clip range and stores as units: a condition of
the run, or a companion of one (the trust references, see :mod:`audiobench.trust`). The plan is
also what the sweep's cost estimate counts, so the estimate and the run never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from audiobench.engine.units import unit_dir
from audiobench.perturb.base import Companion, Perturbation


@dataclass(frozen=True)
class Job:
    """One condition (``companion is None``) or one trust companion of condition ``parent``."""

    parent: int
    condition: Perturbation
    companion: Optional[Companion]
    n_clips: int

    @property
    def key(self) -> str:
        """The job's name in unit folders and identities: ``c<NNN>`` or ``c<NNN>.<role>``."""
        return f"c{self.parent:03d}" if self.companion is None else f"c{self.parent:03d}.{self.companion.role}"

    @property
    def role(self) -> Optional[str]:
        return self.companion.role if self.companion is not None else None

    @property
    def label(self) -> str:
        if self.companion is None:
            return self.condition.condition_id
        return f"trust {self.companion.role} of {self.condition.condition_id}"

    @property
    def applied(self) -> Perturbation:
        """The perturbation the step applies (the companion's own condition for a companion)."""
        return self.companion.condition if self.companion is not None else self.condition

    def unit_dir(self, run_dir: Path, model: str) -> Path:
        return unit_dir(run_dir, model, self.parent, self.role)

    def cost_per_clip(self) -> Tuple[float, float]:
        """(forward, backward) model passes per clip of the job, its evaluation forward included."""
        f, b = self.applied.cost()
        if self.companion is not None and self.companion.base is not None:
            f0, b0 = self.companion.base.cost()
            f, b = f + f0, b + b0
        return f + 1.0, b


@dataclass
class ModelPlan:
    conditions: List[Perturbation]
    jobs: List[Job] = field(default_factory=list)

    @property
    def condition_jobs(self) -> List[Job]:
        return [j for j in self.jobs if j.companion is None]

    @property
    def companion_jobs(self) -> List[Job]:
        return [j for j in self.jobs if j.companion is not None]

    def companions_of(self, parent: int) -> List[Job]:
        return [j for j in self.companion_jobs if j.parent == parent]

    def passes(self, n_clips: int) -> Dict[str, float]:
        """Per-clip and total model passes of every job (companions on fewer clips count less)."""
        fwd_clip = bwd_clip = fwd = bwd = 0.0
        for j in self.jobs:
            f, b = j.cost_per_clip()
            fwd, bwd = fwd + f * j.n_clips, bwd + b * j.n_clips
            fwd_clip, bwd_clip = fwd_clip + f * j.n_clips / max(n_clips, 1), bwd_clip + b * j.n_clips / max(n_clips, 1)
        return {"fwd_per_clip": fwd_clip, "bwd_per_clip": bwd_clip, "fwd_total": fwd, "bwd_total": bwd}


def plan_model(conditions: Sequence[Perturbation], n_clips: int, *, trust_checks: bool) -> ModelPlan:
    """Every condition over all clips, then (with trust checks) each attack's companions; the
    10x-eps companion once per attack group, for the member with the largest eps."""
    plan = ModelPlan(list(conditions))
    plan.jobs = [Job(ci, c, None, n_clips) for ci, c in enumerate(conditions)]
    if not trust_checks:
        return plan
    strongest: Dict[tuple, int] = {}
    for ci, c in enumerate(conditions):
        if c.is_attack and any(comp.role == "tenfold" for comp in c.companions()):
            key = tuple(c.trust_group)
            if key not in strongest or float(c.eps) > float(conditions[strongest[key]].eps):
                strongest[key] = ci
    for ci, c in enumerate(conditions):
        if not c.is_attack:
            continue
        for comp in c.companions():
            if comp.role == "tenfold" and strongest.get(tuple(c.trust_group)) != ci:
                continue
            n = n_clips if comp.clip_limit is None else min(int(comp.clip_limit), n_clips)
            plan.jobs.append(Job(ci, c, comp, n))
    return plan
