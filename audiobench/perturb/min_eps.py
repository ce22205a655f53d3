"""Minimal linf eps that deactivates the model on a clip ("epsilon needed to deactivate")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from audiobench.metrics.definitions import MIN_EPS_MISSED_CLEAN
from audiobench.perturb import register_perturbation
from audiobench.perturb.attacks import _check_model, _check_targets, pgd
from audiobench.perturb.base import AttackTrace, Perturbation, check_finite, check_int


def labels_in_topk(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """bool (batch,): does any true label of the clip rank in its top-k logits?"""
    k = min(k, logits.shape[-1])
    idx = logits.topk(k, dim=-1).indices
    return targets.bool().gather(1, idx).any(dim=1)


@register_perturbation
@dataclass
class MinEps(Perturbation):
    """Per clip, the smallest linf eps (waveform units) at which none of its true labels stays in
    the top-``top_k`` logits under linf PGD (``steps``, ``restarts``, default step 2.5·eps/steps).

    Bisection on [0, ``eps_max``] with at most ``probes`` (<= 10) PGD probes: first at eps_max,
    then halving the bracket; the value reported is the upper end of the final bracket (an eps
    at which the attack was seen to succeed). Written to ``trace.per_clip["min_eps"]`` in clip
    order (the engine reports median and quartiles):

    * ``MIN_EPS_MISSED_CLEAN`` (−1.0) when the clean clip already has no true label in its top-k
      (nothing to attack: recorded apart from every eps, so summaries can leave it out and count
      it on its own; a clip that was attacked always gets an eps > 0 or ``inf``);
    * ``inf`` when PGD at eps_max does not break it (never broken within the budget);
    * ``nan`` for a clip with no true label at all (undefined; left clean).

    Returns the attacked waveform at the found eps (at eps_max for clips never broken, the clean
    waveform for clips missed clean and clips without a label). The trace's loss per step is that of the eps_max probe.
    """

    name = "min-eps"
    level_field = "eps_max"
    uses_model = True

    eps_max: float = 0.01
    probes: int = 10
    steps: int = 10
    restarts: int = 1
    top_k: int = 5

    def cost(self) -> tuple:
        # the clean check, then per probe a PGD (restarts x (steps + 1) forwards) and its check
        per_probe = self.restarts * (self.steps + 1) + 1
        return (float(1 + self.probes * per_probe), float(self.probes * self.restarts * self.steps))

    def __post_init__(self):
        check_finite("min-eps eps_max", self.eps_max, positive=True)
        self.eps_max = float(self.eps_max)
        check_int("min-eps probes", self.probes, minimum=1)
        from audiobench.errors import ConfigError

        if int(self.probes) > 10:
            raise ConfigError(f"min-eps probes must be <= 10, got {self.probes!r}")
        self.probes = int(self.probes)
        check_int("min-eps steps", self.steps, minimum=1)
        check_int("min-eps restarts", self.restarts, minimum=1)
        check_int("min-eps top_k", self.top_k, minimum=1)
        self.steps, self.restarts, self.top_k = int(self.steps), int(self.restarts), int(self.top_k)

    @property
    def variant(self) -> str:
        return "linf"

    def _attack(self, model, x, targets, eps, rng, trace):
        return pgd(model, x, targets, eps=eps, norm="linf", steps=self.steps, restarts=self.restarts, rng=rng, trace=trace)

    def search(self, waveform, *, model, targets, rng, trace=None):
        """(perturbed waveform, per-clip min eps (batch,) float64 on CPU)."""
        _check_model(model)
        x = waveform.detach()
        _check_targets(targets, x)
        B = x.shape[0]
        out = x.clone()
        result = torch.full((B,), math.nan, dtype=torch.float64)
        with torch.no_grad():
            ok = labels_in_topk(model(x), targets, self.top_k).cpu()
        has_label = targets.bool().any(dim=1).cpu()
        result[has_label & ~ok] = MIN_EPS_MISSED_CLEAN
        active = (has_label & ok).nonzero().flatten().tolist()
        bad_steps_all = torch.zeros(B, dtype=torch.float64)
        if active:
            idx = torch.tensor(active, device=x.device)
            probe_trace = AttackTrace() if trace is not None else None
            xa = self._attack(model, x[idx], targets[idx], self.eps_max, rng.subset(active), probe_trace)
            if trace is not None:
                # loss per step and gradient counts of the eps_max probe; per-clip lists cover
                # every clip of the batch (0 bad steps for clips that were not attacked)
                trace.merge_steps(probe_trace)
                trace.add_clips(len(active), probe_trace.bad_grad_clips)
                full = torch.zeros(B, dtype=torch.float64)
                full[torch.tensor(active)] = torch.tensor(probe_trace.per_clip["bad_grad_steps"], dtype=torch.float64)
                bad_steps_all = full
            with torch.no_grad():
                still = labels_in_topk(model(xa), targets[idx], self.top_k).cpu()
            out[idx] = xa
            for j, i in enumerate(active):
                result[i] = math.inf if bool(still[j]) else self.eps_max
            lo = {i: 0.0 for i in active if not math.isinf(result[i])}
            hi = {i: self.eps_max for i in lo}
            for _ in range(self.probes - 1):
                clips = sorted(lo)
                if not clips:
                    break
                mids = torch.tensor([(lo[i] + hi[i]) / 2 for i in clips], dtype=torch.float32).double()  # the eps PGD uses
                idx = torch.tensor(clips, device=x.device)
                xa = self._attack(model, x[idx], targets[idx], mids.float().to(x.device), rng.subset(clips), None)
                with torch.no_grad():
                    still = labels_in_topk(model(xa), targets[idx], self.top_k).cpu()
                for j, i in enumerate(clips):
                    if bool(still[j]):
                        lo[i] = float(mids[j])
                    else:
                        hi[i] = float(mids[j])
                        out[i] = xa[j]
            for i in hi:
                result[i] = hi[i]
        if trace is not None:
            trace.add_per_clip("min_eps", result)
            trace.add_per_clip("bad_grad_steps", bad_steps_all)
        return out, result

    def __call__(self, waveform, *, model=None, targets=None, rng=None, trace=None):
        return self.search(waveform, model=model, targets=targets, rng=rng, trace=trace)[0]
