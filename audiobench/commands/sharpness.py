"""``audiobench sharpness``: weight-space sharpness of models on a dataset's clips.

Writes ``<out>/<run_id>/sharpness.csv`` (tidy rows, :data:`audiobench.analysis.sharpness.COLUMNS`)
and ``run.json`` (``"kind": "sharpness"``: settings, definitions, data identity, models with
checkpoint sha256 and quantization recipe, seed, versions, git commit, device, wall time). The
measures are defined in :mod:`audiobench.analysis.sharpness`.
"""

from __future__ import annotations

from pathlib import Path

import click

SHARPNESS_CSV = "sharpness.csv"
# the defaults of audiobench.analysis.sharpness (not imported here: `audiobench --help` stays instant)
DEFAULT_RHO = "0.01,0.02,0.05,0.1"


def _split(value):
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _floats(option: str, value: str):
    from audiobench.errors import ConfigError

    out = []
    for part in _split(value):
        try:
            out.append(float(part))
        except ValueError:
            raise ConfigError(f"{option} {part!r}: not a number") from None
    return tuple(out)


@click.command("sharpness", context_settings={"show_default": True})
@click.option("--model", "models", default="toy-cnn", help="Model name(s), comma-separated (NAME or NAME@VARIANT).")
@click.option("--data", default=None, help="Data manifest (name or .json), HDF5 shard, or AST JSON datafile. Default: the embedded toy set.")
@click.option("--data-root", default=None, envvar="AUDIOBENCH_DATA", help="Root that manifest shard paths are relative to.")
@click.option("--checkpoint", default=None, help="Checkpoint PATH (one model) or NAME=PATH,... (several).")
@click.option("--limit", type=int, default=None, help="Use only the first N clips.")
@click.option("--batch-size", type=int, default=8, help="Clips per forward pass.")
@click.option("--rho", default=DEFAULT_RHO, help="Relative weight-perturbation sizes, comma list (dimensionless, >= 0).")
@click.option("--draws", type=int, default=8, help="Gaussian noise draws per rho (average-case sharpness).")
@click.option("--steps", type=int, default=3, help="Ascent steps in weight space (worst-case sharpness).")
@click.option("--hessian-iters", type=int, default=20, help="Most Hessian-vector products of the power iteration.")
@click.option("--hessian-tol", type=float, default=1e-3, help="Relative change of the eigenvalue estimate at which the power iteration stops.")
@click.option("--measures", default="average,worst,hessian", help="Which measures: average, worst, hessian (comma list).")
@click.option("--seed", type=int, default=0, help="Seed of every random draw (noise, power-iteration start).")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--out", default="results", type=click.Path(file_okay=False), help="Results directory.")
@click.option("--run-id", default=None, help="Run folder name (default: UTC time + config hash).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sharpness(models, data, data_root, checkpoint, limit, batch_size, rho, draws, steps, hessian_iters, hessian_tol,
              measures, seed, device, out, run_id, quiet):
    """Measure how sharp each model's loss is in weight space, on the same clips and loss (BCE over
    the vocabulary) the attacks use: average-case (Gaussian weight noise of relative size rho),
    worst-case (ascent steps within relative radius rho) and the top Hessian eigenvalue.

    \b
    Examples:
      audiobench sharpness --model toy-cnn --limit 8
      audiobench sharpness --model efficientat-mn04,efficientat-mn04@w4 --data clips.h5 \\
          --checkpoint efficientat-mn04=mn04.pt,efficientat-mn04@w4=mn04.pt --rho 0.01,0.05
    """
    result = run_sharpness(
        models=_split(models), data=data, data_root=data_root, checkpoint=checkpoint, limit=limit,
        batch_size=batch_size, rhos=_floats("--rho", rho), draws=draws, steps=steps, hessian_iters=hessian_iters,
        hessian_tol=hessian_tol, measures=tuple(_split(measures)), seed=seed, device=device, out=Path(out),
        run_id=run_id, progress=not quiet,
    )
    _print_table(result["table"])
    click.echo(f"results: {result['run_dir']}")


def run_sharpness(*, models, data=None, data_root=None, checkpoint=None, limit=None, batch_size=8,
                  rhos=None, draws=8, steps=3, hessian_iters=20, hessian_tol=1e-3,
                  measures=("average", "worst", "hessian"), seed=0, device="auto", out=Path("results"), run_id=None,
                  progress=False):
    """The command's work as a function: returns ``{"run_dir", "table", "provenance"}``."""
    from audiobench.analysis.sharpness import DEFAULT_RHOS, SharpnessSettings
    from audiobench.commands.run import parse_checkpoints
    from audiobench.data import open_dataset
    from audiobench.engine import resolve_device
    from audiobench.errors import ConfigError
    from audiobench.models import MODELS

    if not models:
        raise ConfigError("--model: no model given")
    if len(set(models)) != len(models):
        raise ConfigError(f"--model {','.join(models)}: a model appears twice")
    for m in models:
        MODELS.get(m)  # unknown name or variant: one line, before any work
    settings = SharpnessSettings(rhos=DEFAULT_RHOS if rhos is None else tuple(rhos), draws=draws, steps=steps, hessian_iters=hessian_iters,
                                 hessian_tol=hessian_tol, measures=tuple(measures), seed=seed)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    checkpoints = parse_checkpoints(checkpoint, models)
    dev = resolve_device(device)
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
    run_id = run_id or f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{chash[:8]}"
    if "/" in run_id or run_id in (".", "..") or not run_id.strip():
        raise ConfigError(f"--run-id {run_id!r}: must be a plain folder name")
    run_dir = Path(out) / run_id
    if (run_dir / R.RUN_JSON).exists():
        raise ConfigError(f"{run_dir}: already holds a run; choose another --run-id")
    R.ensure_writable_dir(run_dir)

    class _Batches:
        """Re-iterable over the selected clips (read again per pass when they do not fit in memory)."""

        def __iter__(self):
            return iter(ds.batches(batch_size, limit=n))

    start, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    meta_models = {}
    tables = []
    with R.run_lock(run_dir), _progress(progress, len(models) * passes_per_model(settings)) as advance:
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
        R.atomic_write_csv(run_dir / SHARPNESS_CSV, table)
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
        R.atomic_write_json(run_dir / R.RUN_JSON, meta)
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


def _print_table(table) -> None:
    """One line per row: model, measure, rho, value [CI]."""
    for r in table.itertuples(index=False):
        rho = "" if r.rho != r.rho else f"rho={r.rho:g}"
        ci = "" if r.ci_low != r.ci_low else f" [{r.ci_low:.4g}, {r.ci_high:.4g}]"
        extra = f" (power iteration: {r.steps} products, converged {r.converged})" if r.measure == "hessian_max_eig" else ""
        click.echo(f"{r.model}\t{r.measure}\t{rho}\t{r.value:.6g}{ci} {r.unit}{extra}")
