"""``audiobench sharpness``: weight-space sharpness of models on a dataset's clips.

Writes ``<out>/<run_id>/sharpness.csv`` (tidy rows, :data:`audiobench.analysis.sharpness.COLUMNS`)
and ``run.json`` (``"kind": "sharpness"``: settings, definitions, data identity, models with
checkpoint sha256 and quantization recipe, seed, versions, git commit, device, wall time). The
measures are defined in :mod:`audiobench.analysis.sharpness`.
"""

from __future__ import annotations

from pathlib import Path

import click

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


def run_sharpness(**kwargs):
    """See :func:`audiobench.analysis.sharpness_run.run_sharpness`."""
    from audiobench.analysis.sharpness_run import run_sharpness as _run

    return _run(**kwargs)


def _print_table(table) -> None:
    """One line per row: model, measure, rho, value [CI]."""
    for r in table.itertuples(index=False):
        rho = "" if r.rho != r.rho else f"rho={r.rho:g}"
        ci = "" if r.ci_low != r.ci_low else f" [{r.ci_low:.4g}, {r.ci_high:.4g}]"
        extra = f" (power iteration: {r.steps} products, converged {r.converged})" if r.measure == "hessian_max_eig" else ""
        click.echo(f"{r.model}\t{r.measure}\t{rho}\t{r.value:.6g}{ci} {r.unit}{extra}")
