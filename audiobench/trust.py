"""Attack trust checks: an attack that silently fails makes a model look robust.

Every attack condition declares trust *companions* (:meth:`~audiobench.perturb.base.Perturbation.
companions`) that the engine runs like any other condition: FGSM at the same eps and norm,
Gaussian noise with the same per-clip L2 norm as the attack's own change, and, once per attack
group, the attack at ten times its largest eps on the first 32 clips. :func:`assess` is pure
(numbers in, verdicts out): it flags a condition ``suspect`` (with reasons, in run.json and the
``suspect`` column of metrics.csv) when

1. the best-so-far mean loss (the loss of the points the result uses) does not increase over the
   steps (a trace whose last step collapses far below its peak is noted, not flagged: the
   result keeps the best point, but the step size overshoots);
2. the attack is weaker (higher mAP) than FGSM, or than Gaussian noise of the same L2 norm;
3. robustness does not fall as eps grows (mAP rises with eps within a group while the attack's
   final loss does not grow either);
4. ten times the largest eps does not bring mAP near chance (it keeps more than 20% of the clean
   mAP's margin over chance on those clips);
5. the input gradient was zero, NaN or inf for more than 1% of clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from audiobench.perturb.base import loss_trace_findings

MAP_TOLERANCE = 0.005  # mAP differences below this are noise, not a finding
NEAR_CHANCE_FRACTION = 0.2
BAD_GRAD_FRACTION = 0.01


@dataclass
class TenfoldEvidence:
    """The 10x-eps companion on the first ``n_clips`` clips."""

    eps: float
    map_strong: float
    map_clean: float  # clean mAP on the same clips
    chance: float  # mAP of a random ranking on those clips (mean positive rate of present classes)


@dataclass
class AttackEvidence:
    """What the engine measured about one attack condition of one model."""

    condition_id: str
    group: tuple
    eps: float
    map_attack: float
    loss_sum_per_step: Sequence[float] = ()
    n_per_step: Sequence[float] = ()
    best_loss_sum_per_step: Optional[Sequence[float]] = None
    n_clips: int = 0
    bad_grad_clips: int = 0
    map_fgsm: Optional[float] = None
    map_gauss: Optional[float] = None
    tenfold: Optional[TenfoldEvidence] = None
    extra_findings: List[str] = field(default_factory=list)

    def _means(self, sums) -> np.ndarray:
        sums = np.asarray(sums, dtype=np.float64)
        counts = np.asarray(self.n_per_step, dtype=np.float64)
        if not len(sums) or len(counts) != len(sums):
            return np.zeros(0)
        return sums / np.maximum(counts, 1)

    @property
    def loss_per_step(self) -> np.ndarray:
        return self._means(self.loss_sum_per_step)

    @property
    def best_loss_per_step(self) -> np.ndarray:
        """Mean best-so-far loss per step (units written before it was recorded: the running
        maximum of the mean loss, a lower bound)."""
        if self.best_loss_sum_per_step is None or not len(self.best_loss_sum_per_step):
            loss = self.loss_per_step
            return np.maximum.accumulate(loss) if len(loss) else loss
        return self._means(self.best_loss_sum_per_step)


def chance_map(targets: np.ndarray) -> float:
    """mAP of a random ranking: the mean positive rate of the classes that have a positive."""
    targets = np.asarray(targets, dtype=bool)
    pos = targets.sum(axis=0)
    keep = pos > 0
    return float((pos[keep] / targets.shape[0]).mean()) if keep.any() else float("nan")


def assess(evidence: Sequence[AttackEvidence]) -> Dict[str, Dict]:
    """Trust verdicts for the attack conditions of one model (see the module docstring)."""
    verdicts: Dict[str, Dict] = {}
    by_group: Dict[tuple, list] = {}
    maps = {e.condition_id: e.map_attack for e in evidence}
    for e in evidence:
        reasons: List[str] = []
        notes: List[str] = []
        loss, best = e.loss_per_step, e.best_loss_per_step
        for finding in loss_trace_findings(loss, best):
            (notes if finding.startswith("last-step loss collapsed") else reasons).append(finding)
        reasons.extend(e.extra_findings)
        if e.map_fgsm is not None and e.map_attack > e.map_fgsm + MAP_TOLERANCE:
            reasons.append(f"weaker than FGSM at the same eps (mAP {e.map_attack:.4f} > {e.map_fgsm:.4f})")
        if e.map_gauss is not None and e.map_attack > e.map_gauss + MAP_TOLERANCE:
            reasons.append(f"weaker than Gaussian noise of the same L2 norm (mAP {e.map_attack:.4f} > {e.map_gauss:.4f})")
        n, bad = int(e.n_clips), int(e.bad_grad_clips)
        if n and bad / n > BAD_GRAD_FRACTION:
            reasons.append(f"input gradient zero/NaN/inf for {bad}/{n} clips")
        t = e.tenfold
        if t is not None and np.isfinite(t.chance):
            margin = NEAR_CHANCE_FRACTION * max(t.map_clean - t.chance, 0.0) + MAP_TOLERANCE
            if t.map_strong - t.chance > margin:
                reasons.append(f"10x eps ({t.eps:g}) leaves mAP {t.map_strong:.4f} far above chance {t.chance:.4f} "
                               f"(clean {t.map_clean:.4f})")
        verdicts[e.condition_id] = {"suspect": bool(reasons), "reasons": reasons, "notes": notes,
                                    "loss_per_step": [float(x) for x in loss],
                                    "best_loss_per_step": [float(x) for x in best],
                                    "bad_grad_fraction": (bad / n) if n else 0.0}
        # the eps-monotonicity check compares what the results use: the best-so-far loss
        by_group.setdefault(tuple(e.group), []).append((float(e.eps), e.condition_id, float(best[-1]) if len(best) else float("nan")))
    for items in by_group.values():
        items.sort()
        for (e0, c0, l0), (e1, c1, l1) in zip(items, items[1:]):
            # A larger budget must not leave the model more robust. At the mAP floor the ranking
            # metric wiggles by chance, so the flag needs the attack's own objective to agree:
            # the final loss did not grow with eps either (or was not recorded).
            loss_grew = np.isfinite(l0) and np.isfinite(l1) and l1 > l0
            if maps[c1] > maps[c0] + MAP_TOLERANCE and not loss_grew:
                v = verdicts[c1]
                v["reasons"].append(f"mAP rose from {maps[c0]:.4f} at eps {e0:g} to {maps[c1]:.4f} at eps {e1:g}")
                v["suspect"] = True
    return verdicts
