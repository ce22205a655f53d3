"""``audiobench sharpness`` as a function: measure sharpness on a dataset's clips and write a run
folder ``<out>/<run_id>/`` holding ``sharpness.csv`` (tidy rows,
:data:`audiobench.analysis.sharpness.COLUMNS`) and ``run.json`` (``"kind": "sharpness"``: settings,
definitions, data identity, models with checkpoint sha256 and quantization recipe, seed, versions,
git commit, device, wall time).

Everything is measured before the folder is created, so a failure leaves no half-made folder.
"""

from __future__ import annotations

from pathlib import Path

from audiobench.results.schema import SHARPNESS_CSV


def run_sharpness(*, models, data=None, data_root=None, checkpoint=None, limit=None, batch_size=8,
                  rhos=None, draws=8, steps=3, hessian_iters=20, hessian_tol=1e-3,
                  measures=("average", "worst", "hessian"), seed=0, device="auto", out=Path("results"), run_id=None,
                  progress=False):
    """The command's work as a function: returns ``{"run_dir", "table", "provenance"}``."""
    from audiobench.analysis.sharpness import DEFAULT_RHOS, SharpnessSettings
    from audiobench.api import parse_checkpoint_option
    from audiobench.data import open_dataset
    from audiobench.device import parse_device
    from audiobench.errors import ConfigError
    from audiobench.models.resolve import check_model_source

    if not models:
        raise ConfigError("--model: no model given")
    if len(set(models)) != len(models):
        raise ConfigError(f"--model {','.join(models)}: a model appears twice")
    for m in models:
        check_model_source(m)  # unknown name or variant: one line, before any work
    settings = SharpnessSettings(rhos=DEFAULT_RHOS if rhos is None else tuple(rhos), draws=draws, steps=steps, hessian_iters=hessian_iters,
                                 hessian_tol=hessian_tol, measures=tuple(measures), seed=seed)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    checkpoints = parse_checkpoint_option(checkpoint, models)
    dev = parse_device(device)
    with open_dataset(data, data_root) as ds:
        return _measure(ds, models, checkpoints, dev, data, limit, batch_size, settings, device, Path(out), run_id,
                        progress)


def _measure(ds, models, checkpoints, dev, data, limit, batch_size, settings, device, out, run_id, progress):
    import time
    from datetime import datetime, timezone

    import pandas as pd

    from audiobench import results as R
    from audiobench.analysis.sharpness import definitions, measure_sharpness, passes_per_model
    from audiobench.data.shards import clip_list_hash
    from audiobench.errors import ConfigError
    from audiobench.models import load_model

    n = len(ds) if limit is None else min(len(ds), int(limit))
    if n == 0:
        raise ConfigError("the dataset selection is empty (zero clips; check --limit and the data)")
    clip_ids = list(ds.clip_ids[:n])
    data_info = ds.describe()
    data_info["n_clips"] = n
    data_info["used_clip_list_hash"] = clip_list_hash(clip_ids)
    config = {"kind": "sharpness", "models": list(models), "checkpoints": {m: checkpoints.get(m) for m in models},
              "data": None if data is None else str(data), "limit": limit, "settings": settings.to_dict(),
              "data_identity": {"clip_list_hash": ds.clip_list_hash, "vocab_hash": ds.vocab_hash, "n_clips": n}}
    chash = R.config_hash(config)
    from audiobench.engine.rundir import check_run_id, new_run_id

    run_id = check_run_id(run_id) if run_id is not None else new_run_id(chash)
    run_dir = Path(out) / run_id
    if run_dir.exists():
        raise ConfigError(f"{run_dir}: already exists; choose another --run-id")
    R.check_writable_parent(run_dir)

    class _Batches:
        """Re-iterable over the selected clips (read again per pass when they do not fit in memory)."""

        def __iter__(self):
            return iter(ds.batches(batch_size, limit=n))

    start, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    meta_models = {}
    tables = []
    with _progress(progress, len(models) * passes_per_model(settings)) as advance:
        for name in models:
            model = load_model(name, checkpoint=checkpoints.get(name), device=dev, sample_rate=ds.sample_rate)
            meta_models[name] = {
                "spec": model.spec.to_dict(),
                "checkpoint": getattr(model, "checkpoint_path", None),
                "checkpoint_sha256": getattr(model, "checkpoint_sha256", None),
                "variant": getattr(model, "variant_info", None),
            }
            done = [0]

            def tick(_name, done=done):
                done[0] += 1
                advance(1)

            table, prov = measure_sharpness({name: model}, _Batches(), settings, run_id=run_id, on_pass=tick)
            advance(passes_per_model(settings) - done[0])  # the power iteration may stop early
            tables.append(table)
            meta_models[name].update(prov["models"][name])
            del model
        table = pd.concat(tables, ignore_index=True)
        meta = {
            "kind": "sharpness",
            "run_id": run_id,
            "complete": True,
            "audiobench_version": R.versions()["audiobench"],
            "config": {**config, "device": device, "batch_size": batch_size, "out": str(out)},
            "config_hash": chash,
            "versions": R.versions(),
            "git_commit": R.git_commit(),
            "device": R.device_name(dev),
            "seed": settings.seed,
            "data": data_info,
            "models": meta_models,
            "conditions": [],
            "definitions": definitions(),
            "tables": [SHARPNESS_CSV],
            "start_time": start,
            "end_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - t0, 3),
        }
    # everything is measured: only now the folder appears (the table first, run.json last)
    R.ensure_writable_dir(run_dir)
    with R.run_lock(run_dir):
        R.atomic_write_csv(run_dir / SHARPNESS_CSV, table)
        R.write_run_info(run_dir, meta)
    return {"run_dir": run_dir, "table": table, "provenance": meta}


class _progress:
    """A rich progress bar on stderr counting passes over the clips (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda k: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from audiobench.progress import stderr_console

        self.bar = Progress(TextColumn("sharpness: passes over the clips"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=stderr_console(), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("sharpness", total=self.total)
        return lambda k: self.bar.advance(task, k)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
