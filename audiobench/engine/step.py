"""One batch through one condition: the per-batch step, usable without click or a run folder.

    clean batch ─► screen bad clips ─► perturbation(clean, model, targets, rng, trace)
                ─► model logits (and embedding) ─► a unit: dict of numpy arrays

:func:`evaluate_batch` is the whole step; :func:`evaluate_batch_splitting` retries a batch that
ran out of CUDA memory as two halves (same results: every random draw is per clip).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch

from audiobench.data.batch import Batch
from audiobench.device import autocast
from audiobench.errors import AudiobenchError, DataError
from audiobench.perturb.base import AttackTrace, Companion, Perturbation, realised_snr_db
from audiobench.perturb.chain import sees_through
from audiobench.rng import ClipRNG


@dataclass(frozen=True)
class StepSettings:
    """What the step needs from the run's config."""

    seed: int = 0
    precision: str = "fp32"
    on_bad_clip: str = "fail"  # "fail" | "skip"
    record_attack_l2: bool = False  # store the L2 norm of a chained attack's own change (trust)
    keep_perturbed: bool = False  # return the perturbed waveform under "_pert" (--save-audio)
    sample_rate: int = 0  # the dataset's rate (the attacks' footprint is computed in Hz and seconds)
    footprints: bool = True  # store each attack's time-frequency footprint (summed over the unit's clips)


def footprint_arrays(clean: torch.Tensor, pert: torch.Tensor, sample_rate: int) -> Dict[str, np.ndarray]:
    """The attack's footprint summed over the clips of a batch (one row per unit; the aggregator
    sums the rows, see :func:`audiobench.perturb.footprint.summarise_footprint`)."""
    from audiobench.perturb.footprint import footprint_per_clip

    fp = footprint_per_clip(clean, pert, sample_rate)
    totals = np.stack([fp[k].sum() for k in ("delta_energy_total", "delta_energy_padding", "delta_energy_silence",
                                             "padding_samples")])
    return {"fp_delta_energy": fp["delta_energy"].sum(axis=0, keepdims=True),
            "fp_clean_energy": fp["clean_energy"].sum(axis=0, keepdims=True),
            "fp_totals": totals[None, :]}


def perturbation_geometry(clean: torch.Tensor, pert: torch.Tensor) -> Dict[str, np.ndarray]:
    """Per-clip size of the change: realised SNR (dB), L-inf and L2 norms (waveform units)."""
    delta = pert.float() - clean.float()
    return {
        "snr_db": realised_snr_db(clean, pert).cpu().numpy().astype(np.float64),
        "linf": delta.abs().amax(dim=1).cpu().numpy().astype(np.float64),
        "l2": delta.pow(2).sum(dim=1).sqrt().cpu().numpy().astype(np.float64),
    }


def trace_arrays(trace: AttackTrace) -> Dict[str, np.ndarray]:
    """The attack trace as unit arrays (:meth:`AttackTrace.to_arrays`: per-step loss and
    best-so-far sums, counts; ``pc_<name>`` per-clip values)."""
    return trace.to_arrays()


def _forward(model, features, want_embedding: bool):
    if want_embedding:
        emb = model.embed_features(features)
        return model.head(emb), emb
    return model.forward_features(features), None


def screen_bad_clips(batch: Batch, clean: torch.Tensor, settings: StepSettings, *, warn: bool):
    """(clean with bad clips zeroed, bad mask): clips with NaN/inf or samples outside [-1, 1]
    stop the run (``on_bad_clip="fail"``) or are left out (``"skip"``)."""
    bad = ~torch.isfinite(clean).all(dim=1) | (clean.abs() > 1.0).any(dim=1)
    if bool(bad.any()):
        first = batch.clip_ids[int(torch.nonzero(bad)[0, 0])]
        if settings.on_bad_clip == "fail":
            raise DataError(
                f"clip {first!r}: waveform has NaN/inf or samples outside [-1, 1] "
                f"({int(bad.sum())} such clip(s) in this batch); use --on-bad-clip skip to leave them out"
            )
        clean = torch.where(bad[:, None], torch.zeros_like(clean), clean)
        if warn:  # once per batch, on the clean pass
            warnings.warn(f"--on-bad-clip skip: leaving out {int(bad.sum())} clip(s) with NaN/inf or out-of-range "
                          f"samples (first: {first!r}); counted as bad_input_clips")
    return clean, bad


def evaluate_batch(model, cond: Perturbation, batch: Batch, settings: StepSettings, *, device: torch.device,
                   companion: Optional[Companion] = None, parent_l2: Optional[np.ndarray] = None,
                   crafted: Optional[torch.Tensor] = None) -> Dict[str, np.ndarray]:
    """Perturb one batch with ``cond`` (or run ``companion``, the trust reference of ``cond``; or,
    for a transfer condition, take the ``crafted`` clips), score it with ``model`` and return the
    unit's arrays."""
    clean = batch.waveform.to(device, non_blocking=True)
    targets = batch.targets.to(device, non_blocking=True)
    is_clean_pass = companion is None and cond.name == "none"
    clean, bad = screen_bad_clips(batch, clean, settings, warn=is_clean_pass)
    trace = AttackTrace()
    want_emb = bool(model.spec.has_embedding) and companion is None
    applied = companion.condition if companion is not None else cond
    start = clean
    extra: Dict[str, np.ndarray] = {}
    with autocast(device, settings.precision):
        if companion is not None and companion.base is not None:
            # a chained attack's references start from the chain's base output, drawn from the
            # chain's own streams (the same draws the attack started from)
            rng0 = ClipRNG.for_clips(settings.seed, batch.clip_ids, companion.base_rng_key, device)
            start = companion.base(clean, model=model, targets=targets, rng=rng0)
        key = companion.rng_key if companion is not None else cond.condition_key()
        rng = ClipRNG.for_clips(settings.seed, batch.clip_ids, key, device)
        if applied.domain == "feature":
            with torch.no_grad():
                feats = model.features(start)
            feats_p = applied.perturb_features(feats, model=model, targets=targets, rng=rng, trace=trace)
            pert = start
            with torch.no_grad():
                logits, emb = _forward(model, feats_p, want_emb)
        elif crafted is not None:  # a transfer condition: clips crafted on the source model
            pert = crafted.to(device=device, dtype=clean.dtype)
            with torch.no_grad():
                logits, emb = _forward(model, model.features(pert), want_emb)
        else:
            if companion is not None and companion.same_l2_as_parent:
                l2 = torch.as_tensor(np.asarray(parent_l2), dtype=torch.float32)
                pert = applied(start, model=model, targets=targets, rng=rng, trace=trace, target_l2=l2)
            else:
                pert = applied(start, model=model, targets=targets, rng=rng, trace=trace)
            if companion is not None and companion.through is not None:
                rng0 = ClipRNG.for_clips(settings.seed, batch.clip_ids, companion.base_rng_key, device)
                with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
                    pert = companion.through.prepare(start, rng0)(pert).to(pert.dtype).clamp(-1.0, 1.0)
            with torch.no_grad():
                logits, emb = _forward(model, model.features(pert), want_emb)
        base = getattr(cond, "base_perturbation", None)
        if settings.record_attack_l2 and companion is None and base is not None and not sees_through(base):
            # the L2 norm of the attack's own change (pert minus the chain's base output)
            rng0 = ClipRNG.for_clips(settings.seed, batch.clip_ids, cond.condition_key(), device)
            base_out = cond.base_perturbation(clean, model=model, targets=targets, rng=rng0)
            extra["attack_l2"] = (pert.float() - base_out.float()).pow(2).sum(dim=1).sqrt().cpu().numpy().astype(np.float64)
    unit: Dict[str, np.ndarray] = {
        "clip_ids": np.asarray(batch.clip_ids, dtype=str),
        "logits": logits.float().cpu().numpy(),
        "bad_input": bad.cpu().numpy(),
        **perturbation_geometry(clean, pert),
        **extra,
    }
    if emb is not None:
        unit["embedding"] = emb.float().cpu().numpy()
    if (settings.footprints and companion is None and applied.is_attack and applied.domain == "waveform"
            and settings.sample_rate > 0):
        unit.update(footprint_arrays(clean, pert, settings.sample_rate))
    if settings.keep_perturbed and applied.domain != "feature" and companion is None:
        unit["_pert"] = pert.detach().float().cpu().numpy()
    unit.update(trace_arrays(trace))
    return unit


def evaluate_batch_splitting(model, cond: Perturbation, batch: Batch, settings: StepSettings, *, device: torch.device,
                             companion: Optional[Companion] = None, parent_l2: Optional[np.ndarray] = None,
                             crafted: Optional[torch.Tensor] = None):
    """:func:`evaluate_batch`; on CUDA out-of-memory, split the batch in halves and retry."""
    from audiobench.engine.units import merge_units

    try:
        return evaluate_batch(model, cond, batch, settings, device=device, companion=companion, parent_l2=parent_l2,
                              crafted=crafted)
    except torch.cuda.OutOfMemoryError:
        what = companion.condition.condition_id if companion is not None else cond.condition_id
        if len(batch) == 1:
            raise AudiobenchError(
                f"CUDA out of memory on a single clip ({batch.clip_ids[0]}) of condition {what}; "
                f"free GPU memory, use --precision bf16, or run with --device cpu"
            ) from None
        torch.cuda.empty_cache()
        half = len(batch) // 2
        warnings.warn(f"CUDA out of memory at batch size {len(batch)}; retrying as {half} + {len(batch) - half}")
        parts = [
            Batch(batch.clip_ids[:half], batch.waveform[:half], batch.targets[:half], batch.start),
            Batch(batch.clip_ids[half:], batch.waveform[half:], batch.targets[half:], batch.start + half),
        ]
        l2_parts = [None, None] if parent_l2 is None else [parent_l2[:half], parent_l2[half:]]
        crafted_parts = [None, None] if crafted is None else [crafted[:half], crafted[half:]]
        units = [evaluate_batch_splitting(model, cond, p, settings, device=device, companion=companion, parent_l2=l,
                                          crafted=c)
                 for p, l, c in zip(parts, l2_parts, crafted_parts)]
        return merge_units(units)


def craft_batch(source, attack: Perturbation, batch: Batch, settings: StepSettings, *, device: torch.device) -> Dict[str, np.ndarray]:
    """A transfer attack's clips for one batch, crafted on ``source`` (a model, or an ensemble
    whose outputs sit side by side: the targets are repeated once per member) with the attack's
    own per-clip streams, as a white-box run of the source would; the unit holds the crafted
    waveforms (``perturbed``, float32) and the attack's trace."""
    clean = batch.waveform.to(device, non_blocking=True)
    targets = batch.targets.to(device, non_blocking=True)
    clean, bad = screen_bad_clips(batch, clean, settings, warn=False)
    repeat = getattr(source, "repeat_targets", None)
    attack_targets = repeat(targets) if repeat is not None else targets
    trace = AttackTrace()
    with autocast(device, settings.precision):
        rng = ClipRNG.for_clips(settings.seed, batch.clip_ids, attack.condition_key(), device)
        pert = attack(clean, model=source, targets=attack_targets, rng=rng, trace=trace)
    n = len(batch)
    # the per-clip keys every unit holds (geometry against the clean clip; no logits of the source)
    geometry = perturbation_geometry(clean, pert)
    return {"clip_ids": np.asarray(batch.clip_ids, dtype=str), "perturbed": pert.detach().float().cpu().numpy(),
            "logits": np.zeros((n, 0), dtype=np.float32), "bad_input": bad.cpu().numpy(), **geometry,
            **trace_arrays(trace)}
