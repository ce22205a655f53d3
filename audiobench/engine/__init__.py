"""The engine: model × condition × clip range → stored units → tidy tables.

One clip's path through the engine::

    Dataset.batches ─► Batch(clip_ids, waveform, targets) ─► step.evaluate_batch
        (perturbation(waveform, model, targets, rng) ─► model logits) ─► a unit file
        units/<model>/c<NNN>/<start>-<stop>.npz ─► aggregate (metrics, trust) ─► metrics.csv ...

    engine/config.py     RunConfig: what defines a run
    engine/plan.py       a model's jobs: its conditions, then their trust companions
    engine/step.py       one batch through one condition (no click, no run folder needed)
    engine/units.py      unit storage, the source of truth for resume
    engine/rundir.py     the run folder and run.json's provenance
    engine/schedule.py   Runner: jobs × clip ranges, resume, torchrun sharding, stop signals
    engine/aggregate.py  units → tables and trust verdicts
    engine/distributed.py  torchrun process groups and batch dealing

Units are written atomically as soon as each batch completes, so a run killed at any moment
resumes where it stopped, and the tables are always recomputed from the stored units.
Randomness comes only from per-clip generators seeded by (seed, clip id, condition), so results do
not depend on batch size, order, device count or resume points.
"""

from __future__ import annotations

from audiobench.engine.config import RunConfig
from audiobench.engine.schedule import Runner, StopRequested

__all__ = ["RunConfig", "Runner", "StopRequested", "run"]


def run(config: RunConfig, *, progress: bool = True, log=None):
    """Run ``config`` to completion (or resume it); returns the run folder."""
    runner = Runner(config, progress=progress, log=log)
    try:
        return runner.run()
    finally:
        runner.dist.close()
